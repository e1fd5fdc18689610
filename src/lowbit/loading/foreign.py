"""Loading another tool's checkpoint through the one engine: the checkpoint is shown to the plan as the lowbit
folder it maps onto (canonical keys, an ``imported`` quantization config), and a reader repacks each foreign layer
into its canonical tensors when the engine first asks for one of them (``lowbit.foreign`` does the mapping).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch
from safetensors import safe_open

from lowbit.errors import ConfigError, FormatError
from lowbit.foreign import Translation, is_foreign, translate
from lowbit.loading.checkpoint import Checkpoint, read_header, reading
from lowbit.loading.reader import Reader
from lowbit.methods.imported import ImportedConfig
from lowbit.registry import build_config


class HeaderPeek:
    """A checkpoint's tensors seen from their headers; ``read`` reads one small tensor."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt, self.keys = ckpt, list(ckpt.weight_map)
        self.headers = {shard: read_header(ckpt.path / shard) for shard in ckpt.shards}

    def _entry(self, key: str) -> dict:
        return self.headers[self.ckpt.weight_map[key]][key]

    def shape(self, key: str) -> list[int]:
        return list(self._entry(key)["shape"])

    def dtype(self, key: str) -> str:
        return self._entry(key)["dtype"]

    def read(self, key: str) -> torch.Tensor:
        path = self.ckpt.path / self.ckpt.weight_map[key]
        with reading(path), safe_open(str(path), framework="pt", device="cpu") as f:
            return f.get_tensor(key)


@dataclasses.dataclass
class ForeignCheckpoint(Checkpoint):
    """The lowbit view of a foreign checkpoint (``real``), with the ``translation`` that maps it."""

    real: Checkpoint | None = None
    translation: Translation | None = None

    def reader(self, **kwargs) -> TranslatingReader:
        return TranslatingReader(self, Reader(self.real, **kwargs))

    def loading_config(self, requested):
        """What ``from_pretrained`` resolves against the stored ``imported`` config: a folder's layers are fixed by
        its tensors, so the caller may only say how to run them (``lowbit.config("imported", kernel=...)``)."""
        if isinstance(requested, str):
            requested = build_config(requested)
        if requested is not None and requested.method != "imported":
            tr = self.translation
            raise ConfigError(f"{self.path} is already quantized ({tr.source}: {tr.detail}), but quantization asks for "
                              f"{requested.method!r}; load it without a quantization argument (or with "
                              "lowbit.config('imported', kernel=..., compute_dtype=...)), or start from the "
                              "full-precision checkpoint")
        return requested


def open_foreign(ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` itself when it is lowbit's own or unquantized, else its :class:`ForeignCheckpoint` view."""
    if not is_foreign(ckpt.quantization_config):
        return ckpt
    tr = translate(HeaderPeek(ckpt), ckpt.quantization_config)
    owner = tr.owner()
    weight_map: dict[str, str] = {}
    for key, shard in ckpt.weight_map.items():
        if key not in owner:
            weight_map[tr.renamed.get(key, key)] = shard
        elif tr.layers[owner[key][0]].keys[owner[key][1]] == next(iter(tr.layers[owner[key][0]].keys.values())):
            name = owner[key][0]
            weight_map.update({f"{name}.{attr}": shard for attr in tr.layers[name].fmt.tensor_names()})
    config = {**ckpt.config, "quantization_config": imported_config(tr).to_dict()}
    return ForeignCheckpoint(ckpt.path, config, weight_map, ckpt.index, real=ckpt, translation=tr)


def imported_config(tr: Translation) -> ImportedConfig:
    """The ``imported`` config that records a translation: each layer's format, the source, the inexact layers."""
    return ImportedConfig(source=tr.source, detail=tr.detail,
                          layer_formats=tuple(f"{n} {layer.fmt.key()}" for n, layer in tr.layers.items()),
                          inexact=tuple(f"{n}: {layer.note}" for n, layer in tr.layers.items() if not layer.exact))


def open_reader(ckpt: Checkpoint, **kwargs) -> Reader | TranslatingReader:
    """The engine's reader of ``ckpt``: the plain one, or for a foreign view the one that repacks layers."""
    if isinstance(ckpt, ForeignCheckpoint):
        return ckpt.reader(**kwargs)
    return Reader(ckpt, **kwargs)


class TranslatingReader:
    """Reads a :class:`ForeignCheckpoint` by its canonical keys, over ``source`` (the reader of the real file;
    ``raw(key)`` gives a layer's foreign tensor, by default ``source(key)``, NaN/Inf checked): the first canonical
    key of a layer reads all its foreign tensors, repacks them, and holds the other canonical tensors until they are
    asked for. Other keys are read from ``source`` under their original names."""

    def __init__(self, view: ForeignCheckpoint, source, raw=None) -> None:
        self.view, self.tr, self.source, self.raw = view, view.translation, source, raw or source
        self.canonical = {f"{n}.{a}": (n, a) for n, layer in self.tr.layers.items() for a in layer.fmt.tensor_names()}
        self.original = {new: old for old, new in self.tr.renamed.items()}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.bar, self.clamped = source.bar, source.clamped

    def __enter__(self) -> TranslatingReader:
        self.source.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.source.__exit__(*exc)

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.canonical:
            return self.source(self.original.get(key, key))
        name, attr = self.canonical[key]
        if name not in self.pending:
            layer = self.tr.layers[name]
            parts = layer.convert({role: self.raw(k) for role, k in layer.keys.items()})
            if set(parts) != set(layer.fmt.tensor_names()):
                raise FormatError(f"{name}: the {self.tr.source} reader made {sorted(parts)}; expected "
                                  f"{layer.fmt.tensor_names()} of {layer.fmt.describe()}; this is a bug in the reader")
            self.pending[name] = parts
        tensor = self.pending[name].pop(attr)
        if not self.pending[name]:
            del self.pending[name]
        return tensor

    def in_file_order(self) -> Iterator[str]:
        yield from self.view.weight_map

    def shape(self, key: str) -> list[int]:
        return self.source.shape(self.original.get(key, key))

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return self.source.rows(self.original.get(key, key), start, stop)
