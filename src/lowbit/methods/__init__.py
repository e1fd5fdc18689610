"""Methods: each module holds one config + Quantizer and registers itself on import."""

from lowbit.methods import fp8, hqq, mxfp4, nf4, rtn  # noqa: F401  (each registers its methods and aliases)
