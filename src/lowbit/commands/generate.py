"""``lowbit generate MODEL --prompt TEXT``: greedy continuation of a prompt, with the time to the first token and the
decode speed printed apart (the first call also builds lowbit's CPU kernels and measures the kernel choice)."""

from __future__ import annotations

from lowbit.commands.method_args import add_method_args


def add_arguments(g) -> None:
    g.add_argument("model", help="a Hugging Face folder (fp32/bf16, or one lowbit saved)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-fuse", dest="fuse", action="store_false", help="keep q/k/v and gate/up as separate layers")
    g.add_argument("--dynamic-cache", dest="static_cache", action="store_false",
                   help="transformers' growing KV cache instead of the preallocated static one")
    g.add_argument("--compile", action="store_true", help="torch.compile each block (the first token includes it)")
    g.add_argument("--engine", choices=("auto", "transformers"), default="auto",
                   help="auto: on the CPU lowbit's C decode step where the model allows, else transformers' generate")
    g.add_argument("--json", default=None, help="also write the timings to this JSON file")
    add_method_args(g, required=False)  # quantize on load; a lowbit folder needs none


def run(args) -> int:
    import json

    from lowbit.commands.method_args import config_from_args
    from lowbit.textgen import generate

    cfg = config_from_args(args) if args.method else None
    result = generate(args.model, args.prompt, max_new_tokens=args.max_new_tokens, quantization=cfg,
                      device=args.device, threads=args.threads, fuse=args.fuse,
                      static_cache=args.static_cache, compile=args.compile, engine=args.engine)
    print(result.text)
    print(f"load {result.load_s:.1f} s (quantizing and the CPU kernel choice included) | first token {result.first_token_s:.2f} s (prompt of {result.prompt_tokens} "
          f"tokens and first-call set-up) | decode {result.decode_tok_s:.1f} tok/s over "
          f"{result.new_tokens - 1} tokens | {result.threads} thread(s) | {result.engine}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_dict(), f, indent=1)
    return 0
