"""Triton kernels for CUDA layers: int4 (both zero kinds and symmetric), nf4/fp4, int8, fp8 (weight-only, W8A8).

One kernel a module (``int4``, ``codebook``, ``int8``, ``fp8``) on the shared base in ``kernel.py``; the op and
its launcher are in ``ops.py``, the JIT code in ``kernels.py``, the launch configurations in ``tune.py``.
Importing this package never imports triton.
"""

from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.env import interpreting, triton_available
from lowbit.kernels.triton.kernel import TritonKernel, by_columns
from lowbit.kernels.triton.int4 import TritonInt4Kernel  # noqa: I001  (registration order)
from lowbit.kernels.triton.codebook import TritonCodebookKernel
from lowbit.kernels.triton.int8 import TritonInt8Kernel
from lowbit.kernels.triton.fp8 import TritonFp8Kernel

__all__ = ["Family", "TritonCodebookKernel", "TritonFormat", "TritonFp8Kernel", "TritonInt4Kernel",
           "TritonInt8Kernel", "TritonKernel", "by_columns", "interpreting", "triton_available"]
