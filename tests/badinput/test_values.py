"""Nothing silently wrong: stored values outside what their format allows, NaN/Inf in float8 tensors, configs with
NaN, weights whose scales overflow, and perplexities that are not finite. Each damaged folder has its hashes
recomputed (``helpers.set_tensor``), so ``verify`` passes and only the value checks can catch it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import helpers
import pytest
import torch

import lowbit
from lowbit import cli
from lowbit.errors import CheckpointError, ConfigError, FormatError, LowbitError

Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return helpers.make_llama_with_tokenizer(tmp_path_factory.mktemp("values") / "llama")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, base) -> dict[str, Path]:
    """One saved folder per format the value checks cover."""
    root = tmp_path_factory.mktemp("saved")
    configs = {"int4": lowbit.config("int4", group_size=32), "int4sym": lowbit.config("int4", group_size=32,
               symmetric=True), "nf4": lowbit.config("nf4"), "nf4dq": lowbit.config("nf4", double_quant=True),
               "fp8": lowbit.config("fp8"), "mxfp4": lowbit.config("mxfp4"), "hqq": lowbit.config("hqq", group_size=32)}
    return {name: lowbit.quantize_folder(base, root / name, cfg) for name, cfg in configs.items()}


def damaged(saved: dict[str, Path], tmp_path: Path, kind: str, attr: str, change) -> Path:
    folder = Path(shutil.copytree(saved[kind], tmp_path / kind))
    key = f"{Q}.{attr}"
    tensor = helpers.load_tensors(folder / "model.safetensors")[key].clone()
    change(tensor)
    helpers.set_tensor(folder, key, tensor)
    lowbit.verify(folder)  # the hashes match: only the value checks can tell
    return folder


def one_line(exc: type[LowbitError], call, *names) -> str:
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip(), msg
    for name in names:
        assert name in msg, (name, msg)
    return msg


def _fill(value):
    return lambda t: t.view(-1)[:3].fill_(value)


def _set_byte(value):
    return lambda t: t.view(torch.uint8).view(-1)[:3].fill_(value)


# case 7: int4 zero-points 255, negative/zero/65504 scales, nf4 negative absmax; case 6: fp8 NaN code, E8M0 255/254
OUT_OF_RANGE = {
    "int4 zero-point 255": ("int4", "zeros", _fill(255), "0..15"),
    "int4 negative scale": ("int4", "scales", _fill(-0.01), "finite positive"),
    "int4 zero scale": ("int4", "scales", _fill(0.0), "finite positive"),
    "int4 scale 65504": ("int4", "scales", _fill(65504.0), "finite positive"),
    "int4 NaN scale": ("int4", "scales", _fill(float("nan")), "NaN"),
    "int4 symmetric code -8": ("int4sym", "qweight", _set_byte(0x88), "codes"),
    "nf4 negative absmax": ("nf4", "absmax", _fill(-0.5), "absmax"),
    "nf4 double-quant NaN offset": ("nf4dq", "absmax_offset", _fill(float("nan")), "NaN"),
    "fp8 NaN code": ("fp8", "qweight", _set_byte(0x7F), "NaN"),
    "fp8 negative scale": ("fp8", "scales", _fill(-1.0), "finite positive"),
    "mxfp4 E8M0 255": ("mxfp4", "scales", _fill(255), "E8M0"),
    "mxfp4 E8M0 254": ("mxfp4", "scales", _fill(254), "E8M0"),
    "hqq Inf zero": ("hqq", "zeros", _fill(float("inf")), "NaN/Inf"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_stored_values_outside_the_format_are_refused_on_load(saved, tmp_path, case):
    kind, attr, change, expected = OUT_OF_RANGE[case]
    folder = damaged(saved, tmp_path, kind, attr, change)
    one_line(LowbitError, lambda: lowbit.from_pretrained(folder), Q, expected)


def test_the_undamaged_folders_load(saved):
    for folder in saved.values():
        lowbit.from_pretrained(folder)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("key", ["model.norm.weight", f"{Q}.weight"])
def test_nan_in_a_float8_source_tensor_is_found(tmp_path, dtype, key):
    """Case 5: only fp16/bf16/fp32/fp64 were checked: a kept float8 tensor loaded as NaN, a quantized row as 0."""
    folder = helpers.make_llama(tmp_path / "m")
    tensors = helpers.load_tensors(folder / "model.safetensors")
    t = tensors[key].to(dtype)
    t.view(-1)[1] = float("nan") if dtype == torch.float8_e4m3fn else float("inf")
    tensors[key] = t
    helpers.save_tensors(folder / "model.safetensors", tensors)
    one_line(CheckpointError, lambda: lowbit.from_pretrained(folder, quantization="int8"), key, "NaN/Inf")
    model = lowbit.from_pretrained(folder, quantization="int8", nonfinite="clamp")  # the way out the message names
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())


@pytest.mark.parametrize("field", ["beta", "kappa"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_hqq_refuses_nan_and_inf_settings(field, value):
    """Case 8: beta/kappa NaN wrote NaN zero-points and {"__float__": "NaN"} into config.json."""
    one_line(ConfigError, lambda: lowbit.config("hqq", **{field: value}), field)


@pytest.mark.parametrize("method", ["int4", "hqq"])
def test_weights_beyond_the_fp16_scales_name_the_layer(tmp_path, method):
    """Case 8: weights of ~5e6 gave Inf hqq scales, and int4's fp16 scales clamped silently (93% error)."""
    folder = helpers.make_llama(tmp_path / "m")
    tensors = helpers.load_tensors(folder / "model.safetensors")
    tensors[f"{Q}.weight"][0, :8] = 5e6
    helpers.save_tensors(folder / "model.safetensors", tensors)
    cfg = lowbit.config(method, group_size=32)
    one_line(FormatError, lambda: lowbit.from_pretrained(folder, quantization=cfg), Q, "float16")
    one_line(FormatError, lambda: lowbit.quantize_folder(folder, tmp_path / "out", cfg), Q, "float16")
    assert not (tmp_path / "out").exists()


def test_eval_of_non_finite_logits_exits_non_zero_with_strict_json(base, tmp_path, capsys):
    """Case 6: ``lowbit eval`` printed "perplexity nan", exited 0, and --json wrote the non-JSON literal NaN."""
    folder = Path(shutil.copytree(base, tmp_path / "m"))
    tensors = helpers.load_tensors(folder / "model.safetensors")
    tensors["model.norm.weight"].fill_(3e38)  # finite weights whose logits overflow
    helpers.save_tensors(folder / "model.safetensors", tensors)
    text = tmp_path / "t.txt"
    text.write_text(helpers.CALIB_TEXT[:400])
    assert cli.main(["eval", str(folder), "--text", str(text), "--ctx", "64", "--json"]) == 2
    out, err = capsys.readouterr()
    result = json.loads(out.strip().splitlines()[-1], parse_constant=lambda c: pytest.fail(f"JSON holds {c}"))
    assert result["ppl"] is None or not math.isfinite(result["ppl"])
    assert "expected a finite value" in err.strip().splitlines()[-1]
