"""``lowbit`` command line: a thin layer over the API. Exit 0 ok, 2 for usage or input errors (one line).

Start-up is light: building the parser imports only the standard library, ``lowbit.errors`` and the
``lowbit.commands`` modules, whose top level imports nothing heavy (no torch, transformers or triton); each
command imports its work inside ``run`` (tests/cli/test_startup.py checks it). ``lowbit --help``, ``lowbit methods``
and usage errors therefore answer at once.

Adding a subcommand: a module ``lowbit/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``
(light imports at the top, the work imported inside ``run``), and one row in ``COMMANDS`` below.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
import warnings

from lowbit.errors import LowbitError


@dataclasses.dataclass(frozen=True)
class Command:
    name: str
    module: str  # lowbit.commands.<x>: add_arguments(parser), run(args) -> int
    help: str


COMMANDS: tuple[Command, ...] = (
    Command("methods", "lowbit.commands.methods", "list methods, aliases and their defaults"),
    Command("quantize", "lowbit.commands.quantize", "quantize a checkpoint folder and save it"),
    Command("inspect", "lowbit.commands.inspect", "per layer: method, bits, bytes, kernel and why"),
    Command("verify", "lowbit.commands.verify", "check every shard against the sha256 in the index"),
    Command("export", "lowbit.commands.export", "write a lowbit model as compressed-tensors (what vLLM serves)"),
    Command("eval", "lowbit.commands.evaluate", "perplexity over non-overlapping windows of a text file"),
    Command("report", "lowbit.commands.report",
            "per layer: weight SQNR, output error, bits/weight; perplexity fp32 vs quantized"),
    Command("fit", "lowbit.commands.fit", "one method per layer from measured sensitivity, within a size budget"),
    Command("generate", "lowbit.commands.generate", "greedy continuation of a prompt; first-token time and tok/s"),
    Command("merge", "lowbit.commands.merge",
            "merge a LoRA adapter into its quantized base and quantize the result (needs peft)"),
    Command("demo", "lowbit.commands.demo", "quantize a real model to int8 and int4 and show size, quality and speed"),
    Command("models", "lowbit.commands.models", "the real models of the demo and tests: installed, cached where; --fetch"),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2, no usage dump
        self.exit(2, f"lowbit: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from lowbit._version import __version__

    parser = _Parser(prog="lowbit", description="Quantize transformer checkpoints to 2-8 bits; load, save, inspect, evaluate.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        importlib.import_module(command.module).add_arguments(p)
        p.set_defaults(_module=command.module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.formatwarning = lambda msg, cat, *a, **k: f"lowbit: warning: {msg}\n"
            return importlib.import_module(args._module).run(args)
    except LowbitError as e:
        print(f"lowbit: error: {''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
