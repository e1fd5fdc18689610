"""``lowbit.fit``: measure, choose, quantize, save (``lowbit fit SRC OUT --budget ...``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import torch

from lowbit.calibration.data import DEFAULT_SAMPLES, DEFAULT_SEQ_LEN, calibration_samples, read_calibration_text
from lowbit.errors import ConfigError
from lowbit.eval.report import calibration_ids
from lowbit.fitting.candidates import Layout, layout, parse_candidates
from lowbit.fitting.plan import FitPlan, above_full_precision, check_reachable, choose, parse_budget
from lowbit.fitting.sensitivity import any_calibrated, default_estimator, measure
from lowbit.loading.checkpoint import open_checkpoint
from lowbit.loading.output_folder import check_output
from lowbit.methods.mixed import MixedConfig, mixed_config

PLAN_FILE = "fit_plan.json"  # the plan with every layer's sensitivities, beside the weights


@dataclasses.dataclass(frozen=True)
class FitResult:
    folder: Path | None  # None when only the plan was asked for
    plan: FitPlan | None  # None when the budget holds the model at full precision (saved unchanged)
    layout: Layout
    note: str = ""


def plan_config(plan: FitPlan, lay: Layout) -> MixedConfig:
    """The ``mixed`` config that stores ``plan``: its used candidates and each layer's format."""
    from lowbit.registry import config_from_dict

    used = set(plan.labels().values())
    return mixed_config({label: config_from_dict(plan.candidates[label]) for label in used},
                        {name: (label, lay.formats[label][name]) for name, label in plan.labels().items()})


def fit(src: str | Path, out: str | Path | None, budget: str | float | int, candidates: str | list[str] | None = None,
        *, calib: str | Path | None = None, group_size: int | None = None, estimator: str = "auto",
        samples: int = 8, seq_len: int = 512, max_rows: int = 1024, calib_samples: int = DEFAULT_SAMPLES,
        calib_seq_len: int = DEFAULT_SEQ_LEN, overwrite: bool = False, progress: bool = False,
        log: Callable[[str], None] | None = None) -> FitResult:
    """Choose one candidate per quantized Linear of ``src`` for the least predicted loss within ``budget``
    (``"4.25bpw"`` or ``"2.1GB"``), quantize with that plan and save it to ``out`` (``None``: only the plan).

    Sensitivities come from ``samples`` windows of ``seq_len`` tokens of the calibration text (``calib``, else the
    bundled ``wiki.calib.txt``, as ``lowbit quantize`` does), ``max_rows`` input rows per layer; calibrated
    candidates are then quantized through the calibration runner with ``calib_samples`` x ``calib_seq_len``.
    ``estimator``: see ``sensitivity``; ``auto`` is ``output-fisher`` with a calibrated candidate, else ``fisher``."""
    if out is not None:
        check_output(out, overwrite, src)
    ckpt = open_checkpoint(src)
    if ckpt.quantization_config is not None:
        raise ConfigError(f"{ckpt.path} is already quantized; expected a full-precision checkpoint to fit")
    bud = parse_budget(budget)
    cands = parse_candidates(candidates, group_size)
    lay = layout(ckpt, cands)
    if estimator == "auto":
        estimator = default_estimator(cands)
    say = log or (lambda line: None)
    if above_full_precision(bud, lay):
        note = (f"budget {bud.text} holds the model at full precision ({lay.dense_bits} bits per weight, "
                f"{lay.dense_bytes() / 1e9:.3f} GB); kept as it is")
        say(note)
        return FitResult(_copy(src, out, overwrite) if out is not None else None, None, lay, note)
    check_reachable(bud, lay, list(cands))
    from lowbit.data import text_path
    from lowbit.loading.pipeline import from_pretrained
    from lowbit.loading.tokenizer import load_tokenizer

    text = read_calibration_text(calib or text_path("wiki.calib.txt"))
    tokenizer = load_tokenizer(ckpt.path)
    ids = calibration_ids(tokenizer, text, samples, seq_len)
    # calibrated candidates are scored as the runner will quantize them: with the Hessians of its windows
    hessian_ids = calibration_samples(tokenizer, text, calib_samples, calib_seq_len) if any_calibrated(cands) else None
    model = from_pretrained(src, dtype=torch.float32, progress=progress)
    sens = measure(model, ids, lay, cands, estimator, max_rows, log=log, hessian_ids=hessian_ids)
    del model
    plan = choose(lay, sens, bud, str(src), estimator, {label: cfg.to_dict() for label, cfg in cands.items()})
    say(plan.summary())
    if out is None:
        return FitResult(None, plan, lay)
    cfg = plan_config(plan, lay)
    if cfg.needs_data():
        from lowbit.calibration.runner import quantize_calibrated

        folder, _ = quantize_calibrated(src, out, cfg, text=text, samples=calib_samples, seq_len=calib_seq_len,
                                        overwrite=overwrite, progress=progress)
    else:
        from lowbit.loading.convert import quantize_folder

        folder = quantize_folder(src, out, cfg, overwrite=overwrite, progress=progress)
    (Path(folder) / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=1))
    return FitResult(Path(folder), plan, lay)


def _copy(src: str | Path, out: str | Path, overwrite: bool) -> Path:
    from lowbit.loading.pipeline import from_pretrained
    from lowbit.loading.save import save_pretrained

    return save_pretrained(from_pretrained(src), out, overwrite=overwrite)
