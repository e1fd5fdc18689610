"""Bit-exact tests of the 4-bit code-book formats: nf4 and fp4 (formats/codebook.py) and mxfp4 (formats/mx.py).

bitsandbytes is not a dependency; the nf4 golden bytes below were produced once by bitsandbytes 0.50.2 (CPU path,
``quantize_4bit(w, blocksize=B, quant_type="nf4", compress_statistics=False)``) and pasted here. That one-off check
(bitsandbytes on PYTHONPATH, not installed) compared, for [64,256] B64 fp32, [256,1024] B32 fp32, [128,512] B128 bf16,
[96,768] B256 fp16, [1000,576] B64 fp32 and [33,64] B64 weights (Gaussian with outliers, all-zero rows, and a row
holding every nf4 midpoint exactly): packed bytes and absmax matched bit for bit in every case (yes), and so did
dequantize_4bit against ours. ``create_dynamic_map(signed=True)`` equals :func:`dynamic_map` bit for bit (yes).
With ``compress_statistics=True`` the packed bytes, the second-level scales and the offset match; the uint8 absmax
codes match except 1-43 of 64-16k per weight, where bitsandbytes' CPU binary search does not return the nearest
code (ours is strictly nearer in all of them: 236 of 256000 on uniform data); bitsandbytes' dequantization of
its own codes equals ours.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError
from lowbit.formats import CodebookFormat, MxFormat, base, format_from_key
from lowbit.formats.codebook import (
    dequantize_absmax,
    dynamic_map,
    e2m1_codes,
    pack_nibbles,
    quantize_absmax,
    unpack_nibbles,
)
from lowbit.formats.mx import e8m0_to_float, shared_exponent
from lowbit.qtypes import FP4_E2M1_CODE, NF4_CODE, CodeBook, Rounding, code_book, fp4_e2m1, nf4

# QLoRA's published NF4 values (bitsandbytes functional.py); index 7 is 0, index 15 is 1
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230850219727, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


# ---- code books ----------------------------------------------------------------------------------------------------

def test_nf4_code_book_is_the_published_one():
    assert list(NF4_CODE) == PUBLISHED_NF4
    t = torch.tensor(NF4_CODE)
    assert t[7] == 0 and t[15] == 1 and t[0] == -1 and bool((t[1:] > t[:-1]).all())


def test_fp4_code_book_decodes_e2m1_bit_patterns():
    for code, value in enumerate(FP4_E2M1_CODE):
        sign, exp, man = code >> 3, (code >> 1) & 3, code & 1
        magnitude = man * 0.5 if exp == 0 else 2.0 ** (exp - 1) * (1 + man / 2)
        assert value == (-magnitude if sign else magnitude) and math.copysign(1, value) == (-1 if sign else 1)


def test_code_book_objects_carry_their_values_levels_nibble_order_and_rounding():
    assert nf4.values == NF4_CODE and nf4.levels == 1.0 and nf4.high_first and nf4.rounding is Rounding.TIES_LOWER
    assert fp4_e2m1.values == FP4_E2M1_CODE and fp4_e2m1.levels == 6.0 and not fp4_e2m1.high_first
    assert fp4_e2m1.rounding is Rounding.TIES_EVEN
    assert code_book("nf4") is nf4 and code_book(fp4_e2m1) is fp4_e2m1 and nf4 == "nf4" and fp4_e2m1.name == "fp4"
    fmt = CodebookFormat("fp4", 32)
    assert fmt.code is fp4_e2m1 and isinstance(fmt.code, CodeBook) and CodebookFormat(fp4_e2m1, 32) == fmt
    assert '"code": "fp4"' in fmt.key() and format_from_key(fmt.key()).code is fp4_e2m1
    with pytest.raises(FormatError, match="'af4'.*nf4"):
        code_book("af4")
    with pytest.raises(AttributeError):
        nf4.levels = 2.0


def test_dynamic_map_matches_bitsandbytes_construction():
    m = dynamic_map()
    assert m.shape == (256,) and m.dtype == torch.float32
    assert bool((m[1:] > m[:-1]).all())  # sorted, no duplicates
    assert m[127] == 0 and m[255] == 1
    assert torch.equal(m[:127], -m[128:255].flip(0))  # signed: mirror images around 0
    # values printed by bitsandbytes 0.50.2's create_dynamic_map(signed=True)
    assert m[:4].tolist() == [-0.992968738079071, -0.9789062738418579, -0.96484375, -0.9507812261581421]
    assert m[126:130].tolist() == [-5.500000384017767e-07, 0.0, 5.500000384017767e-07, 3.250000190746505e-06]
    # 2**i positive values in the decade (10**(i-7), 10**(i-6)] for i = 0..6, then 1.0
    pos = m[128:255]
    for i in range(7):
        assert int(((pos > 10.0 ** (i - 7)) & (pos <= 10.0 ** (i - 6))).sum()) == 2**i


# ---- packing -------------------------------------------------------------------------------------------------------

def test_nibble_orders():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_nibbles(codes, high_first=True).tolist() == [[0x12, 0xF0]]  # nf4: bitsandbytes' order
    assert pack_nibbles(codes, high_first=False).tolist() == [[0x21, 0x0F]]  # fp4, mxfp4: OCP / torch float4_x2


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), pairs=st.integers(1, 40), high=st.booleans(), seed=st.integers(0, 2**31))
def test_pack_unpack_round_trip(rows, pairs, high, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, 2 * pairs), generator=g, dtype=torch.uint8)
    packed = pack_nibbles(codes, high)
    assert packed.shape == (rows, pairs) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed, high), codes)


def test_odd_count_cannot_pack():
    with pytest.raises(FormatError, match="even"):
        pack_nibbles(torch.zeros(2, 3, dtype=torch.uint8), True)


# ---- nf4 -----------------------------------------------------------------------------------------------------------

def test_nf4_hand_example_with_ties():
    code = torch.tensor(NF4_CODE)
    mid = float((code[8] + code[9]) / 2)  # the fp32 decision boundary between codes 8 and 9
    above = float(torch.nextafter(torch.tensor(mid), torch.tensor(1.0)))
    row = torch.tensor([1.0, -1.0, 0.0, mid, above, -0.5, 0.3, 0.04])
    w = torch.stack([row * 2, torch.zeros(8)])  # absmax 2: 1/2 is exact, so the scaled values are the row itself
    fmt = CodebookFormat("nf4", 8)
    t = fmt.encode(w)
    # codes 15 0 7 8(tie → lower) 9 2 11 8, then a zero block (code 7 everywhere); first code in the high nibble
    assert t["qweight"].tolist() == [[0xF0, 0x78, 0x92, 0xB8], [0x77, 0x77, 0x77, 0x77]]
    assert t["absmax"].tolist() == [[2.0], [0.0]]
    deq = fmt.decode(t)
    assert torch.equal(deq[0], 2 * code[[15, 0, 7, 8, 9, 2, 11, 8]]) and torch.equal(deq[1], torch.zeros(8))


@pytest.mark.parametrize("block, golden, absmax", [
    (32, "00000000001111111111111122222222000001111112222233344455566777888999aaabbbccccdddddeeeeeeeefffff"
         + "7" * 32, [0.89552241563797, 0.41791045665740967, 0.5223880410194397, 0.0]),
    (64, "00000000001111111111111122222222233333334444445555556666667777788999aaabbbccccdddddeeeeeeeefffff"
         + "7" * 32, [0.89552241563797, 0.5223880410194397]),
])
def test_nf4_matches_bitsandbytes_golden_bytes(block, golden, absmax):
    w = ((torch.arange(128, dtype=torch.float32) - 60) / 67).reshape(2, 64)
    w[1, 32:] = 0
    t = CodebookFormat("nf4", block).encode(w)
    assert t["qweight"].reshape(-1).numpy().tobytes().hex() == golden
    assert t["absmax"].reshape(-1).tolist() == absmax


def test_nf4_double_quant_matches_bitsandbytes_golden():
    w = ((torch.arange(4096, dtype=torch.float32) % 97 - 48) / 31).reshape(8, 512)
    t = CodebookFormat("nf4", 64, double_quant=True).encode(w)
    assert t["absmax"].reshape(-1)[:16].tolist() == [197, 197, 169, 197, 197, 63, 197, 197, 52, 197, 197, 42, 197,
                                                     197, 31, 197]
    assert t["absmax_scale"].tolist() == [0.4349799156188965] and t["absmax_offset"].tolist() == [1.467237949371338]
    assert torch.equal(t["qweight"], CodebookFormat("nf4", 64).encode(w)["qweight"])


# ---- fp4 -----------------------------------------------------------------------------------------------------------

def test_fp4_hand_example_with_ties_to_even():
    row = torch.tensor([6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -5.0, -6.0, 0.0, 0.3, -0.1, 2.9])
    fmt = CodebookFormat("fp4", 16)
    t = fmt.encode(row[None])  # absmax 6: 6 / absmax is 1, so the row is already in grid units
    # codes 7 0 2 2 4 4 6 6 | 8 10 14 15 0 1 8 5 (ties go to the even mantissa; -0.25 → -0); low nibble first
    assert t["qweight"].tolist() == [[0x07, 0x22, 0x44, 0x66, 0xA8, 0xFE, 0x10, 0x58]]
    assert t["absmax"].tolist() == [[6.0]]
    expected = torch.tensor([6, 0, 1, 1, 2, 2, 4, 4, -0.0, -1, -4, -6, 0, 0.5, -0.0, 3])
    assert torch.equal(fmt.decode(t)[0], expected)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([0.1, 1.0, 7.0]))
def test_e2m1_rounding_is_nearest_ties_to_even(seed, scale):
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(FP4_E2M1_CODE[:8])
    x = torch.cat([torch.randn(200, generator=g) * scale * 3, (grid[:-1] + grid[1:]) / 2, -grid, torch.tensor([7.0, -9e9])])
    codes = e2m1_codes(x).long()
    # brute force: the nearest of the 8 magnitudes (6 beyond), ties to the even index; sign from the sign bit
    dist = (x.abs().clamp(max=6)[:, None] - grid[None]).abs()
    best = dist.min(dim=1, keepdim=True).values
    candidates = (dist == best).long() * torch.arange(8)
    even = torch.where((dist == best) & (torch.arange(8) % 2 == 0), torch.arange(8), torch.full((8,), 99)).amin(1)
    want = torch.where((dist == best).sum(1) > 1, even, candidates.amax(1))
    assert torch.equal(codes & 7, want)
    assert torch.equal(codes >> 3, torch.signbit(x).long())


# ---- double quantization -----------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 700), seed=st.integers(0, 2**31), scale=st.sampled_from([1e-4, 0.05, 3.0]))
def test_double_quant_round_trip_error_bound(n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    absmax = torch.rand(n, 3, generator=g) * scale
    codes, scales, offset = quantize_absmax(absmax)
    assert codes.shape == (n, 3) and codes.dtype == torch.uint8 and scales.shape == (math.ceil(3 * n / 256),)
    back = dequantize_absmax(codes, scales, offset)
    half_gap = float((dynamic_map()[1:] - dynamic_map()[:-1]).max()) / 2  # 0.00703: the widest step, near ±1
    bound = scales.repeat_interleave(256)[: 3 * n].view(n, 3) * half_gap * (1 + 1e-5) + 1e-7 * scale
    assert ((back - absmax).abs() <= bound).all()


def test_double_quant_of_equal_absmax_is_exact():
    absmax = torch.full((4, 70), 0.75)  # every centred value is 0: no division by a zero scale
    codes, scales, offset = quantize_absmax(absmax)
    assert (codes == 127).all() and (scales == 0).all()
    assert torch.equal(dequantize_absmax(codes, scales, offset), absmax)


# ---- mxfp4 ---------------------------------------------------------------------------------------------------------

def test_mxfp4_hand_example():
    a = torch.zeros(32)
    # amax 3 → floor(log2 3) - 2 = -1: X = 0.5 (biased 126); v / X = 6, 0.25 (tie → 0), 0.75 (tie → 1.0),
    # 5 (tie → 4), 5.8 → 6, -2, -0.125 → -0, 1.4 → 1.5
    a[:8] = torch.tensor([3.0, 0.125, 0.375, 2.5, 2.9, -1.0, -0.0625, 0.7])
    b = torch.zeros(32)
    b[0], b[1] = 7.5, -1.0  # amax 7.5 → X = 1 (biased 127): 7.5 saturates at 6
    c = torch.zeros(32)  # all zero → smallest scale, zero codes
    d = torch.full((32,), 1e-40)  # subnormal amax: exponent clamps at 0 (2**-127); elements round to 0
    e = torch.zeros(32)
    e[0] = 1.5 * 2.0**127  # the largest binade: X = 2**125 (biased 252)
    w = torch.cat([a, b, c, d, e]).reshape(1, 160)
    t = MxFormat().encode(w)
    assert t["scales"].tolist() == [[126, 127, 0, 0, 252]]
    codes = unpack_nibbles(t["qweight"], high_first=False)[0]
    assert codes[:8].tolist() == [7, 0, 2, 6, 7, 12, 8, 3] and codes[8:32].eq(0).all()
    assert codes[32:34].tolist() == [7, 10] and codes[34:64].eq(0).all()
    assert codes[64:128].eq(0).all() and codes[128] == 7 and codes[129:].eq(0).all()
    assert t["qweight"][0, :4].tolist() == [0x07, 0x62, 0xC7, 0x38]  # low nibble first
    deq = MxFormat().decode(t)[0]
    assert deq[:8].tolist() == [3.0, 0.0, 0.5, 2.0, 3.0, -1.0, -0.0, 0.75]
    assert deq[32:34].tolist() == [6.0, -1.0] and torch.equal(deq[64:128], torch.zeros(64))
    assert deq[128] == 1.5 * 2.0**127 and torch.isfinite(deq).all()


def test_e8m0_scales_are_exact_powers_of_two():
    b = torch.arange(0, 255, dtype=torch.int32).to(torch.uint8)
    assert e8m0_to_float(b).tolist() == [2.0 ** (i - 127) for i in range(255)]
    # floor(log2(amax)) - 2 + 127, clamped at 0; amax 0 → 0
    amax = torch.tensor([0.0, 1.0, 3.99, 4.0, 6.0 * 2.0**-126, 2.0**-125, 2.0**-149, 3.0e38])
    assert shared_exponent(amax).tolist() == [0, 125, 126, 127, 1, 0, 0, 252]


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 4), blocks=st.integers(1, 3), seed=st.integers(0, 2**31),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e6]))
def test_mxfp4_elements_are_nearest_on_the_block_grid(rows, blocks, seed, scale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 32 * blocks, generator=g) * scale
    t = MxFormat().encode(w)
    x = e8m0_to_float(t["scales"]).repeat_interleave(32, dim=1)
    amax = w.abs().view(rows, blocks, 32).amax(-1).repeat_interleave(32, dim=1)
    ratio = amax / x
    assert ((ratio >= 4) & (ratio < 8)).all()  # the E8M0 scale puts every block's amax in [4, 8)
    deq = MxFormat().decode(t)
    grid = torch.tensor(FP4_E2M1_CODE[:8])
    nearest = (w.abs().clamp(max=6 * x)[..., None] - grid * x[..., None]).abs().amin(-1)
    assert torch.equal((deq - w.clamp(-6 * x, 6 * x)).abs(), nearest)


# ---- formats ---------------------------------------------------------------------------------------------------------

def test_expected_tensors_and_bits():
    assert CodebookFormat("nf4", 64).expected_tensors(8, 256) == {
        "qweight": ((8, 128), torch.uint8), "absmax": ((8, 4), torch.float32)}
    assert CodebookFormat("nf4", 64, True).expected_tensors(100, 256) == {
        "qweight": ((100, 128), torch.uint8), "absmax": ((100, 4), torch.uint8),
        "absmax_scale": ((2,), torch.float32), "absmax_offset": ((1,), torch.float32)}
    assert MxFormat().expected_tensors(8, 256) == {"qweight": ((8, 128), torch.uint8), "scales": ((8, 8), torch.uint8)}
    assert CodebookFormat("nf4", 64).bits_per_weight(256, 1024) == 4.5
    assert CodebookFormat("nf4", 64, True).bits_per_weight(256, 1024) == pytest.approx(4.12708, abs=1e-5)
    assert MxFormat().bits_per_weight(256, 1024) == 4.25
    for fmt in (CodebookFormat("fp4", 32, True), MxFormat()):
        assert format_from_key(fmt.key()) == fmt and fmt.describe()


def test_bad_shapes_and_specs_are_format_errors():
    with pytest.raises(FormatError, match="multiple of 64"):
        CodebookFormat("nf4", 64).expected_tensors(4, 96)
    with pytest.raises(FormatError, match="even number"):
        CodebookFormat("fp4", 1).expected_tensors(4, 33)
    with pytest.raises(FormatError, match="multiple of 32"):
        MxFormat().expected_tensors(4, 48)
    with pytest.raises(FormatError, match="code"):
        CodebookFormat("af4", 64)
    with pytest.raises(FormatError, match="32"):
        MxFormat(exponent_block=64)


@pytest.mark.parametrize("fmt", [CodebookFormat("nf4", 32, True), CodebookFormat("fp4", 64), MxFormat()])
def test_row_chunks_give_the_same_result(fmt, monkeypatch):
    w = torch.randn(40, 256) * 0.02
    w[3] = 0
    whole = fmt.encode(w)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 256 * 3)
    parts = fmt.encode(w)
    assert all(torch.equal(whole[n], parts[n]) for n in whole)
    deq = fmt.decode(whole)
    assert torch.isfinite(deq).all() and torch.equal(deq[3], torch.zeros(256))
    assert deq.dtype == torch.float32 and fmt.decode(whole, torch.bfloat16).dtype == torch.bfloat16
