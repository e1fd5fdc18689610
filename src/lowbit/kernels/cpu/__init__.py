"""CPU kernels on torch's built-ins: ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu``.

Both are fast at small M (decode) with bf16/fp16 activations; with fp32 activations they are far slower
than a plain fp32 matmul on the same CPU (see benchmarks/cpu_linear.py), which is why the default compute
dtype on CPUs with bf16 units is bf16 (``features.cpu_has_bf16``).
"""

from lowbit.kernels.cpu.features import cpu_has_bf16
from lowbit.kernels.cpu.int8 import CpuInt8Kernel
from lowbit.kernels.cpu.int4 import CpuInt4Kernel, unpack_int4pack_cpu  # noqa: I001  (registration order)

__all__ = ["CpuInt4Kernel", "CpuInt8Kernel", "cpu_has_bf16", "unpack_int4pack_cpu"]
