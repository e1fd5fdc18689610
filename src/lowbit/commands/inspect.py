"""``lowbit inspect PATH``: per layer, the method, bits, bytes, kernel and why."""

from __future__ import annotations

import json


def add_arguments(i) -> None:
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    import lowbit

    report = lowbit.inspect(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.path}: {report.method}, {report.quantized_bytes / 1e6:.1f} MB quantized of "
                        f"{report.total_bytes / 1e6:.1f} MB in memory")
    for col in ("layer", "format", "shape", "bits/weight", "bytes", "kernel", "why"):
        table.add_column(col)
    for layer in report.layers:
        table.add_row(layer.name, layer.format + (f" from {layer.origin}" if layer.origin else ""), "x".join(map(str, layer.shape)), f"{layer.bits_per_weight:.3f}",
                      f"{layer.nbytes:,}", layer.kernel, layer.reason)
    Console(width=200).print(table)
    return 0
