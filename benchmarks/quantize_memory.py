"""Peak memory of disk-to-disk quantization: ``lowbit quantize SRC OUT --method int4 --max-memory LIMIT``.

1. Writes (once, cached) shape-accurate synthetic Llama checkpoints of about 1x, 2x and 4x LIMIT (default
   512MB, so ~0.5 / 1 / 2 GB): vocab 32000, untied head, intermediate = 4 x hidden, hidden and layer count chosen
   to hit the size; random bf16 weights, written tensor by tensor into ~500 MB safetensors shards, so generating
   never holds the model. Cached under $LOWBIT_BENCH_DIR (default /tmp/lowbit-bench), marked complete last.
2. Each checkpoint is quantized to int4 g128 in a fresh subprocess through the CLI with ``--max-memory LIMIT``;
   a thread samples RssAnon (load_memory.py's Sampler) over the baseline taken after ``import lowbit, torch,
   transformers`` and the Llama modeling code. Reported: peak over baseline vs checkpoint size and vs LIMIT, time.
3. A few layers of each output are checked against the format's own round-to-nearest encoding (``IntFormat.encode``) of the source tensor: equal bytes.

``--cgroup``: instead, the 1.5B-shaped case (hidden 2048, 24 layers, intermediate 8192, 16 heads / 4 key-value
heads, ~3.2 GB bf16, under $LOWBIT_BENCH_DIR) with ``--max-memory LIMIT``, the whole worker process under a
``--cgroup-limit`` (1.5GiB) cgroup v1 memory limit when /sys/fs/cgroup/memory is writable (a child of this process's
memory cgroup, memory.limit_in_bytes, the worker's pid in cgroup.procs); otherwise measured only. The cgroup counts
the interpreter and imports (and page cache) too, which --max-memory does not. The output names the mechanism.

    PYTHONPATH=src python benchmarks/quantize_memory.py [--limit 512MB] [--threads 2] [--cgroup]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_memory import MIB, Sampler, bench_dir, checkpoint_info, folder_bytes, read_status

SRC = Path(__file__).resolve().parents[1] / "src"
VOCAB = 32000
SHARD_BYTES = 500 * 10**6
HIDDEN_CHOICES = (2048, 1536, 1024, 768, 512, 256)
CGROUP_SPEC = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 16,
               "num_key_value_heads": 4, "vocab_size": VOCAB, "tie_word_embeddings": False}
CHECKED = ("model.layers.0.self_attn.q_proj", "model.layers.{mid}.mlp.gate_proj", "model.layers.{last}.mlp.down_proj")


def spec_for(target: int) -> dict:
    """A Llama spec of about ``target`` bf16 bytes: the largest hidden size that still gives >= 8 layers."""
    for h in HIDDEN_CHOICES:
        layers = round((target - 4 * VOCAB * h) / (32 * h * h))  # embed + head: 2*V*h*2 B; a layer: 16 h^2 * 2 B
        if layers >= 8 or h == HIDDEN_CHOICES[-1]:
            return {"hidden_size": h, "intermediate_size": 4 * h, "num_hidden_layers": max(layers, 1),
                    "num_attention_heads": h // 64, "num_key_value_heads": h // 64, "vocab_size": VOCAB,
                    "tie_word_embeddings": False}
    raise AssertionError


def spec_bytes(spec: dict) -> int:
    h, i, n = spec["hidden_size"], spec["intermediate_size"], spec["num_hidden_layers"]
    kv = h * spec["num_key_value_heads"] // spec["num_attention_heads"]
    return 2 * (2 * spec["vocab_size"] * h + n * (2 * h * h + 2 * h * kv + 3 * h * i + 2 * h) + h)


def ensure_checkpoint(folder: Path, spec: dict) -> Path:
    """Random bf16 weights, tensor by tensor, flushed into shards of ~SHARD_BYTES; skipped if already complete."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    marker = folder / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == spec:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = LlamaConfig(**spec)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        shapes = {n: tuple(t.shape) for n, t in LlamaForCausalLM(config).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    parts: list[list[str]] = []
    shard: dict = {}
    size = total = 0
    t0 = time.perf_counter()

    def flush() -> None:
        save_file(shard, str(folder / f"part-{len(parts)}.safetensors"), metadata={"format": "pt"})
        parts.append(list(shard))
        shard.clear()

    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = (1 + 0.01 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        else:
            t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
        nbytes = t.numel() * 2
        if shard and size + nbytes > SHARD_BYTES:
            flush()
            size = 0
        shard[name], size, total = t, size + nbytes, total + nbytes
    flush()
    weight_map = {}
    for i, names in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        os.replace(folder / f"part-{i}.safetensors", folder / final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(str(folder))
    marker.write_text(json.dumps({"spec": spec, "total_size": total, "written_s": round(time.perf_counter() - t0, 1)}))
    print(f"wrote synthetic checkpoint {folder} ({total / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f}s")
    return folder


def worker(ckpt: str, out: str, limit: str, threads: int, out_json: str) -> None:
    t = time.monotonic()
    import torch
    import transformers

    from lowbit import cli  # imports lowbit

    torch.set_num_threads(threads)
    transformers.LlamaForCausalLM  # noqa: B018  (the lazily imported modeling code belongs in the baseline)
    import_s = time.monotonic() - t
    import gc

    gc.collect()
    base = read_status()
    sampler = Sampler()
    sampler.start()
    t0 = time.monotonic()
    rc = cli.main(["quantize", ckpt, out, "--method", "int4", "--group-size", "128", "--max-memory", limit])
    t1 = time.monotonic()
    sampler.stop()
    during = [(a, f) for s, a, f in sampler.timeline if t0 <= s]
    result = {"rc": rc, "import_s": round(import_s, 2), "quantize_s": round(t1 - t0, 2),
              "baseline_rss_anon": base["RssAnon"], "peak_rss_anon_delta": max(a for a, _ in during) - base["RssAnon"],
              "peak_rss_file": max(f for _, f in during), "samples": len(during)}
    Path(out_json).write_text(json.dumps(result))


def run_worker(ckpt: Path, out: Path, limit: str, threads: int, cgroup: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p))
        cmd = [sys.executable, __file__, "--worker", "--ckpt", str(ckpt), "--out", str(out), "--limit", limit,
               "--threads", str(threads), "--result", str(res)]
        join = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
        t0 = time.monotonic()
        proc = subprocess.run(cmd, check=False, env=env, preexec_fn=join, stderr=subprocess.PIPE, text=True)
        if proc.returncode or not res.exists():
            tail = proc.stderr.strip().splitlines()[-3:]
            return {"rc": proc.returncode, "failed": True, "stderr_tail": tail,
                    "process_s": round(time.monotonic() - t0, 1)}
        result = json.loads(res.read_text())
        result["process_s"] = round(time.monotonic() - t0, 1)
        return result


def make_cgroup(limit: int) -> tuple[Path | None, str]:
    """A child of this process's memory cgroup limited to ``limit`` bytes, or None and why not."""
    root = Path("/sys/fs/cgroup/memory")
    if not root.is_dir():
        return None, "none (no cgroup v1 memory controller): measured only"
    own = next((line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.split(":")[1] == "memory"), "/")
    parent = root / own.lstrip("/")
    if not os.access(parent, os.W_OK):
        return None, f"none ({parent} is not writable): measured only"
    child = parent / f"lowbit-bench-{os.getpid()}"
    try:
        child.mkdir()
        (child / "memory.limit_in_bytes").write_text(str(limit))
    except OSError as e:
        _remove_cgroup(child)
        return None, f"none (cannot set up {child}: {e.strerror}): measured only"
    return child, f"cgroup v1 {child} memory.limit_in_bytes={limit}"


def cgroup_stats(child: Path) -> dict:
    files = {n: (child / n).read_text() if (child / n).exists() else "0" for n in
             ("memory.max_usage_in_bytes", "memory.failcnt", "memory.oom_control")}
    oom = dict(line.split() for line in files["memory.oom_control"].splitlines() if len(line.split()) == 2)
    return {"max_usage_bytes": int(files["memory.max_usage_in_bytes"]), "failcnt": int(files["memory.failcnt"]),
            "oom_kills": int(oom.get("oom_kill", 0))}


def _remove_cgroup(child: Path) -> None:
    with contextlib.suppress(OSError):
        child.rmdir()  # a cgroup folder is removed with rmdir once its processes have exited


def check_layers(src: Path, out: Path, layers: int) -> dict[str, bool]:
    """Output tensors of a few layers against the format's encoding of the source tensor, byte for byte."""
    import torch
    from safetensors import safe_open

    from lowbit.formats import IntFormat

    src_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    out_map = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    fmt, result = IntFormat(bits=4, group_size=128, symmetric=False), {}
    for name in (c.format(mid=layers // 2, last=layers - 1) for c in CHECKED):
        with safe_open(str(src / src_map[f"{name}.weight"]), "pt") as f:
            expected = fmt.encode(f.get_tensor(f"{name}.weight"))
        same = True
        for part, tensor in expected.items():
            with safe_open(str(out / out_map[f"{name}.{part}"]), "pt") as f:
                got = f.get_tensor(f"{name}.{part}")
            same &= got.dtype == tensor.dtype and torch.equal(got.contiguous().view(torch.uint8).flatten(),
                                                               tensor.contiguous().view(torch.uint8).flatten())
        result[name] = bool(same)
    return result


def measure(name: str, spec: dict, limit: str, limit_bytes: int, threads: int, cgroup_limit: int | None) -> dict:
    folder = bench_dir() / f"quantize-memory-{name}"
    cached = (folder / "complete.json").is_file() and json.loads((folder / "complete.json").read_text())["spec"] == spec
    need = spec_bytes(spec) * (0.4 if cached else 1.4)  # the source unless cached, the int4 output, some slack
    free = shutil.disk_usage(bench_dir()).free
    if free < need:
        print(f"skipping {name}: needs ~{need / 1e9:.1f} GB of disk under {bench_dir()}, {free / 1e9:.1f} GB free")
        return {"case": name, "skipped": f"disk: {free / 1e9:.1f} GB free, ~{need / 1e9:.1f} GB needed"}
    ckpt = ensure_checkpoint(folder, spec)
    info = checkpoint_info(ckpt)
    cgroup, mechanism = make_cgroup(cgroup_limit) if cgroup_limit else (None, "none (no limit asked): measured only")
    out = Path(tempfile.mkdtemp(prefix="lowbit-qm-", dir=bench_dir())) / "out"
    try:
        run = run_worker(ckpt, out, limit, threads, cgroup)
        if cgroup:
            run["cgroup"] = cgroup_stats(cgroup)
    finally:
        if cgroup:
            _remove_cgroup(cgroup)
    row = {"case": name, "checkpoint_gb": round(info["total_bytes"] / 1e9, 3), "hidden": spec["hidden_size"],
           "layers": spec["num_hidden_layers"], "largest_tensor_mib": round(info["largest_tensor_bytes"] / MIB, 1),
           "max_memory_mib": round(limit_bytes / MIB, 1), "mechanism": mechanism, **run}
    if not run.get("failed"):
        peak = run["peak_rss_anon_delta"]
        shards = sorted(out.glob("*.safetensors"))
        row.update({"peak_rss_anon_mib": round(peak / MIB, 1), "peak_over_limit": round(peak / limit_bytes, 3),
                    "peak_over_checkpoint": round(peak / info["total_bytes"], 3), "within_limit": peak <= limit_bytes,
                    "out_mb": round(folder_bytes(out) / 1e6, 1), "shards": len(shards),
                    "largest_shard_mib": round(max(p.stat().st_size for p in shards) / MIB, 1),
                    "layers_equal_rtn": check_layers(ckpt, out, spec["num_hidden_layers"])})
    shutil.rmtree(out.parent, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", default="512MB", help="--max-memory of each run; checkpoints are 1x, 2x, 4x it")
    parser.add_argument("--multiples", default="1,2,4", help="checkpoint sizes as multiples of --limit")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cgroup", action="store_true", help="run the ~3.2 GB 1.5B-shaped case under a cgroup limit")
    parser.add_argument("--cgroup-limit", default="1.5GiB", help="memory.limit_in_bytes of the worker with --cgroup")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.ckpt, args.out, args.limit, args.threads, args.result)
        return

    from common import Contention, describe_device, device_line, print_table, write_results

    from lowbit.loading.save import parse_size

    bench_dir().mkdir(parents=True, exist_ok=True)
    device = describe_device()
    print(device_line(device))
    busy = Contention()
    limit_bytes = parse_size(args.limit, "--limit")
    cases = [("llama-1.5b-shape", CGROUP_SPEC, parse_size(args.cgroup_limit, "--cgroup-limit"))] if args.cgroup else [
        (f"{m}x-{args.limit}", spec_for(int(m) * limit_bytes), None) for m in args.multiples.split(",")]
    rows = [measure(name, spec, args.limit, limit_bytes, args.threads, hard) for name, spec, hard in cases]
    others = busy.others_cores()
    rows = [{**row, "other_procs_cores": others} for row in rows]
    columns = ["case", "checkpoint_gb", "max_memory_mib", "peak_rss_anon_mib", "peak_over_limit",
               "peak_over_checkpoint", "within_limit", "quantize_s", "shards", "largest_shard_mib", "out_mb"]
    print_table(rows, columns, title="int4 g128 --max-memory: peak RssAnon over the post-import baseline (MiB)")
    for row in rows:
        print(f"{row['case']}: memory limit by {row.get('mechanism')}; layers equal to the format's encoding: "
              f"{row.get('layers_equal_rtn')}" + (f"; cgroup {row['cgroup']}" if "cgroup" in row else ""))
    if others > 0.2:
        print(f"note: other processes used {others} of {os.cpu_count()} cores on average: times are slowed")
    if not args.no_write:
        path = write_results("quantize_memory" + ("-cgroup" if args.cgroup else ""), rows, device, kind="cpu",
                             extra={"limit": args.limit, "threads": args.threads,
                                    "cgroup_limit": args.cgroup_limit if args.cgroup else None})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
