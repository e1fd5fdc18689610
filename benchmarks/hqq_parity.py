"""lowbit's ``hqq`` against the HQQ library, on the same weights and the same perplexity windows.

Every Linear of Gemma-3-270M but ``lm_head`` is quantized twice: by the HQQ library (``hqq.core.quantize.
Quantizer.quantize``, the settings of its ``BaseQuantizeConfig``: axis 1, zero rounded at 4 bits, its default
optimizer; scale and zero kept in fp16 as ``HQQLinear`` keeps them) and by lowbit's ``hqq_quantize``. Both are
decoded to fp32 weights and put into the same fp32 model, so the perplexities (first 8,192 tokens of
``wiki.eval.txt``, 512-token windows, as ``quality.py``) differ only by the weights. Per layer it also counts the
weights that differ and the mean absolute weight error of each; where no weight differs, the library's
perplexity is lowbit's (the same model) and is not run twice.

Needs the library: ``python -m venv --system-site-packages /work/venv-hqq; /work/venv-hqq/bin/pip install hqq``
    PYTHONPATH=src /work/venv-hqq/bin/python benchmarks/hqq_parity.py [--bits 4] [--group-size 128] [--opt iters=20]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_device, write_results  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from hqq.core.quantize import Quantizer as HqqLibrary  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.data import text_path  # noqa: E402
from lowbit.eval import load_text, perplexity  # noqa: E402
from lowbit.formats import IntFormat  # noqa: E402
from lowbit.loading.tokenizer import load_tokenizer  # noqa: E402
from lowbit.methods.hqq import hqq_quantize  # noqa: E402


def library(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    q, meta = HqqLibrary.quantize(w, nbits=bits, channel_wise=True, group_size=group, optimize=True,
                                  round_zero=bits == 4, axis=1, bitpack=False, device="cpu")
    return (q.float() - meta["zero"].half().float()) * meta["scale"].half().float()


def ours(w: torch.Tensor, fmt: IntFormat, cfg) -> torch.Tensor:
    out, _ = hqq_quantize(w, fmt, cfg)
    return fmt.decode(out, torch.float32).reshape(-1, fmt.group_size)


def _value(default, text: str):
    """``text`` as the type of the field's default (``true``/``false`` for a bool)."""
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"--opt expects true or false for a yes/no field, got {text!r}")
        return text.lower() == "true"
    return type(default)(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--opt", nargs="*", default=[], help="lowbit hqq fields, e.g. iters=40")
    ap.add_argument("--skip-library", action="store_true", help="lowbit only (the library's ppl is in the last JSON)")
    ap.add_argument("--weights-only", action="store_true", help="compare the weights, run no perplexity")
    ap.add_argument("--layers", type=int, default=None, help="the first N Linears only (implies --weights-only)")
    args = ap.parse_args()
    fields = {k: _value(getattr(lowbit.config("hqq"), k), v) for k, v in (o.split("=") for o in args.opt)}
    cfg = lowbit.config("hqq", bits=args.bits, group_size=args.group_size, **fields)
    fmt = IntFormat(bits=args.bits, group_size=args.group_size, symmetric=False, float_zero=True)
    path = realmodels.model_path("gemma-3-270m")
    tok = load_tokenizer(path)
    text = load_text(text_path("wiki.eval.txt"))
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    original = {n: m.weight.detach().clone() for n, m in list(linears.items())[:args.layers]}
    rows, stats = [], {"differing_weights": 0, "weights": 0, "lib_abs_err": 0.0, "our_abs_err": 0.0}
    variants = [("lowbit", None)] + ([] if args.skip_library else [("library", None)])
    decoded = {}
    t0 = time.perf_counter()
    for name, w in original.items():
        wg = w.reshape(-1, args.group_size)
        mine = ours(w, fmt, cfg)
        decoded[("lowbit", name)] = mine.reshape(w.shape)
        stats["our_abs_err"] += float((mine - wg).abs().sum())
        if not args.skip_library:
            lib = library(w, args.bits, args.group_size)
            decoded[("library", name)] = lib.reshape(w.shape)
            stats["lib_abs_err"] += float((lib - wg).abs().sum())
            stats["differing_weights"] += int((lib != mine).sum())
        stats["weights"] += w.numel()
    quantize_s = time.perf_counter() - t0
    if not args.skip_library and stats["differing_weights"] == 0:  # the same weights in the same model: the same ppl
        variants = variants[:1]
    if args.weights_only or args.layers:
        variants = []
    for variant, _ in variants:
        with torch.no_grad():
            for name, m in linears.items():
                m.weight.copy_(decoded[(variant, name)])
        result = perplexity(model, tok, text, ctx=512, max_tokens=8192)
        rows.append({"variant": variant, "bits": args.bits, "group_size": args.group_size,
                     "config": cfg.to_dict() if variant == "lowbit" else "BaseQuantizeConfig defaults (axis 1)",
                     "ppl": round(result.ppl, 3), "tokens": result.tokens,
                     "mean_abs_weight_error": (stats["our_abs_err"] if variant == "lowbit" else stats["lib_abs_err"])
                     / stats["weights"]})
        print(rows[-1], flush=True)
    rows.append({"hqq_library": importlib.metadata.version("hqq"), "layers": len(original),
                 "differing_weights": stats["differing_weights"],
                 "differing_weights_fraction": stats["differing_weights"] / stats["weights"],
                 "mean_abs_weight_error": {"lowbit": stats["our_abs_err"] / stats["weights"],
                                           "library": stats["lib_abs_err"] / stats["weights"]},
                 "quantize_s_both": round(quantize_s, 1)})
    print(rows[-1])
    part = f"-{len(original)}-layers" if args.layers else ""
    print(write_results(f"hqq_parity-gemma-3-270m-{args.bits}bit-g{args.group_size}{part}", rows, describe_device()))


if __name__ == "__main__":
    main()
