"""Peak memory of loading through transformers (lowbit registered as its quantizer) against lowbit.from_pretrained.

Four loads, each in a fresh subprocess after ``import torch, transformers, lowbit`` and the model classes (so the
imports are in the baseline), alternated ``--repeats`` times:
  lowbit/prequantized       lowbit.from_pretrained(int4 folder)
  transformers/prequantized AutoModelForCausalLM.from_pretrained(int4 folder)
  lowbit/on-load            lowbit.from_pretrained(full-precision folder, quantization=int4 g128)
  transformers/on-load      AutoModelForCausalLM.from_pretrained(folder, quantization_config=HfQuantConfig("int4"))
Each worker samples its own /proc/self/status every ~5 ms (``load_memory.Sampler``): the peak RssAnon over the
post-import baseline (memory the load allocated), the peak RssFile (checkpoint pages mapped while reading), and
VmHWM (the process's peak resident set, imports included). Goal: transformers' peaks <= lowbit's, both kinds.

The model is SmolLM2-135M (lowbit.realmodels, fp32, ~540 MB), or ``--synthetic``: load_memory.py's 2.15 GB bf16
Llama. The int4 folder is written once per run with lowbit.quantize_folder into a temporary folder.

    PYTHONPATH=src nice python benchmarks/hf_load_memory.py [--repeats 2] [--synthetic]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
MIB = 2**20
CASES = ("lowbit/prequantized", "transformers/prequantized", "lowbit/on-load", "transformers/on-load")


def worker(case: str, folder: str) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    import lowbit
    from load_memory import Sampler, read_status, window

    lowbit.HfQuantConfig  # noqa: B018  (imports the integration before the baseline, as the lowbit side does)
    lowbit.from_pretrained  # noqa: B018
    import transformers.modeling_utils  # noqa: F401
    sampler = Sampler()
    sampler.start()
    time.sleep(0.05)
    t0 = time.monotonic()
    if case == "lowbit/prequantized":
        model = lowbit.from_pretrained(folder)
    elif case == "transformers/prequantized":
        model = AutoModelForCausalLM.from_pretrained(folder)
    elif case == "lowbit/on-load":
        model = lowbit.from_pretrained(folder, quantization=lowbit.config("int4", group_size=128))
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=lowbit.HfQuantConfig("int4", group_size=128))
    t1 = time.monotonic()
    time.sleep(0.05)
    sampler.stop()
    before, peak, peak_file = window(sampler.timeline, t0, t1)
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    del model, torch, transformers
    return {"case": case, "seconds": round(t1 - t0, 2), "baseline_anon_mib": round(before / MIB, 1),
            "peak_anon_delta_mib": round((peak - before) / MIB, 1), "peak_file_mib": round(peak_file / MIB, 1),
            "vmhwm_mib": round(read_status()["VmHWM"] / MIB, 1), "state_dict_mib": round(state / MIB, 1)}


def run_worker(case: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", case, str(folder)], capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        raise SystemExit(f"{case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("CASE", "FOLDER"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    import lowbit
    from common import describe_device, print_table, write_results

    if args.synthetic:
        from load_memory import bench_dir, ensure_checkpoint

        src, name = ensure_checkpoint(bench_dir() / "llama-2b-bf16"), "synthetic-llama-2.15GB-bf16"
    else:
        from lowbit import realmodels

        src, name = realmodels.model_path("smollm2-135m"), "SmolLM2-135M-fp32"
    with tempfile.TemporaryDirectory() as tmp:
        q = lowbit.quantize_folder(src, Path(tmp) / "int4", lowbit.config("int4", group_size=128))
        rows = []
        for r in range(args.repeats):
            for case in CASES:
                row = run_worker(case, q if case.endswith("prequantized") else src)
                row["repeat"] = r
                rows.append(row)
                print(row, flush=True)
    summary = {}
    for case in CASES:
        mine = [row for row in rows if row["case"] == case]
        summary[case] = {k: statistics.median(row[k] for row in mine)
                         for k in ("peak_anon_delta_mib", "peak_file_mib", "vmhwm_mib", "seconds", "state_dict_mib")}
    ratios = {kind: {k: round(summary[f"transformers/{kind}"][k] / summary[f"lowbit/{kind}"][k], 3)
                     for k in ("peak_anon_delta_mib", "vmhwm_mib")} for kind in ("prequantized", "on-load")}
    print_table([{"case": c, **v} for c, v in summary.items()], title=f"{name}: medians of {args.repeats}")
    print("transformers / lowbit:", ratios)
    path = write_results("hf_load_memory", rows, extra={"model": name, "median": summary,
                                                          "transformers_over_lowbit": ratios},
                         device=describe_device())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
