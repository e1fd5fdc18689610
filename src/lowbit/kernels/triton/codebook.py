"""``triton_codebook``: 4-bit indices into a 16-value code book (nf4, fp4) with an absmax per block.

Formerly ``triton_nf4``; that name still selects it (with a FutureWarning).
"""

from __future__ import annotations

from lowbit.formats.codebook import pack_nibbles, unpack_nibbles
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.kernel import TritonKernel, by_columns
from lowbit.kernels.triton.layout import ROWS, codes_from_words, nibble_words
from lowbit.qtypes import code_book


class TritonCodebookKernel(TritonKernel):
    name = "triton_codebook"
    aliases = ("triton_nf4",)
    rebuilds_canonical = True
    row_block = ROWS

    def handles(self, request):
        return request.kind == "codebook"

    def triton_format(self, request):
        return TritonFormat(Family.CODEBOOK, request.group_size, code=request.codebook)

    def unsupported(self, request):
        if request.group_size % 16:
            return f"block size {request.group_size} is not a multiple of 16"
        return None

    def layout(self, tensors, request):
        # fp32 absmax (double quantization decoded once), column-major like the int4 scales
        return {"w": nibble_words(unpack_nibbles(tensors["qweight"], code_book(request.codebook).high_first)),
                "absmax": by_columns(request.fmt.absmax(tensors))}

    def dropped_names(self, request):
        return ("qweight",) if request.double_quant else ("qweight", "absmax")  # 8-bit absmax codes are kept

    def canonical_from_prepared(self, prepared, request):
        codes = codes_from_words(prepared["w"], request.n, request.k)
        out = {"qweight": pack_nibbles(codes, code_book(request.codebook).high_first)}
        if not request.double_quant:
            out["absmax"] = prepared["absmax"].contiguous()
        return out

    def tensors(self, tensors, prepared):
        return prepared["w"], prepared["absmax"], None
