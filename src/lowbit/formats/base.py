"""The interface every storage format implements, and the table of formats by kind.

A format is a frozen dataclass (``IntFormat``, ``CodebookFormat``, ``MxFormat``, ``Fp8Format``, ...) that says
exactly which tensors a quantized [N, K] weight stores, how a weight encodes into them (:meth:`WeightFormat.encode`),
how they decode, and how many bits they cost. Subclasses register themselves with ``kind=...``;
:func:`format_from_key` rebuilds one from its :meth:`WeightFormat.key`, which is how the one reference op learns
which format it is running.

Encoding works through blocks of rows (about :data:`CHUNK_ELEMENTS` weights each) so that float32 temporaries stay
at a few MB whatever the layer's size: quantizing on load then needs little more than the packed result and the
tensor being read. Subclasses implement :meth:`WeightFormat.encode_rows` for one block of rows.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import ClassVar

import torch
import torch.nn.functional as F

from lowbit.errors import FormatError

_FORMATS: dict[str, type[WeightFormat]] = {}
CHUNK_ELEMENTS = 1 << 21  # rows are encoded in blocks of about this many weights


class WeightFormat:
    """Base of the format dataclasses. Subclasses implement ``expected_tensors``, ``encode_rows``, ``decode`` and
    ``describe``; ``reference_linear`` is the pure-torch layer every fast kernel is tested against."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, kind: str = "", **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if kind:
            cls.kind = kind
            _FORMATS[kind] = cls

    def expected_tensors(self, n: int, k: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Name → (shape, dtype) of every tensor stored for an [n, k] weight, in storage order."""
        raise NotImplementedError

    def tensor_names(self) -> list[str]:
        # the names never depend on the shape; any valid shape lists them
        return list(self.expected_tensors(256, 256))

    # ---- encoding ---------------------------------------------------------------------------------------------
    def encode(self, w: torch.Tensor, **grid: torch.Tensor) -> dict[str, torch.Tensor]:
        """``w`` [N, K] → the stored tensors, a block of rows at a time.

        ``grid``: per-row tensors a method chose itself (an integer format's ``scales`` and ``zeros`` [N, G]); they
        are split into the same blocks of rows as ``w``. Without them each format chooses its round-to-nearest grid.
        """
        n, k = w.shape
        self.check_inputs(k)
        rows = self.block_rows(k)
        parts = [self.encode_rows(w[r:r + rows], **{name: t[r:r + rows] for name, t in grid.items()})
                 for r in range(0, n, rows)]
        out = parts[0] if len(parts) == 1 else {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        return self.encode_whole(out, w)

    def block_rows(self, k: int) -> int:
        """Rows per block of :meth:`encode`: about CHUNK_ELEMENTS weights, a multiple of ``row_multiple``."""
        m = self.row_multiple
        return max(1, CHUNK_ELEMENTS // (k * m)) * m

    @property
    def row_multiple(self) -> int:
        """Blocks of rows are multiples of this (formats whose scales span several rows)."""
        return 1

    def encode_rows(self, w: torch.Tensor, **grid: torch.Tensor) -> dict[str, torch.Tensor]:
        """One block of rows [n, K] → its stored tensors (row-wise tensors only; see :meth:`encode_whole`)."""
        raise NotImplementedError

    def encode_whole(self, tensors: dict[str, torch.Tensor], w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoded blocks, concatenated → the stored tensors (formats with tensors that span every row
        override it: double-quantized statistics, a g_idx)."""
        return tensors

    def check_inputs(self, k: int) -> None:
        """Raise FormatError if a weight with ``k`` inputs cannot be stored in this format."""

    def check(self, tensors: dict[str, torch.Tensor], own: bool = True) -> None:
        """Raise FormatError if a stored value is outside what the format allows (a zero-point off the grid, a
        scale that is not finite, a code the format never writes), whatever wrote it; ``own``: the tensors claim to
        come from lowbit's own encoders, which also means positive scales (imported layouts may store negative
        ones). Loading calls it once per pre-quantized layer, so it must stay cheap: a few reductions, no decode."""

    # ---- decoding ---------------------------------------------------------------------------------------------
    def decode(self, tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Stored tensors → the [N, K] weight they represent, in ``dtype``."""
        raise NotImplementedError

    def reference_linear(self, x: torch.Tensor, tensors: dict[str, torch.Tensor],
                         bias: torch.Tensor | None) -> torch.Tensor:
        """``x @ W.T + bias`` in pure torch, in x's dtype (formats with run-time activation scaling override it)."""
        return F.linear(x, self.decode(tensors, x.dtype), None if bias is None else bias.to(x.dtype))

    def describe(self) -> str:
        raise NotImplementedError

    def bits_per_weight(self, n: int, k: int) -> float:
        """Every stored bit (codes, scales, zeros, second-level scales) over the n * k weights."""
        total = sum(torch.Size(s).numel() * d.itemsize for s, d in self.expected_tensors(n, k).values())
        return total * 8 / (n * k)

    def key(self) -> str:
        """A string that :func:`format_from_key` turns back into this format (torch ops take strings).

        Field values that are not JSON (a torch dtype, a code book) are written as their names; each format's
        constructor accepts those names back."""
        fields = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return json.dumps({"kind": self.kind, **fields}, sort_keys=True)


def _plain(value):
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@functools.lru_cache(maxsize=256)
def format_from_key(key: str) -> WeightFormat:
    try:
        fields = json.loads(key)
        return _FORMATS[fields.pop("kind")](**fields)
    except FormatError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise FormatError(f"format key {key!r} is not one WeightFormat.key() writes; expected a JSON object with a "
                          f"kind among {format_kinds()} and its fields; build keys with fmt.key()") from None


def check_scales(name: str, scales: torch.Tensor, positive: bool = True) -> None:
    """``scales`` all finite, non-zero (positive with ``positive``) and of a magnitude below their dtype's largest
    value (which marks a saturated cast)."""
    if not scales.numel():
        return
    lo, hi = torch.aminmax(scales.float())
    smallest = float(scales.float().abs().amin())
    top = torch.finfo(scales.dtype).max
    ok = bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)) and -top < float(lo) and float(hi) < top
    if not (ok and smallest > 0 and (float(lo) > 0 or not positive)):
        sign = "positive" if positive else "non-zero"
        raise FormatError(f"{name} holds scales from {float(lo):g} to {float(hi):g}; expected finite {sign} values of "
                          f"magnitude below {scales.dtype}'s largest {top:g}; the checkpoint is damaged: re-quantize it")


def check_range(name: str, values: torch.Tensor, lo: float, hi: float, what: str) -> None:
    """``values`` all within [lo, hi] (and finite)."""
    if not values.numel():
        return
    vmin, vmax = (float(v) for v in torch.aminmax(values))
    if not (lo <= vmin and vmax <= hi):  # NaN fails both comparisons
        raise FormatError(f"{name} holds {what} from {vmin:g} to {vmax:g}; expected {lo:g}..{hi:g}; "
                          "the checkpoint is damaged: re-quantize it")


def format_kinds() -> list[str]:
    return sorted(_FORMATS)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize
