"""Greedy decoding on the CPU with the whole step in C (``kernels/cpu/step.c``): one call per token runs every block's
norms, projections (the kernels the layers chose, through ``Kernel.native_call``), RoPE, attention over a KV cache
of the filled positions, the head and the argmax. transformers' Python forward around the quantized layers (about
two thirds of a step of SmolLM2-135M int4 on 2 cores) is gone; the layers' own kernels and tensors are used, so
memory does not grow beyond the fp32 KV cache.

Supported: decoder-only models of ``STEP_TYPES`` (Llama, Mistral without a sliding window, Qwen2/Qwen3, Gemma 3
text) in fp32, batch 1, every projection quantized with a lowbit CPU kernel that has a C form or a plain fp32
``nn.Linear``. Quantized layers that chose a kernel with bf16 activations (on CPUs with bf16 units) are prepared
again with fp32 ones, the C step's, in place. What the C step computes is checked against the model's own modules
as it is built: each norm's output (with ``w`` or ``1 + w``) and the activation on sample inputs; the RoPE tables
come from the model's own rotary module. Anything else: ``why_not`` says why, and ``generation.Decoder`` runs the
Python step instead.
"""

from __future__ import annotations

import ctypes
import inspect
import time

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.archs import arch_info, find_blocks
from lowbit.errors import LowbitError
from lowbit.kernels.cpu import native
from lowbit.kernels.cpu.native import ptr
from lowbit.kernels.cpu.step import ACTIVATIONS, Block, Model, NativeCall, linear
from lowbit.nn import QuantLinear
from lowbit.stepping import bypassed

# Prompts from this many tokens run through the model's forward at once: below it the C step token by token is
# faster (Gemma-3-270M int4, 2 AVX2 cores: an 8-token prompt took 0.70 s through the forward, whose layers dequantize
# their weights from M=8, against about 11 ms a token in the C step)
PREFILL_MIN = 64
# decode caches (the C step's, the recorded CUDA step's) hold a multiple of this many positions: nearby lengths share
# one cache, and one recorded graph
CACHE_STEP = 256
STEP_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text")
_ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu}


class Unsupported(Exception):
    """The model has something the C step does not compute (the message says what)."""


def why_not(model: nn.Module) -> str | None:
    """Why ``model`` cannot decode with the C step here (None: it can)."""
    try:
        _check_model(model)
    except Unsupported as e:
        return str(e)
    return None


def _check_model(model: nn.Module) -> None:
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in STEP_TYPES:
        raise Unsupported(f"model_type {kind!r} is not one the C decode step computes ({', '.join(STEP_TYPES)})")
    if kind != "gemma3_text" and getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        raise Unsupported(f"{kind} with sliding_window={cfg.sliding_window}: the C step attends to every position")
    if getattr(cfg, "attn_logit_softcapping", None) is not None:
        raise Unsupported("attention logit soft-capping is not in the C step")
    if native.library() is None:
        raise Unsupported(f"lowbit's C kernels are unavailable: {native.unavailable()}")


class CpuStep:
    """``model``'s blocks as ``step.c`` descriptors, with an fp32 KV cache of ``max_len`` positions."""

    def __init__(self, model: nn.Module, max_len: int) -> None:
        _check_model(model)
        _c_kernels(model)
        self.model, self.max_len, self._keep = model, max_len, []
        cfg = model.config
        self.embed = model.get_input_embeddings()
        _, blocks = find_blocks(model)
        attn = blocks[0].self_attn
        self.head_dim = getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        rope = self._rope_tables(model)
        qkv_names, mlp_names = (next(g for g in arch_info(cfg.model_type).balance if g.prev == prev).linears
                                for prev in ("input_layernorm", _mlp_norm_name(blocks[0])))
        self.blocks = (Block * len(blocks))()
        self.k_cache = torch.zeros(len(blocks), cfg.num_key_value_heads, max_len, self.head_dim)
        self.v_cache = torch.zeros_like(self.k_cache)
        for i, block in enumerate(blocks):
            self._fill(self.blocks[i], block, i, qkv_names, mlp_names, rope)
        mlp = blocks[0].mlp
        self.c = Model(n_blocks=len(blocks), hidden=cfg.hidden_size, heads=cfg.num_attention_heads,
                       kv_heads=cfg.num_key_value_heads, head_dim=self.head_dim, inter=mlp.down_proj.in_features,
                       max_len=max_len, act=ACTIVATIONS[_activation(mlp.act_fn)], eps=self.eps,
                       scale=float(attn.scaling), softcap=float(getattr(cfg, "final_logit_softcapping", None) or 0),
                       norm_out=self._norm(model.get_submodule(_base(model) + "norm")),
                       head=linear(self._call(model.get_output_embeddings(), "lm_head")), blocks=self.blocks)
        self.vocab = self.c.head.n
        self.h = torch.zeros(cfg.hidden_size)
        self.logits = torch.zeros(self.vocab)

    def _fill(self, c: Block, block: nn.Module, index: int, qkv_names, mlp_names, rope) -> None:
        attn, mlp = block.self_attn, block.mlp
        calls, offsets = self._projections(block, qkv_names)
        for j, call in enumerate(calls):
            c.attn_in[j] = linear(call)
        c.q_off, c.k_off, c.v_off = offsets
        calls, offsets = self._projections(block, mlp_names)
        for j, call in enumerate(calls):
            c.mlp_in[j] = linear(call)
        c.gate_off, c.up_off = offsets
        c.attn_out = linear(self._call(attn.o_proj, "o_proj"))
        c.mlp_out = linear(self._call(mlp.down_proj, "down_proj"))
        c.norm_in = self._norm(block.input_layernorm)
        c.norm_mlp_in = self._norm(block.get_submodule(_mlp_norm_name(block)))
        if hasattr(block, "pre_feedforward_layernorm"):  # Gemma: norms after attention and the MLP too
            c.norm_attn_out = self._norm(block.post_attention_layernorm)
            c.norm_mlp_out = self._norm(block.post_feedforward_layernorm)
        for name in ("q_norm", "k_norm"):
            if getattr(attn, name, None) is not None:
                setattr(c, name, self._norm(getattr(attn, name)))
        kind = getattr(attn, "layer_type", None) or "full_attention"
        cos, sin = rope[kind]
        c.cos, c.sin = ptr(cos), ptr(sin)
        c.window = int(getattr(attn, "sliding_window", None) or 0)
        c.k_cache, c.v_cache = ptr(self.k_cache[index]), ptr(self.v_cache[index])

    def _projections(self, block: nn.Module, names: tuple[str, ...]) -> tuple[list[NativeCall], list[int]]:
        """The calls that compute ``names`` (one per fused group) and where each name's output starts in theirs."""
        calls, offsets, starts, at = [], [], {}, 0
        for name in names:
            m = block.get_submodule(name)
            if isinstance(m, QuantLinear) and m.fused is not None:
                group, index = m.fused
                if id(group) not in starts:
                    starts[id(group)] = at
                    calls.append(self._call(group.linear, name))
                    at += group.linear.out_features
                offsets.append(starts[id(group)] + sum(group.sizes[:index]))
            else:
                calls.append(self._call(m, name))
                offsets.append(at)
                at += m.out_features
        return calls, offsets

    def _call(self, m: nn.Module, name: str) -> NativeCall:
        if isinstance(m, QuantLinear):
            if m.kernel is None:
                m.prepare()
            call = m.kernel.native_call(m._buffers, m._prepared, m.request)
            if call is None:
                raise Unsupported(f"{name} runs the {m.kernel.name} kernel with {m.compute_dtype} activations, which "
                                  "has no C form in the decode step (it runs lowbit's C kernels with fp32 activations)")
        elif type(m) is nn.Linear and m.weight.dtype == torch.float32:
            call = NativeCall("dense", m.weight.detach().contiguous(), m.out_features, m.in_features)
        else:
            raise Unsupported(f"{name} is a {type(m).__name__} of {getattr(m, 'weight', torch.empty(0)).dtype}; the C "
                              "step runs lowbit's CPU kernels and fp32 nn.Linear")
        if m.bias is not None:
            call.bias = m.bias.detach().float().contiguous()
        self._keep.append(call)
        return call

    def _norm(self, norm: nn.Module) -> int:
        """The multiplier of an RMSNorm, ``w`` or ``1 + w``, whichever reproduces the module's output."""
        weight = getattr(norm, "weight", None)
        if weight is None:
            raise Unsupported(f"{type(norm).__name__} has no weight; the C step computes weighted RMSNorms")
        x = torch.randn(3, weight.shape[0], generator=torch.Generator().manual_seed(0))
        want = norm(x).float()
        unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        for mult in (weight.detach().float(), 1.0 + weight.detach().float()):
            if torch.allclose(unit * mult, want, rtol=1e-4, atol=1e-5):
                self._keep.append(mult := mult.contiguous())
                return ptr(mult)
        raise Unsupported(f"{type(norm).__name__} is not an RMSNorm (x / rms(x) times w or 1 + w, eps={self.eps})")

    def _rope_tables(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        rot = model.get_submodule(_base(model) + "rotary_emb")
        x = torch.zeros(1, 1, model.config.hidden_size)
        positions = torch.arange(self.max_len)[None]
        kinds = sorted(set(getattr(model.config, "layer_types", None) or ["full_attention"]))
        typed = "layer_type" in inspect.signature(rot.forward).parameters
        tables = {}
        for kind in kinds:
            cos, sin = rot(x, positions, kind) if typed else rot(x, positions)
            if cos.shape[-1] != self.head_dim:
                raise Unsupported(f"RoPE on {cos.shape[-1]} of {self.head_dim} head dimensions is not in the C step")
            tables[kind] = (cos[0].float().contiguous(), sin[0].float().contiguous())
            self._keep.extend(tables[kind])
        return tables

    @torch.inference_mode()
    def step(self, token: int, pos: int) -> int:
        """Run ``token`` at position ``pos`` through the model; returns the greedy next token."""
        self.h.copy_(self.embed(torch.tensor([token])).reshape(-1))
        best = native.library().lowbit_step(ctypes.byref(self.c), self.h.data_ptr(), pos, self.logits.data_ptr())
        if best < 0:
            raise LowbitError("the C decode step ran out of memory" if best == -1 else
                              f"the C decode step refused position {pos} (cache of {self.max_len})")
        return best

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, times: list[float] | None = None) -> torch.Tensor:
        """[1, prompt + max_new_tokens]: the prompt and its greedy continuation; ``times``, if given, gets the
        ``perf_counter`` time at which each new token was ready."""
        tokens = input_ids[0].tolist()
        if len(tokens) + max_new_tokens > self.max_len:
            raise LowbitError(f"{len(tokens)} prompt + {max_new_tokens} new tokens exceed the cache of "
                              f"{self.max_len} positions")
        note = times.append if times is not None else lambda t: None
        out = [self.prefill(input_ids)]
        note(time.perf_counter())
        for pos in range(len(tokens), len(tokens) + max_new_tokens - 1):
            out.append(self.step(out[-1], pos))
            note(time.perf_counter())
        return torch.tensor([tokens + out])

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor) -> int:
        """The greedy first token after the prompt, its keys and values in the C step's cache. A prompt of
        ``PREFILL_MIN`` tokens or more runs through the model's own forward at once (the layers' kernels for M > 1)
        and its cached keys and values are copied; a shorter one (or a cache whose layers do not expose their
        tensors) runs through the C step token by token."""
        from transformers import DynamicCache

        n = input_ids.shape[1]
        if n >= PREFILL_MIN:
            cache = DynamicCache(config=self.model.config)
            with bypassed(self.model):
                logits = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True).logits[0, -1]
            if self.take_cache(cache, n):
                self.logits.copy_(logits)
                return int(logits.argmax())
        tokens = input_ids[0].tolist()
        for pos, tok in enumerate(tokens):
            nxt = self.step(tok, pos)
        return nxt

    def take_cache(self, cache, n: int) -> bool:
        """Copy the keys and values of ``n`` positions from a transformers cache (a growing one, whose sliding-window
        layers may keep only their last positions, or a preallocated one); False where its layers hide them."""
        layers = getattr(cache, "layers", ())
        if len(layers) != self.k_cache.shape[0] or any(getattr(layer, "keys", None) is None for layer in layers):
            return False
        for i, layer in enumerate(layers):
            keys, values = layer.keys[0], layer.values[0]
            kept = keys.shape[-2]
            if kept > n:  # preallocated: the first n are filled
                keys, values, kept = keys[:, :n], values[:, :n], n
            self.k_cache[i, :, n - kept:n] = keys
            self.v_cache[i, :, n - kept:n] = values
        return True


def step_for(model: nn.Module, length: int, step: CpuStep | None = None) -> CpuStep:
    """``step`` where it holds ``length`` positions; else a step of ``model`` that does (rounded up to a multiple of
    ``CACHE_STEP``), holding ``step``'s cache. Raises ``Unsupported`` where the C step cannot run the model."""
    if step is not None and step.max_len >= length:
        return step
    bigger = CpuStep(model, -(-length // CACHE_STEP) * CACHE_STEP)
    if step is not None:
        bigger.k_cache[:, :, :step.max_len] = step.k_cache
        bigger.v_cache[:, :, :step.max_len] = step.v_cache
    return bigger


class CpuEngine:
    """``model.generate`` on the C step (``stepping.attach``): a prompt runs through the model's forward and the cache
    it filled is copied into the C step's; each next token is one C step."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.c_step, self.refused = model, None, False

    def prompt(self, original, input_ids: torch.Tensor, kwargs: dict, cache, pos: int):
        out = original(input_ids, **kwargs)
        try:
            self.c_step = step_for(self.model, pos + input_ids.shape[1] + 1, self.c_step)
        except Unsupported:  # found once: the model's own forward from now on
            self.refused = True
            return out, None
        return out, ([] if self.c_step.take_cache(cache, pos + input_ids.shape[1]) else None)

    def step(self, input_ids: torch.Tensor, pos: int, lacking) -> torch.Tensor:
        self.c_step = step_for(self.model, pos + 1, self.c_step)
        self.c_step.step(int(input_ids[0, 0]), pos)
        return self.c_step.logits.clone()


def _c_kernels(model: nn.Module) -> None:
    """Quantized layers whose kernel has no C form (bf16 activations, chosen on CPUs with bf16 units) choose again
    among the fp32-activation kernels; sibling projections are then fused (those that were, and those whose new
kernels allow it)."""
    from lowbit.nn import fuse_projections

    again = False
    for m in model.modules():
        if not isinstance(m, QuantLinear):
            continue
        layer = m.fused[0].linear if m.fused is not None else m
        if layer.kernel is None:
            layer.prepare()
        if layer.kernel.native_call(layer._buffers, layer._prepared, layer.request) is None and \
                layer.compute_dtype != torch.float32:
            m.fused, again = None, True
            m.prepare(torch.float32)
    if again:
        fuse_projections(model)


def _mlp_norm_name(block: nn.Module) -> str:
    return "pre_feedforward_layernorm" if hasattr(block, "pre_feedforward_layernorm") else "post_attention_layernorm"


def _base(model: nn.Module) -> str:
    """The prefix of the module that holds the blocks, the final norm and the rotary embedding ("model.")."""
    path, _ = find_blocks(model)
    return path.rsplit(".", 1)[0] + "." if "." in path else ""


def _activation(fn: nn.Module) -> str:
    x = torch.linspace(-6, 6, 97)
    for name, ref in _ACTIVATIONS.items():
        if torch.allclose(fn(x), ref(x), rtol=1e-5, atol=1e-6):
            return name
    raise Unsupported(f"the activation {type(fn).__name__} is none of {', '.join(_ACTIVATIONS)}")
