"""Register lowbit with transformers when transformers' quantizer table is imported, not before.

Importing ``transformers.quantizers.auto`` costs about as much as importing lowbit itself, so ``import lowbit``
puts a finder at the front of ``sys.meta_path`` that wraps that one module's loader: once the module has run,
``register.register()`` adds lowbit's config and quantizer to its tables. If the module is already imported,
registration happens at once. Both paths run ``register()`` at most once per process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

TARGET = "transformers.quantizers.auto"


def _register() -> None:
    from lowbit.hf.register import register

    register()


class _Loader(importlib.abc.Loader):
    """The module's own loader, then ``register()``."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Register now if transformers' quantizer table is loaded, else when it is (idempotent)."""
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
