"""What ``lowbit quantize`` prints at the end: size before and after, and the largest tensors it kept at full
precision, with the flag that would store each of them smaller (``--quantize-embeddings``, ``--quantize-lm-head``,
or dropping the ``--skip`` that kept it)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

_SHOWN = 3  # largest unquantized tensors listed
_MIN_SHARE = 0.01  # of the output's bytes; smaller ones are not worth a line


@dataclasses.dataclass(frozen=True)
class Kept:
    name: str  # tensor name in the output
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    hint: str  # the flag that would shrink it, or why it stays


def _tensors(folder: Path) -> dict[str, tuple[str, tuple[int, ...], int]]:
    from lowbit.loading.checkpoint import read_header

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        for name, info in read_header(shard).items():
            start, stop = info["data_offsets"]
            out[name] = (info["dtype"], tuple(info["shape"]), stop - start)
    return out


def _hint(module: str, shape: tuple[int, ...], quantizer, user_skip: tuple[str, ...]) -> str:
    from lowbit.archs import name_matches
    from lowbit.nn.quant_embedding import EMBEDDING_FORMAT

    table, head = quantizer.embedding_names
    flag = "--quantize-embeddings" if module == table else "--quantize-lm-head" if module == head else None
    if flag and len(shape) == 2:
        int8 = sum(math.prod(s) * d.itemsize for s, d in EMBEDDING_FORMAT.expected_tensors(*shape).values())
        return f"{flag} stores it as int8: {_size(int8)}"
    skipped = [p for p in user_skip if name_matches(module, p)]
    if skipped:
        return f"kept by --skip {skipped[0]}"
    return ""


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 1e6 else f"{nbytes / 1e3:.1f} kB"


def kept_tensors(out: Path, quantizer, user_skip: tuple[str, ...] = ()) -> tuple[int, list[Kept]]:
    """(bytes of all unquantized tensors, the largest of them) in the written folder ``out``."""
    quantized = set(quantizer.formats)
    kept = []
    for name, (dtype, shape, nbytes) in _tensors(out).items():
        module = name.rpartition(".")[0]
        if module in quantized:
            continue
        kept.append(Kept(name, dtype, shape, nbytes, _hint(module, shape, quantizer, user_skip)))
    kept.sort(key=lambda k: -k.nbytes)
    return sum(k.nbytes for k in kept), kept


def summary_lines(src: Path, out: Path, quantizer, seconds: float, user_skip: tuple[str, ...] = ()) -> list[str]:
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    src_size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    lines = [f"wrote {out}: {size / 1e6:.1f} MB of weights ({src_size / max(size, 1):.2f}x smaller than "
             f"{src_size / 1e6:.1f} MB) in {seconds:.1f} s"]
    total, kept = kept_tensors(out, quantizer, user_skip)
    big = [k for k in kept[:_SHOWN] if k.nbytes >= _MIN_SHARE * size]
    if big:
        lines.append(f"kept unquantized: {_size(total)} ({100 * total / max(size, 1):.0f}% of the output) in "
                     f"{len(kept)} tensors; the largest:")
        width = max(len(k.name) for k in big)
        for k in big:
            shape = "x".join(map(str, k.shape))
            lines.append(f"  {k.name:<{width}}  {k.dtype} {shape}  {_size(k.nbytes)}"
                         + (f"  ({k.hint})" if k.hint else ""))
    return lines
