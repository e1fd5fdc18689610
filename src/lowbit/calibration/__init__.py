"""Calibrated quantization, one transformer block at a time (ARCHITECTURE.md §2, the engine).

``data``: calibration text → token samples; ``inputs``: what each block receives, and running it;
``method``: the interface GPTQ, AWQ and SmoothQuant implement; ``runner``: the layer-by-layer loop.

This package's ``__init__`` holds the building blocks only (layer 4, below the methods); the runner sits above
the loading engine and is imported as ``lowbit.calibration.runner`` (``lowbit.quantize_calibrated`` is its entry
point, re-exported by the package root).
"""

from lowbit.archs import find_blocks
from lowbit.calibration.data import calibration_samples, read_calibration_text
from lowbit.calibration.inputs import BlockInputs
from lowbit.calibration.method import CalibratedQuantizer, use_dequantized

__all__ = ["BlockInputs", "CalibratedQuantizer", "calibration_samples", "find_blocks", "read_calibration_text",
           "use_dequantized"]
