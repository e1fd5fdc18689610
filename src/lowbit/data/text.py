"""Text → token ids, as calibration and evaluation read it: a UTF-8 file, tokenized without special tokens and
without the tokenizer's "longer than model_max_length" warning, and whether the tokenizer adds a BOS of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lowbit.errors import CheckpointError

__all__ = ["adds_bos", "encode", "load_text"]


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file (e.g. wiki.eval.txt) for ``perplexity``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"text file {str(p)!r} does not exist; expected a UTF-8 text file; check the path")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"text file {str(p)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                              "expected UTF-8 text; re-encode it") from None


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"] if not isinstance(encoded, list) else encoded
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):  # batched output
        ids = ids[0]
    return [int(i) for i in ids]


def _quiet(tokenizer: Any) -> dict[str, Any]:
    """``verbose=False`` for HF tokenizers: no "sequence longer than model_max_length" warning for a long text."""
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:
        return {}
    return {"verbose": False} if isinstance(tokenizer, PreTrainedTokenizerBase) else {}


def encode(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids, without special tokens (no BOS, no EOS), as a list of ints."""
    return _ids(tokenizer(text, add_special_tokens=False, **_quiet(tokenizer)))


def adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts ``bos_token_id`` in front of what it encodes (its add_bos behaviour)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = _ids(tokenizer("a"))
    return bool(ids) and ids[0] == bos
