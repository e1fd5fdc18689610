"""``lowbit fit --plot``: a plan as a PNG.

Top: the bits per weight each layer got, one bar per quantized Linear in model order, coloured by the chosen
candidate, with the achieved average and the budget as lines. Bottom: every candidate's sensitivity per layer
(log scale), the chosen one marked, so it shows why each layer got what it got.
"""

from __future__ import annotations

from pathlib import Path

from lowbit.eval.report import require_matplotlib
from lowbit.fitting.plan import FitPlan


def plot_plan(plan: FitPlan, out: str | Path) -> Path:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(plan.candidates) or sorted({x.label for x in plan.layers})
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    xs = range(len(plan.layers))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, len(plan.layers) * 0.06), 7), sharex=True)
    top.bar(xs, [x.bits_per_weight for x in plan.layers], width=1.0, color=[colours[x.label] for x in plan.layers])
    top.axhline(plan.bpw, color="black", linewidth=1, label=f"achieved {plan.bpw:.3f} bpw")
    top.set_ylabel("bits per weight")
    top.set_title(f"{Path(plan.model).name}: budget {plan.budget}, achieved {plan.budget_achieved}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[label]) for label in labels]
    top.legend(handles + top.get_legend_handles_labels()[0], labels + [f"achieved {plan.bpw:.3f} bpw"],
               fontsize=8, ncol=min(6, len(labels) + 1), loc="lower right")
    for label in labels:
        ys = [max(x.sensitivity.get(label, float("nan")), 1e-12) for x in plan.layers]
        bottom.plot(xs, ys, color=colours[label], linewidth=0.8, label=label)
    bottom.scatter(xs, [max(x.sensitivity[x.label], 1e-12) for x in plan.layers], s=6, color="black", zorder=3,
                   label="chosen")
    bottom.set_yscale("log")
    bottom.set_ylabel(f"sensitivity ({plan.estimator})")
    bottom.set_xlabel("quantized Linear, in model order")
    bottom.legend(fontsize=8, ncol=min(6, len(labels) + 1))
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
