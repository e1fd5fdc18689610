"""``lowbit quantize`` ends with the size before and after and the largest tensors it kept at full precision,
each with the flag that would shrink it."""

from __future__ import annotations

import re

import pytest
from safetensors import safe_open

import helpers


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "llama")


def _float_bytes(folder) -> dict[str, int]:
    """Every floating-point tensor of the folder and its bytes, read with safetensors itself."""
    out = {}
    for shard in folder.glob("*.safetensors"):
        with safe_open(shard, framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if t.is_floating_point():
                    out[name] = t.numel() * t.element_size()
    return out


def _printed(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_summary_names_what_stayed_full_precision_and_the_flag(llama, tmp_path):
    out = tmp_path / "q"
    lines = _printed(helpers.run_cli(["quantize", llama, out, "--method", "int4", "--group-size", "32",
                                      "--skip", "mlp.down_proj"]))
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    src = sum(p.stat().st_size for p in llama.glob("*.safetensors"))
    wrote = next(line for line in lines if line.startswith("wrote "))
    assert f"{size / 1e6:.1f} MB" in wrote and f"{src / 1e6:.1f} MB" in wrote and f"{src / size:.2f}x" in wrote

    floats = _float_bytes(out)  # scales are fp16 parts of quantized layers, not kept tensors
    kept = {n: b for n, b in floats.items() if not n.endswith((".scales", ".zeros"))}
    head = next(line for line in lines if line.startswith("kept unquantized:"))
    assert f"{sum(kept.values()) / 1e3:.1f} kB" in head and f"in {len(kept)} tensors" in head
    rows = {line.split()[0]: line for line in lines[lines.index(head) + 1:]}
    assert len(rows) == 3 and set(rows) <= set(kept)
    assert "--quantize-embeddings stores it as int8" in rows["model.embed_tokens.weight"]
    assert "--quantize-lm-head stores it as int8" in rows["lm_head.weight"]
    assert "kept by --skip mlp.down_proj" in rows["model.layers.0.mlp.down_proj.weight"]
    # 128 x 64 fp32 table -> int8 codes plus one fp32 scale per row
    assert "int8: 8.7 kB" in rows["model.embed_tokens.weight"] and "F32 128x64  32.8 kB" in rows["lm_head.weight"]

    # taking the advice: both tables leave the list and the folder shrinks
    out2 = tmp_path / "q2"
    lines2 = _printed(helpers.run_cli(["quantize", llama, out2, "--method", "int4", "--group-size", "32",
                                       "--quantize-embeddings", "--quantize-lm-head"]))
    assert sum(p.stat().st_size for p in out2.glob("*.safetensors")) < size
    text = "\n".join(lines2)
    assert "embed_tokens" not in text and "lm_head" not in text
    assert not re.search(r"--quantize-(embeddings|lm-head)", text)
