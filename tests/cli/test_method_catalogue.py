"""The static method table that ``lowbit methods`` prints without importing torch equals what the registry says."""

from __future__ import annotations

import lowbit
from lowbit.commands import catalogue, methods


def test_static_rows_match_the_registry():
    rows = methods.registry_rows()
    paste = "\n".join(f"    {row!r}," for row in rows)
    assert list(catalogue.ROWS) == rows, (
        "src/lowbit/commands/catalogue.py ROWS is out of date with the registry; replace its rows by:\n" + paste)
    assert list(catalogue.BUILTIN_NAMES) == lowbit.methods()


def test_unknown_method_hint():
    message = catalogue.unknown_method("in4", list(catalogue.BUILTIN_NAMES))
    assert "'in4'" in message and "did you mean 'int4'" in message and "smoothquant" in message
    assert "did you mean" not in catalogue.unknown_method("zzzzzz", list(catalogue.BUILTIN_NAMES))
