"""The sensitivity estimators on a tiny Llama: the output-Fisher rows line up with autograd's own output gradients,
and every estimator rates fewer bits as more damage."""

from __future__ import annotations

import pytest
import torch
from helpers import make_llama, token_ids

import lowbit
from lowbit.fitting.candidates import layout, parse_candidates
from lowbit.fitting.sensitivity import measure, output_gradients, window_rows
from lowbit.loading.checkpoint import open_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src = make_llama(tmp_path_factory.mktemp("sens") / "src")
    return src, lowbit.from_pretrained(src, dtype=torch.float32)


def test_output_gradients_match_autograd(tiny):
    _, model = tiny
    ids = token_ids(n=16, batch=2)
    name = "model.layers.1.mlp.down_proj"
    flags = [p.requires_grad for p in model.parameters()]
    rows = output_gradients(model, ids, (name,), max_rows=1000)  # more rows than tokens: every position, in order
    assert [p.requires_grad for p in model.parameters()] == flags  # left as it was
    x, g2 = rows[name]
    layer = dict(model.named_modules())[name]
    want_x, want_g = [], []

    def keep(module, args, output):
        want_x.append(args[0].detach())
        output.retain_grad()
        want_g.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        for window in ids:
            model(input_ids=window[None], labels=window[None]).loss.backward()
            model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    assert x.shape == (32, layer.in_features) and g2.shape == (32, layer.out_features)
    torch.testing.assert_close(x, torch.cat([t.reshape(-1, t.shape[-1]) for t in want_x]))
    full = torch.cat([t.grad.reshape(-1, t.shape[-1]) for t in want_g]).pow(2)
    torch.testing.assert_close(g2, full / 2)  # every row, weighted 1 / windows: the mean over the 2 windows
    xs, gs = output_gradients(model, ids, (name,), max_rows=10, seed=3)[name]  # a pick: the same rows of both
    pick, weights = window_rows(2, 16, 10, seed=3)
    assert {0, 16} <= set(pick.tolist())
    torch.testing.assert_close(xs, x[pick])
    torch.testing.assert_close(gs, full[pick] * weights[:, None])


@pytest.mark.parametrize("windows,width,rows", [(4, 512, 1024), (16, 512, 1024), (3, 5, 6), (2, 8, 100)])
def test_window_rows_hold_every_windows_first_position(windows, width, rows):
    """The attention sink (each window's first position) is always scored; the weighted rows estimate the mean
    over the windows of a sum over every position: exactly for a constant, and for any values once all are held."""
    pick, weights = window_rows(windows, width, rows)
    held = pick.tolist()
    assert len(held) == len(set(held)) == min(rows, windows * width) and held == sorted(held)
    assert set(range(0, windows * width, width)) <= set(held)
    assert float(weights.sum()) == pytest.approx(width)
    values = torch.rand(windows * width, generator=torch.Generator().manual_seed(1))
    if rows >= windows * width:
        assert float((values[pick] * weights).sum()) == pytest.approx(float(values.sum()) / windows)


@pytest.mark.parametrize("estimator", ["fisher", "output-fisher", "output"])
def test_fewer_bits_rate_as_more_damage(tiny, estimator):
    src, model = tiny
    cands = parse_candidates("int8,int4,int3,int2", 32)
    sens = measure(model, token_ids(n=32, batch=2), layout(open_checkpoint(src), cands), cands, estimator)
    for name in sens["int8"]:
        values = [sens[label][name] for label in ("int8", "int4", "int3", "int2")]
        assert 0 < values[0] < values[1] < values[2] < values[3], (name, values)


def test_calibrated_candidates_are_scored_with_the_calibration_windows_hessians(tiny, monkeypatch):
    """GPTQ is scored as the runner quantizes it: with X^T X / rows over the windows given as ``hessian_ids``
    (every token of them), not with the few scored rows (GPTQ fitted to those cancels its error on exactly them)."""
    from lowbit.methods.gptq import GptqQuantizer

    src, model = tiny
    calib = token_ids(n=24, batch=3)
    name = "model.layers.1.mlp.down_proj"
    layer = dict(model.named_modules())[name]
    xs = []
    handle = layer.register_forward_hook(lambda m, a, o: xs.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    try:
        with torch.inference_mode():
            for window in calib:
                model(input_ids=window[None])
    finally:
        handle.remove()
    x = torch.cat(xs)
    want = x.T @ x / x.shape[0]
    assert x.shape[0] == 72
    seen = {}
    original = GptqQuantizer.quantize_layer
    monkeypatch.setattr(GptqQuantizer, "quantize_layer",
                        lambda self, n, w, h: seen.setdefault(n, h.clone()) is None or original(self, n, w, h))
    cands = parse_candidates("int8,gptq4", 32)
    lay = layout(open_checkpoint(src), cands)
    sens = measure(model, token_ids(n=16, batch=2), lay, cands, "output-fisher", max_rows=8, hessian_ids=calib)
    torch.testing.assert_close(seen[name], want)
    assert set(seen) == set(lay.names) and sens["gptq4"][name] > 0
