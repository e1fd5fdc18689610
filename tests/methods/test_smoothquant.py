"""SmoothQuant: the W8A8 format bit for bit, folding scales (shared with AWQ), smoothing, and the runner end to end."""

from __future__ import annotations

import copy

import pytest
import torch
from conformance import CalibratedConformance
from helpers import (
    CALIB_TEXT, FAST_CALIB, char_tokenizer, data_dir, logits, make_bert, make_gemma3, make_llama,
    make_llama_with_tokenizer, token_ids,
)

import lowbit
from lowbit.calibration import BlockInputs, find_blocks, use_dequantized
from lowbit.calibration.balance import balance_groups, fold
from lowbit.calibration.inputs import capture
from lowbit.errors import CalibrationError, ConfigError
from lowbit.formats import W8A8Format, format_from_key
from lowbit.formats.w8a8 import fake_quantize_rows, int8_matmul, quantize_rows
from lowbit.methods.smoothquant import SmoothQuantConfig, SmoothQuantQuantizer, smooth_scale

TEXT, FAST = CALIB_TEXT, FAST_CALIB
FORMAT = W8A8Format()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_llama_with_tokenizer(tmp_path_factory.mktemp("llama") / "m")


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


# ---- config -----------------------------------------------------------------------------------------------

def test_config_round_trip_and_errors():
    cfg = lowbit.config("smoothquant", alpha=0.8)
    assert isinstance(cfg, lowbit.SmoothQuantConfig) and "smoothquant" in lowbit.methods()
    assert SmoothQuantConfig.from_dict(cfg.to_dict()) == cfg
    assert lowbit.config("smoothquant").alpha == 0.5
    for fields, message in [({"alpha": 1.5}, r"smoothquant.alpha=1.5 is out of range; expected 0 <= alpha <= 1"),
                            ({"alpha": -0.1}, "smoothquant.alpha=-0.1 is out of range"),
                            ({"alpha": "half"}, "smoothquant.alpha='half' has the wrong type"),
                            ({"bits": 4}, "unknown")]:
        with pytest.raises((ConfigError, TypeError), match=message):
            lowbit.config("smoothquant", **fields)


def test_quantize_on_load_is_refused(llama):
    with pytest.raises(ConfigError, match="needs calibration data .*`lowbit quantize SRC OUT --method smoothquant"):
        lowbit.from_pretrained(llama, quantization=lowbit.config("smoothquant"))


# ---- the W8A8 format, bit for bit -------------------------------------------------------------------------

W = torch.tensor([[127.0, -3.0, 10.0, 0.5], [-254.0, 1.0, 3.0, 5.0]])  # row scales 1 and 2: exact in float32
X = torch.tensor([[127.0, -63.5, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])  # token scales 1 and (all zero) 1


def test_weights_are_int8_per_channel_rounded_half_to_even():
    stored = FORMAT.encode(W)
    assert stored["qweight"].dtype == torch.int8 and stored["scales"].dtype == torch.float32
    assert stored["qweight"].tolist() == [[127, -3, 10, 0], [-127, 0, 2, 2]]  # 0.5, 1.5, 2.5 → 0, 2, 2
    assert stored["scales"].tolist() == [[1.0], [2.0]]
    assert torch.equal(FORMAT.decode(stored), torch.tensor([[127.0, -3, 10, 0], [-254, 0, 4, 4]]))
    assert FORMAT.expected_tensors(2, 4) == {"qweight": ((2, 4), torch.int8), "scales": ((2, 1), torch.float32)}
    assert FORMAT.bits_per_weight(256, 1024) == pytest.approx(8 + 32 / 1024)
    assert format_from_key(FORMAT.key()) == FORMAT
    zero = FORMAT.encode(torch.zeros(1, 8))
    assert zero["scales"].item() == 1.0 and not zero["qweight"].any()


def test_activations_are_int8_per_token_and_accumulated_exactly():
    codes, scales = quantize_rows(X)
    assert codes.tolist() == [[127, -64, 0, 2], [0, 0, 0, 0]] and scales.tolist() == [[1.0], [1.0]]
    bias = torch.tensor([0.5, -1.0])
    y = FORMAT.reference_linear(X, FORMAT.encode(W), bias)
    # acc row 0: 127*127 + (-64)(-3) + 0*10 + 2*0 = 16321 and 127*(-127) + 0 + 0 + 2*2 = -16125, times w scale 2
    assert y.tolist() == [[16321.5, -32251.0], [0.5, -1.0]]
    assert torch.equal(fake_quantize_rows(X), torch.tensor([[127.0, -64, 0, 2], [0, 0, 0, 0]]))


def test_the_exact_accumulation_is_torch_int_mm():
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (32, 3000), generator=gen, dtype=torch.int8)  # sums beyond float32's 2**24
    b = torch.randint(-127, 128, (24, 3000), generator=gen, dtype=torch.int8)
    a[:, :1500], b[:, :1500] = 127, 127
    assert torch.equal(int8_matmul(a, b), torch._int_mm(a, b.T.contiguous()))
    x = torch.randn(2, 5, 3000, generator=gen)
    stored = FORMAT.encode(torch.randn(24, 3000, generator=gen))
    xc, xs = quantize_rows(x)
    acc = torch._int_mm(xc.reshape(10, 3000), stored["qweight"].T.contiguous())
    want = (acc.float() * xs.reshape(10, 1) * stored["scales"].reshape(1, 24)).reshape(2, 5, 24)
    assert torch.equal(FORMAT.reference_linear(x, stored, None), want)


def test_smooth_scale_by_hand():
    s = smooth_scale(torch.tensor([4.0, 1.0, 0.0, 9.0]), torch.tensor([1.0, 4.0, 2.0, 0.0]), 0.5)
    assert s.tolist() == [2.0, 0.5, 1.0, 1.0]  # a dead input or weight channel keeps scale 1
    assert torch.equal(smooth_scale(torch.tensor([4.0]), torch.tensor([0.25]), 1.0), torch.tensor([4.0]))


# ---- folding (AWQ and SmoothQuant share it) ---------------------------------------------------------------

@pytest.mark.parametrize("build, groups", [(make_llama, 4), (lambda f: make_llama(f, num_key_value_heads=2), 3),
                                           (make_gemma3, 3), (make_bert, 1)],
                         ids=["llama", "llama-gqa", "gemma3", "bert"])
def test_folding_leaves_the_model_function_unchanged(tmp_path, build, groups):
    """Random scales in [0.3, 3.3] folded into every group of every block: the same outputs to ~1e-6. Gemma's norms
    need (1 + w) / s - 1; GQA's v_proj → o_proj group is skipped (widths differ); BERT's post-norm LayerNorm feeds
    the residual too, so only value → output.dense folds."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(build(tmp_path / "m"), dtype=torch.float32).eval()
    ids = token_ids(24, batch=2)
    with torch.no_grad():
        before = model(input_ids=ids).last_hidden_state
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    prefix, blocks = find_blocks(model)
    gen = torch.Generator().manual_seed(0)
    for i, block in enumerate(blocks):
        names = [f"{prefix}.{i}.{n}" for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        found = balance_groups(block, f"{prefix}.{i}", model.config.model_type, names, "test")
        assert len(found) == groups
        for group in found:
            fold(group, torch.rand(next(iter(group.linears.values())).in_features, generator=gen) * 3 + 0.3)
    with torch.no_grad():
        after = model(input_ids=ids).last_hidden_state
    assert rel_error(before, after) < 1e-5
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]
    assert len(changed) >= 2 * groups * len(blocks)  # per group at least prev's weight and one Linear's


# ---- smoothing --------------------------------------------------------------------------------------------

def test_smoothing_lowers_the_w8a8_error_of_a_block_with_outlier_channels(llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32).eval()
    block = model.model.layers[0]
    with torch.no_grad():  # a few input channels 50x larger, their weight columns 50x smaller: the same function
        for norm, linears in ((block.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                              (block.post_attention_layernorm, ("gate_proj", "up_proj"))):
            norm.weight[[3, 17, 40]] *= 50
            for name in linears:
                (block.self_attn if "_proj" in name and name[0] in "qkv" else block.mlp).get_submodule(name) \
                    .weight[:, [3, 17, 40]] /= 50
    ids = torch.tensor([[ord(c) for c in TEXT[i:i + 64]] for i in range(0, 512, 64)])
    hidden, calls = capture(model, find_blocks(model)[1], [ids[:4], ids[4:]], torch.device("cpu"))
    inputs = BlockInputs(hidden, calls[0])
    ref = inputs.run(block)

    plain = copy.deepcopy(block)  # W8A8 as is
    for module in plain.modules():
        if isinstance(module, torch.nn.Linear):
            use_dequantized(module, FORMAT, FORMAT.encode(module.weight.detach()))
            module.register_forward_pre_hook(lambda _, args: (fake_quantize_rows(args[0]),))
    smooth = copy.deepcopy(block)
    quantizer = SmoothQuantQuantizer(SmoothQuantConfig(), calibrated=True)
    quantizer.model_type = "llama"
    quantizer.formats = {f"model.layers.0.{n}": FORMAT for n, m in smooth.named_modules() if isinstance(m, torch.nn.Linear)}
    stored = quantizer.calibrate_block(smooth, "model.layers.0", inputs)
    assert len(stored) == 7 and all(s["qweight"].dtype == torch.int8 for s in stored.values())
    errors = [sum(float((o - r).norm()) for o, r in zip(inputs.run(b), ref, strict=True)) for b in (plain, smooth)]
    assert errors[1] < 0.25 * errors[0], errors  # measured: plain 4.26, smoothed 0.28
    before, after = quantizer.spread["model.layers.0.input_layernorm"]
    assert after < before / 3  # the activations' channels are evened out


# ---- the runner, end to end -------------------------------------------------------------------------------

@pytest.mark.parametrize("build, bound", [(make_llama, 0.03), (make_gemma3, 0.1)], ids=["llama", "gemma3"])
def test_end_to_end_loads_and_stays_close_to_fp32(tmp_path, build, bound):
    folder = char_tokenizer(build(tmp_path / "src"))
    out, quantizer = lowbit.quantize_calibrated(folder, tmp_path / "q", lowbit.config("smoothquant"), **FAST)
    assert quantizer.summary().startswith("smoothquant: 2 blocks in ")
    model = lowbit.from_pretrained(out)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.fmt == FORMAT and layer.kernel.name == "reference"
    assert {x.format for x in lowbit.inspect(out).layers} == {FORMAT.describe()}
    ids = torch.tensor([[ord(c) for c in TEXT[-60:]]])
    ref = logits(lowbit.from_pretrained(folder), ids)
    # measured: llama 0.018, gemma3 0.070 (int8 weights alone, g32: 0.013, 0.036; the rest is the activations')
    assert rel_error(ref, logits(model, ids)) < bound
    lowbit.save_pretrained(model, tmp_path / "again")
    assert torch.equal(logits(lowbit.from_pretrained(tmp_path / "again"), ids), logits(model, ids))


def test_an_architecture_without_balance_data_fails_before_any_work(tmp_path):
    from test_awq import make_opt

    folder = make_opt(tmp_path / "opt")
    with pytest.raises(CalibrationError, match=r"smoothquant has no data for model type 'opt'; expected one of "
                                               r"\[.*'gemma3_text'.*\]; add an entry"):
        lowbit.quantize_calibrated(folder, tmp_path / "q", lowbit.config("smoothquant"), **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt"]


@pytest.mark.realmodel
def test_real_model_w8a8_stays_close_to_fp32(tmp_path):
    """SmolLM2-135M, 16 x 256 calibration tokens: perplexity on 2,048 tokens within 5% of fp32."""
    from conformance import REAL_TOKENS, _real_setup, real_fp32_ppl

    from lowbit.eval import perplexity

    folder, tok, text = _real_setup("smollm2-135m")
    out, _ = lowbit.quantize_calibrated(folder, tmp_path / "q", lowbit.config("smoothquant"),
                                        calib=data_dir() / "wiki.calib.txt", samples=16, seq_len=256)
    got = perplexity(lowbit.from_pretrained(out), tok, text, max_tokens=REAL_TOKENS).ppl
    base = real_fp32_ppl("smollm2-135m")
    print(f"smoothquant w8a8 {got:.3f}, fp32 {base:.3f}")
    assert got < 1.05 * base


# ---- the calibrated conformance suite -------------------------------------------------------------------------

class TestSmoothQuant(CalibratedConformance):
    method = "smoothquant"
    bad_fields = [({"alpha": 1.5}, "smoothquant.alpha=1.5"), ({"alpha": "half"}, "smoothquant.alpha='half'")]
    max_logit_error = 0.025  # measured 0.016 (int8 per-channel weights alone: 0.013)
