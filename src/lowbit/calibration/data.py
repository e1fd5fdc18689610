"""Calibration text → token samples: ``samples`` windows of ``seq_len`` tokens, picked at random (seeded) among
the text's non-overlapping windows, each starting with BOS when the tokenizer adds one (as when evaluating)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from lowbit.data.text import adds_bos, encode, load_text
from lowbit.errors import CalibrationError, ConfigError
from lowbit.utils import release_freed_memory

DEFAULT_SAMPLES = 128
DEFAULT_SEQ_LEN = 512


def read_calibration_text(path: str | Path) -> str:
    """A UTF-8 text file with some text in it; a missing, empty or non-UTF-8 file is a one-line error."""
    try:
        text = load_text(path)
    except Exception as e:  # load_text's CheckpointError names the file and the fix; say it is the calibration text
        raise CalibrationError(f"calibration {e}") from None
    if not text.strip():
        raise CalibrationError(f"calibration text {str(path)!r} is empty; expected UTF-8 text of at least a few "
                               f"thousand tokens (e.g. wiki.calib.txt); pass another --calib file")
    return text


CHUNK_CHARS = 1 << 16


def _tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """The text's ids, tokenized in pieces of about CHUNK_CHARS cut after a newline: a tokenizer's working memory
    for a whole book-sized text (offsets, encodings) is hundreds of MB, and the process keeps much of it."""
    parts, start = [], 0
    while start < len(text):
        stop = text.find("\n", start + CHUNK_CHARS)
        stop = len(text) if stop < 0 else stop + 1
        ids = encode(tokenizer, text[start:stop])
        parts.append(torch.tensor(ids, dtype=torch.long))
        start = stop
    release_freed_memory()
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def calibration_samples(tokenizer: Any, text: str, samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                        seed: int = 0) -> torch.Tensor:
    """[samples, seq_len] token ids: a seeded random choice of the text's non-overlapping windows.

    Fewer windows than ``samples`` uses them all, with a warning; less text than one window is an error
    that says how many tokens one sample needs.
    """
    for name, value, least, example in (("samples", samples, 1, DEFAULT_SAMPLES), ("seq_len", seq_len, 2, 512)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}={value!r} is invalid; expected an int >= {least}; pass e.g. {name}={example}")
    if not text.strip():
        raise CalibrationError("the calibration text is empty; expected UTF-8 text (e.g. wiki.calib.txt)")
    bos = [int(tokenizer.bos_token_id)] if adds_bos(tokenizer) else []
    per = seq_len - len(bos)
    ids = _tokenize(tokenizer, text)
    windows = len(ids) // per
    if windows == 0:
        raise CalibrationError(f"the calibration text gives {len(ids)} tokens; one sample of seq_len={seq_len} needs "
                               f"{per}; pass a longer text or a smaller --seq-len")
    if windows < samples:
        warnings.warn(f"the calibration text holds {windows} windows of {seq_len} tokens, fewer than samples={samples}; "
                      f"using {windows}", stacklevel=2)
    pick = torch.randperm(windows, generator=torch.Generator().manual_seed(seed))[:min(samples, windows)]
    rows = ids[: windows * per].reshape(windows, per)[pick.sort().values]
    if bos:
        rows = torch.cat([torch.full((rows.shape[0], 1), bos[0], dtype=torch.long), rows], dim=1)
    return rows
