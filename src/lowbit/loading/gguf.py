"""Loading a ``.gguf`` file through the one engine, one tensor at a time (transformers' own GGUF load dequantizes
every tensor first).

transformers reads the file's config and names its tensors (``load_gguf_checkpoint``, ``get_gguf_hf_weights_map``,
its per-architecture tensor processors, which undo llama.cpp's q/k row permutation and Gemma's norm offset). Each
Linear weight then becomes one layer of the ``imported`` method: Q4_0 and Q8_0 map losslessly onto lowbit's int4 /
int8 g32 formats (``lowbit.foreign.gguf``), other types are dequantized by the ``gguf`` package and quantized with
the requested lowbit method as they stream by. Everything else is dequantized to full precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.errors import CheckpointError, ConfigError
from lowbit.foreign.base import LayerMap, Translation
from lowbit.foreign.gguf import LOSSLESS, canonical, dequantized
from lowbit.loading.foreign import ForeignCheckpoint, TranslatingReader, imported_config
from lowbit.loading.skeleton import build_skeleton
from lowbit.loading.tensors import check_finite
from lowbit.methods.imported import ImportedConfig
from lowbit.registry import build_config, get

SHARD = "gguf"


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
    """The GGUF file's tensors by Hugging Face name: ``raw`` gives the reader's tensor object (type and bytes),
    calling it gives the dequantized, processed float32 tensor (NaN/Inf checked)."""

    def __init__(self, view: GgufCheckpoint, clamp: bool, bar) -> None:
        self.view, self.clamp, self.bar, self.clamped = view, clamp, bar, {}

    def __enter__(self) -> GgufSource:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()

    def raw(self, key: str):
        self.bar.update()
        return self.view.tensors[key]

    def __call__(self, key: str) -> torch.Tensor:
        return check_finite(key, plain(self.view, self.raw(key)), self.clamp, self.clamped)

    def shape(self, key: str) -> list[int]:
        return list(reversed([int(d) for d in self.view.tensors[key].shape]))

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        return plain(self.view, self.view.tensors[key])[start:stop]


def plain(view: GgufCheckpoint, tensor) -> torch.Tensor:
    """A GGUF tensor dequantized (float32), in transformers' layout for its name."""
    weights = dequantized(tensor.name, tensor.tensor_type.name, tensor.data)
    weights = view.processor.process(weights=weights, name=tensor.name, tensor_key_mapping={},
                                     parsed_parameters={}).weights
    return torch.from_numpy(np.array(weights, dtype=np.float32, copy=True))


def open_gguf(path: str | Path, requested: QuantConfig | str | None) -> GgufCheckpoint:
    """The lowbit view of a GGUF file: Linear weights become ``imported`` layers (Q4_0/Q8_0 exactly, other types
    re-quantized with ``requested``), the other tensors dequantize while loading."""
    from gguf import GGUFReader
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {str(path)!r} does not exist; expected a .gguf file; check the path")
    try:
        hf_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        reader = GGUFReader(str(path))
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
    view.hf_config, view.processor = hf_config, _processor(reader, hf_config)
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    names = get_gguf_hf_weights_map(skeleton, view.processor)
    view.tensors = {}
    for tensor in reader.tensors:
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
    view.translation = Translation("gguf", _detail(reader), layers)
    view.weight_map = {}
    for hf_name in view.tensors:
        module = hf_name.removesuffix(".weight")
        attrs = layers[module].fmt.tensor_names() if module in layers else None
        view.weight_map.update({f"{module}.{a}": SHARD for a in attrs} if attrs else {hf_name: SHARD})
    view.config = {**raw_config, "quantization_config": imported_config(view.translation).to_dict()}
    return view


def _processor(reader, hf_config):
    """transformers' tensor processor of the file's architecture (q/k row order, Gemma's norm offset)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
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
    kind = tensor.tensor_type.name
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


def _detail(reader) -> str:
    from collections import Counter

    counts = Counter(t.tensor_type.name for t in reader.tensors)
    return "GGUF " + ", ".join(f"{k} x{v}" for k, v in counts.most_common())
