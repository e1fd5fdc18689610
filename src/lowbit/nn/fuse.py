"""Fused projections: quantized Linears that read the same input (q/k/v, gate/up) run as one kernel launch.

Which Linears share an input comes from the architecture data (``archs.py``: the Linears of one ``Balance``
group all read ``prev``'s output). A fused group holds one QuantLinear over the members' stacked output rows;
the members keep their own tensors as row views into it, so memory does not grow and ``state_dict`` and saving
are unchanged. The first member called with an input runs the fused layer and keeps the other members'
slices until they are asked for with that same input; any other input runs the fused layer afresh.

Fusion is a step for inference after loading: moving the model (``.to``) or loading new tensors into a member
undoes it, and :func:`fuse_projections` can be called again.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from lowbit.archs import arch_info
from lowbit.nn.quant_linear import QuantLinear


class FusedGroup:
    """One QuantLinear over the concatenated output rows of ``members``; each member's forward reads its slice."""

    def __init__(self, members: list[QuantLinear], linear: QuantLinear) -> None:
        self.members, self.linear = members, linear
        self.sizes = [m.out_features for m in members]
        self._x: torch.Tensor | None = None
        self._outs: tuple[torch.Tensor, ...] | None = None
        self._left = 0

    def output(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._outs is None or self._x is not x:
            self._x, self._outs = x, self.linear(x).split(self.sizes, dim=-1)
            self._left = len(self.sizes)
        out = self._outs[index]
        self._left -= 1
        if self._left == 0:  # every member has its slice: hold no activations between calls
            self._x = self._outs = None
        return out


def fuse_projections(model: nn.Module) -> list[str]:
    """Fuse each block's sibling projections (q/k/v, gate/up) into one launch; returns the fused groups' names.

    A group is fused when its members are quantized Linears with the same format, input size, device, compute
    dtype and kernel, and every tensor of that kernel is stored row by row (in the kernel's row blocks, which each
    member's rows must fill); other groups stay as they are.
    """
    from lowbit.archs import find_blocks

    info = arch_info(getattr(getattr(model, "config", None), "model_type", None))
    groups = [g.linears for g in info.balance if len(g.linears) > 1]
    if not groups:
        return []
    path, blocks = find_blocks(model)
    done = []
    for i, block in enumerate(blocks):
        for names in groups:
            members = [_get(block, n) for n in names]
            if all(isinstance(m, QuantLinear) for m in members) and _fuse(members, names):
                done.append(f"{path}.{i}.{{{','.join(names)}}}")
    return done


def _get(block: nn.Module, name: str) -> nn.Module | None:
    try:
        return block.get_submodule(name)
    except AttributeError:
        return None


def _fuse(members: list[QuantLinear], names: tuple[str, ...]) -> bool:
    first = members[0]
    for m in members:
        if m.kernel is None:
            m.prepare()
    # the kernel and compute dtype are the fused layer's own choice (measured for its shape on the CPU)
    same = {(m.fmt.key(), m.in_features, str(m.compute_choice), m.forced_kernel) for m in members}
    if len(same) > 1 or any(m.tied_to is not None or m.fused is not None for m in members):
        return False
    if any(m.out_features % first.kernel.row_block for m in members):  # a member would start inside a row block
        return False
    canon = [m.canonical_tensors() for m in members]
    device = canon[0]["qweight"].device
    if any(c["qweight"].device != device for c in canon) or \
            not all(_row_wise(c[name], m.out_features) for c, m in zip(canon, members) for name in c):
        return False
    n = sum(m.out_features for m in members)
    linear = QuantLinear(first.in_features, n, any(m.bias is not None for m in members), first.fmt, device,
                         first.compute_dtype)
    layout = first.fmt.expected_tensors(n, first.in_features)
    stacked = {name: torch.cat([c[name] for c in canon]) for name in canon[0]}
    if any(tuple(t.shape) != layout[name][0] for name, t in stacked.items()):
        return False
    linear.load_quantized(stacked)
    if linear.bias is not None:
        biases = [m.bias if m.bias is not None else torch.zeros(m.out_features, device=device) for m in members]
        linear.bias = nn.Parameter(torch.cat([b.to(first.compute_dtype) for b in biases]), requires_grad=False)
    linear.prepare(first.compute_choice, first.forced_kernel, first.model_dtype)
    if not all(_row_wise(t, n) for t in linear._prepared.values()):
        return False
    group = FusedGroup(members, linear)
    lo = 0
    short = [name.rsplit(".", 1)[-1] for name in names]
    for index, m in enumerate(members):
        hi = lo + m.out_features
        m._prepared = {k: _rows(t, lo, hi, n) for k, t in linear._prepared.items()}
        for name in m.tensor_names():
            m._buffers[name] = None if name in linear._dropped else _rows(linear._buffers[name], lo, hi, n)
        m._dropped = set(linear._dropped)
        m.kernel, m.compute_dtype = linear.kernel, linear.compute_dtype
        m.request = dataclasses.replace(linear.request, n=m.out_features)
        others = ", ".join(x for j, x in enumerate(short) if j != index)
        m.kernel_reason = f"{linear.kernel_reason} (fused with {others})"
        m.fused = (group, index)
        lo = hi
    return True


def _row_wise(t: torch.Tensor, n: int) -> bool:
    """Stored row by row: [n, ...], or flat with the same number of entries for every row."""
    return (t.dim() >= 1 and t.shape[0] == n) or (t.dim() == 1 and t.numel() % n == 0)


def _rows(t: torch.Tensor, lo: int, hi: int, n: int) -> torch.Tensor:
    if t.shape[0] == n:
        return t[lo:hi]
    per = t.numel() // n
    return t[lo * per:hi * per]
