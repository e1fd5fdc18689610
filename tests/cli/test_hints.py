"""Hints in the user's own terms: a mistyped method gets the closest names, a flag out of range names the flag
and the method typed; ``device_map="auto"`` on the CPU says nothing false and records ``hf_device_map``."""

from __future__ import annotations

import logging

import pytest

import helpers
import lowbit


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "llama", tied=True)


@pytest.mark.parametrize("args, says, never", [
    (["--method", "in4"], ["did you mean 'int4'", "expected one of"], []),
    (["--method", "int4", "--group-size", "100"], ["--group-size 100", "--method int4", "32, 64, 128, 256",
                                                   "0 (one scale per output channel)"], ["rtn.group_size", "null"]),
    (["--method", "int8", "--bits", "5"], ["--bits 5", "--method int8", "2, 3, 4, 8"], ["rtn.bits"]),
])
def test_cli_hints(tied, tmp_path, args, says, never):
    done = helpers.run_cli(["quantize", tied, tmp_path / "out", *args])
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    for text in says:
        assert text in done.stderr, (text, done.stderr)
    for text in never:
        assert text not in done.stderr, (text, done.stderr)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("quantization", [None, "int4", "int8-tables"])
def test_device_map_auto_on_the_cpu(tied, caplog, quantization):
    cfg = {None: None, "int4": lowbit.config("int4", group_size=32),
           "int8-tables": lowbit.config("int8", quantize_embeddings=True)}[quantization]
    with caplog.at_level(logging.WARNING):
        model = lowbit.from_pretrained(tied, quantization=cfg, device_map="auto")
    assert not [r for r in caplog.records if "tie" in r.getMessage()], [r.getMessage() for r in caplog.records]
    assert model.hf_device_map == {"": "cpu"}
    ids = helpers.token_ids()
    ref = lowbit.from_pretrained(tied, quantization=cfg)
    assert (helpers.logits(model, ids) == helpers.logits(ref, ids)).all()
