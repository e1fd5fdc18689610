"""Per-architecture data: which modules never convert, keyed by ``config.model_type``.

Algorithms read this table; they never test architecture names themselves. Input and output
embeddings are found through transformers' ``get_input_embeddings`` / ``get_output_embeddings`` for
every architecture, and are kept at full precision unless the config asks to quantize them.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    skip: tuple[str, ...] = ()  # module-name parts that are never quantized


# Routers and gates are tiny and steer discrete choices: rounding them changes which experts run.
_MOE = ArchInfo(skip=("router", "block_sparse_moe.gate", "mlp.gate", "shared_expert_gate"))

ARCHS: dict[str, ArchInfo] = {
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
    "qwen3_moe": _MOE,
    "deepseek_v3": _MOE,
    "gemma3": ArchInfo(skip=("vision_tower", "multi_modal_projector")),
    "llava": ArchInfo(skip=("vision_tower", "multi_modal_projector")),
}

DEFAULT = ArchInfo()


def arch_info(model_type: str | None) -> ArchInfo:
    return ARCHS.get(model_type or "", DEFAULT)


def name_matches(name: str, pattern: str) -> bool:
    """``pattern`` names the module itself, a parent, or a dotted run of name parts within it."""
    return name == pattern or f".{name}.".find(f".{pattern}.") >= 0
