"""``lowbit methods``: the methods and aliases with their defaults (from ``catalogue`` unless plugins are installed)."""

from __future__ import annotations

import dataclasses

from lowbit.commands import catalogue

_NOT_DEFAULTS = {"modules_to_not_convert", "quantize_embeddings", "quantize_lm_head", "strict", "kernel"}


def add_arguments(p) -> None:
    pass


def _defaults(cfg) -> str:
    parts = []
    for f in dataclasses.fields(cfg):
        if f.name not in _NOT_DEFAULTS:
            value = getattr(cfg, f.name)
            parts.append(f"{f.name}={getattr(value, 'value', value)}")
    return ", ".join(parts)


def registry_rows() -> list[tuple[str, str, str]]:
    """The rows as the registry gives them (imports every method): methods, then aliases, each sorted."""
    from lowbit import registry

    rows = [(name, m.summary, _defaults(m.config_cls())) for name, m in sorted(registry.methods_table().items())]
    rows += [(name, f"{a.method} preset: {a.summary}", _defaults(registry.build_config(name)))
             for name, a in sorted(registry.aliases().items())]
    return rows


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lowbit methods")
    for col in ("name", "is", "defaults"):
        table.add_column(col)
    for row in registry_rows() if catalogue.plugins_installed() else catalogue.ROWS:
        table.add_row(*row)
    Console().print(table)
    return 0
