"""The ``lowbit`` command line, run in a subprocess like a user would: ``python -m lowbit`` always, and the
``lowbit`` console script too when it is installed (``pip install -e .``)."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

import helpers  # noqa: E402

import lowbit  # noqa: E402

RUNNERS = {"python -m lowbit": [sys.executable, "-m", "lowbit"]}
if shutil.which("lowbit"):
    RUNNERS["lowbit script"] = [shutil.which("lowbit")]


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "llama")


def ok(result) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def usage_error(result, *names: str) -> str:
    """Exit 2, exactly one line on stderr starting ``lowbit: error:`` that names each of ``names``; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lowbit: error:"), lines[0]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_methods_lists_every_name_with_defaults(runner):
    out = ok(helpers.run_cli(["methods"], RUNNERS[runner]))
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 3}
    assert {"rtn", "int4", "int8"} <= set(rows), out
    assert set(rows) >= set(lowbit.methods())
    assert "bits=4" in rows["int4"] and "group_size=128" in rows["int4"] and "symmetric=False" in rows["int4"]
    assert "bits=8" in rows["int8"] and "group_size=None" in rows["int8"] and "symmetric=True" in rows["int8"]


def test_quantize_inspect_verify(llama, tmp_path):
    out = tmp_path / "q"
    printed = ok(helpers.run_cli(["quantize", llama, out, "--method", "int4", "--group-size", "32",
                                  "--max-shard-size", "30KB"]))
    assert str(out) in printed and "MB" in printed
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 1

    # the CLI writes exactly what the API gives for the same settings
    api = lowbit.from_pretrained(llama, quantization=lowbit.config("int4", group_size=32))
    ids = helpers.token_ids()
    assert torch.equal(helpers.logits(lowbit.from_pretrained(out), ids), helpers.logits(api, ids))

    report = json.loads(ok(helpers.run_cli(["inspect", out, "--json"])))
    layers = {layer["name"]: layer for layer in report["layers"]}
    expected = {f"model.layers.{i}.{m}" for i in range(2) for m in helpers.LLAMA_LINEARS}
    assert set(layers) == expected and report["method"] == "rtn"
    q = layers["model.layers.0.self_attn.q_proj"]
    # 64 x 64 int4 g32 asym: 64*64/2 code bytes + 64*2 fp16 scales + 64*2 uint8 zeros = 2048 + 256 + 128
    assert q["nbytes"] == 2432 and q["bits_per_weight"] == pytest.approx(2432 * 8 / 4096)
    assert q["format"] == "int4 g32 asym" and q["shape"] == [64, 64] and q["kernel"] and q["reason"]
    from lowbit.kernels.cpu.features import cpu_has_bf16

    assert q["compute_dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")  # auto on this CPU
    d = layers["model.layers.1.mlp.down_proj"]  # 64 x 128
    assert d["nbytes"] == 64 * 64 + 64 * 4 * 2 + 64 * 4
    assert report["quantized_bytes"] == sum(layer["nbytes"] for layer in report["layers"])
    assert report["total_bytes"] > report["quantized_bytes"]

    table = ok(helpers.run_cli(["inspect", out]))  # grouped: one row per projection, blocks {0-1}
    assert "model.layers.{0-1}.…" in table and "14 layers in 7 groups" in table
    for m in helpers.LLAMA_LINEARS:
        row = next(line for line in table.splitlines() if line.split() and line.split()[0] == m)
        assert row.split()[1] == "2" and "[1]" in row, row
    assert "int4 g32 asym" in table and "rtn" in table

    verified = ok(helpers.run_cli(["verify", out]))
    assert f"{len(shards)} shard(s)" in verified
    data = bytearray((out / shards[0]).read_bytes())
    data[-3] ^= 0x10
    (out / shards[0]).write_bytes(bytes(data))
    usage_error(helpers.run_cli(["verify", out]), shards[0], "sha256")


def test_quantize_flags_and_overwrite(llama, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # refused without --overwrite: see test_usage_errors[non-empty-out]
    ok(helpers.run_cli(["quantize", llama, out, "--method", "int8", "--skip", "mlp.down_proj", "--quantize-lm-head",
                        "--overwrite"]))
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces only what lowbit writes
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["modules_to_not_convert"] == ["mlp.down_proj"] and qc["quantize_lm_head"] is True
    assert (qc["bits"], qc["group_size"], qc["symmetric"]) == (8, None, True)
    names = {layer.name for layer in lowbit.inspect(out).layers}
    assert "lm_head" in names and not any("down_proj" in n for n in names)
    assert len(names) == 2 * 6 + 1



CASES = {
    "unknown-method": lambda src, tmp: (["quantize", src, tmp / "out", "--method", "int5"], ["'int5'", "int4"]),
    "missing-args": lambda src, tmp: (["quantize", src], ["out", "--method"]),
    "unknown-command": lambda src, tmp: (["squash", src], ["'squash'"]),
    "bad-path": lambda src, tmp: (["quantize", tmp / "nope", tmp / "out", "--method", "int8"], [str(tmp / "nope")]),
    "group-size": lambda src, tmp: (["quantize", src, tmp / "out", "--method", "int4", "--group-size", "48"],
                                    ["--group-size 48", "--method int4", "32, 64, 128, 256"]),
    "eval-missing-text": lambda src, tmp: (["eval", src, "--text", tmp / "none.txt"], [str(tmp / "none.txt")]),
    "shard-size": lambda src, tmp: (["quantize", src, tmp / "out", "--method", "int8", "--max-shard-size", "huge"],
                                    ["'huge'"]),
    "non-empty-out": lambda src, tmp: (["quantize", src, tmp / "photos", "--method", "int8"],
                                       [str(tmp / "photos"), "--overwrite"]),
}


@pytest.mark.parametrize("runner, case", [
    *[("python -m lowbit", c) for c in CASES],
    # the console script (present after pip install -e .) shares main(): one argparse error and one lowbit error
    # show it is wired the same way
    *[("lowbit script", c) for c in ("unknown-method", "bad-path") if "lowbit script" in RUNNERS],
])
def test_usage_errors(llama, tmp_path, runner, case):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    args, names = CASES[case](llama, tmp_path)
    before = helpers.snapshot(tmp_path)
    usage_error(helpers.run_cli(args, RUNNERS[runner]), *names)
    assert helpers.snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


# ---- eval on a real model ----------------------------------------------------------------------------------------

@pytest.mark.realmodel
def test_eval_matches_api_perplexity_on_gemma_int4(tmp_path):
    from lowbit import realmodels

    eval_file = helpers.data_dir() / "wiki.eval.txt"
    if not realmodels.available("gemma-3-270m"):
        pytest.skip(realmodels.MODELS["gemma-3-270m"].pip)
    src = realmodels.model_path("gemma-3-270m")
    text = tmp_path / "tiny.txt"
    text.write_text(eval_file.read_text(encoding="utf-8")[:3000], encoding="utf-8")
    out = tmp_path / "gemma-int4"
    # int8 tables for the tied embedding keep the folder (and this test) small: ~255 MB instead of ~760 MB
    ok(helpers.run_cli(["quantize", src, out, "--method", "int4", "--group-size", "128", "--quantize-embeddings"]))
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}

    res = helpers.run_cli(["eval", out, "--text", text, "--max-tokens", "128", "--ctx", "64", "--json"])
    printed = json.loads(ok(res).strip().splitlines()[-1])
    assert (printed["windows"], printed["ctx"], printed["bos_per_window"]) == (2, 64, True)
    assert printed["tokens"] == 62 + 63

    from lowbit.eval import perplexity
    from lowbit.loading.tokenizer import load_tokenizer

    model = lowbit.from_pretrained(out)
    api = perplexity(model, load_tokenizer(out), text.read_text(encoding="utf-8"), ctx=64, max_tokens=128)
    assert math.isfinite(api.ppl) and 5 < api.ppl < 500
    assert printed["ppl"] == pytest.approx(api.ppl, rel=1e-6)
    assert printed["tokens"] == api.tokens


@pytest.mark.realmodel
def test_eval_on_an_encoder_is_a_usage_error(tmp_path):
    from lowbit import realmodels

    if not realmodels.available("minilm"):
        pytest.skip(realmodels.MODELS["minilm"].pip)
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 20)
    usage_error(helpers.run_cli(["eval", realmodels.model_path("minilm"), "--text", text, "--max-tokens", "32",
                                 "--ctx", "16"]), "BertModel")


# ---- report ------------------------------------------------------------------------------------------------------

REPORT_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to hide. " * 60


def test_report(llama, tmp_path, capsys):
    import importlib.util

    src = tmp_path / "llama"
    shutil.copytree(llama, src)
    helpers.char_tokenizer(src)
    text = tmp_path / "text.txt"
    text.write_text(REPORT_TEXT)
    out, png = tmp_path / "report.json", tmp_path / "report.png"
    common = ["report", src, "--method", "int4", "--group-size", "32", "--opt", "symmetric=true", "--samples", "2",
              "--seq-len", "64", "--calib", text]
    plot = ["--plot", png] if importlib.util.find_spec("matplotlib") else []
    printed = ok(helpers.run_cli([*common, "--eval-tokens", "256", "--ctx", "64", "--text", text, "--json", out, *plot]))
    rows = {line.split("│")[1].strip(): line for line in printed.splitlines() if line.count("│") >= 5}
    names = {f"model.layers.{i}.{m}" for i in range(2) for m in helpers.LLAMA_LINEARS}
    assert names <= set(rows) and all("int4 g32 sym" in rows[n] for n in names)
    summary = next(line for line in printed.splitlines() if "bits/weight over 14 layers" in line)
    assert "perplexity" in summary and "worst output error: model.layers." in summary

    data = json.loads(out.read_text())
    assert len(data["layers"]) == 14 and data["config"]["symmetric"] is True and data["config"]["group_size"] == 32
    assert data["fp32"]["tokens"] == 4 * 63 and data["ppl_delta"] == pytest.approx(
        data["quantized"]["ppl"] - data["fp32"]["ppl"])
    assert f"{data['fp32']['ppl']:.2f} -> {data['quantized']['ppl']:.2f}" in summary
    if plot:
        assert png.read_bytes().startswith(b"\x89PNG")

    # the CLI reports what the API gives for the same settings
    from lowbit.eval import layer_report

    api = layer_report(src, lowbit.config("int4", group_size=32, symmetric=True), calib_text=REPORT_TEXT,
                       samples=2, seq_len=64, eval_tokens=0)
    for got, want in zip(data["layers"], api.layers):
        assert got["name"] == want.name and got["sqnr_db"] == pytest.approx(want.sqnr_db, rel=1e-9)
        assert got["output_error"] == pytest.approx(want.output_error, rel=1e-3)

    # --eval-tokens 0 skips perplexity and never reads the eval text
    skipped = ok(helpers.run_cli([*common, "--eval-tokens", "0", "--text", tmp_path / "absent.txt"]))
    assert "no perplexity (skipped: eval_tokens=0)" in skipped

    before = helpers.snapshot(tmp_path)
    usage_error(helpers.run_cli([*common, "--samples", "0"]), "samples=0")
    # the rest in-process (each subprocess costs seconds of imports): same main(), same one-line exit 2
    from lowbit import cli

    for args, name in [(["--eval-tokens", "-5"], "eval_tokens=-5"), (["--seq-len", "4096"], "seq_len=4096"),
                       (["--calib", tmp_path / "none.txt"], str(tmp_path / "none.txt")),
                       (["--json", tmp_path / "no" / "r.json"], str(tmp_path / "no" / "r.json"))]:
        assert cli.main([*map(str, common), *map(str, args)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("lowbit: error:") and name in err[0], err
    assert helpers.snapshot(tmp_path) == before


def test_report_checks_matplotlib_before_any_work(tmp_path, monkeypatch, capsys):
    import importlib.util

    from lowbit import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    # the model folder does not exist: the error is about matplotlib, so nothing was loaded first
    assert cli.main(["report", str(tmp_path / "nope"), "--method", "int8", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "pip install 'lowbit[plot]'" in err and len(err.splitlines()) == 1
