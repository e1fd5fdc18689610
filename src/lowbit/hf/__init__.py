"""lowbit inside transformers: ``AutoModel*.from_pretrained`` loads lowbit folders and quantizes with
``HfQuantConfig``, through lowbit's shells, quantizers and kernels (ARCHITECTURE.md §7).

``import lowbit`` only installs an import hook (``hook.install``): the ``lowbit`` quantization config and
quantizer are registered with transformers when ``transformers.quantizers.auto`` is first imported (at once if
it already is), so ``import lowbit`` does not pay for importing transformers' quantizers.
"""

from lowbit.hf.hook import install

__all__ = ["install"]
