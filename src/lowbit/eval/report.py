"""Per-layer quality report: weight SQNR, relative output error and bits per weight of every quantized Linear,
plus model perplexity before and after quantization.

``layer_report`` composes three reusable steps (mixed-precision search calls them per candidate config):
``calibration_ids`` (text → token batches), ``capture_inputs`` (fp32 model → a bounded, seeded pick of each
layer's input rows) and ``measure_layers`` (fp32 vs quantized layer on those rows). The quantized layer runs its
own forward, so its ``compute_dtype`` (bf16 on CPUs with bf16 units) is part of the measured error; pass
``compute_dtype="float32"`` in the config to see the weight error alone.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.data.text import adds_bos, encode
from lowbit.errors import ConfigError, DependencyError
from lowbit.eval.perplexity import PerplexityResult, perplexity
from lowbit.nn import QuantLinear

__all__ = ["LayerQuality", "LayerReport", "calibration_ids", "capture_inputs", "layer_report",
           "measure_layers", "require_matplotlib"]

PLOT_PIP = "pip install 'lowbit[plot]'"



@dataclasses.dataclass(frozen=True)
class LayerQuality:
    name: str
    format: str
    shape: tuple[int, int]
    params: int
    bits_per_weight: float
    sqnr_db: float  # fp32 weight vs its dequantized copy; inf when exact
    output_error: float  # ||Y_q - Y|| / ||Y|| on the captured input rows


@dataclasses.dataclass(frozen=True)
class LayerReport:
    model: str  # the checkpoint path
    config: dict[str, Any]
    layers: tuple[LayerQuality, ...]
    calib_tokens: int  # tokens run through the fp32 model
    rows: int  # input rows per layer the output errors are measured on
    fp32: PerplexityResult | None = None
    quantized: PerplexityResult | None = None
    note: str = ""  # why there is no perplexity, when there is none

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def mean_bits_per_weight(self) -> float:
        """Over the quantized layers, weighted by their parameter counts."""
        return sum(x.bits_per_weight * x.params for x in self.layers) / max(self.params, 1)

    @property
    def ppl_delta(self) -> float | None:
        return None if self.fp32 is None or self.quantized is None else self.quantized.ppl - self.fp32.ppl

    @property
    def ppl_delta_pct(self) -> float | None:
        delta = self.ppl_delta
        return None if delta is None else 100 * delta / self.fp32.ppl

    def worst(self, n: int = 5) -> list[LayerQuality]:
        """The ``n`` layers with the largest relative output error (a non-finite error counts as the largest)."""
        return sorted(self.layers, key=lambda x: -x.output_error if math.isfinite(x.output_error) else -math.inf)[:n]

    def summary(self) -> str:
        fmt = ", ".join(sorted({x.format for x in self.layers}))
        line = (f"{Path(self.model).name}: {fmt}, {self.mean_bits_per_weight:.3f} bits/weight over "
                f"{len(self.layers)} layers ({self.params / 1e6:.2f}M params); ")
        if self.ppl_delta is None:
            line += f"no perplexity ({self.note})"
        else:
            line += (f"perplexity {self.fp32.ppl:.2f} -> {self.quantized.ppl:.2f} ({self.ppl_delta:+.2f}, "
                     f"{self.ppl_delta_pct:+.1f}%) on {self.quantized.tokens} tokens")
        worst = ", ".join(f"{x.name} {x.output_error:.4f}" for x in self.worst(3))
        return f"{line}; worst output error: {worst}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for layer in out["layers"]:  # JSON has no inf/nan
            for key in ("sqnr_db", "output_error"):
                layer[key] = layer[key] if math.isfinite(layer[key]) else str(layer[key])
        out.update(params=self.params, mean_bits_per_weight=self.mean_bits_per_weight, ppl_delta=self.ppl_delta,
                   ppl_delta_pct=self.ppl_delta_pct, worst=[x.name for x in self.worst()])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerReport:
        fields = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in fields}
        layers = tuple(LayerQuality(**{**x, "shape": tuple(x["shape"]), "sqnr_db": float(x["sqnr_db"]),
                                       "output_error": float(x["output_error"])}) for x in data.pop("layers"))
        ppl = {k: PerplexityResult(**data.pop(k)) if data.get(k) else data.pop(k, None) for k in ("fp32", "quantized")}
        return cls(layers=layers, **ppl, **data)


def require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise DependencyError(f"plotting needs the package 'matplotlib', which is not installed; run: {PLOT_PIP}")


def _positive(name: str, value: Any, minimum: int, example: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}={value!r} is invalid; expected an int >= {minimum}; pass e.g. {name}={example}")


def calibration_ids(tokenizer: Any, text: str, samples: int = 4, seq_len: int = 512) -> torch.Tensor:
    """Consecutive ``seq_len``-token windows from the start of ``text`` (BOS first if the tokenizer adds one)."""
    _positive("samples", samples, 1, 4)
    _positive("seq_len", seq_len, 2, 512)
    bos = [int(tokenizer.bos_token_id)] if adds_bos(tokenizer) else []
    per = seq_len - len(bos)
    ids = encode(tokenizer, text[:samples * per * 12])
    if len(ids) < samples * per and len(text) > samples * per * 12:
        ids = encode(tokenizer, text)
    got = min(samples, len(ids) // per)
    if got == 0:
        raise ConfigError(f"the calibration text gives {len(ids)} tokens, fewer than one window of seq_len={seq_len}; "
                          f"expected at least {per}; pass a longer text or a smaller seq_len")
    if got < samples:
        warnings.warn(f"the calibration text fills {got} of samples={samples} windows of {seq_len} tokens; using {got}",
                      stacklevel=2)
    return torch.tensor([bos + ids[i * per:(i + 1) * per] for i in range(got)], dtype=torch.long)


def seeded_rows(total: int, max_rows: int, seed: int) -> torch.Tensor:
    """The same seeded pick of ≤ ``max_rows`` of ``total`` token positions, in order, wherever rows are sampled."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values


def capture_inputs(model: nn.Module, calib_ids: torch.Tensor, names: list[str], max_rows: int = 512,
                   seed: int = 0, progress: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model`` on each row of ``calib_ids``; keep the same seeded pick of ≤ ``max_rows`` input rows per layer.

    Returns name → [rows, in_features] float32; layers that read the same input share one tensor.
    """
    _positive("max_rows", max_rows, 1, 512)
    keep = seeded_rows(calib_ids.numel(), max_rows, seed)
    rows: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # q/k/v share one input tensor: pick its rows once
    offset = 0

    def hook(name: str):
        def fn(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0]
            if id(x) not in seen:
                local = keep[(keep >= offset) & (keep < offset + x.shape[:-1].numel())] - offset
                seen[id(x)] = (x, x.reshape(-1, x.shape[-1])[local.to(x.device)].float())
            rows[name].append(seen[id(x)][1])
        return fn

    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for sample in tqdm(calib_ids, desc="capturing inputs", unit="sample", disable=not progress):
                model(input_ids=sample[None].to(device))
                seen.clear()
                offset += sample.numel()
    finally:
        for h in handles:
            h.remove()
    joined: dict[tuple[int, ...], torch.Tensor] = {}  # layers that read the same inputs share one tensor
    for parts in filter(None, rows.values()):  # a layer the forward never reaches is left out
        if tuple(map(id, parts)) not in joined:
            joined[tuple(map(id, parts))] = torch.cat(parts)
    return {name: joined[tuple(map(id, parts))] for name, parts in rows.items() if parts}


def _sqnr_db(w: torch.Tensor, wq: torch.Tensor) -> float:
    noise = (w.double() - wq.double()).pow(2).sum()
    return float(10 * torch.log10(w.double().pow(2).sum() / noise)) if noise > 0 else math.inf


def measure_layers(reference: nn.Module, quantized: nn.Module, inputs: dict[str, torch.Tensor],
                   progress: bool = False) -> list[LayerQuality]:
    """SQNR, relative output error on ``inputs[name]``, bits per weight of each QuantLinear in ``inputs``."""
    ref_modules, q_modules = dict(reference.named_modules()), dict(quantized.named_modules())
    out = []
    with torch.inference_mode():
        for name, x in tqdm(inputs.items(), desc="measuring layers", unit="layer", disable=not progress):
            ref, q = ref_modules[name], q_modules[name]
            y = ref(x.to(ref.weight.dtype)).double()
            err = float((q(x).double() - y).norm() / y.norm()) if y.norm() > 0 else math.nan
            wq = q.fmt.decode(q.canonical_tensors(), torch.float32)
            n, k = q.weight_shape
            out.append(LayerQuality(name, q.fmt.describe(), (n, k), n * k, q.bits_per_weight(),
                                    _sqnr_db(ref.weight, wq), err))
    return out


def _check_ids(config: dict, ids: torch.Tensor) -> None:
    vocab = config.get("vocab_size")
    if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int32) or ids.numel() == 0:
        raise ConfigError(f"calib_ids has shape {list(ids.shape)} {ids.dtype}; expected a non-empty integer tensor "
                          "[samples, seq_len]; pass token ids as torch.long")
    if vocab and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ConfigError(f"calib_ids holds ids in [{int(ids.min())}, {int(ids.max())}]; expected 0 <= id < "
                          f"vocab_size={vocab}; tokenize with the model's own tokenizer")


def layer_report(path: str | Path, quantization: QuantConfig | str, *, tokenizer: Any = None,
                 calib_text: str | None = None, calib_ids: torch.Tensor | None = None, eval_text: str | None = None,
                 samples: int = 4, seq_len: int = 512, eval_tokens: int = 8192, ctx: int = 512,
                 max_rows: int = 512, seed: int = 0, device: str = "cpu", reference: nn.Module | None = None,
                 progress: bool = False) -> LayerReport:
    """Quantize the checkpoint at ``path`` with ``quantization`` and measure every quantized Linear against fp32.

    Calibration: ``calib_ids`` [samples, seq_len] directly, or ``calib_text`` with ``tokenizer`` (loaded from
    ``path`` when None). Perplexity on ``eval_text`` (first ``eval_tokens`` tokens) for causal LMs when both are
    given and ``eval_tokens > 0``. ``reference``: an fp32 model of ``path`` already in memory, to reuse.
    """
    from lowbit.loading.checkpoint import open_checkpoint
    from lowbit.loading.pipeline import from_pretrained
    from lowbit.loading.tokenizer import load_tokenizer
    from lowbit.registry import build_config

    for name, value, minimum, example in (("samples", samples, 1, 4), ("seq_len", seq_len, 2, 512),
                                          ("max_rows", max_rows, 1, 512), ("eval_tokens", eval_tokens, 0, 8192),
                                          ("ctx", ctx, 2, 512)):
        _positive(name, value, minimum, example)
    if calib_ids is None and calib_text is None:
        raise ConfigError("layer_report got neither calib_ids nor calib_text; expected one; pass calib_text=...")
    quantization = build_config(quantization) if isinstance(quantization, str) else quantization
    config = open_checkpoint(path).config
    if "quantization_config" in config:
        raise ConfigError(f"{path} is already quantized; expected a full-precision checkpoint to compare against; "
                          "pass the folder it was quantized from")
    max_pos = config.get("max_position_embeddings")
    length = seq_len if calib_ids is None else calib_ids.shape[-1]
    if max_pos and length > max_pos:
        raise ConfigError(f"seq_len={length} is longer than the model's max_position_embeddings={max_pos}; "
                          f"expected <= {max_pos}; pass a smaller seq_len")
    if tokenizer is None and (calib_ids is None or (eval_text is not None and eval_tokens > 0)):
        tokenizer = load_tokenizer(path)
    if calib_ids is None:
        calib_ids = calibration_ids(tokenizer, calib_text, samples, seq_len)
    _check_ids(config, calib_ids)
    ref = reference if reference is not None else from_pretrained(path, device=device, dtype=torch.float32,
                                                                   progress=progress)
    model = from_pretrained(path, quantization=quantization, device=device, dtype=torch.float32, progress=progress)
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    inputs = capture_inputs(ref, calib_ids, names, max_rows, seed, progress=progress)
    layers = measure_layers(ref, model, inputs, progress=progress)
    fp32 = quantized = None
    causal = hasattr(model, "can_generate") and model.can_generate()
    if not causal:
        note = f"{type(model).__name__} predicts no next token"
    elif eval_tokens == 0 or eval_text is None:
        note = "skipped: eval_tokens=0" if eval_tokens == 0 else "skipped: no eval text"
    else:
        note = ""
        fp32 = perplexity(ref, tokenizer, eval_text, ctx=ctx, max_tokens=eval_tokens, progress=progress)
        quantized = perplexity(model, tokenizer, eval_text, ctx=ctx, max_tokens=eval_tokens, progress=progress)
    cfg = model.lowbit_quantizer.config
    return LayerReport(model=str(path), config=cfg.to_dict(), layers=tuple(layers),
                       calib_tokens=calib_ids.numel(), rows=min(max_rows, calib_ids.numel()), fp32=fp32,
                       quantized=quantized, note=note)
