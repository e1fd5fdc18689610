"""Small process-level helpers."""

from __future__ import annotations


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
