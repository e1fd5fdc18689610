import dataclasses

import pytest
import torch
import transformers

import lowbit
from lowbit import registry
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError, DependencyError, RegistryError
from lowbit.formats import IntFormat
from lowbit.methods.rtn import RtnConfig, RtnQuantizer
from lowbit.nn import QuantEmbedding, QuantLinear


def tiny_llama(tied=False, hidden=64):
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=96, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_lm_head_and_embeddings_kept_by_default():
    model = lowbit.quantize_(tiny_llama(), lowbit.config("int4", group_size=32))
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, QuantLinear)
    assert type(model.model.embed_tokens) is torch.nn.Embedding
    quantized = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert len(quantized) == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_skip_list_by_name_part():
    cfg = lowbit.config("int4", group_size=32, modules_to_not_convert=("mlp.down_proj", "layers.1.self_attn"))
    model = lowbit.quantize_(tiny_llama(), cfg)
    kinds = {n: type(m).__name__ for n, m in model.named_modules()}
    assert kinds["model.layers.0.mlp.down_proj"] == "Linear"
    assert kinds["model.layers.1.self_attn.q_proj"] == "Linear"
    assert kinds["model.layers.0.self_attn.q_proj"] == "QuantLinear"
    assert kinds["model.layers.1.mlp.up_proj"] == "QuantLinear"


def test_quantize_embeddings_and_head_untied():
    ref = tiny_llama()
    ids = torch.randint(0, 96, (1, 12))
    with torch.no_grad():
        expected = ref(ids).logits
    model = lowbit.quantize_(tiny_llama(), lowbit.config("int8", quantize_embeddings=True, quantize_lm_head=True))
    assert isinstance(model.model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.lm_head.fmt == IntFormat(8, None, True)
    with torch.no_grad():
        got = model(ids).logits
    assert ((got - expected).norm() / expected.norm()).item() < 0.02


def test_tied_tables_share_one_int8_copy():
    model = lowbit.quantize_(tiny_llama(tied=True), lowbit.config("int4", group_size=32, quantize_embeddings=True))
    assert model.lm_head.tied_to == "model.embed_tokens"
    assert model.lm_head.qweight is model.model.embed_tokens.qweight
    keys = model.state_dict().keys()
    assert "model.embed_tokens.qweight" in keys and not any(k.startswith("lm_head.") for k in keys)


def test_tied_warns_when_only_one_table_asked():
    with pytest.warns(UserWarning, match="tied"):
        lowbit.quantize_(tiny_llama(tied=True), lowbit.config("int8", quantize_lm_head=True))


def test_scaled_embedding_keeps_its_scale():
    cfg = transformers.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=1, head_dim=32, vocab_size=80)
    torch.manual_seed(0)
    ref = transformers.Gemma3ForCausalLM(cfg).eval()
    ids = torch.randint(0, 80, (1, 9))
    expected = ref.model.embed_tokens(ids)
    model = lowbit.quantize_(ref, lowbit.config("int8", quantize_embeddings=True))
    got = model.model.embed_tokens(ids)
    assert ((got - expected).norm() / expected.norm()).item() < 0.01


def test_to_dtype_keeps_format_dtypes():
    model = lowbit.quantize_(tiny_llama(), lowbit.config("int4", group_size=32))
    layer = model.model.layers[0].self_attn.q_proj
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    model.to(torch.bfloat16)
    after = layer.state_dict()
    assert after["scales"].dtype == torch.float16 and torch.equal(after["scales"], before["scales"])
    assert torch.equal(after["qweight"], before["qweight"]) and torch.equal(after["zeros"], before["zeros"])
    assert layer.kernel is not None
    with torch.no_grad():
        out = model(torch.randint(0, 96, (1, 5))).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_calibrated_method_guard():
    @dataclasses.dataclass(frozen=True)
    class CalibConfig(QuantConfig):
        """A method that needs calibration."""

        method = "test_calib"

    class CalibQuantizer(RtnQuantizer):
        config_cls = CalibConfig
        requires_calibration = True

    registry.register_method(CalibConfig, CalibQuantizer)
    try:
        with pytest.raises(ConfigError, match="lowbit quantize SRC OUT --method test_calib --calib"):
            CalibQuantizer(CalibConfig())
        assert CalibQuantizer(CalibConfig(), pre_quantized=True).pre_quantized
    finally:
        registry.unregister("test_calib")


def test_required_packages_names_pip_command():
    class Needy(RtnQuantizer):
        required_packages = (("surely_not_installed_pkg", "surely-not-installed>=1.0"),)

    with pytest.raises(DependencyError, match=r"pip install 'surely-not-installed>=1.0'"):
        Needy(RtnConfig()).validate_environment(torch.device("cpu"), torch.float32)


def test_lifecycle_defaults():
    q = RtnQuantizer(RtnConfig())
    assert q.is_serializable and q.is_trainable  # int4 weight-only: LoRA trains on it (tests/training)
    assert q.update_dtype(torch.bfloat16) is torch.bfloat16
    assert q.update_device_map({"": "cpu"}) == {"": "cpu"} and q.adjust_max_memory(None) is None
    assert q.kept_dtype("lm_head", torch.bfloat16) is torch.bfloat16


def test_packed_nbytes_drives_memory_math():
    model = tiny_llama()
    q = RtnQuantizer(RtnConfig(bits=4, group_size=32))
    q.preprocess_model(model)
    layer = model.model.layers[0].mlp.down_proj  # 128 -> 64
    shell_bytes = sum(b.numel() * b.element_size() for b in layer.buffers())
    assert q.packed_nbytes("model.layers.0.mlp.down_proj", (64, 128)) == shell_bytes
    assert shell_bytes == 64 * 128 // 2 + 64 * 4 * (2 + 1)  # codes + fp16 scales + uint8 zeros
    assert all(b.device.type == "meta" for b in layer.buffers())


def test_quantize_rejects_bad_config():
    with pytest.raises(RegistryError, match="'int4-ish'"):
        lowbit.quantize_(tiny_llama(), "int4-ish")
    with pytest.raises(ConfigError, match="42"):
        lowbit.quantize_(tiny_llama(), 42)


def test_bare_linear_root_says_how_to_wrap_it():
    with pytest.raises(ConfigError, match=r"bare Linear.*nn.Sequential"):
        lowbit.quantize_(torch.nn.Linear(64, 32), lowbit.config("int8"))


def test_rtn_in_row_blocks_equals_whole(monkeypatch):
    from lowbit.formats import base

    w = torch.randn(96, 256)
    fmt = IntFormat(4, 64, False)
    whole = fmt.encode(w)
    monkeypatch.setattr(base, "CHUNK_ELEMENTS", 256 * 7)  # blocks of 7 rows, the last one short
    blocked = fmt.encode(w)
    assert all(torch.equal(whole[k], blocked[k]) for k in whole)


def test_default_quantize_is_the_formats_encoding():
    model = tiny_llama()
    q = RtnQuantizer(RtnConfig(bits=4, group_size=32))
    q.preprocess_model(model)
    name = "model.layers.0.mlp.down_proj"
    w = torch.randn(64, 128)
    got, want = q.quantize(name, w), q.formats[name].encode(w)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in got)
    with pytest.raises(ConfigError, match="'model.nope'.*preprocess_model") as err:
        q.packed_nbytes("model.nope", (64, 128))
    assert "\n" not in str(err.value)
