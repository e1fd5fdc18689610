"""Methods: each module holds one config + Quantizer and registers itself on import.

Every module of this package is imported here (found with ``pkgutil``), so a new method is one new module that
calls ``register_method``; no list to edit. The package is also callable: ``lowbit.methods()`` lists the
registered names, while ``import lowbit.methods.hqq`` still reaches the modules.
"""

import importlib
import pkgutil
import sys
import types

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_module}")  # each registers its methods and aliases


class _MethodsPackage(types.ModuleType):
    def __call__(self) -> list[str]:
        """The registered method names and aliases, sorted."""
        from lowbit.registry import names

        return names()


sys.modules[__name__].__class__ = _MethodsPackage

from lowbit.registry import load_plugins  # noqa: E402

load_plugins()  # third-party methods and kernels: the ``lowbit.methods`` entry-point group
