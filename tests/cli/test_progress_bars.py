"""Every long phase shows a bar, and every bar ends full: a calibrated quantize (blocks, then writing the output
from the finished blocks) and a report (loading twice, capturing inputs, measuring layers, perplexity)."""

from __future__ import annotations

import re
import shutil

import pytest

import helpers

BAR = re.compile(r"^\s*([a-z][a-z0-9 ]*?): +(\d+)%\|")
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs into the forest to hide. " * 60


def _bars(stderr: str) -> dict[str, list[int]]:
    """desc -> the percentages each bar of that name last showed (tqdm redraws with \\r; a new bar starts at 0%)."""
    out: dict[str, list[int]] = {}
    for part in re.split(r"[\r\n]", stderr):
        m = BAR.match(part)
        if m:
            desc, pct = m.group(1), int(m.group(2))
            runs = out.setdefault(desc, [])
            if not runs or pct < runs[-1]:
                runs.append(pct)
            else:
                runs[-1] = pct
    return out


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "llama"
    helpers.make_llama(src)
    helpers.char_tokenizer(src)
    return src


def test_calibrated_quantize_bars_end_full(llama, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(TEXT)
    done = helpers.run_cli(["quantize", llama, tmp_path / "q", "--method", "gptq", "--group-size", "32", "--calib",
                            text, "--samples", "2", "--seq-len", "64", "--batch-size", "2"])
    assert done.returncode == 0, done.stderr
    bars = _bars(done.stderr)
    assert {"gptq blocks", "writing"} <= set(bars), bars
    assert all(p == 100 for runs in bars.values() for p in runs), bars


def test_report_bars_end_full(llama, tmp_path):
    src = tmp_path / "llama"
    shutil.copytree(llama, src)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    done = helpers.run_cli(["report", src, "--method", "int4", "--group-size", "32", "--samples", "2", "--seq-len",
                            "64", "--calib", text, "--text", text, "--eval-tokens", "256", "--ctx", "64"])
    assert done.returncode == 0, done.stderr
    bars = _bars(done.stderr)
    assert {"loading", "capturing inputs", "measuring layers", "perplexity"} <= set(bars), bars
    assert len(bars["loading"]) == 2 and len(bars["perplexity"]) == 2  # fp32 and quantized, each
    assert all(p == 100 for runs in bars.values() for p in runs), bars
