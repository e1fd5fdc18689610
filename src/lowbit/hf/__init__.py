"""lowbit inside transformers: ``AutoModel*.from_pretrained`` loads lowbit folders and quantizes with
``HfQuantConfig``, through lowbit's shells, quantizers and kernels (ARCHITECTURE.md §7).

``import lowbit`` calls ``install``, which only puts an import hook in place: lowbit's config and quantizer are
registered with transformers (``register.register``) when ``transformers.quantizers.auto`` is first imported, or
at once if it already is, so ``import lowbit`` does not pay for importing transformers' quantizers (about as long
as importing lowbit with torch). The finder wraps that one module's loader: once the module has run, its tables
get lowbit's entries. Both paths register at most once per process.
"""

from __future__ import annotations

import importlib.machinery  # already imported by Python itself; importlib.abc is not, so it is not used
import sys

TARGET = "transformers.quantizers.auto"


def _register() -> None:
    from lowbit.hf.register import register

    register()


class _Loader:
    """The module's own loader, then ``register()``."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        _register()

    def __getattr__(self, name: str):  # get_source, is_package, ...: the module's own loader answers
        return getattr(self.inner, name)


class _Finder:
    """A ``sys.meta_path`` finder for one module: its spec, with the loader wrapped."""

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


__all__ = ["install"]
