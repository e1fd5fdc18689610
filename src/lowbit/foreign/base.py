"""What every foreign-format reader gives the loader: per quantized layer, the lowbit format it becomes, the foreign
tensors it reads, and the function that repacks them (once, at load) into that format's canonical tensors.

A reader (one module per source format: ``gptq``, ``awq``, ``bnb``, ``compressed_tensors``) gets a :class:`Peek`
over the checkpoint (names, shapes and dtypes from the headers; small tensors such as ``g_idx`` or bitsandbytes'
quant state read on demand) and the foreign ``quantization_config``, and returns a :class:`Translation`. It never
reads a large tensor up front: the loader streams each layer's tensors through :meth:`LayerMap.convert` when the
engine asks for them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import torch

from lowbit.errors import CheckpointError
from lowbit.formats import WeightFormat


class Peek(Protocol):
    """A checkpoint seen from its headers: ``keys``, ``shape(key)``, ``dtype(key)`` (safetensors names such as
    "I32", "F16"); ``read(key)`` reads one (small) tensor."""

    keys: list[str]

    def shape(self, key: str) -> list[int]: ...

    def dtype(self, key: str) -> str: ...

    def read(self, key: str) -> torch.Tensor: ...


@dataclasses.dataclass
class LayerMap:
    """One quantized layer of a foreign checkpoint: module ``name`` becomes ``fmt``; ``keys`` are its foreign tensors
    (role → checkpoint key); ``convert(role → tensor)`` gives the canonical tensors of ``fmt``. ``exact``: the
    canonical tensors decode to exactly the weights the source tool decodes; ``note`` says what differs if not."""

    name: str
    fmt: WeightFormat
    keys: dict[str, str]
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    exact: bool = True
    note: str = ""


@dataclasses.dataclass
class Translation:
    """A foreign checkpoint as lowbit sees it: ``source`` (gptq, awq, bitsandbytes, compressed-tensors), a one-line
    ``detail`` of its scheme, the quantized ``layers`` by module name, and ``renamed``: other checkpoint keys the
    model knows under another name (none for most sources)."""

    source: str
    detail: str
    layers: dict[str, LayerMap]
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)

    def owner(self) -> dict[str, tuple[str, str]]:
        """Foreign checkpoint key → (layer name, role) for every key a quantized layer reads."""
        return {key: (name, role) for name, layer in self.layers.items() for role, key in layer.keys.items()}


def layers_with(peek: Peek, suffix: str) -> list[str]:
    """The module names that own a tensor ``<module>.<suffix>``, in checkpoint order."""
    tail = "." + suffix
    return [k[: -len(tail)] for k in peek.keys if k.endswith(tail)]


def require(peek: Peek, name: str, roles: dict[str, str], source: str) -> dict[str, str]:
    """Role → key ``<name>.<suffix>`` for each role, each present in the checkpoint, else a one-line error."""
    keys = {role: f"{name}.{suffix}" for role, suffix in roles.items()}
    have = set(peek.keys)
    missing = [k for k in keys.values() if k not in have]
    if missing:
        raise CheckpointError(f"{source} layer {name} lacks {missing}; expected {sorted(roles.values())} for each "
                              "quantized layer; the checkpoint is incomplete or not the format its config names")
    return keys


def check_dtype(peek: Peek, key: str, allowed: tuple[str, ...], source: str) -> str:
    dtype = peek.dtype(key)
    if dtype not in allowed:
        raise CheckpointError(f"{key} is stored as {dtype}; expected {' or '.join(allowed)} in a {source} checkpoint; "
                              "the tensors are not the format config.json names")
    return dtype


SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


def bits_from_shapes(source: str, name: str, bits: int, packed_k: int, k: int) -> None:
    """A config whose ``bits`` disagree with the packed tensor's shape is refused (never read as wrong weights)."""
    if packed_k * 32 != k * bits:
        raise CheckpointError(f"{source} layer {name}: config.json says bits={bits} but its packed weight has "
                              f"{packed_k} int32 words per column for {k} inputs ({packed_k * 32 / k:g} bits each); "
                              "expected config and tensors to agree: fix quantization_config.bits")


def int32_bytes(t: torch.Tensor) -> torch.Tensor:
    """An int32 tensor [..., W] → its little-endian bytes [..., 4W] as uint8 (safetensors is little-endian)."""
    return t.contiguous().view(torch.uint8)
