"""lowbit's bitsandbytes export, loaded by transformers' own bitsandbytes path: SmolLM2-135M quantized by lowbit (nf4,
blocks of 64, with and without double quantization), written by ``lowbit.export(format="bnb")``, then

- read back by lowbit's bitsandbytes reader (every layer's weights equal),
- loaded by ``transformers.AutoModelForCausalLM.from_pretrained(out, device_map="cpu")`` with bitsandbytes: every
  ``Linear4bit``'s ``bitsandbytes.functional.dequantize_4bit`` against lowbit's decoding (equal bit for bit),
  perplexity on the same token ids as lowbit's own model (``lowbit.eval.perplexity`` drives both) and a greedy
  continuation of a prompt from both.

bitsandbytes is not a lowbit dependency; put it on the path (or install it: ``pip install bitsandbytes``):

    PYTHONPATH=src:/tmp/bnb_site OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bnb_export.py

Writes ``benchmarks/results/bnb_export-<date>-cpu.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "The history of the printing press begins"


def same_weights(ours, theirs: dict) -> tuple[int, int]:
    """(layers equal, layers compared): lowbit's decoding of each quantized layer against ``theirs[name]()``."""
    from lowbit.nn import QuantLinear

    layers = {n: m for n, m in ours.named_modules() if isinstance(m, QuantLinear)}
    if set(layers) != set(theirs):
        raise SystemExit(f"quantized layers differ: {sorted(set(layers) ^ set(theirs))[:4]}")
    equal = 0
    for name, layer in layers.items():
        got = theirs[name]()
        want = layer.fmt.decode(layer.canonical_tensors(), got.dtype)
        equal += bool(got.dtype == want.dtype and (got == want).all())
    return equal, len(layers)


def greedy(model, prompt: list[int], n: int) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def main() -> None:
    sys.path.insert(0, str(HERE))
    from common import describe_device, export_check_args, export_check_inputs, loadavg, write_results

    args = export_check_args(__doc__.split("\n\n")[0], max_tokens=1024)
    import bitsandbytes as bnb
    import torch
    import transformers

    import lowbit
    from lowbit.eval.perplexity import perplexity
    from lowbit.nn import QuantLinear

    path, tok, text, prompt = export_check_inputs(args.model, args.threads, PROMPT)
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="lowbit-bnb-export-"))
    for double_quant in (False, True):
        run = dict(kernel="reference", compute_dtype="float32")
        t0 = time.perf_counter()
        model = lowbit.from_pretrained(path, quantization=lowbit.config("nf4", block_size=64,
                                                                         double_quant=double_quant, **run)).eval()
        out = lowbit.export(model, tmp / f"{args.model}-nf4-dq{int(double_quant)}", format="bnb")
        export_s = time.perf_counter() - t0
        back = lowbit.from_pretrained(out, quantization=lowbit.config("imported", **run))
        lowbit_equal = same_weights(model, {n: (lambda m=m: m.fmt.decode(m.canonical_tensors()))
                                            for n, m in back.named_modules() if isinstance(m, QuantLinear)})
        del back
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out, device_map="cpu").eval()
        bnb_equal = same_weights(model, {
            n: (lambda m=m: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state))
            for n, m in theirs.named_modules() if isinstance(m, bnb.nn.Linear4bit)})
        ours_ppl = perplexity(model, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
        theirs_ppl = perplexity(theirs, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
        ours_greedy, theirs_greedy = greedy(model, prompt, args.tokens), greedy(theirs, prompt, args.tokens)
        agree = next((i for i, (a, b) in enumerate(zip(ours_greedy, theirs_greedy)) if a != b), len(ours_greedy))
        row = {"model": args.model, "lowbit": f"nf4 b64{' double-quant' if double_quant else ''}",
               "dtype": str(model.dtype).removeprefix("torch."), "bitsandbytes": bnb.__version__,
               "transformers": transformers.__version__, "folder_mb": round(sum(
                   f.stat().st_size for f in out.glob("*.safetensors")) / 2**20, 1),
               "load_quantize_export_s": round(export_s, 1),
               "lowbit_reader_layers_equal": f"{lowbit_equal[0]}/{lowbit_equal[1]}",
               "bnb_dequantize_4bit_layers_equal": f"{bnb_equal[0]}/{bnb_equal[1]}",
               "ppl_lowbit": round(ours_ppl.ppl, 4), "ppl_transformers_bnb": round(theirs_ppl.ppl, 4),
               "ppl_rel_diff": round(theirs_ppl.ppl / ours_ppl.ppl - 1, 6), "scored_tokens": ours_ppl.tokens,
               "greedy_tokens_equal": agree, "greedy_tokens_compared": min(len(ours_greedy), len(theirs_greedy)),
               "text_lowbit": tok.decode(ours_greedy), "text_transformers_bnb": tok.decode(theirs_greedy)}
        print(row, flush=True)
        rows.append(row)
        del model, theirs
    if not args.no_write:
        extra = {"load_average": loadavg(), "prompt": PROMPT, "ctx": args.ctx, "max_tokens": args.max_tokens,
                 "note": "lowbit runs its reference kernel in float32; transformers runs bitsandbytes' CPU path"}
        print("wrote", write_results("bnb_export", rows, describe_device(), extra=extra))


if __name__ == "__main__":
    main()
