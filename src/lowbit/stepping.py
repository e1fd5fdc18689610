"""``model.generate`` through lowbit's one-token decode steps: ``attach(model, engine)`` wraps the model's forward.

transformers' ``generate`` calls the forward once for the prompt and then once per new token, with one cache object
throughout. The wrapper hands those calls to an engine: the CPU's C step (``decode_cpu.CpuEngine``) or a CUDA graph of
the compiled step (``generation.GraphEngine``). A prompt goes to ``engine.prompt``, which runs it and says which of
its tokens the caller's cache lacks (the CPU runs it through the model's forward and copies the cache it filled; CUDA
runs it on its own static cache and leaves the caller's empty). Each following one-token call on that cache at the
next position is ``engine.step``, which returns the logits and leaves the caller's cache as it was. Before anything
else continues that cache (a chat's next turn), the tokens it lacks are run through the model's forward into it, so
it ends as the model alone would have left it. Calls with gradients, batches, embeddings in, or attentions or hidden
states out run the original forward.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Protocol

import torch
from torch import nn

from lowbit.errors import LowbitError

_NOT_SIMPLE = ("inputs_embeds", "output_attentions", "output_hidden_states", "labels")


class Engine(Protocol):
    refused: bool  # True once the engine found it cannot run the model: the original forward from then on

    def prompt(self, original: Callable, input_ids: torch.Tensor, kwargs: dict, cache: Any, pos: int
               ) -> tuple[Any, list[torch.Tensor] | None]:
        """Run a call of several tokens at ``pos`` on ``cache``: (its output, the token tensors from the start of
        the engine's cache that ``cache`` lacks), or (output, None) where the engine does not hold this cache."""

    def step(self, input_ids: torch.Tensor, pos: int, lacking: list[torch.Tensor]) -> torch.Tensor:
        """The logits [vocab] of one token at ``pos``; ``lacking``: the tokens the caller's cache lacks, in order."""


def attach(model: nn.Module, engine: Engine) -> None:
    """Make ``model.generate`` run ``engine``'s steps (see the module's docstring); a second call does nothing."""
    if getattr(model, "_lowbit_step_forward", None) is not None:
        return
    original = model.forward
    state: dict[str, Any] = {"cache": None, "pos": 0, "lacking": [], "inside": False}

    @functools.wraps(original)  # the original's signature: generate asks it for logits_to_keep, among others
    def forward(input_ids=None, *args, **kwargs):
        key = "cache" if "cache" in kwargs else "past_key_values"
        cache = kwargs.get(key)
        simple = not args and not torch.is_grad_enabled() and input_ids is not None and input_ids.shape[0] == 1 \
            and cache is not None and not engine.refused and not any(kwargs.get(k) for k in _NOT_SIMPLE)
        if not simple or state["inside"]:  # inside: the engine's own calls of the model (its step, its prompt)
            return original(input_ids, *args, **kwargs)
        with _inside(state):
            return _dispatch(input_ids, kwargs, key, cache)

    def _dispatch(input_ids, kwargs, key, cache):
        from transformers.modeling_outputs import CausalLMOutputWithPast

        n, ours = input_ids.shape[1], state["cache"] is cache
        where = kwargs.get("position_ids", kwargs.get("cache_position"))
        if where is not None:
            pos = int(where.reshape(-1)[-1]) - n + 1
        else:  # the positions follow what the cache holds (transformers' own rule)
            pos = state["pos"] if ours else cache.get_seq_length()
        if ours and pos != state["pos"]:
            raise LowbitError(f"a call at position {pos} on a cache that lowbit's decode step holds at position "
                              f"{state['pos']}: continue it in order, or start from the prompt with a new cache")
        if ours and n == 1:
            with torch.inference_mode():
                logits = engine.step(input_ids, pos, state["lacking"])
            state["pos"] += 1
            state["lacking"].append(input_ids.clone())
            return CausalLMOutputWithPast(logits=logits.view(1, 1, -1), past_key_values=cache)
        if ours and state["lacking"]:  # the caller's cache first gets the tokens it lacks
            done = torch.cat(state["lacking"], 1)
            original(done, **{key: cache}, use_cache=True,
                     position_ids=torch.arange(pos - done.shape[1], pos, device=done.device)[None])
        state.update(cache=None, lacking=[])
        out, lacking = engine.prompt(original, input_ids, kwargs, cache, pos)
        if lacking is not None:
            state.update(cache=cache, pos=pos + n, lacking=lacking)
        return out

    model._lowbit_step_forward, model._lowbit_forward, model._lowbit_step_state = forward, original, state
    model.forward = forward


@contextlib.contextmanager
def _inside(state: dict[str, Any] | None):
    """Mark an attached forward's state as running the engine (None: nothing attached, nothing to mark)."""
    before = state is not None and state["inside"]
    if state is not None:
        state["inside"] = True
    try:
        yield
    finally:
        if state is not None:
            state["inside"] = before


def bypassed(model: nn.Module):
    """Calls of ``model`` inside run its own forward, not the attached engine: the engines' and the decoder's own
    calls of the model (their prompts and steps, on caches of their own)."""
    return _inside(getattr(model, "_lowbit_step_state", None))


def detach(model: nn.Module) -> None:
    """Undo :func:`attach`: the model's own forward again."""
    if getattr(model, "_lowbit_step_forward", None) is not None:
        model.forward = model._lowbit_forward
        model._lowbit_step_forward = model._lowbit_forward = model._lowbit_step_state = None
