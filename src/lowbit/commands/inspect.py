"""``lowbit inspect PATH``: per layer, the method, format, bits, bytes, compute dtype, kernel and why.

The table groups the layers that differ only by their block index (``model.layers.{0-17}.mlp.down_proj``, 18
layers) and fits the terminal; ``--json`` lists every layer.
"""

from __future__ import annotations

import json
import os
import re

_INDEX = re.compile(r"\.(\d+)\.")
_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def add_arguments(i) -> None:
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON (every layer) instead of the grouped table")


def _format(layer) -> str:
    return layer.format + (f" from {layer.origin}" if layer.origin else "")  # imported: the source tool's format


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    parts, start = [], None
    for i, x in enumerate(indices):
        start = x if start is None else start
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            parts.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(parts)


def group_layers(layers) -> list[tuple[str, int, object]]:
    """(display name, count, first layer) per group of layers equal but for their first block index, in order."""
    groups: dict[tuple, list] = {}
    for layer in layers:
        m = _INDEX.search(layer.name)
        pattern = layer.name if m is None else f"{layer.name[:m.start()]}.{{}}.{layer.name[m.end():]}"
        key = (pattern, _format(layer), tuple(layer.shape), layer.nbytes, layer.kernel, layer.compute_dtype,
               layer.reason)
        groups.setdefault(key, []).append((int(m.group(1)) if m else None, layer))
    rows = []
    for (pattern, *_), members in groups.items():
        first = members[0][1]
        if members[0][0] is None:
            rows.append((first.name, 1, first))
        else:
            indices = sorted({i for i, _ in members})
            shown = str(indices[0]) if len(indices) == 1 else "{" + _ranges(indices) + "}"
            rows.append((pattern.replace("{}", shown), len(members), first))
    return rows


def run(args) -> int:
    import lowbit

    report = lowbit.inspect(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich import box
    from rich.console import Console
    from rich.table import Table

    rows = group_layers(report.layers)
    reasons = list(dict.fromkeys(layer.reason for _, _, layer in rows))  # each told once, under the table
    title = (f"{args.path}: {report.method}, {len(report.layers)} layers in {len(rows)} groups, "
             f"{report.quantized_bytes / 1e6:.1f} MB quantized of {report.total_bytes / 1e6:.1f} MB in memory")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    common = os.path.commonprefix([name for name, _, _ in rows]).rpartition(".")[0] if len(rows) > 1 else ""
    names = [name[len(common) + 1:] if common else name for name, _, _ in rows]
    cells = [[name, str(count), _format(layer), "x".join(map(str, layer.shape)), f"{layer.bits_per_weight:.3f}",
              f"{layer.nbytes:,}", _SHORT.get(layer.compute_dtype, layer.compute_dtype),
              f"{layer.kernel} [{reasons.index(layer.reason) + 1}]"] for name, (_, count, layer) in zip(names, rows)]
    headers = [f"{common}.…" if common else "layers", "n", "format", "shape", "bits/w", "bytes", "compute", "kernel"]
    computes = {row[6] for row in cells}
    if len(computes) == 1:  # one compute dtype: said once, in the title
        title += f"; compute dtype {report.layers[0].compute_dtype}"
        headers.pop(6)
        cells = [row[:6] + row[7:] for row in cells]
    for i, col in enumerate(headers):  # the layer names take what the other columns leave, folding
        table.add_column(col, overflow="fold", ratio=1 if i == 0 else None, no_wrap=i not in (0, 2),
                         min_width=12 if i == 0 else None,
                         justify="right" if col in ("n", "bits/w", "bytes") else "left")
    for row in cells:
        table.add_row(*row)
    console = Console()  # the terminal's width ($COLUMNS when not a terminal)
    console.print(title, markup=False, highlight=False)
    console.print(table)
    for i, reason in enumerate(reasons, 1):
        console.print(f"[{i}] {reason or 'no reason recorded'}", markup=False, highlight=False)
    return 0
