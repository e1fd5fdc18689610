"""Tokenizers beside a model folder (optional: a model without one still loads)."""

from __future__ import annotations

from pathlib import Path

import warnings

from lowbit.errors import CheckpointError, MissingTokenizerWarning

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.txt",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001  (tokenizers raises its own types for malformed files)
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"{str(path)!r} has no usable tokenizer ({reason!r}); expected tokenizer.json "
                              "or tokenizer_config.json beside the model; copy the tokenizer files there") from None


def warn_if_no_tokenizer(folder: Path, stacklevel: int = 3) -> None:
    """One warning when ``folder`` holds none of the tokenizer files: the model still loads."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        warnings.warn(f"{folder} has no tokenizer files (expected e.g. tokenizer.json or tokenizer_config.json): the "
                      "model loads, but turning text into ids needs a tokenizer; copy its files from the original "
                      "checkpoint", MissingTokenizerWarning, stacklevel=stacklevel)
