"""Perplexity over non-overlapping windows.

Token accounting, chosen because it reproduces the reference numbers of REALMODELS.md (wiki.eval.txt,
``max_tokens=8192, ctx=512``, fp32: Gemma-3-270M 25.72 with BOS per window, 62.5 with BOS on the first window
only; SmolLM2-135M 24.15):

* The text is tokenized once without special tokens. If the tokenizer adds a BOS token on its own
  (``tokenizer("a")`` starts with ``bos_token_id``: Gemma's does, SmolLM2's does not) the token stream is
  ``[BOS] + text ids``, as the tokenizer itself would encode the text; otherwise it is the text ids. The stream
  is cut to its first ``max_tokens`` ids, so for a BOS tokenizer the leading BOS is one of them.
* The stream is split into consecutive chunks of ``ctx`` ids; the last chunk may be shorter. With BOS every
  chunk after the first gets BOS put in front (the first chunk already starts with it), so such a window is
  ``ctx + 1`` ids long. So: window 0 = BOS + ``ctx - 1`` text tokens, later windows = BOS + ``ctx`` text tokens.
* Scored: every text token of a window except the window's first one, i.e. each scored token has at least one
  text token of context; the BOS is context only and the token predicted from BOS alone is not scored (it
  costs ~12.6 nats on Gemma and would give 26.26 instead of 25.72). Without BOS this is the usual
  ``ctx - 1`` predictions per window.
* ``max_tokens=8192, ctx=512``: 16 windows; BOS: 8191 text tokens, 510 + 15 * 511 = 8175 scored;
  no BOS: 8192 text tokens, 16 * 511 = 8176 scored.
* ``ppl = exp(total NLL / scored tokens)``; ``nll`` is that mean, in nats per scored token.

(Measured alternatives on Gemma: windows of BOS + 511 text tokens with every text token scored, 26.18; BOS +
512 text tokens, 26.15; BOS on the first window only, 62.48.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lowbit.data.text import adds_bos, encode, load_text
from lowbit.errors import ConfigError

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


def _check_fits(model: Any, ids: list[int], prefix: list[int], ctx: int, longest: int) -> None:
    """Windows within the model's positions and token ids within its vocabulary, else one line (not an index error
    deep inside the model)."""
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and longest > positions:
        raise ConfigError(f"ctx={ctx} gives windows of {longest} tokens, beyond the model's "
                          f"max_position_embeddings={positions}; expected ctx <= {positions - len(prefix)}; pass a smaller ctx")
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(table, "num_embeddings", None)
    top = max([*ids, *prefix], default=-1)
    if isinstance(vocab, int) and top >= vocab:
        raise ConfigError(f"the tokenizer gives token id {top}, beyond the model's vocabulary of {vocab}; expected "
                          "the tokenizer saved with this model; use the model's own tokenizer files")


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
    ids = encode(tokenizer, text)
    bos = adds_bos(tokenizer)
    prefix = [int(tokenizer.bos_token_id)] if bos else []
    n_text = len(ids) if max_tokens is None else min(len(ids), max_tokens - len(prefix))
    # text-token spans of the windows: the stream is prefix + ids, chunked every ctx ids
    edges = list(range(0, n_text, ctx)) if not bos else [0, *range(ctx - 1, n_text, ctx)]
    spans = [(a, min(b, n_text)) for a, b in zip(edges, [*edges[1:], n_text])]
    spans = [(a, b) for a, b in spans if b - a >= 2]  # a window needs two text tokens to score one
    if not spans:
        raise ConfigError(f"the text gives {n_text} text tokens (max_tokens={max_tokens}), too few to score "
                          "any; expected at least 2 in a window; pass a longer text or a larger max_tokens")
    _check_fits(model, ids[:n_text], prefix, ctx, max(b - a for a, b in spans) + len(prefix))
    device = _device(model)
    p = len(prefix)
    iterator = spans
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(spans, desc="perplexity", unit="window")
    total_nll = 0.0
    total_tokens = 0
    was_training = bool(getattr(model, "training", False))
    if was_training:
        model.eval()  # no dropout while scoring; restored below
    try:
        with torch.inference_mode():
            for a, b in iterator:
                window = torch.tensor([prefix + ids[a:b]], dtype=torch.long, device=device)
                logits = model(input_ids=window).logits
                # positions p .. end-2 predict the window's text tokens 1 .. end (its first one is context only)
                nll = torch.nn.functional.cross_entropy(logits[0, p:-1].float(), window[0, p + 1:],
                                                        reduction="sum")
                total_nll += float(nll)
                total_tokens += b - a - 1
    finally:
        if was_training:
            model.train()
    mean = total_nll / total_tokens
    return PerplexityResult(ppl=math.exp(mean), nll=mean, tokens=total_tokens, windows=len(spans),
                            bos_per_window=bos, ctx=ctx)
