"""Methods: each module holds one config + Quantizer and registers itself on import."""

from lowbit.methods import rtn  # noqa: F401  (registers rtn, int8, int4)
from lowbit.methods import hqq  # noqa: F401
