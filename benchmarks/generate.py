"""Speed where users run it: transformers' ``model.generate`` on the Llama-3-8B-shaped decoder of decode.py.

Modes (each writes its rows into one JSON file as it goes, so a run cut off keeps what it measured):

- ``host``: host time of one layer call at M=1 (down_proj, 14336 -> 4096; 200 calls queued, timed before the GPU is
  waited for), ``nn.Linear`` bf16 against ``QuantLinear`` int4 g128 and int8, and the wall time per call.
- ``eager``: ``model.generate(ids, max_new_tokens=T, do_sample=False)``, the default (dynamic) cache, no compile.
  Host-bound eager speed drifts within a process (the same model's first round can run at half its later speed), so
  every variant is timed in each of ``--eager-rounds`` rounds, the order reversed every other round, before any
  other mode compiles anything; the median per variant is reported with its rounds.
- ``static``: the same with ``cache_implementation="static"`` (transformers compiles the forward itself); the first
  call compiles, the second is timed.
- ``fast``: ``lowbit.compile_for_decode(model)`` then its ``generate`` (fused projections, per-layer compile, one
  CUDA graph per decode step), beside the others in the same run.
- ``attached``: ``lowbit.compile_for_decode(model)`` (which attaches ``GraphEngine``), then the user's own
  ``model.generate(ids, ...)`` (default cache): each new token of a batch of one replays the recorded step; the
  first call records, the median of three timed calls is reported. Modes run in the order above, whatever the
  order given: ``fast`` and ``attached`` change the model.

Variants: ``bf16`` (the model as built) and ``lowbit.quantize_`` copies (lm_head and embeddings stay bf16).

    PYTHONPATH=src python benchmarks/generate.py --out DIR --modes host eager static [--variants bf16 int4_g128]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from decode import PROMPT, VARIANTS, copy_gbs, llama_8b, weight_bytes  # noqa: E402


MODES = ("host", "eager", "static", "fast", "attached")


def host_us(fn, calls: int = 200) -> tuple[float, float]:
    """(host µs per call, wall µs per call): ``calls`` calls queued, then the GPU waited for."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return 1e6 * (t1 - t0) / calls, 1e6 * (t2 - t0) / calls


@torch.inference_mode()
def host_rows(variants) -> list[dict]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(14336, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 1, 14336, device="cuda", dtype=torch.bfloat16)
    rows = []
    for name in variants:
        layer = torch.nn.Sequential(copy.deepcopy(lin))
        if name != "bf16":
            method, fields = VARIANTS[name]
            lowbit.quantize_(layer, lowbit.config(method, **fields))
        host, wall = min(host_us(lambda: layer(x)) for _ in range(3))
        rows.append({"mode": "host", "variant": name, "shape": "down_proj 14336x4096 M=1",
                     "host_us": round(host, 1), "wall_us": round(wall, 1)})
        print(rows[-1], flush=True)
    return rows


@torch.inference_mode()
def generate_tps(model, batch: int, tokens: int, reps: int = 1, **kw) -> tuple[float, torch.Tensor]:
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(1))
    args = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kw)
    model.generate(prompt, **args)  # warm-up (compiles where the mode compiles)
    speeds = []
    for _ in range(reps):  # the median of a few calls: host-bound eager runs vary from call to call
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(prompt, **args)
        torch.cuda.synchronize()
        speeds.append(batch * tokens / (time.perf_counter() - t0))
    return sorted(speeds)[len(speeds) // 2], out[:, PROMPT:].cpu()


def eager_rows(models: dict, batches, tokens: int, rounds: int) -> list[dict]:
    """Eager ``generate`` of every variant in each round, the order reversed every other round (see ``eager``)."""
    rows = []
    for b in batches:
        speeds: dict[str, list[float]] = {name: [] for name in models}
        first: dict[str, list[int]] = {}
        for r in range(rounds + 1):  # round 0 warms every variant up and is not counted
            for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
                tps, toks = generate_tps(models[name], b, tokens, reps=1)
                if r:
                    speeds[name].append(round(tps, 1))
                first[name] = toks[0, :8].tolist()
        for name, got in speeds.items():
            rows.append({"mode": "eager", "variant": name, "batch": b, "tok_s": sorted(got)[len(got) // 2],
                         "rounds": got, "first_tokens": first[name]})
            print(rows[-1], flush=True)
    return rows


def fast_tps(decoder, model, batch: int, tokens: int) -> tuple[float, torch.Tensor]:
    """``decoder.generate`` timed on its second call (the first compiles and records the step's graph)."""
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda",
                           generator=torch.Generator("cuda").manual_seed(1))
    decoder.generate(prompt, tokens)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = decoder.generate(prompt, tokens)
    torch.cuda.synchronize()
    return batch * tokens / (time.perf_counter() - t0), out[:, PROMPT:].cpu()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--label", default="", help="a name for this tree in the JSON file (before/after)")
    ap.add_argument("--modes", nargs="+", default=["host", "eager", "static"],
                    choices=MODES)
    ap.add_argument("--variants", nargs="+", default=["bf16", "int4_g128", "int8"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--eager-tokens", type=int, default=32)
    ap.add_argument("--eager-rounds", type=int, default=5)
    ap.add_argument("--layers", type=int, default=32)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    date = datetime.date.today().isoformat()
    path = args.out / f"generate-{args.label or 'run'}.json"
    payload = {"date": date, "label": args.label, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "layers": args.layers, "rows": [], "notes": {}}

    def write():
        payload["seconds"] = round(time.time() - t_start)
        path.write_text(json.dumps(payload, indent=1) + "\n")

    if "host" in args.modes:
        payload["rows"] += host_rows(args.variants)
        write()
    modes = [m for m in MODES if m in args.modes and m != "host"]  # fast and attached change the model: last
    if not modes:
        return
    base = llama_8b(args.layers)
    models = {}
    for name in args.variants:  # copied before any generate call leaves compiled state on the base model
        models[name] = base if name == "bf16" else copy.deepcopy(base)
        if name != "bf16":
            method, fields = VARIANTS[name]
            lowbit.quantize_(models[name], lowbit.config(method, **fields))
    if "bf16" not in args.variants:
        del base
    if "eager" in modes:
        payload["rows"] += eager_rows(models, args.batches, args.eager_tokens, args.eager_rounds)
        write()
        modes.remove("eager")
    for name in args.variants:
        model = models.pop(name)
        for mode in modes:
            for b in args.batches:
                try:
                    if mode == "static":
                        tps, toks = generate_tps(model, b, args.tokens, cache_implementation="static")
                    elif mode == "fast":
                        tps, toks = fast_tps(lowbit.compile_for_decode(model), model, b, args.tokens)
                    else:
                        lowbit.compile_for_decode(model)  # attaches GraphEngine: model.generate replays the step
                        tps, toks = generate_tps(model, b, args.tokens, reps=3)
                except Exception as e:  # noqa: BLE001 - recorded; the other cells still run
                    payload["notes"][f"{name} {mode} batch {b}"] = f"{type(e).__name__}: {e}"[:400]
                    print(name, mode, b, payload["notes"][f"{name} {mode} batch {b}"], flush=True)
                    write()
                    continue
                row = {"mode": mode, "variant": name, "batch": b, "tok_s": round(tps, 1),
                       "first_tokens": toks[0, :8].tolist()}
                if mode in ("fast", "attached") and b == 1:  # the batch-1 ceiling: copy bandwidth over the bytes read per token
                    payload.setdefault("copy_gbs", round(copy_gbs()))
                    row["ceiling_tok_s"] = round(payload["copy_gbs"] * 1e9 / weight_bytes(model), 1)
                    row["of_ceiling"] = round(tps / row["ceiling_tok_s"], 3)
                payload["rows"].append(row)
                print(payload["rows"][-1], f"{time.time() - t_start:.0f}s", flush=True)
                write()
        del model
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    write()


if __name__ == "__main__":
    main()
