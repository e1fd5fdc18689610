"""What the Triton kernels need from the environment: triton itself, and whether it runs on the CPU (interpreter)."""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs its kernels in the interpreter, on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
