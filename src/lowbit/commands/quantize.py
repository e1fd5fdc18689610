"""``lowbit quantize SRC OUT --method NAME``: quantize a checkpoint folder and save it."""

from __future__ import annotations

import time
from pathlib import Path

from lowbit.commands.method_args import add_method_args, config_from_args
from lowbit.commands.size_summary import summary_lines
from lowbit.errors import ConfigError


def add_arguments(q) -> None:
    q.add_argument("src", help="folder with config.json and *.safetensors")
    q.add_argument("out", help="output folder")
    add_method_args(q)
    q.add_argument("--device", default="cpu", help="device to quantize on (cpu, cuda, cuda:N)")
    q.add_argument("--dtype", default=None, help="dtype of unquantized tensors (default: the checkpoint's)")
    q.add_argument("--max-shard-size", default="2GB")
    q.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="stream disk to disk within about SIZE of memory (e.g. 2GB), for checkpoints larger than RAM; "
                        "shards are then at most SIZE/3 (CPU only; calibrated methods always go block by block)")
    q.add_argument("--clamp-nonfinite", action="store_true",
                   help="replace NaN weights by 0 and Inf by the tensor's largest finite value (default: error)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output folder: only the files lowbit writes, others are kept")
    c = q.add_argument_group("calibrated methods (gptq, awq, smoothquant)")
    c.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text, UTF-8 (default: the bundled wiki.calib.txt)")
    c.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    c.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window (default 512)")
    c.add_argument("--seed", type=int, default=0, help="which windows of the text are picked (default 0)")
    c.add_argument("--batch-size", type=int, default=8, help="windows run through a block at once (default 8)")
    c.add_argument("--act-order", action="store_true", help="gptq: quantize columns by decreasing Hessian diagonal")


def _quantize_calibrated(args, cfg):
    from lowbit.calibration.runner import quantize_calibrated

    if args.clamp_nonfinite:
        raise ConfigError("--clamp-nonfinite does not apply to calibrated methods: fix the NaN/Inf weights first, or "
                          "quantize with a data-free method")
    return quantize_calibrated(args.src, args.out, cfg, calib=args.calib, samples=args.samples, seq_len=args.seq_len,
                               seed=args.seed, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                               max_shard_size=args.max_shard_size, max_memory=args.max_memory,
                               overwrite=args.overwrite, progress=True)


def run(args) -> int:
    import lowbit
    from lowbit import registry
    from lowbit.loading.save import check_output, parse_size

    cfg = config_from_args(args)
    check_output(args.out, args.overwrite, args.src)  # before minutes of work, not after
    parse_size(args.max_shard_size)
    start = time.perf_counter()
    nonfinite = "clamp" if args.clamp_nonfinite else "error"
    if registry.get(cfg.method).quantizer_cls.requires_calibration:
        out, quantizer = _quantize_calibrated(args, cfg)
    elif args.calib is not None:
        raise ConfigError(f"--calib was given but method {args.method!r} needs no calibration data; drop --calib "
                          "or choose gptq, awq or smoothquant")
    elif args.max_memory is None:
        model = lowbit.from_pretrained(args.src, quantization=cfg, device=args.device, dtype=args.dtype,
                                       progress=True, nonfinite=nonfinite)
        quantizer = model.lowbit_quantizer
        out = lowbit.save_pretrained(model, args.out, max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                     progress=True)
    else:  # disk to disk, never the whole model in memory
        from lowbit.loading.convert import convert

        if args.device != "cpu":
            raise ConfigError(f"--max-memory quantizes on the CPU, but --device is {args.device!r}; drop one of them")
        out, quantizer = convert(args.src, args.out, cfg, max_shard_size=args.max_shard_size,
                                 max_memory=args.max_memory, dtype=args.dtype, overwrite=args.overwrite,
                                 progress=True, nonfinite=nonfinite)
    summary = quantizer.summary()
    if summary:
        print(summary)
    for line in summary_lines(Path(args.src), Path(out), quantizer, time.perf_counter() - start, tuple(args.skip)):
        print(line)
    return 0
