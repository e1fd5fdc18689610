"""Small process-level helpers."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The lowbit cache root (``$LOWBIT_CACHE`` > ``$XDG_CACHE_HOME/lowbit`` > ``~/.cache/lowbit``)."""
    if os.environ.get("LOWBIT_CACHE"):
        return Path(os.environ["LOWBIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lowbit"


def release_freed_memory() -> None:
    """Hand memory freed by per-tensor temporaries back to the OS.

    glibc keeps freed blocks that sit between live ones, so after loading a process would otherwise
    look as big as the largest moment of loading. Not glibc: nothing to do.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
