"""Decode speed of a Llama-3-8B-shaped decoder (random weights, no download): bf16, int8, int4 g128, nf4.

The model is ``LlamaConfig`` with Llama-3-8B's dimensions (4096 hidden, 14336 MLP, 32 layers, 32/8 heads,
128256 vocabulary, untied head), built on the GPU from random weights; the quantized variants are
``lowbit.quantize_`` of a copy (lm_head and embeddings stay bf16). Each variant generates ``--tokens`` tokens
greedily at batch 1 and 8 from a 16-token random prompt with transformers' ``StaticCache``: the prefill runs
eagerly, then one decode step (forward + argmax + feeding the token back) is captured in a CUDA graph and
replayed once per token; tok/s = batch x tokens / replay time.

In the same run: transformers' own ``generate(cache_implementation="static")`` on the bf16 model (it compiles
the forward with torch.compile itself; timed on a second call), and the batch-1 ceiling
``copy GB/s / weight bytes read per token`` (every weight but the embedding table, of which one row is read).

By default each decoder layer is compiled with ``torch.compile`` (``--no-compile``: eager inside the graph) and the
quantized variants run q/k/v and gate/up as one launch each (``lowbit.fuse_projections``; ``--no-fuse``).

    PYTHONPATH=src python benchmarks/decode.py --out DIR [--layers 32] [--tokens 256] [--no-hf]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from common import print_table  # noqa: E402
from lowbit.nn import QuantLinear  # noqa: E402

VARIANTS = {"int4_g128": ("int4", {"group_size": 128}), "int8": ("int8", {}), "nf4": ("nf4", {})}
PROMPT = 16


def llama_8b(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes read per decode step: every weight once, the embedding table not (one row of it)."""
    emb = model.get_input_embeddings()
    total = 0
    for module in model.modules():
        if module is emb:
            continue
        if isinstance(module, QuantLinear):
            total += module.packed_nbytes() + (module.bias.numel() * 2 if module.bias is not None else 0)
            continue
        total += sum(p.numel() * p.element_size() for p in module.parameters(recurse=False))
    return total


def copy_gbs() -> float:
    import triton.testing

    src = torch.empty(2**29, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    us = 1e3 * triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * src.numel() * 2 / us / 1e3


def tune_model(model: nn.Module, batches) -> int:
    """Tune the Triton configs this model's layer shapes lack for the decode batches; returns how many."""
    from lowbit.kernels.triton import ops, tune

    done = set()
    for m in model.modules():
        if not (isinstance(m, QuantLinear) and m.kernel.name.startswith("triton")):
            continue
        if m.fused is not None:  # the fused layer's shape is what runs
            m = m.fused[0].linear
        tf, (n, k) = m.kernel.triton_format(m.request), m.weight_shape
        w, s, z = m.kernel.tensors(m._buffers, m._prepared)
        for b in batches:
            key = tune.key(tf, torch.bfloat16, b, k, n)
            if key not in tune.cache() and key not in done:
                x = torch.randn(b, k, device="cuda", dtype=torch.bfloat16)
                tune.tune(tf, torch.bfloat16, b, k, n, ops._measure(x, w, s, z, None, tf))
                done.add(key)
    return len(done)


def compile_layers(model, batches: int) -> None:
    """torch.compile each decoder layer in place, fusing the norms, RoPE, residual adds and cache writes around
    the quantized linears. Dynamo compiles the layer code once per layer and batch size (the cache's
    ``layer_idx`` is a static int), the same graph for every layer (inductor's cache serves layers 2-32); the
    recompile limit is raised to that count, past which dynamo would quietly run the remaining layers eagerly."""
    from lowbit.generation import compile_blocks

    torch._dynamo.reset()  # each variant starts with a fresh cache of compiled graphs
    torch._dynamo.utils.counters.clear()  # and a fresh count of them
    compile_blocks(model, batches)


def compiled_graphs() -> int:
    """Distinct graphs dynamo has compiled since the last reset: one per layer and batch size when all are."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def uncompile_layers(model) -> None:
    for layer in model.model.layers:
        layer._compiled_call_impl = None


@torch.inference_mode()
def graph_decode(model, batch: int, tokens: int, profile: Path | None = None) -> tuple[float, torch.Tensor, str]:
    """(tok/s, generated tokens [batch, tokens], how it ran) with the decode step in one CUDA graph; with
    ``profile``, the GPU time per kernel of a few more steps is written there."""
    from transformers import StaticCache

    warm = 3
    extra = PROFILE_STEPS if profile is not None else 0  # positions the profiled steps write
    cache = StaticCache(config=model.config, max_cache_len=PROMPT + warm + tokens + 1 + extra)
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(1))
    with torch.compiler.set_stance("force_eager"):  # the prefill runs once: not worth a compile
        tok = model(input_ids=prompt, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
    out = torch.zeros(batch, tokens + warm + 1 + extra, dtype=torch.long, device="cuda")
    idx = torch.zeros(1, dtype=torch.long, device="cuda")

    def step():
        nxt = model(input_ids=tok, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        out.index_copy_(1, idx, nxt)
        tok.copy_(nxt)
        idx.add_(1)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warm):
            step()
    torch.cuda.current_stream().wait_stream(side)
    compiled = any(layer._compiled_call_impl is not None for layer in model.model.layers)
    how = "cuda graph" + (f" + torch.compile per layer ({compiled_graphs()} graphs)" if compiled else "")
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    except Exception as e:  # noqa: BLE001 - report and time eagerly instead
        how = f"eager ({type(e).__name__}: {str(e)[:120]})"
        run = step
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(tokens):
        run()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if profile is not None:
        kernel_breakdown(step, profile, dt / tokens, PROFILE_STEPS)
    return batch * tokens / dt, out[:, warm:warm + tokens].cpu(), how


SDPA = {"default": None, "efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
        "math": "MATH"}
PROFILE_STEPS = 5


def sdpa_backend(name: str):
    """A context that restricts scaled_dot_product_attention to one backend (none for "default"); it must hold
    while torch.compile traces, which happens in the first decode steps."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return contextlib.nullcontext() if SDPA[name] is None else sdpa_kernel(getattr(SDPBackend, SDPA[name]))


def kernel_breakdown(step, path: Path, step_s: float, steps: int) -> None:
    """GPU time per decode step by kernel name (torch.profiler over eager ``steps``; each kernel runs as it does
    inside the graph), written as a table: where the time goes besides the weight reads."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = [(e.key, e.device_time_total / steps, e.count / steps) for e in prof.key_averages()
            if e.device_time_total > 0]
    rows.sort(key=lambda r: -r[1])
    total = sum(r[1] for r in rows)
    lines = [f"graph replay {1e6 * step_s:.0f} us/step; kernels {total:.0f} us/step (eager, summed)",
             f"{'us/step':>9} {'share':>6} {'calls':>6}  kernel"]
    lines += [f"{us:9.1f} {us / total:6.1%} {n:6.0f}  {name[:110]}" for name, us, n in rows]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:25]), flush=True)


@torch.inference_mode()
def hf_generate(model, batch: int, tokens: int) -> float:
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda")
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, cache_implementation="static")
    model.generate(prompt, **kw)  # compiles
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(prompt, **kw)
    torch.cuda.synchronize()
    return batch * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--hf-batches", type=int, nargs="*", default=[1], help="batches for transformers' generate")
    ap.add_argument("--no-tune", dest="tune", action="store_false", help="skip tuning configs the cache lacks")
    ap.add_argument("--no-compile", dest="compile", action="store_false",
                    help="run the layers eagerly inside the CUDA graph (no torch.compile)")
    ap.add_argument("--eager-bf16", action="store_true", help="also time bf16 without torch.compile")
    ap.add_argument("--profile", action="store_true",
                    help="write GPU time per kernel of one batch-1 decode step (decode-kernels-<variant>.txt)")
    ap.add_argument("--only", nargs="*", help="quantized variants to run (default: all)")
    ap.add_argument("--sdpa", choices=sorted(SDPA), default="default",
                    help="attention backend of lowbit's decode runs (default: torch's choice; transformers' generate "
                         "always runs with torch's choice)")
    ap.add_argument("--no-fuse", dest="fuse", action="store_false",
                    help="keep q/k/v and gate/up as separate launches (default: lowbit.fuse_projections)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    bw = copy_gbs()
    base = llama_8b(args.layers)
    rows, notes = [], {}

    def measure(name, model):
        slug = re.sub(r"\W+", "_", name).strip("_")
        table = args.out / f"decode-kernels-{slug}.txt" if args.profile else None
        nbytes = weight_bytes(model)
        ceiling = bw * 1e9 / nbytes
        for b in args.batches:
            try:
                with sdpa_backend(args.sdpa):
                    tps, toks, how = graph_decode(model, b, args.tokens, table if b == 1 else None)
            except Exception as e:  # noqa: BLE001 - recorded; the other variants still run
                notes[f"{name} batch {b}"] = f"{type(e).__name__}: {e}"[:400]
                print(name, b, notes[f"{name} batch {b}"], flush=True)
                continue
            rows.append({"variant": name, "batch": b, "tok_s": round(tps, 1), "how": how,
                         "weight_gb_per_token": round(nbytes / 1e9, 3), "ceiling_tok_s": round(ceiling, 1),
                         "of_ceiling": round(tps / ceiling, 3) if b == 1 else None,
                         "distinct_tokens": int(toks.unique().numel())})
            print(rows[-1], f"{time.time() - t_start:.0f}s", flush=True)

    date = datetime.date.today().isoformat()
    from lowbit.kernels.triton import tune

    path = args.out / f"decode-{tune.device_slug()}-{date}.json"

    def write():  # after every variant: a run cut off keeps what it measured
        payload = {"date": date, "device": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__},
                   "sdpa": args.sdpa, "copy_gbs": round(bw), "layers": args.layers, "tokens": args.tokens,
                   "rows": rows, "notes": notes, "seconds": round(time.time() - t_start)}
        int4 = next((r for r in rows if r["variant"] == "int4_g128" and r["batch"] == 1), None)
        if int4:
            payload["target"] = {"target": "int4 batch 1 >= 0.60 of its ceiling", "measured": int4["of_ceiling"],
                                 "met": int4["of_ceiling"] >= 0.6}
        path.write_text(json.dumps(payload, indent=1) + "\n")
        if args.tune:
            tune.save(args.out / tune.cache_path().name)
        return payload

    if args.eager_bf16 or not args.compile:
        measure("bf16" if not args.compile else "bf16 (no compile)", base)
        write()
    if args.compile:
        compile_layers(base, len(args.batches))
        measure("bf16", base)
        write()
        uncompile_layers(base)  # the quantized copies and transformers' generate start from the eager model
    for name, (method, fields) in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        model = copy.deepcopy(base)
        lowbit.quantize_(model, lowbit.config(method, **fields))
        if args.fuse:
            notes[f"{name} fused groups"] = len(lowbit.fuse_projections(model))
        if args.compile:
            compile_layers(model, len(args.batches))
        notes[f"{name} kernels"] = sorted({m.kernel.name for m in model.modules() if isinstance(m, QuantLinear)})
        if args.tune:
            notes[f"{name} tuned keys"] = tune_model(model, [*args.batches, PROMPT])
        measure(name, model)
        write()
        del model
        torch.cuda.empty_cache()
    for b in args.hf_batches:  # last: its torch.compile takes the longest
        try:
            tps = hf_generate(base, b, args.tokens)
            rows.append({"variant": "bf16 transformers generate(static)", "batch": b, "tok_s": round(tps, 1),
                         "how": "transformers auto-compile (torch.compile reduce-overhead)"})
            print(rows[-1], f"{time.time() - t_start:.0f}s", flush=True)
        except Exception as e:  # noqa: BLE001
            notes[f"hf_generate batch {b}"] = f"{type(e).__name__}: {e}"[:300]
        write()
    payload = write()
    print_table(rows, ["variant", "batch", "tok_s", "ceiling_tok_s", "of_ceiling", "weight_gb_per_token", "how"],
                title=f"decode, {args.layers} layers, {args.tokens} tokens, copy {bw:.0f} GB/s")
    for k, v in notes.items():
        print(f"note {k}: {v}")
    print(payload.get("target"))
    print("wrote", path)


if __name__ == "__main__":
    main()
