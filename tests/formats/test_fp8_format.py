"""Bit-exact tests of the fp8 (e4m3fn) format: scales, codes, saturation, 128x128 block edges, zero tiles, W8A8."""

from __future__ import annotations

import pytest
import torch

from lowbit.errors import FormatError
from lowbit.formats import Fp8Format, base, format_from_key
from lowbit.formats.fp8 import E4M3_MAX, quantize_block, quantize_channel, quantize_rows, to_e4m3

CHANNEL = Fp8Format()
BLOCK = Fp8Format(tile=128)
DYNAMIC = Fp8Format(activations="dynamic")


def test_hand_computed_channel_example():
    w = torch.tensor([[28.0, -1.0, 0.296875, 0.265625, 10.0],  # amax 28: scale 28/448 = 1/16 exactly
                      [0.0, 0.0, 0.0, 0.0, 0.0],  # all zero: scale 1, zero codes
                      [-7.0, 3.5, 0.0, 1e-3, -0.9]])  # amax 7: scale 1/64
    out = quantize_channel(w)
    assert out["scales"].dtype == torch.float32 and out["scales"].shape == (3, 1)
    assert torch.equal(out["scales"], torch.tensor([[0.0625], [1.0], [0.015625]]))
    # w / s = 448, -16, 4.75 (tie: 4.5 | 5.0, to even 5.0), 4.25 (tie: 4.0 | 4.5, to even 4.0), 160;
    # row 2: -448, 224, 0, 0.064 (-> 0.0625, step 2**-7 there), -57.6 (-> -56, step 4 in [32, 64))
    codes = torch.tensor([[448.0, -16.0, 5.0, 4.0, 160.0], [0.0] * 5, [-448.0, 224.0, 0.0, 0.0625, -56.0]])
    assert out["qweight"].dtype == torch.float8_e4m3fn
    assert torch.equal(out["qweight"].float(), codes)
    # e4m3fn bit patterns: sign | 4 exponent bits (bias 7) | 3 mantissa bits
    assert out["qweight"][0, :2].view(torch.uint8).tolist() == [0x7E, 0xD8]  # 448: 0 1111 110; -16: 1 1011 000
    deq = CHANNEL.decode(out)
    assert torch.equal(deq, codes * out["scales"])
    assert deq[0].tolist() == [28.0, -1.0, 0.3125, 0.25, 10.0]
    assert torch.equal(deq[1], torch.zeros(5))


def test_saturation_never_gives_nan():
    got = to_e4m3(torch.tensor([500.0, -1e6, 464.0, 448.0, float(2**-10)]), torch.tensor(1.0))
    assert got.float().tolist() == [448.0, -448.0, 448.0, 448.0, 0.0]
    # amax / 448 is inexact for most rows: amax / s may land just above 448 and must saturate, not overflow
    w = torch.randn(512, 64) * torch.rand(512, 1) * 10
    out = quantize_channel(w)
    q = out["qweight"].float()
    assert torch.isfinite(q).all() and torch.equal(q.abs().amax(1), torch.full((512,), E4M3_MAX))


def test_block_scales_with_partial_edge_tiles():
    n, k = 130, 200  # tiles: rows [0, 128) and [128, 130); cols [0, 128) and [128, 200)
    w = torch.randn(n, k) * 0.01
    w[5, 7], w[100, 150], w[129, 199] = 224.0, -112.0, 56.0  # tile amaxes 448 * 2**-1, 2**-2, 2**-3
    w[128:, :128] = 0  # tile (1, 0): all zero
    fmt = BLOCK
    assert fmt.expected_tensors(n, k) == {"qweight": ((n, k), torch.float8_e4m3fn), "scales": ((2, 2), torch.float32)}
    out = quantize_block(w, 128)
    assert torch.equal(out["scales"], torch.tensor([[0.5, 0.25], [1.0, 0.125]]))
    q = out["qweight"].float()
    for (r0, r1), (c0, c1), s in [((0, 128), (0, 128), 0.5), ((0, 128), (128, 200), 0.25), ((128, 130), (128, 200), 0.125)]:
        tile = (w[r0:r1, c0:c1] / s).to(torch.float8_e4m3fn).float()
        assert torch.equal(q[r0:r1, c0:c1], tile)
    assert q[5, 7] == 448 and q[100, 150] == -448 and q[129, 199] == 448
    assert torch.equal(q[128:, :128], torch.zeros(2, 128))
    deq = fmt.decode(out)
    assert torch.equal(deq[128:, :128], torch.zeros(2, 128))
    assert deq[5, 7] == 224 and deq[100, 150] == -112 and deq[129, 199] == 56


def test_all_zero_weight_is_exact_and_finite():
    for fmt in (CHANNEL, BLOCK):
        out = fmt.encode(torch.zeros(130, 260))
        assert torch.equal(out["scales"], torch.ones_like(out["scales"]))
        assert torch.equal(fmt.decode(out), torch.zeros(130, 260))


@pytest.mark.parametrize("fmt", [CHANNEL, BLOCK], ids=["channel", "block"])
def test_chunked_quantization_equals_one_shot(monkeypatch, fmt):
    w = torch.randn(300, 200)
    whole = quantize_channel(w) if fmt.tile is None else quantize_block(w, 128)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 128 * 200)  # 128 rows (one band) at a time
    assert fmt.block_rows(200) == 128
    chunked = fmt.encode(w)
    assert sorted(chunked) == ["qweight", "scales"]
    assert all(torch.equal(chunked[name].float(), whole[name].float()) for name in whole)
    assert chunked["scales"].shape == fmt.scale_shape(300, 200)


def test_layout_key_and_bits():
    for fmt in (CHANNEL, BLOCK, DYNAMIC, Fp8Format(tile=128, activations="dynamic")):
        assert format_from_key(fmt.key()) == fmt
        assert fmt.tensor_names() == ["qweight", "scales"]
    assert CHANNEL.bits_per_weight(256, 1024) == 8 + 32 / 1024
    assert BLOCK.bits_per_weight(256, 1024) == 8 + 2 * 8 * 32 / (256 * 1024)
    assert CHANNEL.describe() == "fp8 e4m3fn per-channel weight-only"
    assert "W8A8" in DYNAMIC.describe()
    with pytest.raises(FormatError, match="tile=64"):
        Fp8Format(tile=64)
    with pytest.raises(FormatError, match="activations='static'"):
        Fp8Format(activations="static")


def test_w8a8_hand_computed():
    # W = [[0.5, -1.75]]: scale 1.75 / 448 = 2**-8, codes 128, -448 (exact)
    tensors = quantize_channel(torch.tensor([[0.5, -1.75]]))
    assert tensors["scales"].item() == 2**-8
    # x row [7, 0.9]: scale 7 / 448 = 1/64, codes 448 and 57.6 -> 56, so x reads back as [7, 0.875]
    x = torch.tensor([[7.0, 0.9], [0.0, 0.0]])
    codes, scales = quantize_rows(x)
    assert codes.float().tolist() == [[448.0, 56.0], [0.0, 0.0]] and scales.flatten().tolist() == [1 / 64, 1.0]
    bias = torch.tensor([0.25])
    y = DYNAMIC.reference_linear(x, tensors, bias)
    assert y.flatten().tolist() == [7 * 0.5 - 0.875 * 1.75 + 0.25, 0.25]  # 2.21875
    # weight-only keeps x as is: 7 * 0.5 - 0.9 * 1.75 + 0.25
    assert CHANNEL.reference_linear(x, tensors, bias)[0, 0].item() == pytest.approx(2.175, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block", [None, 128])
def test_w8a8_reference_matches_hand_written(dtype, block):
    fmt = Fp8Format(tile=block, activations="dynamic")
    w = torch.randn(70, 300) * 0.05
    tensors = fmt.encode(w)
    x = (torch.randn(2, 3, 300) * 3).to(dtype)
    x[0, 1] = 0  # an all-zero token
    bias = torch.randn(70).to(dtype)
    got = fmt.reference_linear(x, tensors, bias)
    # by hand: every token row scaled by its own amax / 448, cast to e4m3fn, product and bias in float32
    rows = x.float().reshape(-1, 300)
    expected = []
    for row in rows:
        amax = row.abs().max()
        s = amax / 448 if amax > 0 else torch.tensor(1.0)
        expected.append((row / s).clamp(-448, 448).to(torch.float8_e4m3fn).float() * s)
    expected = (torch.stack(expected) @ fmt.decode(tensors).T + bias.float()).reshape(2, 3, 70).to(dtype)
    assert got.dtype == dtype and torch.equal(got, expected)
    assert torch.equal(got[0, 1], bias)
