"""Triton kernels for CUDA layers: int4 (both zero kinds and symmetric), nf4/fp4, int8, fp8 (weight-only, W8A8).

Importing this package never imports triton: the kernels below decline (with the reason) where triton or
CUDA is missing, and the op module that needs triton loads on the first CUDA layer.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from lowbit.formats import CodebookFormat, Fp8Format, IntFormat, pack_bits, unpack_bits
from lowbit.formats.codebook import HIGH_FIRST, pack_nibbles, unpack_nibbles
from lowbit.kernels.base import Kernel
from lowbit.kernels.triton.layout import ROWS, codes_from_words, nibble_words

_HALF = (torch.bfloat16, torch.float16)
FP8_CAPABILITY = (8, 9)


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=1)
def _ops():
    from lowbit.kernels.triton import ops  # registers lowbit::triton_linear (and imports triton on first launch)

    return ops


def by_columns(t: torch.Tensor) -> torch.Tensor:
    """[N, groups] stored column-major (the N rows of one group side by side): a kernel's load of one group for
    a block of rows is contiguous. Still indexed [row, group], so row slices (fused projections) stay views."""
    return t.t().contiguous().t() if t.dim() == 2 else t.contiguous()


class TritonKernel(Kernel):
    """Shared checks and the call; subclasses say which formats they take and how they lay them out."""

    priority = 20

    def op_key(self, fmt) -> str:
        raise NotImplementedError

    def unsupported(self, fmt, device: torch.device) -> str | None:
        return None

    def can_implement(self, fmt, device, shape, compute_dtype):
        if device.type != "cuda":
            return False, f"device is {device.type}, this kernel runs on cuda"
        if not triton_available():
            return False, "triton is not installed; pip install triton"
        if compute_dtype not in _HALF:
            return False, f"compute dtype {compute_dtype} is not bf16/fp16"
        n, k = shape
        if k % 128:
            return False, f"K={k} is not a multiple of 128"
        why = self.unsupported(fmt, device)
        if why:
            return False, why
        from lowbit.kernels.triton import tune

        return True, f"triton {self.op_key(fmt)}: {tune.describe(self.op_key(fmt), compute_dtype, k, n)}"

    def prepare(self, tensors, fmt, compute_dtype):
        _ops()  # the op exists before the first forward (which torch.compile may trace)
        return self.layout(tensors, fmt)

    def layout(self, tensors, fmt) -> dict[str, torch.Tensor]:
        """The kernel-private tensors (non-persistent, never saved)."""
        return {}

    def tensors(self, tensors, prepared):
        """(w, s, z) as the op takes them."""
        raise NotImplementedError

    def run(self, x, tensors, prepared, fmt, bias):
        w, s, z = self.tensors(tensors, prepared)
        return torch.ops.lowbit.triton_linear(x, w, s, z, bias, self.op_key(fmt))


class TritonInt4Kernel(TritonKernel):
    name = "triton_int4"
    rebuilds_canonical = True
    row_block = ROWS

    def handles(self, fmt):
        return isinstance(fmt, IntFormat) and fmt.bits == 4

    def op_key(self, fmt):
        return f"int4/{fmt.group_size or 0}"

    def unsupported(self, fmt, device):
        if getattr(fmt, "g_idx", False):
            return "needs groups of consecutive inputs, not a g_idx"
        if fmt.group_size is not None and fmt.group_size % 16:
            return f"group size {fmt.group_size} is not a multiple of 16"
        return None

    def layout(self, tensors, fmt):
        codes = unpack_bits(tensors["qweight"], 4)
        if fmt.symmetric:
            codes ^= 8  # signed c (two's complement nibble) → c + 8
        out = {"w": nibble_words(codes), "s": by_columns(tensors["scales"])}
        if "zeros" in tensors:
            out["z"] = by_columns(tensors["zeros"])
        return out

    def dropped_names(self, fmt):
        return ("qweight", "scales", "zeros")

    def canonical_from_prepared(self, prepared, fmt, shape):
        codes = codes_from_words(prepared["w"], *shape)
        if fmt.symmetric:
            codes ^= 8
        out = {"qweight": pack_bits(codes, 4), "scales": prepared["s"].contiguous()}
        if "z" in prepared:
            out["zeros"] = prepared["z"].contiguous()
        return out

    def tensors(self, tensors, prepared):
        return prepared["w"], prepared["s"], prepared.get("z")


class TritonCodebookKernel(TritonKernel):
    name = "triton_nf4"
    rebuilds_canonical = True
    row_block = ROWS

    def handles(self, fmt):
        return isinstance(fmt, CodebookFormat)

    def op_key(self, fmt):
        return f"{fmt.code}/{fmt.block_size}"

    def unsupported(self, fmt, device):
        if fmt.block_size % 16:
            return f"block size {fmt.block_size} is not a multiple of 16"
        return None

    def layout(self, tensors, fmt):
        # fp32 absmax (double quantization decoded once), column-major like the int4 scales
        return {"w": nibble_words(unpack_nibbles(tensors["qweight"], HIGH_FIRST[fmt.code])),
                "absmax": by_columns(fmt.absmax(tensors))}

    def dropped_names(self, fmt):
        return ("qweight",) if fmt.double_quant else ("qweight", "absmax")  # 8-bit absmax codes are kept

    def canonical_from_prepared(self, prepared, fmt, shape):
        out = {"qweight": pack_nibbles(codes_from_words(prepared["w"], *shape), HIGH_FIRST[fmt.code])}
        if not fmt.double_quant:
            out["absmax"] = prepared["absmax"].contiguous()
        return out

    def tensors(self, tensors, prepared):
        return prepared["w"], prepared["absmax"], None


class TritonInt8Kernel(TritonKernel):
    name = "triton_int8"

    def handles(self, fmt):
        return isinstance(fmt, IntFormat) and fmt.bits == 8

    def op_key(self, fmt):
        return "int8"

    def unsupported(self, fmt, device):
        if fmt.group_size is not None or not fmt.symmetric:
            return f"needs int8 symmetric per-channel, got {fmt.describe()}"
        return None

    def tensors(self, tensors, prepared):
        return tensors["qweight"], tensors["scales"], None


class TritonFp8Kernel(TritonKernel):
    name = "triton_fp8"

    def handles(self, fmt):
        return isinstance(fmt, Fp8Format)

    def op_key(self, fmt):
        return "fp8dyn" if fmt.activations == "dynamic" else "fp8"

    def unsupported(self, fmt, device):
        if fmt.block_size is not None:
            return f"block-scaled fp8 ({fmt.describe()}) is not supported; per-channel scales only"
        cap = torch.cuda.get_device_capability(device)
        if cap < FP8_CAPABILITY:
            return (f"compute capability {cap[0]}.{cap[1]} has no fp8 instructions (needs "
                    f"{FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]}+)")
        return None

    def tensors(self, tensors, prepared):
        return tensors["qweight"], tensors["scales"], None


TRITON_KERNELS = (TritonInt4Kernel(), TritonCodebookKernel(), TritonInt8Kernel(), TritonFp8Kernel())
