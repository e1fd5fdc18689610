"""``lowbit report --plot``: one coloured line per projection kind over the blocks, the worst layers labelled,
the SQNR axis scaled to the data."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib", reason="the plot extra is not installed (pip install 'lowbit[plot]')")

from lowbit.eval import LayerQuality, LayerReport, plot_report  # noqa: E402
from lowbit.eval.plot import report_figure  # noqa: E402

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _report() -> LayerReport:
    layers = []
    for block in range(3):
        for i, kind in enumerate(KINDS):
            error = 0.3 if (block, kind) == (1, "v_proj") else 0.05 + 0.01 * i
            sqnr = 15.5 if (block, kind) == (0, "k_proj") else 19.0 + 0.1 * i
            layers.append(LayerQuality(f"model.layers.{block}.{'mlp' if 'p_' in kind else 'self_attn'}.{kind}",
                                       "int4 g128 asym", (64, 64), 4096, 4.19, sqnr, error))
    layers.append(LayerQuality("lm_head", "int8 per-channel sym", (128, 64), 8192, 8.5, 30.0, 0.01))
    return LayerReport(model="m", config={"method": "rtn"}, layers=tuple(layers), calib_tokens=512, rows=512,
                       note="skipped")


def test_lines_per_projection_labels_and_axes(tmp_path):
    report = _report()
    top, bottom = report_figure(report).axes
    for ax in (top, bottom):
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [*KINDS, "lm_head"]
    assert top.get_yscale() == "log"
    labels = [t.get_text() for t in top.texts]
    assert labels[0] == "#1 v_proj block 1" and len(labels) == 3
    assert [t.get_text() for t in bottom.texts][0] == "#1 k_proj block 0"
    low, high = bottom.get_ylim()
    assert 10 < low < 15.5 and 30 < high < 33  # the data's range (15.5 .. 30 dB), not from 0
    ticks = [t.get_text() for t in bottom.get_xticklabels()]
    assert ticks == ["0", "1", "2", "other"]  # lm_head sits right of the last block
    out = plot_report(report, tmp_path / "r.png")
    assert out.read_bytes().startswith(b"\x89PNG")
