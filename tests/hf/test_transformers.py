"""transformers loads lowbit folders and quantizes with lowbit configs (lowbit/hf): the same logits as
lowbit.from_pretrained, exactly, through lowbit's shells and kernels; saving writes a lowbit folder.

CI also runs this file under transformers 5.17 (.ci/run), the oldest version the integration supports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM

import lowbit
from lowbit.errors import ConfigError, DependencyError, LowbitWarning, RegistryError
from lowbit.hf import compat
from lowbit.nn import QuantLinear
from lowbit.registry import get
from helpers import (REPO, cli_env, load_tensors, logits, make_bert, make_gemma3, make_llama,
                           make_llama_with_tokenizer, make_odd_llama, token_ids)

FIXTURES = REPO / "tests" / "fixtures"
FIXTURE_NAMES = ["tiny-llama-int4-g32", "tiny-llama-nf4-b32-dq", "tiny-llama-hqq-4b-g32", "tiny-llama-fp8",
                 "tiny-llama-gptq-4b-g32-act-order"]
# layers read from another tool's checkpoint (methods/imported.py): it never quantizes; a plan of `lowbit fit`
# (methods/mixed.py): it quantizes only with a plan, never with its defaults
LOAD_ONLY = {"imported", "mixed"}
DATA_FREE = [m for m in lowbit.methods() if not get(m).quantizer_cls.requires_calibration and m not in LOAD_ONLY]
CALIBRATED = [m for m in lowbit.methods() if get(m).quantizer_cls.requires_calibration and m not in LOAD_ONLY]
IDS = token_ids(vocab=64, batch=2)
pytestmark = pytest.mark.filterwarnings("ignore:group_size=")  # the fallback's warning, from both loaders


def _kernels(model) -> dict[str, str]:
    return {n: m.kernel.name for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _same(a, b, ids=IDS) -> None:
    assert _kernels(a) == _kernels(b) and _kernels(a)
    assert torch.equal(logits(a, ids), logits(b, ids))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> Path:
    return make_odd_llama(tmp_path_factory.mktemp("hf") / "odd")


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


# ---- registration ---------------------------------------------------------------------------------------
def test_import_lowbit_registers_when_transformers_loads_its_quantizers_not_before():
    out = _python("import sys, lowbit\n"
                  "print('imported early:', 'transformers.quantizers.auto' in sys.modules)\n"
                  "from transformers import AutoModelForCausalLM\n"
                  "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q, AUTO_QUANTIZATION_CONFIG_MAPPING as C\n"
                  "print('registered:', Q['lowbit'].__name__, C['lowbit'].__name__)")
    assert "imported early: False" in out
    assert "registered: LowbitHfQuantizer HfQuantConfig" in out


def test_registers_when_transformers_quantizers_were_imported_first():
    out = _python("import transformers.quantizers.auto as a\nimport lowbit\n"
                  "print('registered:', a.AUTO_QUANTIZER_MAPPING['lowbit'].__name__)")
    assert "registered: LowbitHfQuantizer" in out


def test_registration_runs_once():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    from lowbit.hf import install
    from lowbit.hf.register import register

    before = (AUTO_QUANTIZER_MAPPING["lowbit"], AUTO_QUANTIZATION_CONFIG_MAPPING["lowbit"])
    install()
    register()  # transformers' register_* raise on a taken name; ours must not
    assert (AUTO_QUANTIZER_MAPPING["lowbit"], AUTO_QUANTIZATION_CONFIG_MAPPING["lowbit"]) == before


# ---- loading lowbit folders --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_lowbit_folder_loads_with_the_same_logits(name):
    folder = FIXTURES / name
    ours, theirs = lowbit.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    _same(ours, theirs)
    assert lowbit.inspect(theirs).layers  # the model is lowbit's: inspect and save_pretrained know it


def test_loading_fields_passed_with_a_folder_apply_as_in_lowbit():
    folder = FIXTURES / "tiny-llama-int4-g32"
    cfg = lowbit.config("int4", group_size=32, quantize_embeddings=True, kernel="reference", compute_dtype="float32")
    with pytest.warns(UserWarning, match="loading attributes"):  # transformers says it keeps the folder's config
        theirs = AutoModelForCausalLM.from_pretrained(folder, quantization_config=lowbit.HfQuantConfig(cfg))
    assert set(_kernels(theirs).values()) == {"reference"}
    _same(lowbit.from_pretrained(folder, quantization=cfg), theirs)
    with pytest.raises(ConfigError, match="quantized with 'rtn' but quantization_config asks for 'nf4'"):
        AutoModelForCausalLM.from_pretrained(folder, quantization_config=lowbit.HfQuantConfig("nf4"))


def test_other_architectures(tmp_path):
    gemma = make_gemma3(tmp_path / "gemma")
    ids = token_ids(vocab=128)
    ours = lowbit.from_pretrained(gemma, quantization=lowbit.config("nf4"))
    _same(ours, AutoModelForCausalLM.from_pretrained(gemma, quantization_config=lowbit.HfQuantConfig("nf4")), ids)
    _same(ours, AutoModelForCausalLM.from_pretrained(lowbit.save_pretrained(ours, tmp_path / "gemma-nf4")), ids)
    bert = make_bert(tmp_path / "bert")
    ours = lowbit.from_pretrained(bert, quantization=lowbit.config("int8"))
    theirs = AutoModel.from_pretrained(bert, quantization_config=lowbit.HfQuantConfig("int8"))
    assert _kernels(ours) == _kernels(theirs)
    with torch.inference_mode():
        assert torch.equal(ours(input_ids=ids).last_hidden_state, theirs(input_ids=ids).last_hidden_state)


def test_auto_model_gives_the_same_hidden_states():
    folder = FIXTURES / "tiny-llama-int4-g32"
    base = AutoModel.from_pretrained(folder)  # the base model: lm_head.weight is left over, as for any folder
    ours = lowbit.from_pretrained(folder)
    with torch.inference_mode():
        assert torch.equal(base(input_ids=IDS).last_hidden_state, ours.model(input_ids=IDS).last_hidden_state)


@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_device_map(device_map):
    folder = FIXTURES / "tiny-llama-int4-g32"
    _same(lowbit.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder, device_map=device_map))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype(dtype):
    folder = FIXTURES / "tiny-llama-int4-g32"
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    assert theirs.dtype == dtype
    _same(lowbit.from_pretrained(folder, dtype=dtype), theirs)


def test_device_map_auto_while_quantizing_on_load(tiny):
    cfg = lowbit.config("int4", group_size=32)
    theirs = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=lowbit.HfQuantConfig(cfg), device_map="auto")
    _same(lowbit.from_pretrained(tiny, quantization=cfg), theirs, token_ids(vocab=128))


def test_pipeline_generates_what_lowbit_generates(tmp_path):
    src = make_llama_with_tokenizer(tmp_path / "src")
    out = lowbit.quantize_folder(src, tmp_path / "q", lowbit.config("int4", group_size=32))
    pipe = transformers.pipeline("text-generation", model=str(out))
    assert isinstance(pipe.model.model.layers[0].mlp.down_proj, QuantLinear)
    got = pipe("hello", max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    ids = pipe.tokenizer("hello", return_tensors="pt").input_ids
    expected = lowbit.from_pretrained(out).generate(ids, max_new_tokens=8, do_sample=False)[0]
    assert list(got) == expected.tolist() and len(got) > ids.shape[1]


# ---- quantizing on load --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", DATA_FREE)
def test_quantize_on_load_equals_lowbit(method, tiny, odd):
    for src in (tiny, odd):  # odd: group-size fallbacks, recorded per layer
        ours = lowbit.from_pretrained(src, quantization=lowbit.config(method))
        theirs = AutoModelForCausalLM.from_pretrained(src, quantization_config=lowbit.HfQuantConfig(method))
        _same(ours, theirs, token_ids(vocab=128, batch=2))
        assert theirs.config.quantization_config.to_dict() == ours.config.quantization_config


def test_hf_quant_config_takes_fields_or_a_config(tiny):
    cfg = lowbit.config("int4", group_size=32, symmetric=True)
    assert lowbit.HfQuantConfig("int4", group_size=32, symmetric=True).to_dict() == cfg.to_dict()
    assert lowbit.HfQuantConfig(cfg).to_dict() == cfg.to_dict()
    theirs = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=lowbit.HfQuantConfig(cfg))
    _same(lowbit.from_pretrained(tiny, quantization=cfg), theirs, token_ids(vocab=128))


# ---- saving ---------------------------------------------------------------------------------------------------
def test_save_pretrained_writes_a_lowbit_folder_both_load(tiny, tmp_path):
    theirs = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=lowbit.HfQuantConfig("int4", group_size=32))
    ours = lowbit.from_pretrained(tiny, quantization=lowbit.config("int4", group_size=32))
    theirs.save_pretrained(tmp_path / "a")
    lowbit.save_pretrained(ours, tmp_path / "b")
    assert load_tensors_of(tmp_path / "a") == load_tensors_of(tmp_path / "b")
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["quantization_config"] == json.loads((tmp_path / "b" / "config.json").read_text())["quantization_config"]
    lowbit.verify(tmp_path / "a")
    ids = token_ids(vocab=128)
    _same(ours, lowbit.from_pretrained(tmp_path / "a"), ids)
    _same(ours, AutoModelForCausalLM.from_pretrained(tmp_path / "a"), ids)


def load_tensors_of(folder: Path) -> dict[str, bytes]:
    return {k: v.contiguous().view(torch.uint8).numpy().tobytes() for k, v in load_tensors(folder / "model.safetensors").items()}


def test_push_to_hub_uploads_a_lowbit_folder(monkeypatch, tmp_path):
    """push_to_hub saves with the model's save_pretrained; the Hub calls are replaced by a local copy."""
    import transformers.utils.hub as hub

    folder = FIXTURES / "tiny-llama-int4-g32"
    model = AutoModelForCausalLM.from_pretrained(folder)
    uploaded = tmp_path / "uploaded"
    monkeypatch.setattr(hub, "hf_api", lambda: types.SimpleNamespace(
        create_repo=lambda repo_id, **kw: types.SimpleNamespace(repo_id=repo_id)))
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **kw: types.SimpleNamespace(save=lambda p: None))
    monkeypatch.setattr(model, "_upload_modified_files", lambda work_dir, *a, **kw: shutil.copytree(work_dir, uploaded))
    model.push_to_hub("someone/tiny-int4")
    lowbit.verify(uploaded)
    _same(lowbit.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(uploaded))


# ---- without import lowbit -----------------------------------------------------------------------------------
def test_without_import_lowbit_transformers_warns_and_leaves_random_weights():
    """What the README says happens: transformers skips the unknown quantization (one warning) and the
    Linear weights are missing; nothing is raised. If transformers changes this, update the README."""
    folder = FIXTURES / "tiny-llama-int4-g32"
    out = _python("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
                  f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
                  "print('lowbit imported:', 'lowbit' in sys.modules)\n"
                  "print('linear:', type(m.model.layers[0].mlp.down_proj).__name__)")
    assert "lowbit imported: False" in out and "linear: Linear" in out
    assert "Unknown quantization type, got lowbit" in out
    assert "MISSING" in out and "UNEXPECTED" in out


# ---- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", CALIBRATED)
def test_calibrated_method_on_load_is_one_line_pointing_at_the_cli(method, tiny):
    with pytest.raises(ConfigError) as e:
        AutoModelForCausalLM.from_pretrained(tiny, quantization_config=lowbit.HfQuantConfig(method))
    msg = str(e.value)
    assert "\n" not in msg and "lowbit quantize" in msg and "--calib" in msg and method in msg


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(RegistryError) as e:
        lowbit.HfQuantConfig("int5")
    msg = str(e.value)
    assert "\n" not in msg and "'int5'" in msg and all(m in msg for m in lowbit.methods())


@pytest.mark.parametrize("version", ["5.16.2", "4.57.6"])
def test_too_old_transformers_version_is_one_line(version, monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda: version)
    with pytest.raises(DependencyError) as e:
        AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama-int4-g32")
    msg = str(e.value)
    assert "\n" not in msg and version in msg and compat.RANGE in msg and "pip install" in msg


@pytest.mark.parametrize("version", ["5.26.0", "6.0.0.dev0"])
def test_newer_transformers_version_warns_once_and_loads(version, monkeypatch):
    monkeypatch.setattr(compat, "installed_version", lambda: version)
    monkeypatch.setattr(compat, "_warned", set())
    with pytest.warns(LowbitWarning, match=re.escape(version)) as record:
        model = AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama-int4-g32")
        AutoModelForCausalLM.from_pretrained(FIXTURES / "tiny-llama-int4-g32")
    assert sum(version in str(w.message) for w in record) == 1
    assert any(isinstance(m, QuantLinear) for m in model.modules())


def test_supported_range_includes_the_installed_transformers():
    compat.check_version()  # this file runs under 5.25 and, in CI, under 5.17
    for version in ("5.17.0", "5.25.1", "5.20.0rc1"):
        compat.check_version(version)


# ---- a real model ----------------------------------------------------------------------------------------------
@pytest.mark.realmodel
def test_smollm2_int4_through_transformers_equals_lowbit(tmp_path):
    from lowbit import realmodels

    if not realmodels.available("smollm2-135m"):
        pytest.skip(realmodels.MODELS["smollm2-135m"].pip)
    src = realmodels.model_path("smollm2-135m")
    cfg = lowbit.config("int4", group_size=128)
    ids = token_ids(n=32, vocab=49152, batch=2)
    ours = lowbit.from_pretrained(src, quantization=cfg)
    _same(ours, AutoModelForCausalLM.from_pretrained(src, quantization_config=lowbit.HfQuantConfig(cfg)), ids)
    out = lowbit.save_pretrained(ours, tmp_path / "int4")
    _same(ours, AutoModelForCausalLM.from_pretrained(out), ids)


# ---- model.dequantize() ---------------------------------------------------------------------------------
def _decoded(model) -> dict[str, torch.Tensor]:
    return {n: m.dequantize(torch.float32) for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _kernel_tolerance(model) -> float:
    """How far the quantized model's logits may be from a dense matmul of the decoded weights: fp32 kernels round
    alike; kernels computing in bf16 (a CPU with bf16 units) round the activations to 8 bits of mantissa."""
    dtypes = {m.compute_dtype for m in model.modules() if isinstance(m, QuantLinear)}
    return 1e-4 if dtypes == {torch.float32} else 2e-2


def test_dequantize_gives_a_dense_transformers_model_with_the_decoded_weights(tiny, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny, quantization_config=lowbit.HfQuantConfig("int4", group_size=32))
    decoded, before, tolerance = _decoded(model), logits(model, IDS), _kernel_tolerance(model)
    model.dequantize()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    assert all(torch.equal(linears[n].weight, w) for n, w in decoded.items())
    assert not hasattr(model, "hf_quantizer") and not hasattr(model, "lowbit_quantizer")
    assert _relative(logits(model, IDS), before) < tolerance
    model.save_pretrained(tmp_path / "dense")
    assert "quantization_config" not in json.loads((tmp_path / "dense" / "config.json").read_text())
    assert not any(k.endswith("qweight") for k in load_tensors(tmp_path / "dense" / "model.safetensors"))
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "dense"), IDS), logits(model, IDS))


@pytest.fixture(scope="module")
def gemma_tables(tmp_path_factory) -> Path:
    """A tiny Gemma 3 folder with its scaled embedding quantized, the head sharing that table."""
    tmp = tmp_path_factory.mktemp("hf")
    quant = lowbit.config("int8", quantize_embeddings=True)
    return lowbit.save_pretrained(lowbit.from_pretrained(make_gemma3(tmp / "gemma"), quantization=quant), tmp / "q")


def test_quantized_scaled_tied_embedding_loads_with_the_same_logits(gemma_tables):
    ours, theirs = lowbit.from_pretrained(gemma_tables), AutoModelForCausalLM.from_pretrained(gemma_tables)
    assert theirs.get_input_embeddings().embed_scale == ours.get_input_embeddings().embed_scale == 8.0  # sqrt(64)
    _same(ours, theirs, token_ids(vocab=128))


def test_dequantize_keeps_a_scaled_tied_embedding(gemma_tables):
    model = AutoModelForCausalLM.from_pretrained(gemma_tables)
    ids = token_ids(vocab=128)
    before, tolerance = logits(model, ids), _kernel_tolerance(model)
    model.dequantize()
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert type(embed).__name__ == "ScaledEmbedding" and head.weight is embed.weight
    assert _relative(logits(model, ids), before) < tolerance
