"""LoRA through PEFT on models from lowbit.from_pretrained: targets, training, merging, checkpointing, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import LLAMA_LINEARS, make_llama, token_ids

import lowbit
from lowbit.errors import TrainingError
from lowbit.nn import QuantLinear

peft = pytest.importorskip("peft", reason="peft is in the test extra: pip install -e '.[test]'")
from peft import LoraConfig  # noqa: E402

import lowbit.training as training  # noqa: E402
from lowbit.training import QuantLoraLinear  # noqa: E402

TRAINABLE = ("int8", "int4", "nf4", "fp4", "hqq", "fp8", "mxfp4")


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("lora") / "dense")


def load(dense, method="int4", **fields):
    return lowbit.from_pretrained(dense, quantization=lowbit.config(method, compute_dtype="float32", **fields))


def quantized_names(model):
    return {n for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def canonical(model):
    return {n.removesuffix(".base_layer"): {k: v.clone() for k, v in m.canonical_tensors().items()}
            for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def train(model, ids, steps=3, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def test_all_linear_targets_every_quantized_linear_and_trains(dense):
    model = load(dense)
    quantized, before = quantized_names(model), canonical(model)
    assert len(quantized) == 2 * len(LLAMA_LINEARS)
    pm = training.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    wrapped = {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if isinstance(m, QuantLoraLinear)}
    assert wrapped == quantized  # lm_head (the output head) is left out, as PEFT's all-linear does
    trainable = {n for n, p in pm.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    losses = train(pm, token_ids(16, batch=2))
    assert losses[-1] < losses[0]
    after = canonical(pm.base_model.model)
    assert all(torch.equal(after[n][k], before[n][k]) for n in before for k in before[n])  # the base is frozen


def test_plain_peft_get_peft_model_after_register_with_a_list_of_targets(dense):
    model = load(dense, kernel="cpu_int4")  # whose qweight lives in the kernel layout (PEFT reads qweight.device)
    assert model.model.layers[0].self_attn.q_proj._buffers["qweight"] is None
    config = training.register(LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    pm = peft.get_peft_model(model, config)
    wrapped = [n for n, m in pm.named_modules() if isinstance(m, QuantLoraLinear)]
    assert len(wrapped) == 4
    pm.train()
    pm(input_ids=token_ids(16), labels=token_ids(16)).loss.backward()
    b_grads = [p.grad for n, p in pm.named_parameters() if "lora_B" in n]  # B starts at zero, so A's grads are 0
    assert len(b_grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in b_grads)
    assert all(p.grad is None for n, p in pm.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("method", TRAINABLE)
def test_every_format_that_trains_gets_lora_gradients(dense, method):
    model = load(dense, method)
    pm = training.get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    pm.train()
    pm(input_ids=token_ids(12), labels=token_ids(12)).loss.backward()
    grads = [p.grad for n, p in pm.named_parameters() if "lora_A" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_merge_and_unload_gives_dense_layers_with_the_adapted_output(dense):
    model = load(dense)
    pm = training.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    train(pm, token_ids(16, batch=2))
    ids = token_ids(10, seed=5)
    layers = {n.removeprefix("base_model.model."): m for n, m in pm.named_modules() if isinstance(m, QuantLoraLinear)}
    expected = {n: m.get_base_layer().dequantize(torch.float32) + m.get_delta_weight("default")
                for n, m in layers.items()}
    with torch.no_grad():
        adapted = pm(ids).logits
    merged = pm.merge_and_unload()
    assert not quantized_names(merged)
    for name, w in expected.items():
        layer = merged.get_submodule(name)
        assert type(layer) is torch.nn.Linear and torch.allclose(layer.weight, w, atol=0, rtol=0), name
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted, atol=1e-4, rtol=1e-4)


def test_unmerge_restores_the_quantized_base_exactly(dense):
    model = load(dense)
    before = canonical(model)
    pm = training.get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    ids = token_ids(8)
    with torch.no_grad():
        adapted = pm(ids).logits
        pm.merge_adapter()
        assert type(pm.base_model.model.model.layers[0].self_attn.q_proj.base_layer) is torch.nn.Linear
        assert torch.allclose(pm(ids).logits, adapted, atol=1e-4, rtol=1e-4)
        pm.unmerge_adapter()
        assert torch.equal(pm(ids).logits, adapted)
    after = canonical(pm.base_model.model)
    assert all(torch.equal(after[n][k], before[n][k]) for n in before for k in before[n])


def test_gradient_checkpointing_gives_the_same_gradients(dense):
    ids = token_ids(16, batch=2)
    grads, calls = [], []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = load(dense)
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_activation_checkpointing
        pm = training.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
        pm.train()
        seen = []
        model.model.layers[0].mlp.down_proj.get_base_layer().register_forward_hook(lambda *a: seen.append(1))
        pm(input_ids=ids, labels=ids).loss.backward()
        calls.append(len(seen))
        grads.append({n: p.grad.clone() for n, p in pm.named_parameters() if p.requires_grad})
    assert calls == [1, 2]  # checkpointed: the block's forward runs again in backward
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5) for n in grads[0])


def test_saved_adapter_loads_back_onto_the_base(dense, tmp_path):
    pm = training.get_peft_model(load(dense), LoraConfig(r=4, target_modules="all-linear"))
    train(pm, token_ids(16))
    pm.save_pretrained(tmp_path / "adapter")
    ids = token_ids(10, seed=3)
    with torch.no_grad():
        expected = pm(ids).logits
        got = training.load_adapter(load(dense), tmp_path / "adapter")(ids).logits
    assert torch.equal(got, expected)


def test_config_trains_is_true_exactly_for_formats_with_a_backward():
    assert all(training.config_trains(m) for m in ("int8", "int4", "nf4", "fp4", "hqq", "fp8", "mxfp4", "gptq", "awq"))
    assert not training.config_trains("smoothquant")
    assert not training.config_trains(lowbit.config("fp8", activations="dynamic"))


# ---- bad input: one line each, naming the value, what was expected and the fix ---------------------------------

def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_a_format_without_backward_is_refused_before_wrapping(dense):
    model = load(dense, "fp8", activations="dynamic")
    with pytest.raises(TrainingError) as e:
        training.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    text = one_line(e)
    assert "model.layers.0" in text and "W8A8" in text and "nf4" in text and "int2-int8" in text
    assert not any(isinstance(m, QuantLoraLinear) for m in model.modules())


@pytest.mark.parametrize("target, kind", [("input_layernorm", "LlamaRMSNorm"), ("embed_tokens", "QuantEmbedding")])
def test_a_target_that_is_not_a_linear(dense, target, kind):
    model = load(dense, quantize_embeddings=True)
    with pytest.raises(TrainingError, match=f"{target}' is .*{kind}, not a Linear") as e:
        training.get_peft_model(model, LoraConfig(r=4, target_modules=[target]))
    one_line(e)


def test_an_adapter_trained_on_another_base(dense, tmp_path):
    pm = training.get_peft_model(load(dense), LoraConfig(r=4, target_modules="all-linear"))
    pm.save_pretrained(tmp_path / "adapter")
    other = make_llama(tmp_path / "other", intermediate_size=96)
    with pytest.raises(TrainingError, match=r"has shape \[128, 4\]; expected \[96, 4\] .*another base") as e:
        training.load_adapter(load(other), tmp_path / "adapter")
    one_line(e)
    config = training.register(LoraConfig.from_pretrained(tmp_path / "adapter"))
    with pytest.raises(TrainingError, match="another base"):  # plain PEFT loading says the same
        peft.PeftModel.from_pretrained(load(other), tmp_path / "adapter", config=config)


def test_a_lora_variant_or_an_init_that_reads_the_dense_weight(dense):
    with pytest.raises(TrainingError, match="use_dora.*expected plain LoRA") as e:
        training.get_peft_model(load(dense), LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    one_line(e)
    with pytest.raises(TrainingError, match="init_lora_weights='pissa' reads the dense base weight") as e:
        training.get_peft_model(load(dense), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights="pissa"))
    one_line(e)


def test_lora_gradients_equal_those_on_the_dense_dequantized_model(dense, tmp_path):
    """End to end: LoRA on the quantized model trains exactly like LoRA on a dense model holding the dequantized
    weights (same adapters, same batch): the gradients of every adapter tensor agree."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from lowbit.training.merge import dense_tensors

    quantized = load(dense, "nf4")
    folder = tmp_path / "dequantized"
    folder.mkdir()
    save_file(dict(dense_tensors(quantized)), str(folder / "model.safetensors"))
    cfg = quantized.config.__class__.from_dict({k: v for k, v in quantized.config.to_dict().items()
                                                if k != "quantization_config"})
    cfg.save_pretrained(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = token_ids(16, batch=2)
    grads = []
    for model, wrap in ((quantized, training.get_peft_model), (reference, peft.get_peft_model)):
        torch.manual_seed(0)
        pm = wrap(model, LoraConfig(r=4, target_modules=["q_proj", "o_proj", "down_proj"], init_lora_weights=False))
        pm.train()
        pm(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in pm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 12
    assert all(torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6) for n in grads[0])


def test_transformers_loaded_lowbit_models_train_and_say_so(dense):
    """Through transformers (lowbit's HfQuantizer): is_trainable follows the format, and LoRA trains the same way."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dense, quantization_config=lowbit.HfQuantConfig("nf4"))
    assert model.hf_quantizer.is_trainable
    pm = training.get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    assert len([m for m in pm.modules() if isinstance(m, QuantLoraLinear)]) == len(quantized_names(model))
    losses = train(pm, token_ids(16, batch=2))
    assert losses[-1] < losses[0]
    w8a8 = AutoModelForCausalLM.from_pretrained(dense, quantization_config=lowbit.HfQuantConfig(
        lowbit.config("fp8", activations="dynamic")))
    assert not w8a8.hf_quantizer.is_trainable
