"""Fast greedy decoding on CUDA and the CPU: ``lowbit.compile_for_decode(model)``, then ``.generate(input_ids, n)``.

transformers' ``generate`` runs a Python loop around every token (logits processors, stopping checks that wait for
the GPU). The fast path does what the decode benchmark does instead:

1. ``fuse_projections``: q/k/v and gate/up of each block run as one quantized launch each;
2. each transformer block compiled by ``torch.compile`` (norms, RoPE, residual adds and cache writes fused around
   the quantized linears; one graph per block and batch size, the same code for every block);
3. a ``StaticCache`` and one CUDA graph per decode step (forward, argmax, the token and position fed back),
   recorded once per batch size and cache length and replayed for every token; the prompt runs eagerly.

On the CPU a batch of one decodes with lowbit's C step (``decode_cpu``: every block, the head and the argmax in one
call per token, on the layers' own kernels; SmolLM2-135M int4 on 2 AVX2 cores: see the README's CPU table), where the
model allows (``Decoder.c_step_reason`` says why not). Otherwise each step runs as it is, without CUDA graphs, eager
unless ``compile=True``, which compiles the model's whole forward once with inductor's C++ wrapper
(``compile_step_cpu``; the first call compiles for about 140 s on 2 cores, and each new cache length, a multiple of
``CACHE_STEP``, compiles again).
Greedy only, no stopping criteria: exactly ``max_new_tokens`` are generated. The model is changed in place (fused
projections, compiled blocks or forward). ``model.generate`` keeps working; on the CPU, for a batch of one, it runs
the C step (``stepping.attach`` with ``decode_cpu.CpuEngine``), and on CUDA, where ``GraphEngine`` is attached,
each of its new tokens is one replay of the recorded step; sampling, stopping criteria and
streamers work as usual around them.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.archs import find_blocks
from lowbit.decode_cpu import CACHE_STEP, CpuEngine, CpuStep, Unsupported, step_for, why_not
from lowbit.errors import LowbitError
from lowbit.nn import fuse_projections
from lowbit.stepping import attach, bypassed, detach

WARM_STEPS = 3  # eager steps before a step is recorded (the first of them compile the blocks)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's input embedding (a plain one, or lowbit's int8 ``QuantEmbedding``)."""
    emb = model.get_input_embeddings()
    return next(t for t in (*emb.parameters(), *emb.buffers()) if t is not None).device


def compile_step_cpu(model: nn.Module) -> None:
    """``torch.compile`` the model's forward in place, shapes static, with inductor's C++ wrapper (on the CPU, per
    block compiles ran slower than eager: each block's guards and Python launches stayed)."""
    detach(model)  # compile the model's own forward, not the C step's wrapper
    if not getattr(model, "_lowbit_compiled_step", False):
        model.forward = torch.compile(model.forward, dynamic=False, options={"cpp_wrapper": True})
        model._lowbit_compiled_step = True


def compile_blocks(model: nn.Module, batch_sizes: int = 2) -> None:
    """``torch.compile`` each transformer block in place (``dynamic=False``), with dynamo's recompile limits raised
    to one graph per block and batch size (past the limit dynamo would quietly run the remaining blocks eagerly)."""
    _, blocks = find_blocks(model)
    limit = len(blocks) * batch_sizes + 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit,
                                                           4 * limit)
    for block in blocks:
        if not getattr(block, "_compiled_call_impl", None):  # compiled once, even when called again
            block.compile(dynamic=False)


class _Step:
    """One batch size and cache length: the static cache, the step's input and output tensors, its CUDA graph."""

    def __init__(self, model: nn.Module, batch: int, length: int) -> None:
        from transformers import StaticCache

        device = model_device(model)
        self.model, self.length = model, length
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.out = torch.zeros(batch, length + 1, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None  # [batch, vocab] of the last step (allocated by the first)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm = 0

    def step(self) -> None:
        with bypassed(self.model):
            logits = self.model(input_ids=self.tok, past_key_values=self.cache, cache_position=self.pos,
                                use_cache=True).logits[:, -1]
        if self.logits is None:
            self.logits = torch.empty_like(logits)
        self.logits.copy_(logits)
        nxt = logits.argmax(-1, keepdim=True)
        self.out.index_copy_(1, self.pos + 1, nxt)
        self.tok.copy_(nxt)
        self.pos.add_(1)

    def advance(self) -> None:
        """One step: on CUDA eagerly (on a side stream) for the first ``WARM_STEPS`` (the first compile the blocks),
        then recorded as a CUDA graph once and replayed; on the CPU as it is (compiled blocks, if any)."""
        if self.tok.device.type != "cuda":
            self.step()
            return
        if self.graph is None and self.warm < WARM_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step()
            torch.cuda.current_stream().wait_stream(side)
            self.warm += 1
            return
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.step()  # recorded, not run
        self.graph.replay()

    def prompt(self, input_ids: torch.Tensor, logits_to_keep: int = 0):
        """Run the prompt (eagerly: it runs once, not worth a compile) on the emptied cache; the model's output."""
        self.cache.reset()
        with torch.compiler.set_stance("force_eager"), bypassed(self.model):
            return self.model(input_ids=input_ids, past_key_values=self.cache, use_cache=True,
                              logits_to_keep=logits_to_keep,
                              cache_position=torch.arange(input_ids.shape[1], device=input_ids.device))


class GraphEngine:
    """``model.generate`` on CUDA through the decoder's recorded step (``stepping.attach(model, GraphEngine(model))``
    after ``compile_for_decode``): a prompt on a fresh cache runs on a static cache of the engine's own (the caller's
    stays empty); each next token is one replay of the step's CUDA graph, its logits copied out. The engine's cache
    doubles when a sequence outgrows it (the tokens so far run through the model again, and a new graph is
    recorded)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.state, self.refused = model, None, False

    def _fresh(self, length: int) -> _Step:
        if self.state is None or self.state.length < length:
            self.state = _Step(self.model, 1, -(-length // CACHE_STEP) * CACHE_STEP)
        return self.state

    def prompt(self, original, input_ids: torch.Tensor, kwargs: dict, cache, pos: int):
        mask = kwargs.get("attention_mask")
        if pos != 0 or cache.get_seq_length() != 0 or (mask is not None and not bool(mask.all())):
            return original(input_ids, **kwargs), None  # a cache already filled, or padding: the model's own way
        with torch.inference_mode():
            out = self._fresh(input_ids.shape[1] + CACHE_STEP).prompt(input_ids, kwargs.get("logits_to_keep", 0))
        out.past_key_values = cache
        return out, [input_ids.clone()]

    def step(self, input_ids: torch.Tensor, pos: int, lacking: list[torch.Tensor]) -> torch.Tensor:
        state = self.state
        if pos >= state.length:  # outgrown: the tokens so far into a cache twice as long
            state = self._fresh(2 * state.length)
            state.prompt(torch.cat(lacking, 1))
        state.tok.copy_(input_ids)
        state.pos.fill_(pos)
        state.advance()
        return state.logits[0].clone()


class Decoder:
    """A causal LM made ready for fast greedy decoding; see the module's docstring."""

    def __init__(self, model: nn.Module, compile_cpu: bool = False) -> None:
        self.model = model
        self._steps: dict[tuple[int, int], _Step] = {}
        self._c_step = None
        self._compile_cpu = compile_cpu  # compile the Python step where the C step cannot run
        # why a batch of one on the CPU runs the Python step (None: it runs lowbit's C step, ``decode_cpu``)
        self.c_step_reason = why_not(model) if model_device(model).type == "cpu" else "the model is not on the CPU"

    def _c_step_for(self, length: int) -> CpuStep | None:
        if self.c_step_reason is None:
            try:
                self._c_step = step_for(self.model, length, self._c_step)
            except Unsupported as e:
                self.c_step_reason = str(e)
        return self._c_step if self.c_step_reason is None else None


    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """[batch, prompt + max_new_tokens]: the prompt and its greedy continuation."""
        device = model_device(self.model)
        if input_ids.dim() != 2 or input_ids.device != device:
            raise LowbitError(f"input_ids has shape {list(input_ids.shape)} on {input_ids.device}; expected "
                              f"[batch, prompt] token ids on the model's device ({device})")
        if max_new_tokens < 1:
            raise LowbitError(f"max_new_tokens={max_new_tokens}; expected at least 1")
        batch, prompt = input_ids.shape
        length = -(-(prompt + max_new_tokens) // CACHE_STEP) * CACHE_STEP
        c_step = self._c_step_for(length) if batch == 1 else None
        if c_step is not None:
            return c_step.generate(input_ids, max_new_tokens)
        if self._compile_cpu:  # the Python step runs: compiled, as asked (once; compile_step_cpu is idempotent)
            compile_step_cpu(self.model)
        state = self._steps.get((batch, length))
        if state is None:
            state = self._steps[batch, length] = _Step(self.model, batch, length)
        logits = state.prompt(input_ids, logits_to_keep=1).logits
        state.out[:, :prompt] = input_ids
        state.out[:, prompt:prompt + 1] = logits[:, -1:].argmax(-1)
        state.tok.copy_(state.out[:, prompt:prompt + 1])
        state.pos.fill_(prompt)
        for _ in range(max_new_tokens - 1):
            state.advance()
        return state.out[:, :prompt + max_new_tokens].clone()


def compile_for_decode(model: nn.Module, fuse: bool = True, compile: bool | None = None) -> Decoder:
    """Make ``model`` (a transformers causal LM on CUDA or the CPU, quantized or not) ready for fast greedy decoding.

    ``fuse``: run q/k/v and gate/up as one quantized launch each (``fuse_projections``); ``compile``: on CUDA (the
    default there) compile each block with ``torch.compile``; on the CPU (off by default: the first call compiles
    for minutes), where the C step cannot run, compile the whole forward with inductor's C++ wrapper
    (``compile_step_cpu``; the decoder runs the prompt eagerly, but a later ``model.generate`` would compile again
    for each new shape). On the CPU a batch of one runs lowbit's C step where it can (``decode_cpu``), and so does
    ``model.generate`` of a batch of one afterwards (``stepping.attach``: a prompt through the model's forward,
    then one C call per token). On CUDA ``model.generate`` of a batch of one afterwards replays the recorded step
    (``stepping.attach(model, GraphEngine(model))``: a prompt on a fresh cache, then one replay per token).

    Returns a :class:`Decoder`; ``decoder.generate(input_ids, max_new_tokens)`` gives the same tokens as
    ``model.generate(input_ids, do_sample=False, ...)`` up to rounding differences of the compiled code (and, on
    kernels that round activations to int8, of the order of the sums before that rounding).
    """
    device = model_device(model)
    if device.type not in ("cuda", "cpu"):
        raise LowbitError(f"compile_for_decode needs the model on a CUDA device or the CPU (its embeddings are on "
                          f"{device}); move it with model.to('cuda') or model.to('cpu') first")
    if fuse:
        fuse_projections(model)
    compile = compile if compile is not None else device.type == "cuda"
    if compile and device.type == "cuda":
        compile_blocks(model)
    decoder = Decoder(model, compile_cpu=compile and device.type == "cpu")
    if device.type == "cpu" and decoder.c_step_reason is None:
        attach(model, CpuEngine(model))  # model.generate runs the C step too
    elif device.type == "cuda":
        attach(model, GraphEngine(model))  # model.generate of a batch of one replays the recorded step
    return decoder
