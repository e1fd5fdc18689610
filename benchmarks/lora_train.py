"""LoRA on a quantized base (QLoRA-style): lowbit int4 g128 and nf4 against bitsandbytes nf4, same seed and data.

The ``dense`` row trains the same LoRA on the unquantized model: the reference the quantized rows should follow.

Gemma-3-270M (``lowbit.realmodels``), LoRA r=16 (alpha 32, no dropout) on every Linear but the output head,
AdamW, ``--steps`` steps on windows of ``wiki.calib.txt`` (seeded: every row sees the same windows in the same
order), the mean loss over fixed windows of ``wiki.eval.txt`` before, every 50 steps and after. Each row runs in its own process:
seconds per step (median, and the total), peak memory while training (CPU: the process's peak RSS, reset after
loading through /proc/self/clear_refs; CUDA: torch's peak allocation) and while loading.

    python benchmarks/lora_train.py                        # CPU, every row
    python benchmarks/lora_train.py --rows lowbit-nf4 --steps 20
    python benchmarks/lora_train.py --device cuda --random-init --tokens toks.safetensors   # no model files there

bitsandbytes is installed for this benchmark only (``pip install bitsandbytes``; a row that cannot import it, or
whose backend cannot run on the device, is reported as not run with the reason). ``--random-init`` builds the
model from its config.json with seeded weights (for a machine without the weights: speed and memory only, the
losses then say nothing about the pretrained model); ``--tokens`` reads the token ids made by ``--save-tokens``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import describe_device, device_line, print_table, write_results  # noqa: E402

ROWS = ("dense", "lowbit-int4", "lowbit-nf4", "bnb-nf4")
EVAL_EVERY = 50  # steps between evaluations on the eval windows (the loss curve)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {ROWS}")
    p.add_argument("--model", default="gemma-3-270m", help="a lowbit.realmodels name, or a model folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seq", type=int, default=128, help="tokens per training and evaluation window")
    p.add_argument("--batch", type=int, default=2, help="windows per step")
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    p.add_argument("--random-init", action="store_true", help="seeded random weights from config.json")
    p.add_argument("--tokens", default=None, help="token ids saved by --save-tokens (no tokenizer needed)")
    p.add_argument("--save-tokens", default=None, help="write the calib/eval token ids to this file and stop")
    p.add_argument("--out", default=None, help="folder for the JSON (default benchmarks/results)")
    p.add_argument("--tag", default="", help="appended to the result file's name")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    return p.parse_args(argv)


# ---- data -----------------------------------------------------------------------------------------------------

def model_folder(name: str) -> Path:
    if Path(name).is_dir():
        return Path(name)
    from lowbit.realmodels import model_path

    return Path(model_path(name))


def token_ids(args) -> dict[str, torch.Tensor]:
    if args.tokens:
        from safetensors.torch import load_file

        return load_file(args.tokens)
    from transformers import AutoTokenizer

    from lowbit.data import text_path

    tok = AutoTokenizer.from_pretrained(model_folder(args.model))
    return {name: torch.tensor(tok(text_path(f"wiki.{name}.txt").read_text(encoding="utf-8"))["input_ids"])
            for name in ("calib", "eval")}


def windows(ids: torch.Tensor, seq: int) -> torch.Tensor:
    n = len(ids) // seq
    return ids[: n * seq].reshape(n, seq)


# ---- one row --------------------------------------------------------------------------------------------------

def random_folder(src: Path, seed: int) -> Path:
    """A folder with src's config.json and seeded random weights (N(0, 0.02), norms at 1)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(tempfile.gettempdir()) / f"lora-random-{src.name}-{seed}"  # made once, shared by the rows
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.zeros_like(p) if "norm" in name else torch.randn_like(p) * 0.02)
    model.save_pretrained(out.with_name(out.name + ".tmp"))
    out.with_name(out.name + ".tmp").rename(out)
    return out


def load(row: str, folder: Path, device: str):
    import peft

    config = peft.LoraConfig(r=ARGS.rank, lora_alpha=2 * ARGS.rank, lora_dropout=0.0, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    if row.startswith("lowbit"):
        import lowbit
        import lowbit.training

        quant = lowbit.config("int4", group_size=128) if row == "lowbit-int4" else lowbit.config("nf4")
        model = lowbit.from_pretrained(folder, quantization=quant, device=device)
        layer = next(m for m in model.modules() if type(m).__name__ == "QuantLinear")
        return lowbit.training.get_peft_model(model, config), f"{quant.method} {layer.fmt.describe()}, {layer.kernel.name}"
    from transformers import AutoModelForCausalLM

    if row == "dense":  # the reference: LoRA on the unquantized model, in the dtype the lowbit rows compute in
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device)
        return peft.get_peft_model(model, config), f"unquantized {str(dtype).removeprefix('torch.')}"
    import bitsandbytes  # noqa: F401  (installed for this benchmark only)
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=bnb, dtype=torch.float32,
                                                 device_map=device)
    return peft.get_peft_model(model, config), f"bitsandbytes {bitsandbytes.__version__} nf4 b64, compute {compute}"


def mean_loss(model, batches: torch.Tensor, device: str) -> float:
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=b[None].to(device), labels=b[None].to(device)).loss.item() for b in batches]
    return statistics.fmean(losses)


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_row(row: str) -> dict:
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    device = ARGS.device
    ids = token_ids(ARGS)
    train_w, eval_w = windows(ids["calib"], ARGS.seq), windows(ids["eval"], ARGS.seq)[: ARGS.eval_windows]
    gen = torch.Generator().manual_seed(ARGS.seed)
    order = torch.randint(0, len(train_w), (ARGS.steps, ARGS.batch), generator=gen)
    folder = model_folder(ARGS.model)
    if ARGS.random_init:
        folder = random_folder(folder, ARGS.seed)
    torch.manual_seed(ARGS.seed)
    start = time.perf_counter()
    model, what = load(row, folder, device)
    load_s, load_peak = time.perf_counter() - start, peak_mib(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    before = mean_loss(model, eval_w, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=ARGS.lr)
    reset_peak(device)
    model.train()
    times, train_losses, curve = [], [], {0: round(before, 4)}
    for step in range(ARGS.steps):
        batch = train_w[order[step]].to(device)
        sync(device)
        t = time.perf_counter()
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
        train_losses.append(loss.item())
        if (step + 1) % EVAL_EVERY == 0 and step + 1 < ARGS.steps:
            curve[step + 1] = round(mean_loss(model, eval_w, device), 4)
            model.train()
    train_peak = peak_mib(device)
    after = mean_loss(model, eval_w, device)
    curve[ARGS.steps] = round(after, 4)
    return {"row": row, "what": what, "eval_loss_before": round(before, 4), "eval_loss_after": round(after, 4),
            "falls": after < before, "train_loss_first10": round(statistics.fmean(train_losses[:10]), 4),
            "train_loss_last10": round(statistics.fmean(train_losses[-10:]), 4),
            "s_per_step_median": round(statistics.median(times), 3), "train_s": round(sum(times), 1),
            "peak_train_mib": round(train_peak, 1), "peak_load_mib": round(load_peak, 1), "load_s": round(load_s, 1),
            "trainable_params": trainable, "steps": ARGS.steps, "batch": ARGS.batch, "seq": ARGS.seq,
            "lr": ARGS.lr, "rank": ARGS.rank, "seed": ARGS.seed, "eval_tokens": int(eval_w.numel()),
            "eval_curve": curve,
            "random_init": ARGS.random_init}


def run_in_subprocess(row: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--row", row], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"row": row, "not_run": reason[:300]}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    global ARGS
    argv = list(sys.argv[1:] if argv is None else argv)
    ARGS = parse_args(argv)
    if ARGS.save_tokens:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in token_ids(ARGS).items()}, ARGS.save_tokens)
        return 0
    if ARGS.row:
        print(json.dumps(run_row(ARGS.row)))
        return 0
    rows = []
    for row in ARGS.rows.split(","):
        rows.append(run_in_subprocess(row, argv))
        print(json.dumps(rows[-1]), flush=True)
    device = describe_device()
    print(device_line(device))
    print_table(rows, ["row", "eval_loss_before", "eval_loss_after", "falls", "s_per_step_median", "train_s",
                       "peak_train_mib", "peak_load_mib", "not_run"], title="LoRA r=16 on every Linear")
    tag = f"-{ARGS.tag}" if ARGS.tag else ""
    path = write_results(f"lora_train{tag}", rows, device, **({"results_dir": ARGS.out} if ARGS.out else {}))
    print(f"wrote {path}")
    return 0


ARGS: argparse.Namespace

if __name__ == "__main__":
    raise SystemExit(main())
