"""Peak memory of quantize-on-load: ``lowbit.from_pretrained(..., int4 g128)`` against a plain transformers load.

1. Writes (once, cached) a shape-accurate synthetic Llama checkpoint: hidden 2048, intermediate 8192, 16 layers,
   16 attention heads and 16 key/value heads (plain multi-head attention, so q/k/v/o are all 2048x2048), vocab
   1024, untied head; bf16, random weights, ~2.15 GB in 8 safetensors shards + index. It is written shard by
   shard (2 layers, ~270 MB at a time), never the whole model in RAM. Cached under $LOWBIT_BENCH_DIR
   (default /tmp/lowbit-bench); a ``complete.json`` marker written last makes reruns skip it.
2. In a fresh subprocess per measurement (clean baselines), after ``import lowbit, torch, transformers``:
   (a) ``lowbit.from_pretrained(ckpt, quantization=lowbit.config("int4", group_size=128))``: peak RssAnon over
       the post-import baseline, sampled every ~5 ms from /proc/self/status by a background thread, and the
       time; then the time of ``lowbit.save_pretrained`` to a temp folder and its peak.
   (b) ``transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)``, the same way.
   (c) (a) again, sampled by this process through /proc/PID/status, so the worker runs no extra thread.
   (d) diagnostic, ``--mmap-threshold``: (a) again with ``MALLOC_MMAP_THRESHOLD_`` set, so glibc gives freed large
       temporaries back at once: the memory the loader really holds, without allocator retention.
3. Target: peak RssAnon delta of (a) <= 1.15 x quantized size + 2 x largest full-precision tensor, where the
   quantized size is the sum of the bytes of the loaded model's state_dict (what is saved).

The lowbit worker also records when its phases run (skeleton, streaming, per-tensor quantize, postprocess /
kernel prepare, save) so the peak can be attributed to one of them; see ``phases`` in the JSON.

    PYTHONPATH=src python benchmarks/load_memory.py [--threads 2] [--keep-timeline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
SRC = Path(__file__).resolve().parents[1] / "src"

CKPT_SPEC = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 16,
             "num_key_value_heads": 16, "vocab_size": 1024, "tie_word_embeddings": False}
LAYERS_PER_SHARD = 2
SAMPLE_S = 0.005
MIB = 2**20


# ---- /proc/self/status ---------------------------------------------------------------------------
def read_status(fields=("RssAnon", "RssFile", "VmHWM"), path: str = "/proc/self/status") -> dict[str, int]:
    """Selected fields of /proc/self/status (or another process's) in bytes."""
    out = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples RssAnon and RssFile of a process every ``period`` seconds (``time.monotonic`` stamps, which
    are comparable across processes). As a thread it samples its own process; the parent process can
    instead call :meth:`sample` on a child's /proc/PID/status, which leaves the child without an extra thread.
    """

    def __init__(self, pid: int | str = "self", period: float = SAMPLE_S) -> None:
        super().__init__(daemon=True)
        self.path, self.period, self.timeline, self._halt = f"/proc/{pid}/status", period, [], threading.Event()

    def sample(self) -> bool:
        try:
            s = read_status(path=self.path)
        except (OSError, ValueError, KeyError):
            return False
        if "RssAnon" not in s:
            return False
        self.timeline.append((time.monotonic(), s["RssAnon"], s["RssFile"]))
        return True

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            time.sleep(self.period)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def window(timeline: list, t0: float, t1: float) -> tuple[int, int, int]:
    """(RssAnon just before t0, max RssAnon in [t0, t1], max RssFile in [t0, t1]) of a sampled timeline."""
    before, peak, peak_file = None, 0, 0
    for t, anon, file in timeline:
        if t < t0:
            before = anon
            continue
        peak, peak_file = max(peak, anon), max(peak_file, file)
        if t > t1:  # the first sample after the end still shows what was held at the end
            break
    before = before if before is not None else (timeline[0][1] if timeline else 0)
    return before, max(peak, before), peak_file


# ---- checkpoint ------------------------------------------------------------------------------------
def bench_dir() -> Path:
    return Path(os.environ.get("LOWBIT_BENCH_DIR") or Path(tempfile.gettempdir()) / "lowbit-bench")


def ensure_checkpoint(folder: Path) -> Path:
    """The synthetic bf16 Llama checkpoint, written shard by shard unless already complete."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    marker = folder / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("spec") == CKPT_SPEC:
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = LlamaConfig(**CKPT_SPEC)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    del skeleton

    def shard_of(name: str) -> int:
        parts = name.split(".")
        if "layers" in parts:
            return int(parts[parts.index("layers") + 1]) // LAYERS_PER_SHARD
        return 0 if "embed_tokens" in name else config.num_hidden_layers // LAYERS_PER_SHARD - 1

    n_shards = config.num_hidden_layers // LAYERS_PER_SHARD
    names = [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    gen = torch.Generator().manual_seed(0)
    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for i, fname in enumerate(names):
        shard = {}
        for name, shape in shapes.items():
            if shard_of(name) != i:
                continue
            if name.endswith("norm.weight"):
                noise = 0.01 * torch.randn(shape, generator=gen).to(torch.bfloat16)
                t = torch.ones(shape, dtype=torch.bfloat16) + noise
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
            shard[name] = t
            weight_map[name] = fname
            total += t.numel() * t.element_size()
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    config.save_pretrained(str(folder))
    written_s = round(time.perf_counter() - t0, 1)
    marker.write_text(json.dumps({"spec": CKPT_SPEC, "total_size": total, "written_s": written_s}))
    print(f"wrote synthetic checkpoint {folder} ({total / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f}s")
    return folder


def checkpoint_info(folder: Path) -> dict:
    """Total bytes and the largest tensor, from the safetensors headers (nothing is loaded)."""
    import struct

    sizes = {"BF16": 2, "F16": 2, "F32": 4, "I8": 1, "U8": 1, "I32": 4, "I64": 8}
    largest, largest_name, total, count = 0, "", 0, 0
    for shard in sorted(folder.glob("*.safetensors")):
        with open(shard, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        for name, info in header.items():
            numel = 1
            for d in info["shape"]:
                numel *= d
            nbytes = numel * sizes[info["dtype"]]
            total, count = total + nbytes, count + 1
            if nbytes > largest:
                largest, largest_name = nbytes, name
    return {"path": str(folder), "total_bytes": total, "tensors": count, "largest_tensor_bytes": largest,
            "largest_tensor": largest_name, "spec": CKPT_SPEC}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# ---- workers (one fresh process each) -------------------------------------------------------------
class Phases:
    """Wraps functions to record (label, start, end, what); a sampled timeline gives each one's peak."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, float, str]] = []

    def wrap(self, owner, attr: str, label: str, describe=None) -> None:
        original = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self.events.append((label, t0, time.monotonic(), describe(*args, **kwargs) if describe else ""))

        setattr(owner, attr, wrapper)


def phase_summary(events: list, timeline: list, baseline: int) -> dict:
    """Per label: calls, seconds, highest RssAnon reached (over baseline) and the largest rise within one call."""
    out: dict[str, dict] = {}
    for label, t0, t1, what in events:
        before, peak, _ = window(timeline, t0, t1)
        entry = out.setdefault(label, {"calls": 0, "seconds": 0.0, "peak_over_baseline_mib": 0.0,
                                       "max_rise_in_call_mib": 0.0, "max_rise_call": ""})
        entry["calls"] += 1
        entry["seconds"] = round(entry["seconds"] + t1 - t0, 3)
        entry["peak_over_baseline_mib"] = round(max(entry["peak_over_baseline_mib"], (peak - baseline) / MIB), 1)
        rise = (peak - before) / MIB
        if rise > entry["max_rise_in_call_mib"]:
            entry["max_rise_in_call_mib"], entry["max_rise_call"] = round(rise, 1), what
    return out


def malloc_trim() -> int | None:
    """glibc ``malloc_trim(0)`` (returns freed heap memory to the OS); RssAnon afterwards, or None if unavailable."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    return read_status()["RssAnon"]


def _shape_of(name, tensor, *a, **k) -> str:
    return f"{name} {list(tensor.shape)} {str(tensor.dtype).removeprefix('torch.')}"


def worker(kind: str, ckpt: str, out_json: str, threads: int, sampler_kind: str) -> None:
    """One measurement in a fresh process; writes raw times, events and (thread sampler) the timeline."""
    t_import = time.monotonic()
    import lowbit  # noqa: F401  (imported in both workers: same baseline)
    import torch
    import transformers

    import_s = time.monotonic() - t_import
    torch.set_num_threads(threads)
    import gc

    phases = Phases()
    if kind == "lowbit":
        from lowbit.loading import engine, pipeline, reader
        from lowbit.nn import QuantLinear
        from lowbit.quantizer import Quantizer

        phases.wrap(pipeline, "open_checkpoint", "open_checkpoint")
        phases.wrap(engine, "build_skeleton", "build_skeleton")
        phases.wrap(pipeline, "load_into", "stream (read + quantize all tensors)")
        phases.wrap(Quantizer, "quantize_tensor", "  Quantizer.quantize_tensor (rtn, per weight)",
                    lambda self, *a, **k: _shape_of(*a, **k))
        phases.wrap(QuantLinear, "load_quantized", "  QuantLinear.load_quantized (per weight)")
        phases.wrap(reader, "check_finite", "  check_finite (per weight)", _shape_of)
        phases.wrap(pipeline, "_check_complete", "_check_complete")
        phases.wrap(Quantizer, "postprocess_model", "postprocess_model (all kernel prepares)")
        phases.wrap(QuantLinear, "prepare", "  QuantLinear.prepare (per layer)",
                    lambda self, *a, **k: f"[{self.out_features}x{self.in_features}]")
    gc.collect()
    base = read_status()
    times: dict[str, float] = {"baseline": time.monotonic()}
    # transformers imports its modeling code lazily, on first use by either loader; what that costs is
    # recorded so the peaks can also be read over a baseline that includes it.
    arch = json.loads((Path(ckpt) / "config.json").read_text())["architectures"][0]
    getattr(transformers, arch)
    gc.collect()
    modeling_import = read_status()["RssAnon"] - base["RssAnon"]
    sampler = None
    if sampler_kind == "thread":
        sampler = Sampler()
        sampler.start()
    result: dict = {"kind": kind, "sampler": sampler_kind, "import_s": round(import_s, 2), "threads": threads,
                    "baseline_rss_anon": base["RssAnon"], "baseline_rss_file": base["RssFile"],
                    "modeling_import_rss_anon": modeling_import}
    times["load_start"] = time.monotonic()
    if kind == "lowbit":
        model = lowbit.from_pretrained(ckpt, quantization=lowbit.config("int4", group_size=128), device="cpu")
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16)
    times["load_end"] = time.monotonic()
    result["load_s"] = round(times["load_end"] - times["load_start"], 2)
    gc.collect()
    after = read_status()
    result["rss_anon_after_load_delta"] = after["RssAnon"] - base["RssAnon"]
    result["rss_file_after_load"] = after["RssFile"]
    result["vmhwm_delta_load"] = after["VmHWM"] - base["VmHWM"]  # includes file-backed pages: for reference only
    params = sum(t.numel() * t.element_size() for t in model.parameters())
    buffers = sum(t.numel() * t.element_size() for t in model.buffers())
    result["params_and_buffers_bytes"] = params + buffers
    if kind == "lowbit":
        from lowbit.nn import QuantLinear

        trimmed = malloc_trim()
        if trimmed is not None:  # freed memory glibc kept (fragmented heap); live data stays
            result["rss_anon_after_load_and_malloc_trim_delta"] = trimmed - base["RssAnon"]
        prepared = sum(t.numel() * t.element_size() for m in model.modules() if isinstance(m, QuantLinear)
                       for t in m._prepared.values())
        result["kernel_layout_bytes"] = prepared
        result["in_memory_bytes"] = params + buffers + prepared
        kernels: dict[str, int] = {}
        for m in model.modules():
            if isinstance(m, QuantLinear):
                kernels[m.kernel.name] = kernels.get(m.kernel.name, 0) + 1
        result["kernels"] = kernels
        result["compute_dtype"] = str(next(m for m in model.modules() if isinstance(m, QuantLinear)).compute_dtype)
        out_dir = Path(tempfile.mkdtemp(prefix="lowbit-save-"))
        result["rss_anon_before_save_delta"] = read_status()["RssAnon"] - base["RssAnon"]
        times["save_start"] = time.monotonic()
        lowbit.save_pretrained(model, out_dir / "model")
        times["save_end"] = time.monotonic()
        result["save_s"] = round(times["save_end"] - times["save_start"], 2)
        phases.events.append(("save_pretrained (after malloc_trim)", times["save_start"], times["save_end"], ""))
        result["saved_folder_bytes"] = folder_bytes(out_dir / "model")
        t2 = time.monotonic()
        state = model.state_dict()
        result["state_dict_bytes"] = sum(t.numel() * t.element_size() for t in state.values())
        result["state_dict_s"] = round(time.monotonic() - t2, 2)
        del state
        shutil.rmtree(out_dir, ignore_errors=True)
        result["quantize_and_save_s"] = round(result["load_s"] + result["save_s"], 2)
    else:
        result["state_dict_bytes"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        with torch.inference_mode():  # read every weight once: mmap-backed parameters fault their pages in
            for p in model.parameters():
                p.view(torch.int16).sum() if p.element_size() == 2 else p.sum()
        touched = read_status()
        result["after_touching_weights"] = {"rss_anon_delta": touched["RssAnon"] - base["RssAnon"],
                                            "rss_file": touched["RssFile"]}
    times["end"] = time.monotonic()
    if sampler is not None:
        sampler.stop()
        result["timeline"] = sampler.timeline
    result["times"], result["events"] = times, phases.events
    Path(out_json).write_text(json.dumps(result))


def analyze(result: dict, timeline: list, keep_timeline: bool) -> dict:
    """Peaks over the post-import baseline, from the sampled timeline and the worker's times and events."""
    times, baseline = result["times"], result["baseline_rss_anon"]
    _, peak, peak_file = window(timeline, times["load_start"], times["load_end"])
    result["peak_rss_anon_delta"] = peak - baseline
    result["peak_rss_anon_over_modeling_import"] = peak - baseline - result["modeling_import_rss_anon"]
    result["peak_rss_file"] = peak_file
    if "save_start" in times:
        _, save_peak, _ = window(timeline, times["save_start"], times["save_end"])
        result["save_peak_rss_anon_delta"] = save_peak - baseline
        result["save_rise_over_loaded_model"] = save_peak - baseline - result["rss_anon_before_save_delta"]
    result["phases"] = phase_summary(result.pop("events"), timeline, baseline)
    result["samples"] = len(timeline)
    result.pop("timeline", None)
    if keep_timeline:
        t0 = times["baseline"]
        result["timeline"] = [(round(t - t0, 3), a, f) for t, a, f in timeline[::4] if t >= t0]
    return result


def run_worker(kind: str, ckpt: Path, threads: int, keep_timeline: bool, sampler: str = "thread",
               mmap_threshold: int | None = None) -> dict:
    """Run one worker process; ``sampler``: "thread" (inside the worker) or "external" (this process polls it)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
        if mmap_threshold is not None:  # diagnostic: a fixed glibc mmap threshold (no dynamic raise up to 32 MiB)
            env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
        cmd = [sys.executable, __file__, "--worker", kind, "--ckpt", str(ckpt), "--out", str(out),
               "--threads", str(threads), "--sampler", sampler]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env)
        outside = Sampler(pid=proc.pid)
        while proc.poll() is None:
            if sampler == "external":
                outside.sample()
            time.sleep(SAMPLE_S)
        if proc.returncode:
            raise SystemExit(f"worker {kind} failed with exit code {proc.returncode}")
        result = json.loads(out.read_text())
        result["process_s"] = round(time.monotonic() - t0, 1)
        result["malloc_mmap_threshold"] = env.get("MALLOC_MMAP_THRESHOLD_")
        timeline = outside.timeline if sampler == "external" else [tuple(x) for x in result["timeline"]]
        return analyze(result, timeline, keep_timeline)


def mib(n: int | float) -> float:
    return round(n / MIB, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--keep-timeline", action="store_true", help="store the RssAnon timelines in the JSON")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-external", action="store_true",
                        help="skip the second lowbit run sampled from outside the worker (no extra thread in it)")
    parser.add_argument("--mmap-threshold", type=int, default=131072,
                        help="diagnostic lowbit run with MALLOC_MMAP_THRESHOLD_=BYTES (glibc): freed large temporaries "
                             "go straight back to the OS, so its peak is the memory the loader really holds "
                             "(0: skip it)")
    parser.add_argument("--worker", choices=("lowbit", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--sampler", choices=("thread", "external"), default="thread", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.ckpt, args.out, args.threads, args.sampler)
        return

    from common import Contention, describe_device, device_line, print_table, write_results

    ckpt = ensure_checkpoint(bench_dir() / "llama-2b-synthetic-bf16")
    info = checkpoint_info(ckpt)
    print(f"checkpoint: {info['total_bytes'] / 1e9:.2f} GB, {info['tensors']} tensors, "
          f"largest {info['largest_tensor']} {mib(info['largest_tensor_bytes'])} MiB")
    import torch

    torch.set_num_threads(args.threads)
    device = describe_device()
    print(device_line(device))
    busy = Contention()
    runs = {"lowbit": run_worker("lowbit", ckpt, args.threads, args.keep_timeline),
            "transformers": run_worker("transformers", ckpt, args.threads, args.keep_timeline)}
    if not args.no_external:
        runs["lowbit_external_sampler"] = run_worker("lowbit", ckpt, args.threads, args.keep_timeline, "external")
    if args.mmap_threshold:
        runs["lowbit_mmap_threshold"] = run_worker("lowbit", ckpt, args.threads, args.keep_timeline, "thread",
                                                   args.mmap_threshold)
    others = busy.others_cores()
    lb, hf = runs["lowbit"], runs["transformers"]

    quantized = lb["state_dict_bytes"]
    target = 1.15 * quantized + 2 * info["largest_tensor_bytes"]
    peak = lb["peak_rss_anon_delta"]
    summary = {
        "quantized_state_dict_bytes": quantized, "saved_folder_bytes": lb["saved_folder_bytes"],
        "in_memory_bytes": lb["in_memory_bytes"], "largest_tensor_bytes": info["largest_tensor_bytes"],
        "target_bytes": round(target), "lowbit_peak_rss_anon_delta": peak, "passed": peak <= target,
        "peak_over_target": round(peak / target, 3), "transformers_peak_rss_anon_delta": hf["peak_rss_anon_delta"],
        "lowbit_over_transformers": round(peak / hf["peak_rss_anon_delta"], 3) if hf["peak_rss_anon_delta"] else None,
        "transformers_after_touching_weights": hf.get("after_touching_weights"),
        "lowbit_load_s": lb["load_s"], "lowbit_save_s": lb["save_s"],
        "lowbit_quantize_and_save_s": lb["quantize_and_save_s"],
        "transformers_load_s": hf["load_s"], "lowbit_rss_anon_after_load_delta": lb["rss_anon_after_load_delta"],
        "lowbit_rss_anon_after_load_and_malloc_trim_delta": lb.get("rss_anon_after_load_and_malloc_trim_delta"),
        "lowbit_rss_file_after_load": lb["rss_file_after_load"], "other_procs_cores": others,
        "transformers_modeling_import_rss_anon": lb["modeling_import_rss_anon"],
        "lowbit_peak_over_modeling_import": lb["peak_rss_anon_over_modeling_import"],
        "passed_over_modeling_import": lb["peak_rss_anon_over_modeling_import"] <= target,
    }
    for name in ("lowbit_external_sampler", "lowbit_mmap_threshold"):
        if name in runs:
            summary[f"{name}_peak_rss_anon_delta"] = runs[name]["peak_rss_anon_delta"]
            summary[f"{name}_passed"] = runs[name]["peak_rss_anon_delta"] <= target
            summary[f"{name}_peak_over_modeling_import"] = runs[name]["peak_rss_anon_over_modeling_import"]
    labels = {"lowbit": "lowbit int4 g128 from_pretrained (sampler thread)",
              "lowbit_external_sampler": "lowbit, same, sampled from outside (no extra thread)",
              "lowbit_mmap_threshold": f"lowbit, same, MALLOC_MMAP_THRESHOLD_={args.mmap_threshold} (diagnostic)",
              "transformers": "transformers bf16 from_pretrained"}
    rows = []
    for name, r in runs.items():
        rows.append({"what": labels[name], "peak_rss_anon_mib": mib(r["peak_rss_anon_delta"]),
                     "peak_less_modeling_import_mib": mib(r["peak_rss_anon_over_modeling_import"]),
                     "after_load_mib": mib(r["rss_anon_after_load_delta"]),
                     "after_trim_mib": mib(r["rss_anon_after_load_and_malloc_trim_delta"])
                     if "rss_anon_after_load_and_malloc_trim_delta" in r else None,
                     "peak_rss_file_mib": mib(r["peak_rss_file"]), "load_s": r["load_s"],
                     "save_s": r.get("save_s"), "save_peak_mib": mib(r["save_peak_rss_anon_delta"])
                     if "save_peak_rss_anon_delta" in r else None,
                     "model_state_mib": mib(r["state_dict_bytes"]),
                     "target_mib": mib(target) if name != "transformers" else None,
                     "passed": r["peak_rss_anon_delta"] <= target if name != "transformers" else None})
    print_table(rows, title="RssAnon over the post-import baseline (MiB); seconds")
    for name in ("lowbit", "lowbit_mmap_threshold"):
        if name in runs:
            print_table([{"phase": k, **v} for k, v in runs[name]["phases"].items()],
                        title=f"{labels[name]}: highest RssAnon over baseline in each phase, "
                              "largest rise within one call")
    print(json.dumps(summary, indent=2))
    if others > 0.2:
        print(f"note: other processes used {others} of {os.cpu_count()} cores on average: times are slowed")
    if not args.no_write:
        path = write_results("load_memory", rows, device, kind="cpu", extra={
            "checkpoint": info, "threads": args.threads, "summary": summary, "runs": runs,
            "target_formula": "1.15 * quantized state_dict bytes + 2 * largest full-precision tensor bytes"})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
