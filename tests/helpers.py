"""Shared test helpers: tiny seeded Hugging Face checkpoints, folder snapshots, hand-made safetensors files.

The tiny checkpoints are built with transformers' own classes and ``save_pretrained`` (safetensors), so they are
ordinary HF folders, like the ones users load. Every builder is seeded: the same call gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


def data_dir() -> Path:
    """The folder of the bundled calibration/evaluation texts (wiki.calib.txt, wiki.eval.txt): lowbit/data."""
    from lowbit.data import text_path

    return text_path("wiki.eval.txt").parent


TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False)
TINY_BERT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                 max_position_embeddings=64, type_vocab_size=2)
# hidden 96: group 64 does not divide q/k/v/o/gate/up (K = 96) -> fallback to 32 (the largest power of two dividing
# 96); down_proj has K = intermediate = 192 = 3 * 64, which group 64 divides.
ODD_LLAMA = dict(TINY_LLAMA, hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=4)

LLAMA_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LLAMA_LINEARS_WEIGHT = tuple(f"{m}.weight" for m in LLAMA_LINEARS)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()


def _seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Draw every floating tensor from a seeded generator (transformers' init is seeded globally, not per call).

    Weights ~ N(0, 0.05) and norms ~ 1 + N(0, 0.05): large enough that quantization changes logits measurably.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


def make_llama(folder: Path, *, seed: int = 0, tied: bool = False, max_shard_size: str | int | None = None,
               dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A tiny ``LlamaForCausalLM`` (hidden 64, 2 layers, vocab 128) saved as safetensors into ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet_transformers()
    cfg = LlamaConfig(**{**TINY_LLAMA, "tie_word_embeddings": tied, **overrides})
    model = LlamaForCausalLM(cfg)
    _seeded_init(model, seed)
    if tied:
        model.tie_weights()
    model = model.to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    return Path(folder)


def make_odd_llama(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama whose hidden size (96) group size 64 does not divide (see ODD_LLAMA)."""
    return make_llama(folder, seed=seed, **{k: v for k, v in ODD_LLAMA.items() if k != "tie_word_embeddings"})


def make_bert(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``BertModel`` (hidden 64, 2 layers, vocab 128, with pooler) saved as safetensors into ``folder``."""
    from transformers import BertConfig, BertModel

    _quiet_transformers()
    model = BertModel(BertConfig(**TINY_BERT))
    _seeded_init(model, seed)
    model.save_pretrained(folder)
    return Path(folder)


def make_gemma3(folder: Path, *, seed: int = 0) -> Path:
    """A tiny ``Gemma3ForCausalLM``: 2 blocks, sliding (window 8) then full attention, each with its own RoPE."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _quiet_transformers()
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, vocab_size=128,
                           max_position_embeddings=128, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"])
    model = Gemma3ForCausalLM(cfg)
    _seeded_init(model, seed)
    model.save_pretrained(folder)
    return Path(folder)


def char_tokenizer(folder: Path) -> Path:
    """A character-level tokenizer whose ids (printable ASCII = its code point) fit the tiny models' vocab of 128."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, **{chr(i): i for i in range(32, 127)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>").save_pretrained(folder)
    return Path(folder)


# Random printable text for the calibrated methods' tests (the char tokenizer maps it into the tiny vocab), and the
# smallest calibration that exercises batching: 4 windows of 48 tokens, 2 at a time.
CALIB_TEXT = "".join(chr(32 + int(c)) for c in torch.randint(0, 95, (6000,), generator=torch.Generator().manual_seed(0)))
FAST_CALIB = {"text": CALIB_TEXT, "samples": 4, "seq_len": 48, "batch_size": 2}


def make_llama_with_tokenizer(folder: Path, **kwargs) -> Path:
    """``make_llama`` plus the character tokenizer, as calibration needs one."""
    char_tokenizer(make_llama(folder, **kwargs))
    return Path(folder)


def token_ids(n: int = 12, vocab: int = 128, seed: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out = model(input_ids=ids)
    return (out.logits if hasattr(out, "logits") else out.last_hidden_state).detach().clone()


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail with TimeoutError (a hang) if the block runs longer than ``seconds`` (SIGALRM: main thread, POSIX)."""
    def fail(*_):
        raise TimeoutError(f"over {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- folder snapshots ------------------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (relative path → (kind, sha256 of bytes, mtime_ns)); compare before and after."""
    folder = Path(folder)
    out: dict[str, tuple] = {}
    if not folder.exists():
        return out
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            p = Path(root, d)
            out[str(p.relative_to(folder))] = ("dir",)
        for f in files:
            p = Path(root, f)
            st = p.lstat()
            out[str(p.relative_to(folder))] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def contents(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``: equal for folders with the same bytes."""
    return {name: entry[1] for name, entry in snapshot(folder).items() if entry[0] == "file"}


def tree_names(folder: Path) -> list[str]:
    return sorted(snapshot(folder))


# ---- safetensors by hand -----------------------------------------------------------------------------------------

def read_raw(path: Path) -> tuple[dict, bytes]:
    """(header dict incl. __metadata__, body bytes) of a safetensors file."""
    data = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_raw(path: Path, header: dict, body: bytes) -> None:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors shard in ``folder``."""
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_tensors(f))
    return out


def quantized(source: Path, fields: dict, **run):
    """``source`` loaded by lowbit with ``fields`` (``method`` plus its config's fields) and ``run`` (kernel,
    compute dtype)."""
    import lowbit

    fields = dict(fields)
    return lowbit.from_pretrained(source, quantization=lowbit.config(fields.pop("method"), **fields, **run))


def assert_export_refused(source: Path, fields: dict, target: str, words, out: Path) -> None:
    """Exporting ``source`` quantized with ``fields`` to ``target`` is a one-line error holding ``words``, and
    writes nothing."""
    import pytest

    import lowbit
    from lowbit.errors import LowbitError

    model = quantized(source, fields)
    with pytest.raises(LowbitError) as info:
        lowbit.export(model, out, format=target)
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not out.exists()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def edit_config(folder: Path, **changes) -> dict:
    """Update config.json in place (a value of ``DELETE`` removes the key); returns the new config."""
    return _edit_json(Path(folder) / "config.json", None, changes)


DELETE = object()


def edit_quant_config(folder: Path, **changes) -> dict:
    return _edit_json(Path(folder) / "config.json", "quantization_config", changes)


def _edit_json(path: Path, key: str | None, changes: dict) -> dict:
    """Apply ``changes`` to the JSON object in ``path`` (or to its ``key`` entry); ``DELETE`` removes a key."""
    data = json.loads(path.read_text())
    target = data if key is None else data[key]
    for k, v in changes.items():
        if v is DELETE:
            target.pop(k, None)
        else:
            target[k] = v
    path.write_text(json.dumps(data, indent=2))
    return target


def drop_tensor(folder: Path, name: str) -> None:
    """Remove tensor ``name`` from a single-file lowbit folder: the shard and the index's weight_map."""
    folder = Path(folder)
    shard = folder / "model.safetensors"
    tensors = load_tensors(shard)
    del tensors[name]
    save_tensors(shard, tensors)
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["weight_map"].pop(name)
        index_path.write_text(json.dumps(index, indent=2))


def add_tensor(folder: Path, name: str, tensor: torch.Tensor, shard_name: str = "model.safetensors") -> None:
    """Put tensor ``name`` into a shard of ``folder`` (and into the index's weight_map if there is one)."""
    folder = Path(folder)
    tensors = load_tensors(folder / shard_name)
    tensors[name] = tensor
    save_tensors(folder / shard_name, tensors)
    index_path = folder / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["weight_map"][name] = shard_name
        index_path.write_text(json.dumps(index, indent=2))


def set_tensor(folder: Path, name: str, tensor: torch.Tensor) -> None:
    """Replace tensor ``name`` in whichever shard holds it and record the shard's new sha256 in the index, so the
    change is one that ``verify`` cannot see: only the values' own checks can."""
    folder = Path(folder)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = index["weight_map"][name]
    tensors = load_tensors(folder / shard)
    tensors[name] = tensor
    save_tensors(folder / shard, tensors)
    hashes = index.get("metadata", {}).get("sha256")
    if isinstance(hashes, dict):
        hashes[shard] = hashlib.sha256((folder / shard).read_bytes()).hexdigest()
    index_path.write_text(json.dumps(index, indent=2))


# ---- subprocess CLI -------------------------------------------------------------------------------------------

def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


def run_cli(args: list[str], runner: list[str] | None = None, timeout: float = 300, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``lowbit ARGS`` in a subprocess (``python -m lowbit`` unless ``runner`` names the console script)."""
    cmd = [*(runner or [sys.executable, "-m", "lowbit"]), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=cwd)
