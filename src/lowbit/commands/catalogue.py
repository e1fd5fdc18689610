"""The built-in methods and aliases as ``lowbit methods`` prints them, without importing them (and torch).

``ROWS`` is a static copy of what the registry says: tests/cli/test_catalogue.py rebuilds the rows from the
registry (``commands.methods.registry_rows``) and fails, printing the rows to paste here, when a method is added
or changed. Plugins are not in it: when any ``lowbit.methods`` entry point is installed, the commands ask the
registry itself (``plugins_installed``).
"""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

# (name, what it is, defaults): methods first, then aliases, each sorted by name
ROWS: tuple[tuple[str, str, str], ...] = (
    ('awq', 'AWQ: activation-aware per-channel scales, optional clipping search, then integer RTN (needs calibration).', "compute_dtype=auto, bits=4, group_size=128, symmetric=False, grid=20, search_tokens=4096, duo_scaling=False, clip=True, clip_grid=20, clip_max_shrink=0.5, clip_tokens=512, clip_skip=('q_proj', 'k_proj', 'qkv_proj', 'query', 'key')"),  # noqa: E501
    ('fp4', 'OCP FP4 (E2M1) grid scaled by absmax / 6 per block, optional double quantization.', 'compute_dtype=auto, block_size=64, double_quant=False'),  # noqa: E501
    ('fp8', 'FP8 e4m3fn weights, per-channel or 128x128-block scales; optional dynamic fp8 activations (W8A8).', 'compute_dtype=auto, weight_scale=channel, activations=none'),  # noqa: E501
    ('gptq', 'GPTQ: integer weights with Hessian-weighted error compensation (needs calibration text).', 'compute_dtype=auto, bits=4, group_size=128, symmetric=False, act_order=False, static_groups=False, damp=0.01, block_size=128, true_sequential=True, mse=False, awq_balance=False, fp_targets=False, fp_alpha=1.0'),  # noqa: E501
    ('hqq', 'HQQ: min/max grid, then the zero-point (optionally the scale) fitted by half-quadratic optimization.', 'compute_dtype=auto, bits=4, group_size=64, iters=20, lp_norm=0.7, beta=10.0, kappa=1.01, optimize_scale=False'),  # noqa: E501
    ('imported', 'layers read from a GPTQ / AWQ / bitsandbytes / compressed-tensors checkpoint (load only)', 'compute_dtype=auto, source=, detail=, layer_formats=(), inexact=()'),  # noqa: E501
    ('mixed', 'One method per layer, chosen by `lowbit fit` under a size budget.', 'compute_dtype=auto, candidates=(), plan=()'),  # noqa: E501
    ('mxfp4', 'OCP MXFP4: E2M1 weights, one E8M0 power-of-two scale per block of 32 inputs.', 'compute_dtype=auto'),
    ('nf4', 'NormalFloat4 code book (QLoRA / bitsandbytes nf4), absmax per block, optional double quantization.', 'compute_dtype=auto, block_size=64, double_quant=False'),  # noqa: E501
    ('rtn', 'Round-to-nearest integer weights, per channel or per group.', 'compute_dtype=auto, bits=4, group_size=128, symmetric=False'),  # noqa: E501
    ('smoothquant', 'SmoothQuant W8A8: int8 per-channel weights, dynamic per-token int8 activations (needs calibration).', 'compute_dtype=auto, alpha=0.5'),  # noqa: E501
    ('int2', 'rtn preset: int2 weights, asymmetric, groups of 64 inputs', 'compute_dtype=auto, bits=2, group_size=64, symmetric=False'),  # noqa: E501
    ('int3', 'rtn preset: int3 weights, asymmetric, groups of 128 inputs', 'compute_dtype=auto, bits=3, group_size=128, symmetric=False'),  # noqa: E501
    ('int4', 'rtn preset: int4 weights, asymmetric, groups of 128 inputs', 'compute_dtype=auto, bits=4, group_size=128, symmetric=False'),  # noqa: E501
    ('int8', 'rtn preset: int8 weights, symmetric, one scale per output channel', 'compute_dtype=auto, bits=8, group_size=None, symmetric=True'),  # noqa: E501
)
BUILTIN_NAMES: tuple[str, ...] = tuple(sorted(row[0] for row in ROWS))


def plugins_installed() -> bool:
    """Whether any package provides a ``lowbit.methods`` entry point (reads metadata only, imports nothing)."""
    return bool(entry_points(group="lowbit.methods"))


def method_names() -> list[str]:
    """Every method and alias name: the static table, or the registry's when plugins may add names."""
    if plugins_installed():
        from lowbit import registry

        return registry.names()
    return list(BUILTIN_NAMES)


def unknown_method(name: str, valid: list[str]) -> str:
    """The one-line message for a method name that is not registered, with the closest names as a hint."""
    close = difflib.get_close_matches(name, valid, n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    return f"unknown method {name!r}; {hint}expected one of {', '.join(valid)} (`lowbit methods` describes them)"
