"""lowbit's own CPU kernels (``gemv.c``, ``dot8.c``) and decode step (``step.c``): built on first use with the
system C compiler, loaded with ctypes.

The C files are compiled into one library once per instruction set (``features.isa()``: AVX2+FMA or AVX-512, the
latter with AVX512-VNNI where the CPU has it) into ``<cache>/native/`` (the name carries a hash of the sources, the
flags and the compiler), written under a temporary name and renamed, so concurrent processes never load a
half-written library. It links the OpenMP runtime that torch has loaded already (same soname), so its threads are
torch's. No compiler, or a failed build: ``library()`` is None
and ``unavailable()`` says why; the kernels then decline with that reason and the others run the layer.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from lowbit.kernels.cpu.features import cpu_info, isa
from lowbit.utils import cache_dir

SOURCES = tuple(Path(__file__).with_name(name) for name in ("gemv.c", "dot8.c", "step.c"))
FLAGS = {"avx2": ["-march=haswell"], "avx512": ["-march=x86-64-v4"]}  # haswell: AVX2, FMA, F16C, BMI2
COMMON = ["-O3", "-fopenmp", "-shared", "-fPIC", "-fno-math-errno"]
_P, _I = ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {"lowbit_gemv4": [_P, _I, _I, _P, _I, _P, _P, _P, _I, _P, _I],
               "lowbit_gemv8": [_P, _I, _I, _P, _I, _P, _P, _I, _P, _I, _I],
               "lowbit_dot4": [_P, _I, _I, _P, _I, _P, _P, _P, _I, _I, _P, _I],
               "lowbit_dot8": [_P, _I, _I, _P, _I, _P, _P, _I, _I, _P, _I],
               "lowbit_step": [_P, _P, _I, _P],
               "lowbit_dequant4": [_P, _I, _I, _P, _P, _P, _I, _I, _P, _I],
               "lowbit_dequant8": [_P, _I, _I, _P, _P, _I, _I, _I, _P, _I]}
_RESTYPES = {"lowbit_dot4": _I, "lowbit_dot8": _I, "lowbit_step": _I}
PARALLEL_MIN = 1 << 17  # weights from which the rows are split over torch's threads (a fork/join costs µs)


def threads_for(n: int, k: int) -> int:
    """The OpenMP threads a kernel call over an [n, k] weight uses."""
    return torch.get_num_threads() if n * k >= PARALLEL_MIN else 1


def ptr(t: torch.Tensor | None) -> int | None:
    """A tensor's address for ctypes (None: NULL)."""
    return None if t is None else t.data_ptr()


def flags(which: str) -> list[str]:
    """The compiler's instruction-set flags for ``which``: AVX-512 adds VNNI where this CPU has it."""
    extra = ["-mavx512vnni"] if which == "avx512" and "avx512_vnni" in cpu_info()[1] else []
    return FLAGS[which] + extra


def compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)


def library(which: str | None = None) -> ctypes.CDLL | None:
    """The kernels built for ``which`` (default: ``features.isa()``), or None where they cannot be built here."""
    return _load(which or isa())[0]


def unavailable(which: str | None = None) -> str | None:
    """Why the kernels cannot run here (None: they can)."""
    return _load(which or isa())[1]


@functools.lru_cache(maxsize=4)
def build_id(which: str) -> str:
    """A hash of the C sources, the flags for ``which`` and the compiler: the library's name, and part of the CPU
    tuner's cache key (changed kernels are measured again)."""
    cc = compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout if cc else ""
    text = "\0".join([*(source.read_text() for source in SOURCES), *COMMON, *flags(which), version])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _load(which: str) -> tuple[ctypes.CDLL | None, str | None]:
    if which not in FLAGS:
        return None, "this CPU has neither AVX2+FMA nor AVX-512 (or LOWBIT_CPU_ISA/ATEN_CPU_CAPABILITY say none)"
    cc = compiler()
    if cc is None:
        return None, "no C compiler found (cc, gcc, clang or $CC): install one (e.g. apt install gcc)"
    try:
        args = COMMON + flags(which)
        target = cache_dir() / "native" / f"gemv-{which}-{build_id(which)}.so"
        if not target.exists():
            _build(cc, args, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"building {', '.join(s.name for s in SOURCES)} for {which} failed: {str(e).strip().splitlines()[-1][:300]}"
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _RESTYPES.get(name)
    return lib, None


def _build(cc: str, args: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent, prefix=".build-")
    os.close(fd)
    try:
        done = subprocess.run([cc, *args, *map(str, SOURCES), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise OSError(f"{cc} exited {done.returncode}: {done.stderr.strip()[-300:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
