"""Loading a ``.gguf`` file through the one engine, one tensor at a time (transformers' own GGUF load dequantizes
every tensor first).

The file's metadata and tensor index are parsed once, by ``lowbit.foreign.gguf_file.GgufFile`` (small: no
per-value numpy views, nothing mapped); transformers builds the config from that parse (its own GGUF config code,
handed the parsed file in place of the ``gguf`` package's reader) and names the tensors (``get_gguf_hf_weights_map``,
its per-architecture tensor processors, which undo llama.cpp's q/k row permutation and Gemma's norm offset). Each
Linear weight then becomes one layer of the ``imported`` method: Q4_0 and Q8_0 map losslessly onto lowbit's int4 /
int8 g32 formats (``lowbit.foreign.gguf``), other types are dequantized by the ``gguf`` package and quantized with
the requested lowbit method as they stream by. Everything else is dequantized to full precision. Each tensor's
bytes are read with ``os.pread`` into a buffer of its own when the engine asks for it and freed after conversion.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.errors import CheckpointError, ConfigError
from lowbit.foreign.base import LayerMap, Translation
from lowbit.foreign.gguf import LOSSLESS, canonical, dequantized
from lowbit.foreign.gguf_file import GgufFile, TensorInfo
from lowbit.loading.foreign import ForeignCheckpoint, TranslatingReader, imported_config
from lowbit.loading.skeleton import build_skeleton
from lowbit.loading.tensors import check_finite
from lowbit.methods.imported import ImportedConfig
from lowbit.registry import build_config, get

SHARD = "gguf"
_CONFIG_LOCK = threading.Lock()  # transformers' config parse is handed the parsed file one call at a time


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


class GgufCheckpoint(ForeignCheckpoint):
    """A GGUF file seen as the lowbit folder it loads as (``hf_config``: transformers' config object)."""

    def reader(self, clamp: bool = False, progress: bool = False, desc: str = "loading", **_) -> TranslatingReader:
        source = GgufSource(self, clamp, tqdm(total=len(self.weight_map), desc=desc, unit="tensor",
                                              disable=not progress))
        return TranslatingReader(self, source, raw=source.raw)

    def loading_config(self, requested):
        """The requested method was applied while mapping the file; what remains of it is how to run."""
        if requested is None:
            return None
        if isinstance(requested, str):
            requested = build_config(requested)
        return ImportedConfig(**{f: getattr(requested, f) for f in ImportedConfig.loading_fields()})


class GgufSource:
    """The GGUF file's tensors by Hugging Face name: ``raw`` reads a tensor's bytes (a :class:`Raw`),
    calling it gives the dequantized, processed float32 tensor (NaN/Inf checked)."""

    def __init__(self, view: GgufCheckpoint, clamp: bool, bar) -> None:
        self.view, self.clamp, self.bar, self.clamped = view, clamp, bar, {}

    def __enter__(self) -> GgufSource:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def raw(self, key: str) -> Raw:
        self.bar.update()
        return self.read(key)

    def read(self, key: str) -> Raw:
        info = self.view.tensors[key]
        return Raw(info, self.view.file.read(info))

    def __call__(self, key: str) -> torch.Tensor:
        return check_finite(key, plain(self.view, self.raw(key)), self.clamp, self.clamped)

    def shape(self, key: str) -> list[int]:
        return list(reversed(self.view.tensors[key].shape))

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return plain(self.view, self.read(key))[start:stop]


class Raw(NamedTuple):
    """One GGUF tensor as read: where it is (``info``) and its bytes (``data``, shaped as the gguf package's)."""

    info: TensorInfo
    data: np.ndarray


def plain(view: GgufCheckpoint, raw: Raw) -> torch.Tensor:
    """A GGUF tensor dequantized (float32), in transformers' layout for its name; copied only when the processor
    left a view or another dtype."""
    weights = dequantized(raw.info.name, raw.info.type_name, raw.data)
    weights = view.processor.process(weights=weights, name=raw.info.name, tensor_key_mapping={},
                                     parsed_parameters={}).weights
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    return torch.from_numpy(weights if weights.flags.writeable else weights.copy())


def open_gguf(path: str | Path, requested: QuantConfig | str | None) -> GgufCheckpoint:
    """The lowbit view of a GGUF file: Linear weights become ``imported`` layers (Q4_0/Q8_0 exactly, other types
    re-quantized with ``requested``), the other tensors dequantize while loading."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist; expected a .gguf file; check the path")
    try:
        file = GgufFile(path)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(e).__name__}: {str(e)[:120]}); expected a "
                              "complete llama.cpp GGUF file; the file is damaged or truncated") from None
    try:
        hf_config = _hf_config(file)
    except (ValueError, KeyError, OSError) as e:
        raise CheckpointError(f"{path} cannot be read as GGUF by transformers ({str(e).splitlines()[0][:160]}); "
                              "expected a llama.cpp GGUF file of an architecture transformers loads") from None
    arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(hf_config.model_type)
    if arch is None:
        raise CheckpointError(f"{path} holds a {hf_config.model_type!r} model, which has no causal-LM class in "
                              "transformers; expected a GGUF of a model transformers loads")
    hf_config.architectures = [arch]
    raw_config = hf_config.to_dict()
    skeleton = build_skeleton(path, raw_config, torch.float32, hf_config)
    view = GgufCheckpoint(path, raw_config, {}, None, real=None, translation=None)
    view.hf_config, view.processor, view.file = hf_config, _processor(file, hf_config), file
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    names = get_gguf_hf_weights_map(skeleton, view.processor)
    view.tensors = {}
    for tensor in file.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is not None:
            view.tensors[hf_name] = tensor
    formats = _requested_formats(skeleton, requested)
    layers = {}
    for hf_name, tensor in view.tensors.items():
        module = hf_name.removesuffix(".weight")
        layer = _layer(view, module, hf_name, tensor, formats[module]) if module in formats else None
        if layer is not None and hf_name.endswith(".weight"):
            layers[module] = layer
    view.translation = Translation("gguf", _detail(file), layers)
    view.weight_map = {}
    for hf_name in view.tensors:
        module = hf_name.removesuffix(".weight")
        attrs = layers[module].fmt.tensor_names() if module in layers else None
        view.weight_map.update({f"{module}.{a}": SHARD for a in attrs} if attrs else {hf_name: SHARD})
    view.config = {**raw_config, "quantization_config": imported_config(view.translation).to_dict()}
    return view


def _hf_config(file: GgufFile):
    """transformers' config of the file, built by its own GGUF config code (``AutoConfig.from_pretrained(...,
    gguf_file=)``) from lowbit's parse: while it runs, the ``gguf`` package's ``GGUFReader`` opened on this file is
    the parsed file (same ``fields`` / ``tensors`` interface), not a second parse of it."""
    import gguf
    from transformers import AutoConfig

    original = gguf.GGUFReader

    def reader(path, *args, **kwargs):
        same = Path(path).resolve() == file.path.resolve()
        return file if same and not args and not kwargs else original(path, *args, **kwargs)

    with _CONFIG_LOCK:
        gguf.GGUFReader = reader
        try:
            return AutoConfig.from_pretrained(str(file.path.parent), gguf_file=file.path.name)
        finally:
            gguf.GGUFReader = original


def _processor(file: GgufFile, hf_config):
    """transformers' tensor processor of the file's architecture (q/k row order, Gemma's norm offset)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    arch = file.fields["general.architecture"].value
    return TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=hf_config.to_dict())


def _requested_formats(skeleton, requested) -> dict:
    """Module name → the lowbit format the requested method gives it (every Linear but the head, unquantized, when
    nothing is requested: then only Q4_0/Q8_0 weights are mapped, the rest dequantized)."""
    if isinstance(requested, str):
        requested = build_config(requested)
    if requested is None:
        head = skeleton.get_output_embeddings()
        return {n: None for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear) and m is not head}
    if requested.method == "imported":
        raise ConfigError("quantization='imported' names no method for a GGUF file; pass a lowbit method (e.g. "
                          "'int4', 'nf4', 'hqq') to re-quantize its other tensor types, or None")
    quantizer = get(requested.method).quantizer_cls(requested)
    quantizer.preprocess_model(skeleton)
    return {n: (quantizer, f) for n, f in quantizer.formats.items() if n not in quantizer.tables}


def _layer(view: GgufCheckpoint, module: str, hf_name: str, tensor, target) -> LayerMap | None:
    """Q4_0/Q8_0: the lossless map (rows reordered as transformers' processor orders them); another type: its
    re-quantization with the requested method (``target``: quantizer and format), or None when none is asked."""
    kind = tensor.type_name
    rows = int(tensor.shape[-1])
    if kind in LOSSLESS:
        perm = view.processor.process(weights=np.arange(rows, dtype=np.float32)[:, None], name=tensor.name,
                                      tensor_key_mapping={}, parsed_parameters={}).weights
        order = torch.from_numpy(np.ascontiguousarray(perm[:, 0]).astype(np.int64))

        def convert(t):
            return {k: v[order].contiguous() for k, v in canonical(kind, t["weight"].data, rows).items()}

        return LayerMap(module, LOSSLESS[kind], {"weight": hf_name}, convert, note=f"GGUF {kind}")
    if target is None:
        return None
    quantizer, fmt = target

    def requantize(t):
        w = check_finite(hf_name, plain(view, t["weight"]), False, {})
        return quantizer.quantize_tensor(module, w)

    return LayerMap(module, fmt, {"weight": hf_name}, requantize, exact=False,
                    note=f"GGUF {kind} dequantized, re-quantized as {fmt.describe()}")


def _detail(file: GgufFile) -> str:
    from collections import Counter

    counts = Counter(t.type_name for t in file.tensors)
    return "GGUF " + ", ".join(f"{k} x{v}" for k, v in counts.most_common())
