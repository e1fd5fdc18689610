"""``lowbit`` command line: a thin layer over the API. Exit 0 ok, 2 for usage or input errors (one line)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
import warnings
from pathlib import Path

from lowbit import registry
from lowbit.errors import ConfigError, LowbitError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2, no usage dump
        self.exit(2, f"lowbit: error: {message} (see `{self.prog} --help`)\n")


def _add_method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=registry.names(), help="quantization method or alias")
    p.add_argument("--bits", type=int, help="bits per weight (methods that take it)")
    p.add_argument("--group-size", type=int, help="inputs per scale group; 0 for one scale per output channel")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=None, help="symmetric grid")
    p.add_argument("--opt", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other config field of the method, e.g. --opt double_quant=true (repeat)")
    p.add_argument("--skip", action="append", default=[], metavar="NAME", help="module name to keep unquantized (repeat)")
    p.add_argument("--quantize-embeddings", action="store_true", help="store the input embedding as int8")
    p.add_argument("--quantize-lm-head", action="store_true", help="store the output head as int8")
    p.add_argument("--strict", action="store_true", help="error instead of falling back to a smaller group size")


def _option(item: str) -> dict:
    """``FIELD=VALUE`` → {field: value}; the value is read as JSON when it parses (true, 64, null), else a string."""
    field, sep, raw = item.partition("=")
    if not sep or not field:
        raise ConfigError(f"--opt {item!r} is not FIELD=VALUE; write e.g. --opt double_quant=true")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return {field.strip().replace("-", "_"): value}


def _config_from_args(args) -> object:
    fields = {}
    if args.bits is not None:
        fields["bits"] = args.bits
    if args.group_size is not None:
        fields["group_size"] = None if args.group_size == 0 else args.group_size
    if args.symmetric is not None:
        fields["symmetric"] = args.symmetric
    if args.skip:
        fields["modules_to_not_convert"] = tuple(args.skip)
    if getattr(args, "act_order", False):
        fields["act_order"] = True
    for item in args.opt:
        fields.update(_option(item))
    for flag in ("quantize_embeddings", "quantize_lm_head", "strict"):
        if getattr(args, flag):
            fields[flag] = True
    return registry.build_config(args.method, **fields)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowbit", description="Quantize transformer checkpoints to 2-8 bits; load, save, inspect, evaluate.")
    parser.add_argument("--version", action="version", version=f"lowbit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("methods", help="list methods, aliases and their defaults")

    q = sub.add_parser("quantize", help="quantize a checkpoint folder and save it")
    q.add_argument("src", help="folder with config.json and *.safetensors")
    q.add_argument("out", help="output folder")
    _add_method_args(q)
    q.add_argument("--device", default="cpu", help="device to quantize on (cpu, cuda, cuda:N)")
    q.add_argument("--dtype", default=None, help="dtype of unquantized tensors (default: the checkpoint's)")
    q.add_argument("--max-shard-size", default="2GB")
    q.add_argument("--max-memory", metavar="SIZE", default=None,
                   help="stream disk to disk within about SIZE of memory (e.g. 2GB), for checkpoints larger than RAM; "
                        "shards are then at most SIZE/3 (CPU only; calibrated methods always go block by block)")
    q.add_argument("--clamp-nonfinite", action="store_true",
                   help="replace NaN weights by 0 and Inf by the tensor's largest finite value (default: error)")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder that holds no model")
    c = q.add_argument_group("calibrated methods (gptq, awq, smoothquant)")
    c.add_argument("--calib", default=None, metavar="FILE",
                   help="calibration text, UTF-8 (default: the bundled wiki.calib.txt)")
    c.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    c.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window (default 512)")
    c.add_argument("--seed", type=int, default=0, help="which windows of the text are picked (default 0)")
    c.add_argument("--batch-size", type=int, default=8, help="windows run through a block at once (default 8)")
    c.add_argument("--act-order", action="store_true", help="gptq: quantize columns by decreasing Hessian diagonal")

    i = sub.add_parser("inspect", help="per layer: method, bits, bytes, kernel and why")
    i.add_argument("path")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")

    v = sub.add_parser("verify", help="check every shard against the sha256 in the index")
    v.add_argument("path")

    e = sub.add_parser("eval", help="perplexity over non-overlapping windows of a text file")
    e.add_argument("path")
    e.add_argument("--text", required=True, help="UTF-8 text file")
    e.add_argument("--ctx", type=int, default=512)
    e.add_argument("--max-tokens", type=int, default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", action="store_true")

    r = sub.add_parser("report", help="per layer: weight SQNR, output error, bits/weight; perplexity fp32 vs quantized")
    r.add_argument("path", help="full-precision checkpoint folder")
    _add_method_args(r)
    r.add_argument("--samples", type=int, default=4, help="calibration windows from the calibration text")
    r.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    r.add_argument("--eval-tokens", type=int, default=8192, help="tokens of the eval text for perplexity; 0 skips it")
    r.add_argument("--ctx", type=int, default=512, help="perplexity window")
    r.add_argument("--calib", default=None, help="calibration text (default: the bundled wiki.calib.txt)")
    r.add_argument("--text", default=None, help="eval text (default: the bundled wiki.eval.txt)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", metavar="OUT", default=None, help="write the whole report as JSON")
    r.add_argument("--plot", metavar="OUT.png", default=None, help="bar chart per layer (needs matplotlib)")

    d = sub.add_parser("demo", help="quantize a real model to int8 and int4 and show size, quality and speed")
    d.add_argument("--model", choices=["gemma-3-270m", "minilm"], default=None)
    d.add_argument("--max-tokens", type=int, default=2048, help="tokens of the bundled text to score")
    d.add_argument("--gen-tokens", type=int, default=32)
    return parser


def _version() -> str:
    from lowbit._version import __version__

    return __version__


def cmd_methods(args) -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lowbit methods")
    for col in ("name", "is", "defaults"):
        table.add_column(col)
    for name, method in sorted(registry.methods_table().items()):
        table.add_row(name, method.summary, _defaults(method.config_cls()))
    for name, alias in sorted(registry.aliases().items()):
        cfg = registry.build_config(name)
        table.add_row(name, f"{alias.method} preset: {alias.summary}", _defaults(cfg))
    Console().print(table)
    return 0


def _defaults(cfg) -> str:
    skip = {"modules_to_not_convert", "quantize_embeddings", "quantize_lm_head", "strict", "kernel"}
    parts = []
    for f in dataclasses.fields(cfg):
        if f.name in skip:
            continue
        value = getattr(cfg, f.name)
        parts.append(f"{f.name}={getattr(value, 'value', value)}")
    return ", ".join(parts)


def _quantize_calibrated(args, cfg):
    from lowbit.calibration.runner import quantize_calibrated

    if args.clamp_nonfinite:
        raise ConfigError("--clamp-nonfinite does not apply to calibrated methods: fix the NaN/Inf weights first, or "
                          "quantize with a data-free method")
    return quantize_calibrated(args.src, args.out, cfg, calib=args.calib, samples=args.samples, seq_len=args.seq_len,
                               seed=args.seed, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                               max_shard_size=args.max_shard_size, max_memory=args.max_memory,
                               overwrite=args.overwrite, progress=True)


def cmd_quantize(args) -> int:
    import lowbit

    from lowbit.loading.save import check_output, parse_size

    cfg = _config_from_args(args)
    check_output(args.out, args.overwrite)  # before minutes of work, not after
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
        out = lowbit.save_pretrained(model, args.out, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
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
    size = sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))
    src_size = sum(p.stat().st_size for p in Path(args.src).glob("*.safetensors"))
    print(f"wrote {out}: {size / 1e6:.1f} MB of weights ({src_size / max(size, 1):.2f}x smaller than {src_size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def cmd_inspect(args) -> int:
    import lowbit

    report = lowbit.inspect(args.path)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.path}: {report.method}, {report.quantized_bytes / 1e6:.1f} MB quantized of "
                        f"{report.total_bytes / 1e6:.1f} MB in memory")
    for col in ("layer", "format", "shape", "bits/weight", "bytes", "kernel", "why"):
        table.add_column(col)
    for layer in report.layers:
        table.add_row(layer.name, layer.format, "x".join(map(str, layer.shape)), f"{layer.bits_per_weight:.3f}",
                      f"{layer.nbytes:,}", layer.kernel, layer.reason)
    Console(width=200).print(table)
    return 0


def cmd_verify(args) -> int:
    import lowbit

    hashes = lowbit.verify(args.path)
    print(f"{args.path}: {len(hashes)} shard(s) match their sha256")
    return 0


def cmd_eval(args) -> int:
    import lowbit
    from lowbit.eval import load_text, perplexity
    from lowbit.loading.tokenizer import load_tokenizer

    text = load_text(args.text)
    model = lowbit.from_pretrained(args.path, device=args.device)
    if not (hasattr(model, "can_generate") and model.can_generate()):
        raise ConfigError(f"{args.path} holds a {type(model).__name__}, which predicts no next token; "
                          "expected a causal language model (…ForCausalLM) for perplexity")
    result = perplexity(model, load_tokenizer(args.path), text, ctx=args.ctx, max_tokens=args.max_tokens, progress=True)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(result)
    return 0


def cmd_report(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lowbit.errors import SaveError
    from lowbit.eval import layer_report, load_text, plot_report
    from lowbit.data import text_path
    from lowbit.eval.report import require_matplotlib

    cfg = _config_from_args(args)
    if args.plot:
        require_matplotlib()  # before minutes of work, not after
    for out in filter(None, (args.json, args.plot)):
        if not Path(out).parent.is_dir():
            raise SaveError(f"output {out!r} is in a folder that does not exist; expected an existing folder; "
                            "create it first")
    calib = load_text(args.calib or text_path("wiki.calib.txt"))
    text = load_text(args.text or text_path("wiki.eval.txt")) if args.eval_tokens else None
    start = time.perf_counter()
    report = layer_report(args.path, cfg, calib_text=calib, eval_text=text, samples=args.samples,
                          seq_len=args.seq_len, eval_tokens=args.eval_tokens, ctx=args.ctx, device=args.device,
                          progress=True)
    table = Table(title=f"{Path(report.model).name}: {report.config['method']}, output error on {report.rows} "
                        "token rows per layer")
    for col in ("layer", "format", "bits/w", "SQNR dB", "rel. output error"):
        table.add_column(col, justify="left" if col in ("layer", "format") else "right")
    for x in report.layers:
        table.add_row(x.name, x.format, f"{x.bits_per_weight:.3f}", f"{x.sqnr_db:.2f}", f"{x.output_error:.4f}")
    console = Console(width=200)
    console.print(table)
    console.print(report.summary(), highlight=False, soft_wrap=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    if args.plot:
        plot_report(report, args.plot)
    print(f"done in {time.perf_counter() - start:.1f} s" + "".join(f"; wrote {p}" for p in (args.json, args.plot) if p))
    return 0


def cmd_demo(args) -> int:
    from lowbit.demo import run_demo

    return run_demo(args.model, max_tokens=args.max_tokens, gen_tokens=args.gen_tokens)


COMMANDS = {"methods": cmd_methods, "quantize": cmd_quantize, "inspect": cmd_inspect, "verify": cmd_verify,
            "eval": cmd_eval, "report": cmd_report, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = lambda msg, cat, *a, **k: f"lowbit: warning: {msg}\n"
            return COMMANDS[args.command](args)
    except LowbitError as e:
        print(f"lowbit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
