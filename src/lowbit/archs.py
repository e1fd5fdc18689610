"""Per-architecture data, keyed by ``config.model_type``: modules that never convert, where the transformer
blocks are (``find_blocks``), and which Linears share an input with the module that produces it (for AWQ and
SmoothQuant).

Algorithms read this table; they never test architecture names themselves. Input and output
embeddings are found through transformers' ``get_input_embeddings`` / ``get_output_embeddings`` for
every architecture, and are kept at full precision unless the config asks to quantize them.

Adding an architecture to the calibrated methods is one entry here: name its blocks' ``Balance`` groups
(module names relative to one block) and, if its norms scale by ``1 + weight``, set ``norm_offset=1``.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from lowbit.errors import CalibrationError


@dataclasses.dataclass(frozen=True)
class Balance:
    """Linears that read the output of ``prev`` (a norm, or a Linear with nothing non-linear in between).

    A per-input-channel scale ``s`` can then move between them: the Linears' weight columns are multiplied
    by ``s`` and ``prev``'s output divided by it, leaving the block's function unchanged. ``inspect`` is the
    module whose output measures the effect of a scale (AWQ's search); by default the Linears themselves.
    """

    prev: str
    linears: tuple[str, ...]
    inspect: str | None = None


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    skip: tuple[str, ...] = ()  # module-name parts that are never quantized
    blocks: str | None = None  # the ModuleList of transformer blocks; None: the largest ModuleList
    balance: tuple[Balance, ...] = ()  # empty: the calibrated methods that need it refuse the architecture
    norm_offset: float = 0.0  # norms compute x_hat * (norm_offset + weight): 1 for Gemma's RMSNorm


def _decoder(mlp_norm: str) -> tuple[Balance, ...]:
    """Llama-style decoder block: q/k/v after the input norm, o after v, gate/up after ``mlp_norm``, down after up."""
    return (
        Balance("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
        Balance("self_attn.v_proj", ("self_attn.o_proj",)),  # used only when v's outputs are o's inputs (no GQA)
        Balance(mlp_norm, ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
        Balance("mlp.up_proj", ("mlp.down_proj",)),
    )


_LLAMA = ArchInfo(blocks="model.layers", balance=_decoder("post_attention_layernorm"))
_GEMMA = ArchInfo(blocks="model.layers", balance=_decoder("pre_feedforward_layernorm"), norm_offset=1.0)
# Routers and gates are tiny and steer discrete choices: rounding them changes which experts run.
_MOE = ArchInfo(skip=("router", "block_sparse_moe.gate", "mlp.gate", "shared_expert_gate"))

ARCHS: dict[str, ArchInfo] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _GEMMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gemma3": dataclasses.replace(_GEMMA, skip=("vision_tower", "multi_modal_projector"),
                                  blocks="model.language_model.layers"),
    "phi3": ArchInfo(blocks="model.layers", balance=(
        Balance("input_layernorm", ("self_attn.qkv_proj",), "self_attn"),
        Balance("post_attention_layernorm", ("mlp.gate_up_proj",), "mlp"),
    )),
    # Post-norm: attention.output.LayerNorm's output is also the residual, so no scale can fold into it.
    "bert": ArchInfo(balance=(Balance("attention.self.value", ("attention.output.dense",)),)),
    "mixtral": _MOE,
    "qwen2_moe": _MOE,
    "qwen3_moe": _MOE,
    "deepseek_v3": _MOE,
    "llava": ArchInfo(skip=("vision_tower", "multi_modal_projector")),
}

DEFAULT = ArchInfo()


def arch_info(model_type: str | None) -> ArchInfo:
    return ARCHS.get(model_type or "", DEFAULT)


def balanced_archs() -> list[str]:
    """Model types with ``Balance`` data (what AWQ and SmoothQuant support)."""
    return sorted(k for k, v in ARCHS.items() if v.balance)


def name_matches(name: str, pattern: str) -> bool:
    """``pattern`` names the module itself, a parent, or a dotted run of name parts within it."""
    return name == pattern or f".{name}.".find(f".{pattern}.") >= 0


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the transformer blocks: from the architecture data, else the largest ModuleList."""
    path = arch_info(getattr(model.config, "model_type", None)).blocks
    if path is not None:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            pass  # e.g. a base model (no "model." prefix): search instead
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise CalibrationError(f"{type(model).__name__} has no list of transformer blocks (no nn.ModuleList); "
                               "expected a transformers decoder or encoder model")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
