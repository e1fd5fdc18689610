"""CPU kernels: torch's built-ins ``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu`` (fast with bf16
activations on CPUs with AVX512-BF16/AMX, slow with fp32 ones), lowbit's own AVX2/AVX-512 GEMVs with fp32
activations (``gemv.c``) and on int8-rounded activations (``dot8.c``, as llama.cpp), built on first use, and
``cpu_dense``; ``tune`` chooses among them by measurement.
"""

from lowbit.kernels.cpu.features import cpu_has_bf16
from lowbit.kernels.cpu.int8 import CpuInt8Kernel
from lowbit.kernels.cpu.int4 import CpuInt4Kernel, unpack_int4pack_cpu  # noqa: I001  (registration order)
from lowbit.kernels.cpu.gemv import CpuGemv4Kernel, CpuGemv4RoundedKernel, CpuGemv8Kernel
from lowbit.kernels.cpu.dot import CpuDot4Kernel, CpuDot8Kernel
from lowbit.kernels.cpu.dense import CpuDenseKernel

__all__ = ["CpuDenseKernel", "CpuDot4Kernel", "CpuDot8Kernel", "CpuGemv4Kernel", "CpuGemv4RoundedKernel",
           "CpuGemv8Kernel", "CpuInt4Kernel", "CpuInt8Kernel", "cpu_has_bf16", "unpack_int4pack_cpu"]
