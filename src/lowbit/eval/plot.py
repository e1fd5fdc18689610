"""``lowbit report --plot``: the per-layer report as a PNG.

Two panels share the block index as x axis: relative output error (log scale) and weight SQNR (dB, the axis
scaled to the data). Each projection kind (q/k/v/o/gate/up/down, or whatever the last part of the layer names
is) is one coloured line, so the kinds can be told apart; the three worst layers of each panel (largest output error, lowest SQNR) are circled and labelled. Layers
outside the numbered blocks (an lm_head) sit to the right of the last block.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from lowbit.eval.report import LayerReport, require_matplotlib

_BLOCK = re.compile(r"\.(\d+)\.")
_LABELLED = 3  # worst layers named on the plot


def _position(name: str) -> tuple[int | None, str]:
    """(block index or None, projection kind) of a layer name: 'model.layers.3.mlp.down_proj' -> (3, 'down_proj')."""
    m = _BLOCK.search(name)
    return (int(m.group(1)) if m else None), name.rsplit(".", 1)[-1]


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _label(ax, points: list[tuple[float, float, str]], mid: float, below: bool = False) -> None:
    """Circle and name the worst points (#1 first), their labels stacked so that they do not overlap."""
    for rank, (x, y, name) in enumerate(points):
        if not math.isfinite(y) or (ax.get_yscale() == "log" and y <= 0):
            continue
        block, kind = _position(name)
        ax.scatter([x], [y], s=90, facecolors="none", edgecolors="black", linewidths=1.2, zorder=3)
        ax.annotate(f"#{rank + 1} {kind}" + (f" block {block}" if block is not None else f" ({name})"), (x, y),
                    xytext=(12 if x < mid else -12, (-1 if below else 1) * (16 + 18 * rank)),
                    textcoords="offset points", ha="left" if x < mid else "right",
                    va="center", fontsize=8, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="0.6"),
                    arrowprops=dict(arrowstyle="-", color="0.3", linewidth=0.8), zorder=4)


def plot_report(report: LayerReport, out: str | Path) -> Path:
    """Write the report's output error and SQNR per block, one line per projection kind, as a PNG at ``out``."""
    out = Path(out)
    report_figure(report).savefig(out, dpi=110)
    return out


def report_figure(report: LayerReport):
    """The matplotlib ``Figure`` that ``plot_report`` saves."""
    require_matplotlib()
    from matplotlib.figure import Figure

    layers = report.layers
    blocks = [_position(x.name)[0] for x in layers]
    last = max((b for b in blocks if b is not None), default=-1)
    xs = [b if b is not None else last + 1 for b in blocks]
    kinds = list(dict.fromkeys(_position(x.name)[1] for x in layers))
    fig = Figure(figsize=(11.0, 7.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    colours = [f"C{i % 10}" for i in range(len(kinds))]
    for kind, colour in zip(kinds, colours):
        idx = [i for i, x in enumerate(layers) if _position(x.name)[1] == kind]
        points = sorted((xs[i], layers[i]) for i in idx)
        style = dict(color=colour, marker="o", markersize=3.5, linewidth=1.2, label=kind)
        top.plot([p[0] for p in points], [p[1].output_error for p in points], **style)
        bottom.plot([p[0] for p in points], [min(p[1].sqnr_db, 1e3) for p in points], **style)
    top.set_yscale("log")
    top.set_ylabel("relative output error (log)")
    top.grid(True, which="both", alpha=0.25)
    top.set_title(report.summary().split("; worst")[0], fontsize=9, wrap=True)
    sqnr = _finite([x.sqnr_db for x in layers])
    if sqnr:
        pad = max(0.5, 0.08 * (max(sqnr) - min(sqnr)))
        bottom.set_ylim(min(sqnr) - 3 * pad, max(sqnr) + pad)  # the data's range, not from 0
    bottom.set_ylabel("weight SQNR (dB, higher is better)")
    bottom.grid(True, alpha=0.25)
    bottom.set_xlabel("block")
    ticks = sorted(set(xs))
    bottom.set_xticks(ticks, [str(t) if t <= last else "other" for t in ticks], fontsize=8)
    errors = _finite([x.output_error for x in layers if x.output_error > 0])
    if errors:
        top.set_ylim(min(errors) / 1.3, max(errors) * 1.8)  # the data's range, headroom for the labels
    mid = (min(xs) + max(xs)) / 2  # labels point inwards
    _label(top, [(xs[layers.index(x)], x.output_error, x.name) for x in report.worst(_LABELLED)], mid)
    lowest = sorted((x for x in layers if math.isfinite(x.sqnr_db)), key=lambda x: x.sqnr_db)[:_LABELLED]
    _label(bottom, [(xs[layers.index(x)], x.sqnr_db, x.name) for x in lowest], mid, below=True)
    for ax in (top, bottom):
        ax.legend(title="projection", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
