"""What ``lowbit fit`` may choose from, and what each choice costs in bytes.

A candidate is a registered method or alias (``int8``, ``int4``, ``nf4``, ``mxfp4``, ``fp8``, ...) or a method
name followed by its bits (``hqq4``, ``gptq3``, ``rtn4``), then optionally ``g`` and a group size (``int4g128``) and
``+`` switches that turn on the method's yes/no settings (``gptq3+act_order+mse``, ``nf4+double_quant``) or set a
number (``gptq3+fp_targets+fp_alpha=0.5``); ``g0`` is one scale per output channel (``gptq4g0+act_order``).
``group_size`` (when given) sets the group of every grouped candidate (``block_size`` of code books); per-channel
ones (``int8``) stay per channel. The layout reads
the checkpoint's skeleton on meta: which Linears a method quantizes, each candidate's format for each of them
(the candidate's own ``weight_format``, group-size fallbacks included), its stored bytes, and the bytes of every
tensor kept at full precision, as the output folder will hold them.
"""

from __future__ import annotations

import dataclasses
import math
import re

from torch import nn

from lowbit.config import CodebookConfig, IntGroupConfig, QuantConfig
from lowbit.errors import ConfigError
from lowbit.formats import WeightFormat
from lowbit.loading.checkpoint import Checkpoint
from lowbit.loading.engine import prepare
from lowbit.loading.plan import Plan
from lowbit.methods.mixed import BLOCK_WIDE
from lowbit.nn.holder import QuantHolder
from lowbit.registry import build_config, get, names

DEFAULT = ("int8", "int4", "int3")
BLOCK_WIDE_SWITCHES = {"awq_balance"}  # moves scales across the layers of a block, as the BLOCK_WIDE methods do
_MOST_PARTS = 4  # stored tensors of a quantized layer at most (codes, scales, zeros, g_idx)
_ENTRY = 96  # bytes of a header entry beside its name: '"": {"dtype": "F32", "shape": [..], "data_offsets": [..]},'
_GROUP = re.compile(r"(.+?)(?:g(\d+))?", re.DOTALL)
_BITS = re.compile(r"([a-z_]+)([2-8])")
_IN_NAME = {"bits", "group_size"}  # given by the name itself (gptq3g64), not by a +setting


def fittable() -> list[str]:
    """Registered names that can be candidates (methods that quantize one layer on its own)."""
    return [n for n in names() if get(n).name not in BLOCK_WIDE]


def _switches(name: str, cfg: QuantConfig, switches: list[str]) -> QuantConfig:
    """``cfg`` with each named yes/no setting of its method turned on (``+act_order``) and each named number set
    (``+fp_alpha=0.5``); the model-wide ones of every method (``quantize_lm_head``, ``strict``) and those that act
    on a whole block are not per-layer choices."""
    model_wide = set(QuantConfig.field_names()) | BLOCK_WIDE_SWITCHES
    kinds = {f.name: {"bool": bool, "float": float, "int": int}.get(f.type if isinstance(f.type, str) else
                                                                    getattr(f.type, "__name__", ""))
             for f in dataclasses.fields(cfg) if f.name not in model_wide}
    flags = sorted(n for n, kind in kinds.items() if kind is bool)
    numbers = sorted(n for n, kind in kinds.items() if kind in (float, int) and n not in _IN_NAME)
    for switch in switches:
        flag, eq, value = switch.partition("=")
        if not eq and flag not in flags or eq and flag not in numbers:
            raise ConfigError(f"candidate {name!r}: {cfg.method} has no {'number' if eq else 'switch'} {flag!r}; "
                              f"expected one of {', '.join(['+' + f for f in flags] + [f'+{n}=N' for n in numbers])}")
        try:
            setting = kinds[flag](value) if eq else True
        except ValueError:
            raise ConfigError(f"candidate {name!r}: {flag}={value!r} is not a number; expected e.g. +{flag}="
                              f"{getattr(cfg, flag)}") from None
        cfg = cfg.replace(**{flag: setting})
    return cfg


def _build(name: str, group_size: int | None) -> QuantConfig:
    """``int4``, ``hqq3``, ``gptq4g128``, ``gptq3+act_order+mse``: a name, then optionally its bits, then optionally
    ``g`` and a group size (which wins over ``group_size``; ``g0``: per channel), then optionally ``+`` switches."""
    spec, *switches = name.split("+")
    head, group = _GROUP.fullmatch(spec).groups()
    m = _BITS.fullmatch(head)
    base, bits = (m.group(1), m.group(2)) if head not in names() and m else (head, None)
    if base not in names() or (bits and not issubclass(get(base).config_cls, IntGroupConfig)):
        raise ConfigError(f"unknown candidate {name!r}; expected a method or alias ({', '.join(fittable())}), "
                          "optionally with its bits, group size and switches (e.g. hqq4, gptq3, int4g64, "
                          "gptq4+act_order)")
    cfg = build_config(base, **({"bits": int(bits)} if bits else {}))
    group = int(group) if group else group_size
    if group == 0:  # one scale per output channel, as ``--group-size 0`` says elsewhere
        if not isinstance(cfg, IntGroupConfig):
            raise ConfigError(f"candidate {name!r}: g0 (one scale per output channel) needs an integer method; "
                              f"{cfg.method} stores blocks (give a block size such as g64)")
        cfg = cfg.replace(group_size=None)
    elif group is not None:
        if isinstance(cfg, CodebookConfig):
            cfg = cfg.replace(block_size=group)
        elif isinstance(cfg, IntGroupConfig) and cfg.group_size is not None:
            cfg = cfg.replace(group_size=group)
    return _switches(name, cfg, switches)


def parse_candidates(candidates: str | list[str] | tuple[str, ...] | None,
                     group_size: int | None = None) -> dict[str, QuantConfig]:
    """label → config, in the order given (``"int8,int4,gptq4"`` or a list)."""
    items = DEFAULT if candidates is None else candidates.split(",") if isinstance(candidates, str) else candidates
    items = [c.strip() for c in items if c.strip()]
    if not items:
        raise ConfigError("no candidates given; expected a comma-separated list such as int8,int4,int3")
    out: dict[str, QuantConfig] = {}
    for label in items:
        cfg = _build(label, group_size)
        if cfg.method in BLOCK_WIDE:
            raise ConfigError(f"candidate {label!r} ({cfg.method}) moves scales across the layers of a block and cannot "
                              f"be chosen per layer; expected one of {', '.join(fittable())}")
        out[label] = cfg
    return out


def _nbytes(fmt: WeightFormat, n: int, k: int) -> int:
    return sum(math.prod(shape) * dtype.itemsize for shape, dtype in fmt.expected_tensors(n, k).values())


@dataclasses.dataclass(frozen=True)
class Layout:
    """The quantized Linears of a checkpoint and what each candidate stores for them."""

    names: tuple[str, ...]  # quantized Linears, in model order
    shapes: dict[str, tuple[int, int]]  # name → (out, in)
    formats: dict[str, dict[str, WeightFormat]]  # label → name → format
    nbytes: dict[str, dict[str, int]]  # label → name → stored bytes
    kept_bytes: int  # every other tensor of the output (embeddings, norms, an untied head) in the output dtype
    dense_bits: int  # bits per weight of the checkpoint's own dtype (16 or 32)
    header_bytes: int  # an upper bound of the safetensors headers (a JSON entry per tensor)

    @property
    def params(self) -> int:
        return sum(n * k for n, k in self.shapes.values())

    def dense_bytes(self) -> int:
        """The output's size with every quantized Linear kept in the output dtype."""
        return self.kept_bytes + self.params * self.dense_bits // 8

    def bytes_of(self, plan: dict[str, str]) -> int:
        """Stored bytes of the quantized Linears under ``plan`` (name → label)."""
        return sum(self.nbytes[label][name] for name, label in plan.items())

    def bpw(self, plan: dict[str, str]) -> float:
        """Every stored bit over the quantized Linears' weights, as ``lowbit inspect`` and ``report`` count it."""
        return 8 * self.bytes_of(plan) / self.params


def layout(ckpt: Checkpoint, candidates: dict[str, QuantConfig], dtype=None) -> Layout:
    """Sizes of every candidate for every Linear that the first candidate's method would quantize."""
    first = next(iter(candidates.values()))
    job = prepare(ckpt, first, dtype=dtype, tie=True, calibrated=True)
    quantizer, model = job.quantizer, job.model
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantHolder) and n not in quantizer.tables}
    shapes = {n: m.weight_shape for n, m in layers.items()}
    plan = Plan(model, ckpt, quantizer, output=True)
    kept_items = [item for item in plan.items if item.layer is None]
    kept = sum(item.old.numel() * item.old.element_size() for item in kept_items)
    names_len = [len(item.name) for item in kept_items] + [len(n) + 8 for n in shapes for _ in range(_MOST_PARTS)]
    header = sum(n + _ENTRY for n in names_len) + 1024  # + metadata, padding and the length field
    formats: dict[str, dict[str, WeightFormat]] = {}
    for label, cfg in candidates.items():
        sub = get(cfg.method).quantizer_cls(cfg, calibrated=True)
        sub.model_type = quantizer.model_type
        formats[label] = {n: sub.weight_format(n, nn.Linear(k, o, bias=False, device="meta"))
                          for n, (o, k) in shapes.items()}
    nbytes = {label: {n: _nbytes(f, *shapes[n]) for n, f in fmts.items()} for label, fmts in formats.items()}
    return Layout(tuple(shapes), shapes, formats, nbytes, kept, job.dtype.itemsize * 8, header)
