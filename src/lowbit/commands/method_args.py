"""The flags that choose a method and its fields (``quantize``, ``report``), and the config they build.

``--method`` is checked against the method names without importing the methods (``catalogue``), with the
closest names as a hint. A field the config rejects is reported in terms of the flag the user typed.
"""

from __future__ import annotations

import argparse
import json

from lowbit.commands import catalogue
from lowbit.errors import ConfigError

FLAGS = {"bits": "--bits", "group_size": "--group-size", "symmetric": "--symmetric"}  # config field -> flag


def method_name(value: str) -> str:
    """argparse ``type`` of ``--method``: a registered name, else a usage error with the closest names."""
    valid = catalogue.method_names()
    if value not in valid:
        raise argparse.ArgumentTypeError(catalogue.unknown_method(value, valid))
    return value


def add_method_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--method", required=required, type=method_name, metavar="NAME",
                   help=f"quantization method or alias: {', '.join(catalogue.BUILTIN_NAMES)} (`lowbit methods`)")
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


def _flag_values(args) -> dict:
    fields = {}
    if args.bits is not None:
        fields["bits"] = args.bits
    if args.group_size is not None:
        fields["group_size"] = None if args.group_size == 0 else args.group_size
    if args.symmetric is not None:
        fields["symmetric"] = args.symmetric
    return fields


def _cli_value(value) -> str:
    return "0 (one scale per output channel)" if value is None else str(value)


def config_from_args(args) -> object:
    """The method's config from the flags; a field out of range names the flag, the value typed and the method."""
    from lowbit import registry

    flagged = _flag_values(args)
    fields = dict(flagged)
    if args.skip:
        fields["modules_to_not_convert"] = tuple(args.skip)
    if getattr(args, "act_order", False):
        fields["act_order"] = True
    for item in args.opt:
        fields.update(_option(item))
    for flag in ("quantize_embeddings", "quantize_lm_head", "strict"):
        if getattr(args, flag):
            fields[flag] = True
    try:
        return registry.build_config(args.method, **fields)
    except ConfigError as e:
        if e.field not in flagged or e.expected is None:
            raise
        flag, typed = FLAGS[e.field], getattr(args, e.field)
        raise ConfigError(f"{flag} {typed} is not valid for --method {args.method}; expected one of "
                          f"{', '.join(map(_cli_value, e.expected))}; pick one of those") from None
