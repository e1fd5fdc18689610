"""``lowbit merge BASE ADAPTER OUT --method M``: the adapter merged into the dequantized base, quantized with M."""

from __future__ import annotations

import pytest
import torch
from helpers import make_llama, run_cli, token_ids

import lowbit
from lowbit.formats import CodebookFormat

pytest.importorskip("peft", reason="peft is in the test extra: pip install -e '.[test]'")
from peft import LoraConfig  # noqa: E402

import lowbit.training as training  # noqa: E402
from lowbit.training.merge import remark  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An int4 lowbit folder, an adapter trained on it, and each adapted layer's dense weight (base + delta)."""
    root = tmp_path_factory.mktemp("merge")
    base = lowbit.quantize_folder(make_llama(root / "dense"), root / "int4", lowbit.config("int4", group_size=64))
    pm = training.get_peft_model(lowbit.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj", "up_proj"]))
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    pm.train()
    for _ in range(3):
        pm(input_ids=token_ids(16), labels=token_ids(16)).loss.backward()
        opt.step()
        opt.zero_grad()
    pm.save_pretrained(root / "adapter")
    dense = {n.removeprefix("base_model.model."): m.get_base_layer().dequantize(torch.float32)
             + m.get_delta_weight("default") for n, m in pm.named_modules() if isinstance(m, training.QuantLoraLinear)}
    return root, base, root / "adapter", dense


def test_merge_requantizes_the_merged_weights(trained):
    root, base, adapter, dense = trained
    done = run_cli(["merge", base, adapter, root / "out", "--method", "nf4"])
    assert done.returncode == 0, done.stderr
    assert "merged into the dequantized base and re-quantized with nf4" in done.stdout
    merged = lowbit.from_pretrained(root / "out")
    fmt = CodebookFormat("nf4", 64)
    assert len(dense) == 4
    for name, weight in dense.items():  # each adapted layer: nf4 of (dequantized int4 + LoRA delta), bit for bit
        got = merged.get_submodule(name).canonical_tensors()
        want = fmt.encode(weight)
        assert all(torch.equal(got[k], want[k]) for k in want), name
    untouched = merged.model.layers[0].self_attn.k_proj  # not adapted: nf4 of the dequantized int4 weight
    base_k = lowbit.from_pretrained(base).model.layers[0].self_attn.k_proj.dequantize(torch.float32)
    assert torch.equal(untouched.canonical_tensors()["qweight"], fmt.encode(base_k)["qweight"])
    assert (root / "out" / "config.json").is_file()
    with torch.no_grad():
        assert torch.isfinite(merged(token_ids(8)).logits).all()


def test_merge_of_an_adapter_from_another_base_is_one_line(trained):
    root, _, adapter, _ = trained
    other = lowbit.quantize_folder(make_llama(root / "other-dense", intermediate_size=96), root / "other",
                                   lowbit.config("int4", group_size=64))
    done = run_cli(["merge", other, adapter, root / "bad-out", "--method", "int4"])
    last = done.stderr.splitlines()[-1]  # warnings may come before it (no tokenizer in the tiny folders)
    assert done.returncode == 2 and last.startswith("lowbit: error: adapter tensor"), done.stderr
    assert "another base" in last and done.stderr.count("lowbit: error") == 1 and not (root / "bad-out").exists()


def test_remark_says_a_calibrated_base_becomes_data_free_quality():
    text = remark(lowbit.config("gptq"), lowbit.config("nf4"))
    assert "calibrated (gptq)" in text and "nf4's data-free quality" in text and "--method gptq" in text
    assert "data-free" not in remark(lowbit.config("int4"), lowbit.config("nf4"))
    assert "dense" in remark(None, lowbit.config("int4"))
