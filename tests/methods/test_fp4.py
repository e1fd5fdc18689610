"""fp4 (OCP E2M1 grid, absmax / 6 per block) on the conformance suite.

SQNR on conformance.test_weight, measured: fp4 b64 18.76 dB; the floor sits 0.5 dB below. Bits per weight of a
[256, 1024] weight: 4.5 (fp32 absmax per 64 inputs). Real model, SmolLM2-135M, first 2048 tokens of wiki.eval.txt,
CPU, measured: fp32 20.762, fp4 b64 29.154 (x1.404); the bound sits about 10% above.
"""

from __future__ import annotations

from conformance import Conformance


class TestFp4(Conformance):
    method = "fp4"
    bad_fields = [({"block_size": 48}, "block_size=48"), ({"double_quant": 1}, "double_quant=1")]
    bits_per_weight = 4 + 32 / 64
    sqnr_floor = 18.2  # measured 18.76
    real_max_ratio = 1.55  # measured 1.404
