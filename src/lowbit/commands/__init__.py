"""The ``lowbit`` subcommands, one module each: ``add_arguments(parser)`` and ``run(args) -> int``.

Their top level imports only the standard library and lowbit's light modules (``errors``, ``config``,
``commands``), so that ``lowbit --help`` and usage errors never import torch; each ``run`` imports its work.
``lowbit.cli.COMMANDS`` lists them.
"""
