"""Tokenizers beside a model folder (optional: a model without one still loads)."""

from __future__ import annotations

from pathlib import Path

from lowbit.errors import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.txt",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} has no usable tokenizer ({str(e).splitlines()[0][:120]}); expected tokenizer.json "
                              "or tokenizer_config.json beside the model; copy the tokenizer files there") from None
