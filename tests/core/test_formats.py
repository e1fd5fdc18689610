import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.errors import FormatError
from lowbit.formats import IntFormat, base, format_from_key, pack_bits, unpack_bits
from lowbit.qtypes import float_offset_to_zero, zero_to_float_offset


@given(bits=st.sampled_from([2, 4, 8]), rows=st.integers(1, 5), bytes_=st.integers(1, 9), seed=st.integers(0, 2**31))
def test_pack_unpack_unsigned(bits, rows, bytes_, seed):
    g = torch.Generator().manual_seed(seed)
    k = bytes_ * 8 // bits
    codes = torch.randint(0, 1 << bits, (rows, k), generator=g, dtype=torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (rows, bytes_) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, bits), codes)


@given(bits=st.sampled_from([2, 4]), k=st.sampled_from([8, 16, 64]), seed=st.integers(0, 2**31))
def test_pack_unpack_signed(bits, k, seed):
    g = torch.Generator().manual_seed(seed)
    half = 1 << (bits - 1)
    codes = torch.randint(-half, half, (3, k), generator=g).to(torch.int8)
    assert torch.equal(unpack_bits(pack_bits(codes, bits), bits, signed=True), codes)


def test_nibble_order_is_low_first():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_bits(codes, 4).tolist() == [[0x21, 0x0F]]
    assert pack_bits(torch.tensor([[-1, 3]], dtype=torch.int8), 4).tolist() == [[0x3F]]


@pytest.mark.parametrize("fmt, names", [
    (IntFormat(4, 128, False), {"qweight": ((8, 128), torch.uint8), "scales": ((8, 2), torch.float16),
                              "zeros": ((8, 2), torch.uint8)}),
    (IntFormat(8, None, True), {"qweight": ((8, 256), torch.int8), "scales": ((8, 1), torch.float32)}),
    (IntFormat(4, 32, True), {"qweight": ((8, 128), torch.uint8), "scales": ((8, 8), torch.float16)}),
])
def test_expected_tensors(fmt, names):
    assert fmt.expected_tensors(8, 256) == names


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([4, 8]), group=st.sampled_from([None, 32, 64]), sym=st.booleans(),
       n=st.integers(1, 6), groups=st.integers(1, 3), seed=st.integers(0, 2**31), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_rtn_error_within_half_step(bits, group, sym, n, groups, seed, scale):
    g = torch.Generator().manual_seed(seed)
    k = (group or 32) * groups
    w = torch.randn(n, k, generator=g) * scale
    fmt = IntFormat(bits, group, sym)
    t = fmt.encode(w)
    for name, (shape, dtype) in fmt.expected_tensors(n, k).items():
        assert t[name].shape == shape and t[name].dtype == dtype
    deq = fmt.decode(t)
    step = t["scales"].float().repeat_interleave(k // t["scales"].shape[1], dim=1)
    err = (deq - w).abs() / step
    # nearest rounding: half a step; only a group's extremes may lose up to one step to the rounding of
    # the stored fp16 scale and the clamp to the code range
    assert (err <= 1.0 + 1e-4).all()
    inner = err[(w > w.amin(1, keepdim=True)) & (w < w.amax(1, keepdim=True))]
    assert (inner <= 0.5 + 1e-3).float().mean() >= 0.98


def test_grid_edges_are_exact():
    # values already on the grid come back exactly (min, max and zero included)
    fmt = IntFormat(4, 32, False)
    scales = torch.full((2, 1), 0.25, dtype=torch.float16)
    zeros = torch.tensor([[3], [0]], dtype=torch.uint8)
    codes = torch.randint(0, 16, (2, 32), dtype=torch.uint8)
    codes[:, 0], codes[:, 1] = 0, 15
    w = (codes.float() - zeros.float()) * 0.25
    again = fmt.codes(w, scales, zeros)
    assert torch.equal(again, codes)
    t = {"qweight": pack_bits(codes, 4), "scales": scales, "zeros": zeros}
    assert torch.equal(fmt.decode(t), w)
    assert all(torch.equal(t[n], v) for n, v in fmt.encode(w, scales=scales, zeros=zeros).items())  # a given grid


def test_all_zero_group_has_no_nan():
    w = torch.zeros(4, 64)
    w[0, 32:] = torch.randn(32)
    for fmt in (IntFormat(4, 32, False), IntFormat(4, 32, True), IntFormat(8, None, True)):
        deq = fmt.decode(fmt.encode(w))
        assert torch.isfinite(deq).all() and torch.equal(deq[1:], w[1:])


def test_asymmetric_range_includes_zero():
    w = torch.linspace(0.5, 1.0, 32).reshape(1, 32)  # all positive
    scales, zeros = IntFormat(4, 32, False).grid(w)
    assert zeros.item() == 0
    assert scales.item() == pytest.approx(1.0 / 15, rel=1e-3)


def test_zero_point_conversion_exact():
    scales = torch.rand(5, 4) + 0.1
    zeros = torch.randint(0, 16, (5, 4), dtype=torch.uint8)
    offsets = zero_to_float_offset(zeros, scales, 8)
    codes = torch.randint(0, 16, (5, 4)).float()
    assert torch.allclose((codes - zeros.float()) * scales, (codes - 8) * scales + offsets, atol=1e-6)
    assert torch.equal(float_offset_to_zero(offsets, scales, 8).to(torch.uint8), zeros)


def sqnr_db(w, deq):
    return 10 * torch.log10(w.pow(2).sum() / (w - deq).pow(2).sum()).item()


def test_sqnr_floors_on_gaussian_weights():
    w = torch.randn(256, 1024)
    int8 = IntFormat(8, None, True)
    int4 = IntFormat(4, 128, False)
    # int8 per-channel: ~40 dB on Gaussian rows; int4 g128: ~19 dB
    assert sqnr_db(w, int8.decode(int8.encode(w))) >= 38
    assert sqnr_db(w, int4.decode(int4.encode(w))) >= 18


def test_three_bit_layout_is_eight_codes_in_three_bytes():
    # codes 0..7 at bits 3i of one 24-bit little-endian word: 0xFAC688 → bytes 88 C6 FA
    codes = torch.arange(8, dtype=torch.uint8).reshape(1, 8)
    assert pack_bits(codes, 3).tolist() == [[0x88, 0xC6, 0xFA]]
    assert pack_bits(torch.tensor([[7, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.uint8), 3).tolist() == [[0x07, 0x00, 0x20]]
    assert pack_bits(torch.tensor([[-1, 3, 0, 0, 0, 0, 0, 0]], dtype=torch.int8), 3).tolist() == [[0x1F, 0x00, 0x00]]


@given(bits=st.sampled_from([2, 3, 4]), signed=st.booleans(), rows=st.integers(1, 4), runs=st.integers(1, 6),
       seed=st.integers(0, 2**31))
def test_pack_unpack_every_width_at_the_grid_edges(bits, signed, rows, runs, seed):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    edges = torch.tensor([lo, hi, lo + 1, hi - 1])
    codes = edges[torch.randint(0, 4, (rows, 8 * runs), generator=g)]
    codes = codes.to(torch.int8 if signed else torch.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (rows, runs * bits) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, bits, signed=signed), codes)


def test_three_bit_needs_a_multiple_of_eight_inputs():
    with pytest.raises(FormatError, match="44 inputs.*multiple of 8.*modules_to_not_convert"):
        IntFormat(3, None, False).expected_tensors(4, 44)


def test_scale_dtype_is_a_format_field():
    assert IntFormat(4, 128, False).scale_dtype == torch.float16
    assert IntFormat(8, None, True).scale_dtype == torch.float32
    assert IntFormat(4, 128, False, scale_dtype=torch.float16) == IntFormat(4, 128, False)
    bf16 = IntFormat(4, 32, False, scale_dtype="bfloat16")
    assert bf16.scale_dtype == torch.bfloat16 and format_from_key(bf16.key()) == bf16 and "bfloat16" in bf16.describe()
    w = torch.randn(6, 64)
    t = bf16.encode(w)
    assert t["scales"].dtype == torch.bfloat16 and bf16.expected_tensors(6, 64)["scales"] == ((6, 2), torch.bfloat16)
    assert ((bf16.decode(t) - w).abs() <= t["scales"].float().repeat_interleave(32, 1)).all()
    hqq = IntFormat(4, 32, False, float_zero=True, scale_dtype=torch.float32)
    assert hqq.expected_tensors(6, 64)["zeros"] == ((6, 2), torch.float32)
    with pytest.raises(FormatError, match="scale_dtype=torch.int8.*float16"):
        IntFormat(4, 32, False, scale_dtype=torch.int8)


def test_bad_int_formats_are_one_line_format_errors():
    for kwargs, text in (({"bits": 5, "group_size": 32, "symmetric": False}, "bits=5"),
                         ({"bits": 4, "group_size": 32, "symmetric": True, "float_zero": True}, "float_zero=False"),
                         ({"bits": 4, "group_size": None, "symmetric": False, "g_idx": True}, "group_size")):
        with pytest.raises(FormatError, match=text) as err:
            IntFormat(**kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(FormatError, match="format key"):
        format_from_key('{"kind": "nope"}')


@pytest.mark.parametrize("fmt", [IntFormat(4, 64, False), IntFormat(3, None, True),
                                 IntFormat(4, 32, False, g_idx=True)], ids=str)
def test_row_blocks_give_the_same_result(fmt, monkeypatch):
    w = torch.randn(40, 256)
    whole = fmt.encode(w)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 256 * 7)  # blocks of 7 rows, the last one short
    assert fmt.block_rows(256) == 7
    blocked = fmt.encode(w)
    assert sorted(blocked) == sorted(fmt.expected_tensors(40, 256))
    assert all(torch.equal(whole[n], blocked[n]) for n in whole)
