"""Evaluation helpers (perplexity, per-layer quality report)."""

from lowbit.eval.perplexity import PerplexityResult, load_text, perplexity
from lowbit.eval.report import (
    LayerQuality,
    LayerReport,
    calibration_ids,
    capture_inputs,
    layer_report,
    measure_layers,
)
from lowbit.eval.plot import plot_report

__all__ = ["LayerQuality", "LayerReport", "PerplexityResult", "calibration_ids", "capture_inputs", "layer_report",
           "load_text", "measure_layers", "perplexity", "plot_report"]
