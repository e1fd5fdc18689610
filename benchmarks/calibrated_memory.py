"""Peak memory of calibrated quantization on the CPU (GPTQ of Gemma-3-270M by default), with its breakdown.

The runner holds, at most: during capture, the embeddings and what is outside the blocks (freed after it);
then one block at full precision (fp32 on the CPU), the calibration activations (each block's inputs and
outputs: 2 x samples x seq_len x hidden x 4 bytes), the block's Hessians (K x K fp32 per Linear) and the
capture's per-block arguments (masks, rotary tables). The packed output so far is on disk, not in memory.
This script runs ``lowbit.quantize_calibrated`` in this process, samples RssAnon over the baseline taken after
the imports, and prints the measured peaks of both phases beside those terms.

    PYTHONPATH=src python benchmarks/calibrated_memory.py [--model gemma-3-270m] [--method gptq] [--samples 16]

``--cgroup``: instead, GPTQ int4 g128 of quantize_memory.py's 3.2 GB 1.5B-shaped synthetic Llama (random bf16
weights; calibration from random token ids, since it has no tokenizer) in a subprocess under a cgroup v1 memory
limit (``--cgroup-limit``, 1.5 GiB; ``--layers`` for fewer of its identical blocks): whether it finishes, the cgroup's peak usage (which counts the interpreter,
imports and page cache too), OOM kills and the time.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_device, print_table, write_results  # noqa: E402
from load_memory import MIB, Sampler, read_status  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402

import lowbit  # noqa: E402
from lowbit import realmodels  # noqa: E402
from lowbit.eval import load_text  # noqa: E402
from lowbit.data import text_path  # noqa: E402


def terms(path: Path, samples: int, seq_len: int) -> dict[str, float]:
    """The expected terms in MiB, from the model's config and shapes."""
    model = lowbit.loading.skeleton.build_skeleton(path, json.loads((path / "config.json").read_text()), torch.float32)
    from lowbit.calibration import find_blocks

    prefix, blocks = find_blocks(model)
    block = max(sum(p.numel() for p in b.parameters()) for b in blocks)
    outside = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(prefix + "."))
    hidden = model.config.hidden_size
    linears = [m for m in blocks[0].modules() if isinstance(m, torch.nn.Linear)]
    return {"block_fp32": block * 4 / MIB, "activations": 2 * samples * seq_len * hidden * 4 / MIB,
            "hessians": sum(m.in_features ** 2 for m in linears) * 4 / MIB, "outside_blocks_fp32": outside * 4 / MIB}


def cgroup_run(args) -> None:
    import os
    import subprocess

    from quantize_memory import CGROUP_SPEC, _remove_cgroup, bench_dir, cgroup_stats, ensure_checkpoint, make_cgroup

    from lowbit.loading.save import parse_size

    spec, folder = CGROUP_SPEC, "quantize-memory-llama-1.5b-shape"
    if args.layers and args.layers != CGROUP_SPEC["num_hidden_layers"]:  # the same widths, fewer blocks
        spec, folder = {**CGROUP_SPEC, "num_hidden_layers": args.layers}, f"{folder}-{args.layers}-layers"
    src = ensure_checkpoint(bench_dir() / folder, spec)
    limit = parse_size(args.cgroup_limit, "--cgroup-limit")
    child, how = make_cgroup(limit)
    code = ("import torch, lowbit; ids = torch.randint(0, 32000, (%d, %d), generator=torch.Generator().manual_seed(0)); "
            "lowbit.quantize_calibrated(%r, %r, lowbit.config('gptq', group_size=128), ids=ids, max_memory='512MB')"
            % (args.samples, args.seq_len, str(src), args.out))
    join = (lambda: (child / "cgroup.procs").write_text(str(os.getpid()))) if child else None
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-c", code], preexec_fn=join, capture_output=True, text=True)
        stats = cgroup_stats(child) if child else {}
    finally:
        if child:
            _remove_cgroup(child)
    out = Path(args.out)
    row = {"checkpoint_gb": round(sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1e9, 2),
           "cgroup": how, "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
           "layers": spec["num_hidden_layers"], "samples": args.samples, "seq_len": args.seq_len, **stats,
           "output_gb": round(sum(p.stat().st_size for p in out.glob("*.safetensors")) / 1e9, 2) if out.exists() else 0,
           "stderr_tail": proc.stderr.strip().splitlines()[-2:] if proc.returncode else []}
    print(row)
    print(write_results("calibrated_memory-cgroup", [row], describe_device()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--method", default="gptq")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--cgroup", action="store_true", help="the 1.5B-shaped synthetic Llama under a cgroup limit")
    ap.add_argument("--cgroup-limit", default="1.5GiB")
    ap.add_argument("--layers", type=int, default=None,
                    help="with --cgroup: blocks of the synthetic Llama (default 24; every block has the same shapes, "
                         "so fewer blocks change the time, not the peak of a block)")
    ap.add_argument("--out", default="/tmp/lowbit-bench/calibrated-cgroup-out")
    args = ap.parse_args()
    if args.cgroup:
        return cgroup_run(args)
    path = realmodels.model_path(args.model)
    text = load_text(text_path("wiki.calib.txt"))
    transformers.AutoModelForCausalLM  # noqa: B018  (lazily imported modeling code belongs in the baseline)
    expected = terms(path, args.samples, args.seq_len)
    gc.collect()
    base = read_status()["RssAnon"]
    sampler = Sampler()
    sampler.start()
    marks: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        _, quantizer = lowbit.quantize_calibrated(
            path, Path(tmp) / "out", lowbit.config(args.method, group_size=128), text=text, samples=args.samples,
            seq_len=args.seq_len, log=lambda line: marks.append((time.monotonic(), line)))
    sampler.stop()
    captured = next(t for t, line in marks if line.startswith("captured"))
    last_block = max(t for t, line in marks if line.startswith("block"))
    peak = lambda a, b: max(anon for t, anon, _ in sampler.timeline if a <= t <= b) - base  # noqa: E731
    blocks = [float(line.split()[2]) for _, line in marks if line.startswith("block")]
    row = {
        "model": args.model, "method": args.method, "samples": args.samples, "seq_len": args.seq_len,
        "baseline_rss_anon_mib": round(base / MIB), "peak_capture_mib": round(peak(t0, captured) / MIB),
        "peak_blocks_mib": round(peak(captured, last_block) / MIB),
        "peak_writing_mib": round(peak(last_block, time.monotonic()) / MIB),
        **{f"{k}_mib": round(v) for k, v in expected.items()},
        "seconds": round(time.monotonic() - t0, 1), "mean_block_s": round(sum(blocks) / len(blocks), 2),
        "summary": quantizer.summary(),
    }
    row["blocks_bound_mib"] = row["block_fp32_mib"] + row["activations_mib"] + row["hessians_mib"]
    print_table([row], ["peak_capture_mib", "outside_blocks_fp32_mib", "peak_blocks_mib", "blocks_bound_mib",
                        "block_fp32_mib", "activations_mib", "hessians_mib", "peak_writing_mib"],
                title=f"RssAnon over the baseline: {args.method} of {args.model}, {args.samples} x {args.seq_len} tokens")
    print(write_results(f"calibrated_memory-{args.model}-{args.method}", [row], describe_device()))


if __name__ == "__main__":
    main()
