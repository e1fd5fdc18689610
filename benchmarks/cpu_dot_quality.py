"""What rounding the activations to int8 (``cpu_dot4``/``cpu_dot8``, as llama.cpp does) costs in perplexity, on the
real models: the same quantized model evaluated with the fp32-activation kernel (``cpu_gemv4``/``cpu_gemv8``) and
with the integer-dot kernel, every row of every window sent through the small-M kernel (their dense switch at M=8
raised), as in decoding one token at a time.

    PYTHONPATH=src python benchmarks/cpu_dot_quality.py [--models smollm2-135m gemma-3-270m] [--max-tokens 2048]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GROUP = {"smollm2-135m": 64, "gemma-3-270m": 128}  # SmolLM2's hidden size 576 is not a multiple of 128
SETTINGS = {"int4": ("int4", "4"), "int4 sym": ("int4", "4"), "int8": ("int8", "8")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--settings", nargs="+", default=["int4", "int8"], choices=list(SETTINGS))
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(HERE))
    import lowbit
    from common import describe_device, print_table, write_results
    from lowbit.data import text_path
    from lowbit.eval.perplexity import perplexity
    from lowbit.kernels.cpu import dot, gemv
    from lowbit.realmodels import model_path

    torch.set_num_threads(args.threads)
    dot.DENSE_MIN_M = gemv.DENSE_MIN_M = 1 << 30  # every row through the small-M kernels, as in decoding
    text = text_path("wiki.eval.txt").read_text()
    rows = []
    for name in args.models:
        path = model_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        for setting in args.settings:
            method, bits = SETTINGS[setting]
            fields = {"compute_dtype": "float32"}
            if method == "int4":
                fields.update(group_size=GROUP[name], symmetric=setting.endswith("sym"))
            for kernel in (f"cpu_gemv{bits}", f"cpu_dot{bits}"):
                os.environ["LOWBIT_KERNEL"] = kernel
                model = lowbit.from_pretrained(path, quantization=lowbit.config(method, **fields)).eval()
                t0 = time.perf_counter()
                result = perplexity(model, tokenizer, text, ctx=512, max_tokens=args.max_tokens)
                rows.append({"model": name, "setting": setting, "kernel": kernel, "ppl": round(result.ppl, 3),
                             "tokens": result.tokens, "seconds": round(time.perf_counter() - t0, 1)})
                print(rows[-1], flush=True)
                del model
    for row in rows:
        base = next(r["ppl"] for r in rows if r["model"] == row["model"] and r["setting"] == row["setting"]
                    and r["kernel"].startswith("cpu_gemv"))
        row["vs_fp32_activations"] = f"{100 * (row['ppl'] / base - 1):+.2f}%"
    print_table(rows, title="perplexity with fp32 activations (cpu_gemv) and int8-rounded ones (cpu_dot)")
    if not args.no_write:
        print(write_results("cpu_dot_quality", rows, describe_device(), extra={"threads": args.threads}))


if __name__ == "__main__":
    main()
