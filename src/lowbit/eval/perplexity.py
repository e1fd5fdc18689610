"""Perplexity over non-overlapping windows.

Token accounting (what ``perplexity`` does, and what the reference numbers in REALMODELS.md assume):

* The text is tokenized once without special tokens and cut to its first ``max_tokens`` ids ("text tokens").
* If the tokenizer adds a BOS token on its own (``tokenizer("a")`` starts with ``bos_token_id``: Gemma's does,
  SmolLM2's and Llama-style GGUF exports often do not), every window starts with BOS and BOS counts inside the
  window: a window is ``[BOS] + ctx - 1`` text tokens and all ``ctx - 1`` text tokens are predicted (the first
  one from BOS alone). Without BOS a window is ``ctx`` text tokens, of which the last ``ctx - 1`` are predicted.
  Either way every window is exactly ``ctx`` ids long and predicts ``ctx - 1`` tokens.
* Only full windows are scored; a tail shorter than a window is dropped. So ``max_tokens=8192, ctx=512`` gives
  16 windows and 16 * 511 = 8176 scored tokens for a tokenizer without BOS (SmolLM2: 24.15 in fp32) and 16
  windows of BOS + 511 text tokens (8176 text tokens used, 8176 scored) for a BOS tokenizer (Gemma-3-270M).
* ``ppl = exp(total NLL / total predicted tokens)``; ``nll`` is that mean NLL in nats per predicted token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.errors import CheckpointError, ConfigError

__all__ = ["PerplexityResult", "perplexity", "load_text", "adds_bos"]


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood, nats per predicted token (ppl == exp(nll))
    tokens: int  # predicted (scored) tokens
    windows: int
    bos_per_window: bool
    ctx: int

    def __str__(self) -> str:
        bos = "BOS at the start of every window" if self.bos_per_window else "no BOS"
        return (f"perplexity {self.ppl:.2f} over {self.tokens} tokens "
                f"({self.windows} windows of {self.ctx} tokens, {bos})")


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


def adds_bos(tokenizer: Any) -> bool:
    """True when the tokenizer puts ``bos_token_id`` in front of what it encodes (its add_bos behaviour)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = _ids(tokenizer("a"))
    return bool(ids) and ids[0] == bos


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is None:
        device = next(model.parameters()).device
    return device


def perplexity(model: Any, tokenizer: Any, text: str, ctx: int = 512, max_tokens: int | None = None,
               progress: bool = False) -> PerplexityResult:
    """Perplexity of a causal LM on ``text`` (see the module docstring for the exact token accounting).

    ``model(input_ids=...)`` must return an object with ``.logits`` of shape (1, len, vocab); it runs on the
    model's device, one window at a time, under ``torch.inference_mode()``.
    """
    import torch

    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 2:
        raise ConfigError(f"ctx={ctx!r} is not a valid window; expected an int >= 2 (e.g. 512); pass a larger ctx")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise ConfigError(f"max_tokens={max_tokens!r} is invalid; expected a positive int or None; "
                          "pass e.g. max_tokens=8192")
    ids = _ids(tokenizer(text, add_special_tokens=False))
    if max_tokens is not None:
        ids = ids[:max_tokens]
    bos = adds_bos(tokenizer)
    step = ctx - 1 if bos else ctx  # text tokens per window
    n_windows = len(ids) // step
    if n_windows == 0:
        raise ConfigError(f"the text has {len(ids)} tokens (max_tokens={max_tokens}), fewer than one window "
                          f"of {step} text tokens (ctx={ctx}); pass a longer text or a smaller ctx")
    device = _device(model)
    prefix = [tokenizer.bos_token_id] if bos else []
    starts = range(0, n_windows * step, step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="window")
    total_nll = 0.0
    total_tokens = 0
    with torch.inference_mode():
        for start in starts:
            window = torch.tensor([prefix + ids[start:start + step]], dtype=torch.long, device=device)
            logits = model(input_ids=window).logits
            nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), window[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += window.shape[1] - 1
    mean = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total_tokens, windows=n_windows,
                            bos_per_window=bos, ctx=ctx)
