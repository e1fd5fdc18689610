"""What the Triton op is told about a weight: a few typed scalars, never a string to parse.

A :class:`TritonFormat` is built by each Triton kernel from the layer's request, passed to the op
``lowbit::triton_linear`` as ``op_args()`` (ints, a code book name and a bool: torch ops take only such scalars)
and rebuilt there with ``TritonFormat(Family(family), group, code, dynamic)``. ``label`` writes it as the tuner's
cache has always keyed it (``int4/128``, ``nf4/64``, ``int8``, ``fp8``, ``fp8dyn``): the only place that text is made.
"""

from __future__ import annotations

import dataclasses
import enum


class Family(enum.IntEnum):
    """How the kernels decode a weight; the value is the kernels' ``FMT`` constexpr."""

    INT4 = 0  # 4-bit codes, scale (and integer or float zero) per group; symmetric codes stored + 8
    CODEBOOK = 1  # 4-bit indices into a 16-value code book (nf4, fp4), absmax per block
    INT8 = 2  # int8 symmetric codes, scale per output channel
    FP8 = 3  # e4m3 codes, scale per output channel


@dataclasses.dataclass(frozen=True)
class TritonFormat:
    family: Family
    group: int = 0  # inputs per scale; 0: one scale per output channel
    code: str = ""  # CODEBOOK: the code book's name (lowbit.qtypes.CODE_BOOKS)
    dynamic: bool = False  # FP8: activations quantized to e4m3 per row at run time (W8A8)

    @property
    def four_bit(self) -> bool:
        return self.family in (Family.INT4, Family.CODEBOOK)

    @property
    def label(self) -> str:
        """The short name of the tuner's keys and the kernel's reason."""
        if self.family is Family.INT4:
            return f"int4/{self.group}"
        if self.family is Family.CODEBOOK:
            return f"{self.code}/{self.group}"
        if self.family is Family.INT8:
            return "int8"
        return "fp8dyn" if self.dynamic else "fp8"

    def op_args(self) -> tuple[int, int, str, bool]:
        return int(self.family), self.group, self.code, self.dynamic
