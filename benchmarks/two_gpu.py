"""Two GPUs: an int4 model split over both cards by an accelerate device map generates what one card generates.

Writes a random Llama-3-8B-shaped checkpoint (``--layers`` decoder layers, bf16 safetensors) to ``--work``, loads
it with ``lowbit.from_pretrained(..., quantization=int4 g128)`` once on ``cuda:0`` and once with a ``device_map``
that accelerate computes from the packed sizes and a ``max_memory`` that leaves room on GPU 0 for the embedding
and about half the decoder layers. ``device_map="auto"`` balances first (as transformers does), and accelerate
keeps room for the largest module (the bf16 head) on every GPU; on this model that puts only the embedding on
GPU 0. So the split run uses ``device_map="sequential"``, which fills GPU 0 up to its ``max_memory`` and goes on
to GPU 1; ``--device-map auto`` runs the balanced placement instead. Both generate ``--tokens`` tokens greedily
(transformers ``generate``, dynamic cache, eager) from the same prompt; the outputs must match token for token. Reports tok/s of both.

    PYTHONPATH=src python benchmarks/two_gpu.py --out DIR [--work /tmp/lowbit-2gpu] [--layers 16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402


def write_checkpoint(path: Path, layers: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (path / "config.json").exists():
        return
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda:0"):
        model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


@torch.inference_mode()
def generate(model, prompt: torch.Tensor, tokens: int) -> tuple[torch.Tensor, float]:
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    model.generate(prompt, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(prompt, **kw)
    torch.cuda.synchronize()
    return out[:, prompt.shape[1]:].cpu(), tokens * prompt.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lowbit-2gpu"))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--device-map", default="sequential", choices=["sequential", "auto"])
    args = ap.parse_args()
    gpus = torch.cuda.device_count()
    result = {"date": datetime.date.today().isoformat(), "gpus": gpus,
              "device": torch.cuda.get_device_name() if gpus else "none", "layers": args.layers}
    if gpus < 2:
        raise SystemExit(f"two_gpu.py needs 2 GPUs, found {gpus}; run it on a two-GPU machine")
    write_checkpoint(args.work, args.layers)
    cfg = lowbit.config("int4", group_size=128)
    prompt = torch.randint(0, 128256, (1, 16), generator=torch.Generator().manual_seed(1))

    one = lowbit.from_pretrained(args.work, quantization=cfg, device="cuda:0")
    packed = lowbit.inspect(one).total_bytes
    embed = one.get_input_embeddings().weight.nbytes
    head = one.get_output_embeddings().weight.nbytes  # accelerate keeps room for the largest module on each GPU
    layers = packed - embed - head
    ref, tps_one = generate(one, prompt.to("cuda:0"), args.tokens)
    again, _ = generate(one, prompt.to("cuda:0"), args.tokens)
    seq = torch.cat([prompt, ref], 1).to("cuda:0")
    with torch.inference_mode():
        logits_one = one(seq).logits.float().cpu()
    del one
    torch.cuda.empty_cache()

    half = f"{(head + embed + layers // 2) // 2**20}MiB"
    two = lowbit.from_pretrained(args.work, quantization=cfg, device_map=args.device_map,
                                 max_memory={0: half, 1: "60GiB"})
    placed = sorted({str(t.device) for t in [*two.parameters(), *two.buffers()]})
    layer_devices = {str(next(layer.parameters()).device) for layer in two.model.layers}
    split = {d: sum(str(next(layer.parameters()).device) == d for layer in two.model.layers)
             for d in sorted(layer_devices)}
    kernels = sorted({m.kernel.name for m in two.modules() if getattr(m, "kernel", None) is not None})
    got, tps_two = generate(two, prompt.to(two.get_input_embeddings().weight.device), args.tokens)
    with torch.inference_mode():
        logits_two = two(seq.to(two.get_input_embeddings().weight.device)).logits.float().cpu()
    same = torch.equal(got, ref)
    first_diff = None if same else int((got != ref).nonzero()[0, 1]) if got.shape == ref.shape else "shape"
    # teacher-forced on the same tokens: how close the two placements' logits are, whatever greedy picked
    agree = (logits_one.argmax(-1) == logits_two.argmax(-1)).float().mean().item()
    top2 = logits_one.topk(2, -1).values
    result.update({"model_bytes": packed, "device_map": args.device_map, "max_memory_gpu0": half,
                   "devices_used": placed, "decoder_layers_per_device": split, "kernels": kernels,
                   "tokens": args.tokens, "same_tokens": same, "first_difference_at": first_diff,
                   "one_gpu_repeats_itself": torch.equal(again, ref),
                   "teacher_forced_argmax_agreement": round(agree, 4),
                   "teacher_forced_max_abs_logit_diff": round((logits_one - logits_two).abs().max().item(), 5),
                   "median_top1_top2_gap": round((top2[..., 0] - top2[..., 1]).median().item(), 5),
                   "tok_s_one_gpu": round(tps_one, 1), "tok_s_two_gpus": round(tps_two, 1)})
    args.out.mkdir(parents=True, exist_ok=True)
    from lowbit.kernels.triton import tune

    path = args.out / f"two_gpu-{tune.device_slug()}x2-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print("wrote", path)
    if not same or len(layer_devices) < 2:
        raise SystemExit("FAILED: " + ("greedy outputs differ" if not same else f"decoder layers not split: {split}"))


if __name__ == "__main__":
    main()
