"""A Hugging Face byte-level BPE tokenizer (tokenizer.json) as the GGUF vocabulary llama.cpp reads: ``gpt2`` model,
the tokens in id order with their types (added special tokens CONTROL, other added tokens USER_DEFINED, ids the
tokenizer lacks UNUSED), the merges, special token ids and chat template (the ``gguf`` package's ``SpecialVocab``),
and the pre-tokenizer: a plain ``ByteLevel`` one splits with GPT-2's expression, llama.cpp's ``gpt-2``. Another
pre-tokenizer is written as llama.cpp's ``default`` with a warning (its splits may differ from the tokenizer's)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from lowbit.errors import ConfigError


def pre_tokenizer(spec: dict | None) -> str:
    """llama.cpp's pre-tokenizer name for a tokenizer.json ``pre_tokenizer``."""
    if isinstance(spec, dict) and spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    warnings.warn(f"pre-tokenizer {json.dumps(spec)[:80]} has no known llama.cpp name; the GGUF file says 'default', "
                  "whose splits may differ from the tokenizer's", stacklevel=3)
    return "default"


def add_vocab(writer, folder: Path, vocab_size: int) -> bool:
    """Add ``folder``'s tokenizer to ``writer``; False (nothing written) where the folder has no tokenizer.json."""
    import gguf
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model") or {}
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise ConfigError(f"{path}: a {model.get('type')!r} tokenizer with a {decoder!r} decoder; GGUF export writes "
                          "byte-level BPE tokenizers (gpt2 style) only; export as compressed-tensors, or copy the "
                          "vocabulary with llama.cpp's converter")
    ids = dict(model["vocab"])
    kinds = {}
    for added in spec.get("added_tokens", []):
        ids[added["content"]] = added["id"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    by_id = {i: t for t, i in ids.items()}
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [kinds.get(i, gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED) for i in range(size)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer(spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=size)
    special.add_to_gguf(writer)
    if special.add_special_token.get("bos") is None:  # what encoding does, where the tokenizer's config is silent
        probe = Tokenizer.from_file(str(path)).encode("a").ids
        bos = special.special_token_ids.get("bos")
        writer.add_add_bos_token(bool(probe) and bos is not None and probe[0] == bos)
    return True
