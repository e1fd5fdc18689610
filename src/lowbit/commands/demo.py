"""``lowbit demo``: a real model quantized to int8 and int4, with size, quality and speed (``lowbit.demo``)."""

from __future__ import annotations


def add_arguments(d) -> None:
    d.add_argument("--model", choices=["gemma-3-270m", "minilm"], default=None)
    d.add_argument("--max-tokens", type=int, default=2048, help="tokens of the bundled text to score")
    d.add_argument("--gen-tokens", type=int, default=32)


def run(args) -> int:
    from lowbit.demo import run_demo

    return run_demo(args.model, max_tokens=args.max_tokens, gen_tokens=args.gen_tokens)
