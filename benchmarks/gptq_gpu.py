"""GPTQ int4 g128 of a Llama-3-8B-shaped checkpoint on one GPU: time per block and peak GPU memory.

The checkpoint is made here from random bf16 weights (std 0.02; no download): Llama-3-8B's dimensions (4096
hidden, 14336 MLP, 32 blocks, 32/8 heads, 128,256 vocabulary, untied head), one safetensors file per block.
Calibration: ``--samples`` x ``--seq-len`` random token ids (the timing does not depend on the text), run
``--batch-size`` at a time by ``lowbit.quantize_calibrated(..., device="cuda")``, which keeps one block on the
GPU and writes every block (and the next block's inputs, for resuming) to disk as it goes.

    PYTHONPATH=src python benchmarks/gptq_gpu.py --work /tmp/gptq8b --out DIR [--layers 32] [--samples 128]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402


LLAMA_3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  vocab_size=128256)
TINY = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)


def make_checkpoint(folder: Path, layers: int, dims: dict, device: str) -> int:
    """Write the random checkpoint block by block (generated on ``device``); returns its size in bytes."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from accelerate import init_empty_weights

    cfg = LlamaConfig(**dims, num_hidden_layers=layers, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.torch_dtype = "bfloat16"
    with init_empty_weights():
        model = LlamaForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(folder)
    gen = torch.Generator(device).manual_seed(0)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, p in model.named_parameters():
        part = f"block{int(name.split('.')[2]):02d}" if name.startswith("model.layers.") else "rest"
        groups.setdefault(part, {})[name] = p
    weight_map, total = {}, 0
    for part, params in groups.items():
        tensors = {}
        for name, p in params.items():
            t = torch.ones(p.shape, device=device, dtype=torch.bfloat16) if "norm" in name else \
                (torch.randn(p.shape, device=device, generator=gen, dtype=torch.float32) * 0.02).to(torch.bfloat16)
            tensors[name] = t.cpu()
            total += t.numel() * 2
        file = f"model-{part}.safetensors"
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/gptq8b")
    ap.add_argument("--out", default=".")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tiny", action="store_true", help="small dimensions on the CPU: a dry run of the script")
    args = ap.parse_args()
    device = "cpu" if args.tiny else "cuda"
    dims = TINY if args.tiny else LLAMA_3_8B
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    size = make_checkpoint(work / "src", args.layers, dims, device)
    made_s = time.perf_counter() - t0
    print(f"checkpoint: {size / 1e9:.2f} GB in {made_s:.0f} s", flush=True)
    ids = torch.randint(0, dims["vocab_size"], (args.samples, args.seq_len), generator=torch.Generator().manual_seed(0))
    blocks: list[float] = []
    if not args.tiny:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out, quantizer = lowbit.quantize_calibrated(
        work / "src", work / "out", lowbit.config("gptq", bits=4, group_size=128), ids=ids, device=device,
        batch_size=args.batch_size, log=lambda line: (line.startswith("block") and blocks.append(float(line.split()[2])), print(line, flush=True)))
    total_s = time.perf_counter() - t0
    row = {
        "device": torch.cuda.get_device_name() if not args.tiny else "cpu (dry run)", "torch": torch.__version__, "date": datetime.date.today().isoformat(),
        "layers": args.layers, "checkpoint_gb": round(size / 1e9, 2), "samples": args.samples, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "total_s": round(total_s, 1), "blocks_s": round(sum(blocks), 1),
        "mean_block_s": round(sum(blocks) / len(blocks), 2), "max_block_s": round(max(blocks), 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if not args.tiny else None,
        "output_gb": round(sum(p.stat().st_size for p in Path(out).glob("*.safetensors")) / 1e9, 2),
        "summary": quantizer.summary(), "per_block_s": blocks,
    }
    print(json.dumps({k: v for k, v in row.items() if k != "per_block_s"}, indent=1))
    name = row["device"]
    kind = name.split()[1].lower() if not args.tiny and " " in name else "dryrun"
    Path(args.out, f"gptq_gpu-{kind}-{row['date']}.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
