"""``lowbit export SRC OUT [--format compressed-tensors|gptq|awq|bnb|gguf]``: a lowbit model in another tool's
layout."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("src", help="a lowbit-quantized folder")
    p.add_argument("out", help="the folder to write (a .gguf file for --format gguf)")
    p.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors", "gptq", "awq", "bnb",
                                                                      "gguf"],
                   help="compressed-tensors (default; what vLLM serves), gptq (symmetric integer models), awq "
                        "(4-bit grouped), bnb (nf4 with blocks of 64, as bitsandbytes 4-bit) or gguf (int4/int8 g32 "
                        "Llama models; OUT is a .gguf file)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def run(args) -> int:
    import lowbit

    out = lowbit.export(args.src, args.out, format=args.format, overwrite=args.overwrite)
    print(f"wrote {out} ({args.format})")
    return 0
