"""Methods: each module holds one config + Quantizer and registers itself on import.

The package is also callable: ``lowbit.methods()`` lists the registered names (DESIGN.md §1), while
``import lowbit.methods.hqq`` still reaches the modules.
"""

import sys
import types

from lowbit.methods import awq, fp8, gptq, hqq, mxfp4, nf4, rtn, smoothquant  # noqa: F401  (each registers its methods and aliases)


class _MethodsPackage(types.ModuleType):
    def __call__(self) -> list[str]:
        """The registered method names and aliases, sorted."""
        from lowbit.registry import names

        return names()


sys.modules[__name__].__class__ = _MethodsPackage

from lowbit.registry import load_plugins  # noqa: E402

load_plugins()  # third-party methods and kernels: the ``lowbit.methods`` entry-point group
