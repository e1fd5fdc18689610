"""``lowbit eval PATH --text FILE``: perplexity over non-overlapping windows of a text file."""

from __future__ import annotations

import dataclasses
import json

from lowbit.errors import ConfigError


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
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(result)
    return 0
