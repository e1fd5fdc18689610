"""Texts shipped inside the package (English Wikipedia, CC BY-SA 3.0: see ATTRIBUTION.md beside this file).

``wiki.calib.txt`` is calibration text (GPTQ, AWQ, SmoothQuant, the layer report's input rows), ``wiki.eval.txt``
evaluation text (perplexity), never the other way round; ``sample.txt`` (the first 16 KB of ``wiki.eval.txt``) is
what ``lowbit demo`` scores. ``text_path(name)`` is where one of them is on disk, in a source checkout as in an
installed package.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lowbit.errors import ConfigError

TEXTS = ("sample.txt", "wiki.calib.txt", "wiki.eval.txt")

__all__ = ["TEXTS", "text_path"]


def text_path(name: str) -> Path:
    """The path of the bundled text ``name`` (one of ``TEXTS``)."""
    if name not in TEXTS:
        raise ConfigError(f"bundled text {name!r} does not exist; expected one of {list(TEXTS)}; "
                          "pass the path of your own text file instead")
    return Path(str(resources.files(__name__).joinpath(name)))
