"""Moving a per-input-channel scale between a block's Linears and the module before them (AWQ, SmoothQuant).

The groups come from the architecture data (``lowbit.archs``, ``Balance``): Linears that read the output of
``prev``. Folding ``s`` divides prev's output by ``s`` (a norm's weight and bias, honoring ``norm_offset``;
a Linear's rows and bias) and multiplies the Linears' weight columns by ``s``: the block computes the same
function, while the Linears' weights (and their inputs) change, which is what the methods want.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from lowbit.archs import ArchInfo, arch_info, balanced_archs
from lowbit.calibration.inputs import BlockInputs, _first
from lowbit.errors import CalibrationError


@dataclasses.dataclass
class Group:
    """One ``Balance`` entry resolved in a block: modules, and their names in the model."""

    prev_name: str
    prev: nn.Module
    linears: dict[str, nn.Linear]  # every Linear reading prev's output, by full name
    inspect_name: str | None
    inspect: nn.Module | None  # the module whose output judges a scale; None: the Linears themselves
    norm_offset: float


def balance_groups(block: nn.Module, prefix: str, model_type: str | None, quantized: Iterable[str],
                   method: str) -> list[Group]:
    """The block's groups whose Linears are quantized and whose prev's outputs are the Linears' inputs.

    A group is left out when none of its Linears is quantized, or when prev's output width differs from the
    Linears' input width (GQA: v_proj gives fewer channels than o_proj reads); an architecture without any
    ``Balance`` data is an error naming the supported ones.
    """
    info = require_balance(model_type, method)
    quantized = set(quantized)
    groups = []
    for entry in info.balance:
        prev = _module(block, prefix, entry.prev, method)
        linears = {f"{prefix}.{n}": _module(block, prefix, n, method) for n in entry.linears}
        if not quantized.intersection(linears):
            continue
        width = prev.out_features if isinstance(prev, nn.Linear) else _norm_width(prev, f"{prefix}.{entry.prev}")
        if any(not isinstance(m, nn.Linear) or m.in_features != width for m in linears.values()):
            continue
        inspect = _module(block, prefix, entry.inspect, method) if entry.inspect else None
        groups.append(Group(f"{prefix}.{entry.prev}", prev, linears,
                            f"{prefix}.{entry.inspect}" if entry.inspect else None, inspect, info.norm_offset))
    return groups


def require_balance(model_type: str | None, method: str) -> ArchInfo:
    """The architecture data of ``model_type``; an error naming the supported ones when it has no Balance groups."""
    info = arch_info(model_type)
    if not info.balance:
        raise CalibrationError(f"{method} has no data for model type {model_type!r}; expected one of "
                               f"{balanced_archs()}; add an entry with Balance groups for it to ARCHS in lowbit/archs.py")
    return info


def _module(block: nn.Module, prefix: str, name: str, method: str) -> nn.Module:
    try:
        return block.get_submodule(name)
    except AttributeError:
        raise CalibrationError(f"{prefix} has no module {name!r}, which lowbit/archs.py names for {method}; expected "
                               "the architecture data to match the model's module names: correct its entry") from None


def _norm_width(norm: nn.Module, name: str) -> int:
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise CalibrationError(f"{name} ({type(norm).__name__}) has no per-channel weight to fold a scale into; "
                               "expected a norm with a weight or a Linear; remove its Balance entry in lowbit/archs.py")
    return weight.numel()


@torch.no_grad()
def fold(group: Group, s: torch.Tensor) -> None:
    """Divide prev's output by ``s`` and multiply the Linears' input columns by it (in float32)."""
    s = s.float().to(next(iter(group.linears.values())).weight.device)
    prev = group.prev
    if isinstance(prev, nn.Linear):
        _assign(prev.weight, prev.weight.float() / s[:, None])
    else:
        offset = group.norm_offset
        _assign(prev.weight, (offset + prev.weight.float()) / s - offset)
    if getattr(prev, "bias", None) is not None:
        _assign(prev.bias, prev.bias.float() / s)
    for linear in group.linears.values():
        _assign(linear.weight, linear.weight.float() * s[None, :])


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    param.data.copy_(value.to(param.dtype))


def group_inputs(block: nn.Module, inputs: BlockInputs, group: Group) -> tuple[list[torch.Tensor], list | None]:
    """One run of the block: the Linears' shared input per batch, and the (args, kwargs) of the inspect module."""
    first_name, first = next(iter(group.linears.items()))
    xs: list[torch.Tensor] = []
    calls: list | None = [] if group.inspect is not None else None
    modules = {first_name: first}
    if group.inspect is not None:
        modules[group.inspect_name] = group.inspect

    def record(name: str, args: tuple, kwargs: dict) -> None:
        if name == first_name:
            xs.append(args[0] if args else next(iter(kwargs.values())))
        else:
            calls.append((args, kwargs))

    with inputs.hooks(modules, record):
        inputs.run(block)
    return xs, calls


@torch.no_grad()
def group_outputs(group: Group, xs: list[torch.Tensor], calls: list | None) -> list[torch.Tensor]:
    """What judges a scale: the inspect module's outputs, or the Linears' outputs side by side."""
    if group.inspect is not None:
        return [_first(group.inspect(*args, **kwargs)) for args, kwargs in calls]
    return [torch.cat([linear(x) for linear in group.linears.values()], dim=-1) for x in xs]


def channel_stat(xs: list[torch.Tensor], how: str) -> torch.Tensor:
    """Per input channel over every token of every batch: ``mean`` or ``max`` of |x| (float32)."""
    total, count = None, 0
    for x in xs:
        a = x.reshape(-1, x.shape[-1]).float().abs()
        part = a.sum(0) if how == "mean" else a.amax(0)
        total = part if total is None else (total + part if how == "mean" else torch.maximum(total, part))
        count += a.shape[0]
    return total / count if how == "mean" else total
