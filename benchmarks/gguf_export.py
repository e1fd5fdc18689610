"""lowbit's GGUF export, loaded by llama.cpp: SmolLM2-135M quantized by lowbit (int4 and int8, groups of 32,
symmetric), written by ``lowbit.export(format="gguf")`` as Q4_0 / Q8_0, then

- read back by lowbit's GGUF reader (every layer's weights equal: checked here too),
- loaded by llama.cpp (llama-cpp-python over libllama): perplexity on the same token ids as lowbit's own model
  (``lowbit.eval.perplexity`` drives both; llama.cpp's logits come from ``Llama.eval``), and a greedy
  continuation of a prompt from both.

    PYTHONPATH=/work/llamacpp/snap:src LLAMA_CPP_LIB_PATH=/work/llamacpp/snap \\
        nice -n 10 python benchmarks/gguf_export.py

Writes ``benchmarks/results/gguf_export-<date>-cpu.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
PROMPT = "The history of the printing press begins"
FORMATS = {"Q4_0": dict(bits=4), "Q8_0": dict(bits=8)}


class LlamaCppModel:
    """llama.cpp as ``model(input_ids=...) -> .logits`` (one window at a time), for ``lowbit.eval.perplexity``."""

    device = "cpu"
    training = False

    def __init__(self, path: Path, ctx: int, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=ctx + 8, n_batch=ctx + 8, n_threads=threads,
                                   n_threads_batch=threads, logits_all=True, verbose=False)

    def __call__(self, input_ids):
        import numpy as np
        import torch

        ids = input_ids[0].tolist()
        self.llm.reset()
        self.llm.eval(ids)
        return SimpleNamespace(logits=torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32))[None])

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out = []
        for tok in self.llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(int(tok))
            if len(out) == n:
                return out
        return out


def main() -> None:
    sys.path.insert(0, str(HERE))
    from common import describe_device, export_check_args, export_check_inputs, loadavg, write_results

    args = export_check_args(__doc__.split("\n\n")[0], max_tokens=2048)
    import torch

    import lowbit
    from lowbit.eval.perplexity import perplexity
    from lowbit.nn import QuantLinear

    path, tok, text, prompt = export_check_inputs(args.model, args.threads, PROMPT)
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="lowbit-gguf-export-"))
    for kind, fields in FORMATS.items():
        run = dict(kernel="reference", compute_dtype="float32")
        t0 = time.perf_counter()
        model = lowbit.from_pretrained(path, quantization=lowbit.config("rtn", group_size=32, symmetric=True,
                                                                         **fields, **run)).eval()
        out = lowbit.export(model, tmp / f"{args.model}-{kind}.gguf", format="gguf")
        export_s = time.perf_counter() - t0
        back = lowbit.from_pretrained(out, quantization=lowbit.config("int4", group_size=32, **run))
        same = all(torch.equal(back.get_submodule(n).fmt.decode(back.get_submodule(n).canonical_tensors()),
                               m.fmt.decode(m.canonical_tensors()))
                   for n, m in model.named_modules() if isinstance(m, QuantLinear))
        del back
        ours = perplexity(model, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
        with torch.inference_mode():
            ours_greedy = model.generate(torch.tensor([prompt]), max_new_tokens=args.tokens, do_sample=False)
        ours_greedy = ours_greedy[0, len(prompt):].tolist()
        cpp = LlamaCppModel(out, args.ctx, args.threads)
        theirs = perplexity(cpp, tok, text, ctx=args.ctx, max_tokens=args.max_tokens)
        theirs_greedy = cpp.greedy(prompt, args.tokens)
        agree = next((i for i, (a, b) in enumerate(zip(ours_greedy, theirs_greedy)) if a != b), len(ours_greedy))
        row = {"model": args.model, "gguf_type": kind, "lowbit": f"int{fields['bits']} g32 sym",
               "file_mb": round(out.stat().st_size / 2**20, 1), "load_quantize_export_s": round(export_s, 1),
               "lowbit_reader_weights_equal": same, "ppl_lowbit": round(ours.ppl, 4),
               "ppl_llamacpp": round(theirs.ppl, 4), "ppl_rel_diff": round(theirs.ppl / ours.ppl - 1, 5),
               "scored_tokens": ours.tokens, "greedy_tokens_equal": agree,
               "greedy_tokens_compared": min(len(ours_greedy), len(theirs_greedy)),
               "text_lowbit": tok.decode(ours_greedy), "text_llamacpp": tok.decode(theirs_greedy)}
        print(row, flush=True)
        rows.append(row)
        del model, cpp
    if not args.no_write:
        extra = {"load_average": loadavg(), "prompt": PROMPT, "ctx": args.ctx, "max_tokens": args.max_tokens}
        print("wrote", write_results("gguf_export", rows, describe_device(), extra=extra))


if __name__ == "__main__":
    main()
