"""``lowbit eval PATH --text FILE``: perplexity over non-overlapping windows of a text file."""

from __future__ import annotations

import dataclasses
import json
import math

from lowbit.errors import CheckpointError, ConfigError


def add_arguments(e) -> None:
    e.add_argument("path")
    e.add_argument("--text", required=True, help="UTF-8 text file")
    e.add_argument("--ctx", type=int, default=512)
    e.add_argument("--max-tokens", type=int, default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true")


def run(args) -> int:
    import lowbit
    from lowbit.eval import load_text, perplexity
    from lowbit.loading.tokenizer import load_tokenizer

    text = load_text(args.text)
    model = lowbit.from_pretrained(args.path, device=args.device)
    if not (hasattr(model, "can_generate") and model.can_generate()):
        raise ConfigError(f"{args.path} holds a {type(model).__name__}, which predicts no next token; "
                          "expected a causal language model (…ForCausalLM) for perplexity")
    result = perplexity(model, load_tokenizer(args.path), text, ctx=args.ctx, max_tokens=args.max_tokens, progress=True)
    fields = dataclasses.asdict(result)
    finite = all(math.isfinite(v) for v in fields.values() if isinstance(v, float))
    if args.json:  # strict JSON: a non-finite number is null, never the literal NaN
        print(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in fields.items()},
                         allow_nan=False))
    else:
        print(result)
    if not finite:
        raise CheckpointError(f"{args.path} gives perplexity {result.ppl}; expected a finite value: the model's logits "
                              "hold NaN/Inf; check the weights (lowbit verify, re-quantize from the source)")
    return 0
