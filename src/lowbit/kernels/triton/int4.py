"""``triton_int4``: 4-bit integer codes with a scale (and an integer or float zero) per group, or per channel."""

from __future__ import annotations

from lowbit.formats import pack_bits, unpack_bits
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.kernel import TritonKernel, by_columns
from lowbit.kernels.triton.layout import ROWS, codes_from_words, nibble_words


class TritonInt4Kernel(TritonKernel):
    name = "triton_int4"
    rebuilds_canonical = True
    row_block = ROWS

    def handles(self, request):
        return request.kind == "int" and request.bits == 4

    def triton_format(self, request):
        return TritonFormat(Family.INT4, request.group_size or 0)

    def unsupported(self, request):
        if request.g_idx:
            return "needs groups of consecutive inputs, not a g_idx"
        if request.group_size is not None and request.group_size % 16:
            return f"group size {request.group_size} is not a multiple of 16"
        return None

    def layout(self, tensors, request):
        codes = unpack_bits(tensors["qweight"], 4)
        if request.symmetric:
            codes ^= 8  # signed c (two's complement nibble) → c + 8
        out = {"w": nibble_words(codes), "s": by_columns(tensors["scales"])}
        if "zeros" in tensors:
            out["z"] = by_columns(tensors["zeros"])
        return out

    def dropped_names(self, request):
        return ("qweight", "scales", "zeros")

    def canonical_from_prepared(self, prepared, request):
        codes = codes_from_words(prepared["w"], request.n, request.k)
        if request.symmetric:
            codes ^= 8
        out = {"qweight": pack_bits(codes, 4), "scales": prepared["s"].contiguous()}
        if "z" in prepared:
            out["zeros"] = prepared["z"].contiguous()
        return out

    def tensors(self, tensors, prepared):
        return prepared["w"], prepared["s"], prepared.get("z")
