"""Calibrated quantization, one transformer block at a time (DESIGN.md §4).

``data``: calibration text → token samples; ``inputs``: what each block receives, and running it;
``method``: the interface GPTQ, AWQ and SmoothQuant implement; ``runner``: the layer-by-layer loop.
"""

from lowbit.calibration.data import calibration_samples, read_calibration_text
from lowbit.calibration.inputs import BlockInputs, find_blocks
from lowbit.calibration.method import CalibratedQuantizer, use_dequantized
from lowbit.calibration.runner import quantize_calibrated

__all__ = ["BlockInputs", "CalibratedQuantizer", "calibration_samples", "find_blocks", "quantize_calibrated",
           "read_calibration_text", "use_dequantized"]
