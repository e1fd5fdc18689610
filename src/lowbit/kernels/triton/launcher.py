"""Launching the Triton kernels: the arguments of one launch, and the eager fast path.

``plan`` works out one launch (kernel, grid, split-K, integer and constexpr arguments) from the shapes and a tuner
config. ``launch`` runs a plan through Triton's JIT (``via``: ``torch.library.wrap_triton`` inside the op, so
torch.compile sees the kernel). ``linear`` is what an eager layer call runs: the plan of each (format, shape,
dtype) is made once, and after its first launch the compiled kernel is called directly, without the op's dispatch
or Triton's argument binding; what differs between calls is only the tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from typing import Callable

import torch

from lowbit.kernels.triton import tune
from lowbit.kernels.triton.env import interpreting
from lowbit.kernels.triton.family import Family, TritonFormat
from lowbit.kernels.triton.lut import kernel_table, table_words
from lowbit.qtypes import code_book

LOCKS = 1 << 16  # split-K tile counters per device; a launch needing more runs without split-K
INTS = ("M", "N", "K", "stride_sn", "stride_sg", "stride_xm", "stride_om", "chunks_per_split")


def book(code: str) -> tuple[float, ...]:
    """A code book's values over its largest magnitude: the weight is book[code] * block absmax."""
    return tuple((torch.tensor(code_book(code).values, dtype=torch.float32) / code_book(code).levels).tolist())


@functools.lru_cache(maxsize=16)
def lut_words(code: str) -> tuple[int, ...]:
    """int32 [24]: the code book as the kernels decode it (fp32 bits of the values to bf16 precision), then the
    eight table words of its in-register decoding (lut.py)."""
    values = torch.tensor(kernel_table(book(code)), dtype=torch.float32).view(torch.int32).tolist()
    return tuple(values + [w - (1 << 32) if w >= 1 << 31 else w for w in table_words(book(code))])  # as int32


@functools.lru_cache(maxsize=16)
def lut(code: str, device: torch.device) -> torch.Tensor:
    return torch.tensor(lut_words(code), dtype=torch.int32).to(device)


@functools.lru_cache(maxsize=16)
def locks(device: torch.device) -> torch.Tensor:
    """Zeroed int32 counters for split-K tiles; each launch leaves the ones it used at zero again."""
    return torch.zeros(LOCKS, dtype=torch.int32, device=device)


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def packed(x2: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, group: int) -> tuple[int, int]:
    """(PACKED, LATE) for the GEMM's int4 tiles: decoded two weights a register in x's dtype (1: bf16, 2: fp16;
    0: in fp32), and scaled after each chunk's product (LATE) when the scales are in another dtype, which needs
    one group per chunk. Zeros must be integers; Triton's interpreter cannot run the PTX."""
    half = {torch.bfloat16: 1, torch.float16: 2}.get(x2.dtype, 0)
    if interpreting() or not half or (z is not None and z.is_floating_point()):
        return 0, 0
    if s.dtype == x2.dtype:
        return half, 0
    return (half, 1) if not group or group >= 128 else (0, 0)


@dataclasses.dataclass
class Plan:
    """One launch's shape-dependent arguments."""

    kernel: object  # the JIT function
    grid: tuple[int, int, int]
    split: int
    tiles: int
    ints: tuple[int, ...]  # INTS, in the kernel's order
    consts: dict  # constexprs, num_warps, num_stages
    tail: tuple = ()  # the constexprs in the kernel's argument order (what the compiled launcher takes)


def plan(x2: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None, tf: TritonFormat,
         cfg: dict, xs: torch.Tensor | None = None) -> Plan:
    """The launch of y [M, N] = x2 [M, K] @ W.T (+ bias) with one config; ``xs``: fp8 x's per-row scales."""
    from lowbit.kernels.triton.gemv4 import gemv4_kernel
    from lowbit.kernels.triton.kernels import gemm_kernel, gemv_kernel

    m, k = x2.shape
    n = s.shape[0]
    chunks = k // 128
    if cfg["path"] == "gemv4" and (xs is not None or not tune.gemv4_fits(tf)):
        cfg = dict(cfg, path="gemv", PF=1)  # a forced config on another format: the general GEMV, same tiles
    if cfg["path"] == "dequant":  # a forced config on another format than int4: the fused GEMM
        cfg = {"path": "gemm", "BM": 64, "BN": 64, "CPI": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 3}
    gemv = cfg["path"] in ("gemv", "gemv4")
    cpi = cfg["CPI"] if not gemv and chunks % cfg["CPI"] == 0 else 1  # the GEMV prefetches one chunk instead
    tiles = (m if gemv else triton_cdiv(m, cfg["BM"])) * triton_cdiv(n, cfg["BN"])
    split = max(d for d in range(1, cfg["SPLIT_K"] + 1) if (chunks // cpi) % d == 0)  # equal parts
    if tiles > LOCKS:
        split = 1
    if z is not None and z.stride() != s.stride():
        raise ValueError(f"zeros strides {z.stride()} differ from the scales' {s.stride()}; the kernel indexes both "
                         "alike (lay both out with the same function)")
    ssn, ssg = (s.stride(0), s.stride(1)) if s.dim() == 2 else (1, 0)  # scales [N, groups], any strides
    ints = (m, n, k, ssn, ssg, x2.stride(0), n, chunks // split)
    consts = dict(FMT=int(tf.family), GS=tf.group or 1 << 30,  # per channel: every input in group 0
                  HAS_Z=z is not None, ZERO=8.0, HAS_BIAS=bias is not None, SPLIT=split)
    if cfg["path"] == "gemv4":
        del consts["FMT"]
        consts.update(BN=cfg["BN"], DEC=cfg.get("DEC", 0), EV=cfg.get("EV", 1), PD=cfg.get("PD", 0))
        kernel, grid = gemv4_kernel, (triton_cdiv(n, cfg["BN"]), m, split)
    elif gemv:
        consts.update(X_SCALED=xs is not None, BN=cfg["BN"], ACC_W=16 if tf.four_bit else 128, PF=cfg.get("PF", 1),
                      PD=cfg.get("PD", 1))
        kernel, grid = gemv_kernel, (triton_cdiv(n, cfg["BN"]), m, split)
    else:
        # PK=0 (a tuner choice): int4 tiles decoded in fp32 even where the packed decode is exact
        packed_int4 = tf.family is Family.INT4 and cfg.get("PK", 1) and not cfg.get("FLAT")
        half, late = packed(x2, s, z, tf.group) if packed_int4 else (0, 0)
        consts.update(X_FP8=xs is not None, BM=cfg["BM"], BN=cfg["BN"], CPI=cpi, SWAP=cfg.get("SWAP", False),
                      FLAT=cfg.get("FLAT", 0), PACKED=half, LATE=late)
        kernel, grid = gemm_kernel, (triton_cdiv(m, cfg["BM"]), triton_cdiv(n, cfg["BN"]), split)
    tail = tuple(consts[name] for name in kernel.arg_names[10 + len(INTS):])
    consts.update(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return Plan(kernel, grid, split, tiles, ints, consts, tail=tail)


def launch(x2: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
           tf: TritonFormat, cfg: dict, xs: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
           via: Callable | None = None) -> torch.Tensor:
    """y [M, N] = x2 [M, K] @ W.T (+ bias) for the stored ``w``/``s``/``z`` of ``tf`` with one config.

    ``xs`` (dynamic fp8 only): per-row scales of an fp8 ``x2``. ``via``: ``torch.library.wrap_triton`` when
    traced inside the op; then every written buffer is made here (no global counters, no aliased outputs).
    """
    if cfg["path"] == "dequant" and tf.family is Family.INT4:  # the weight in x's dtype, then cuBLAS (dequant.py)
        from lowbit.kernels.triton.dequant import dequantize4

        wd, _ = dequantize4(w, s, z, tf.group, x2.shape[1], x2.dtype, via)
        return torch.nn.functional.linear(x2, wd, None if bias is None else bias.to(x2.dtype))
    p = plan(x2, s, z, bias, tf, cfg, xs)
    m, n = p.ints[0], p.ints[1]
    device = x2.device
    out = torch.empty(m, n, dtype=out_dtype or x2.dtype, device=device)
    if via is None:
        ws = torch.empty(p.split, m, n, dtype=torch.float32, device=device) if p.split > 1 else out
        counters = locks(device)
        table = lut(tf.code, device) if tf.family is Family.CODEBOOK else s
    else:
        ws = torch.empty(p.split, m, n, dtype=torch.float32, device=device)
        counters = torch.zeros(p.tiles if p.split > 1 else 1, dtype=torch.int32, device=device)
        table = torch.tensor(lut_words(tf.code), dtype=torch.int32, device=device) \
            if tf.family is Family.CODEBOOK else s
    args = (x2, xs if xs is not None else s, w, s, z if z is not None else s, table, bias if bias is not None else s,
            out, ws, counters)
    (via(p.kernel) if via is not None else p.kernel)[p.grid](*args, *p.ints, **p.consts)
    return out


@functools.lru_cache(maxsize=16)
def _workspaces(device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
    return []


def workspace(device: torch.device, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A workspace of at least ``numel`` on ``device`` (float32: split-K partial sums; x's dtype: a dequantized
    weight), shared by the eager launches (they run in stream order). Outgrown ones are kept: a recorded CUDA graph
    or a bound launch may still point into them."""
    spaces = _workspaces(device, dtype)
    if not spaces or spaces[-1].numel() < numel:
        spaces.append(torch.empty(max(numel, 1 << 20), dtype=dtype, device=device))
    return spaces[-1]


class Bound:
    """One layer's eager launches: its fixed tensors, and per (M, x dtype) the compiled kernel's launch with
    every argument but x and the output already converted (``fast``), once a first launch compiled it."""

    def __init__(self, w, s, z, bias, tf: TritonFormat) -> None:
        key = id(w)
        self.w = weakref.ref(w, lambda _: _BOUND.pop(key, None))  # the entry goes with the weight
        self.s, self.z, self.bias, self.tf = s, z, bias, tf
        self.n = s.shape[0]
        self.fast: dict[tuple, Callable] = {}  # (M, x dtype) -> fast(x, x_ptr) -> y

    def matches(self, w, s, z, bias, tf) -> bool:
        return self.w() is w and self.s is s and self.z is z and self.bias is bias and self.tf is tf

    def launch(self, x: torch.Tensor, measure: Callable | None) -> torch.Tensor:
        """The first launch of a shape (or one the fast path does not take): through Triton's JIT, then kept."""
        w, s, z, bias, tf = self.w(), self.s, self.z, self.bias, self.tf
        k = x.shape[-1]
        x2 = x.reshape(-1, k).contiguous()
        m, n, device = x2.shape[0], self.n, x2.device
        cfg = tune.config_for(tf, x2.dtype, m, k, n, measure and (lambda: measure(x2)))
        if cfg["path"] == "dequant" and tf.family is Family.INT4:
            return self.dequant(x, x2, m)
        p = plan(x2, s, z, bias, tf, cfg)
        out = torch.empty(m, n, dtype=x2.dtype, device=device)
        ws = workspace(device, p.split * m * n) if p.split > 1 else out
        table = lut(tf.code, device) if tf.family is Family.CODEBOOK else s
        fixed = (s, w, s, s if z is None else z, table, s if bias is None else bias)
        compiled = p.kernel[p.grid](x2, *fixed, out, ws, locks(device), *p.ints, **p.consts)
        # the compiled kernel holds the specialization of these arguments (16-byte aligned pointers, integer
        # divisibility), which the key below pins; Triton's interpreter compiles nothing
        aligned = not ((x2.data_ptr() | w.data_ptr() | s.data_ptr() | (0 if z is None else z.data_ptr())
                        | (0 if bias is None else bias.data_ptr())) & 15)
        if aligned and x.is_contiguous() and not interpreting() and hasattr(compiled, "run"):
            self.table = table
            self.fast[m, x2.dtype] = _output(_direct(compiled, p, fixed, ws, locks(device), device.index), n)
        return out.reshape(*x.shape[:-1], n)

    def dequant(self, x: torch.Tensor, x2: torch.Tensor, m: int) -> torch.Tensor:
        """The weight dequantized into the shared buffer of x's dtype, then cuBLAS; after the first launch the
        compiled dequantizing kernel is called directly (the host work of a prompt's layers is what a
        prompt of a few hundred tokens waits on)."""
        from lowbit.kernels.triton.dequant import dequant4_kernel, dequantize4, launch_args

        w, s, z, tf, n, k = self.w(), self.s, self.z, self.tf, self.n, x2.shape[1]
        buf = workspace(x2.device, n * k, x2.dtype)[:n * k].view(n, k)
        bias = None if self.bias is None else self.bias.to(x2.dtype)
        wd, compiled = dequantize4(w, s, z, tf.group, k, x2.dtype, out=buf)
        aligned = not ((w.data_ptr() | s.data_ptr() | (0 if z is None else z.data_ptr())) & 15)
        if aligned and x.is_contiguous() and not interpreting() and hasattr(compiled, "run"):
            grid, args, consts = launch_args(w, s, z, tf.group, k, buf)
            ptrs = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
            tail = tuple(consts[name] for name in dequant4_kernel.arg_names[len(args):])
            launch_w = _bound_run(compiled, grid, ptrs + tail, x2.device.index)

            def fast(x: torch.Tensor, x_ptr: int) -> torch.Tensor:
                launch_w()
                return torch.nn.functional.linear(x, wd, bias)
            self.fast[m, x2.dtype] = fast
        return torch.nn.functional.linear(x2, wd, bias).reshape(*x.shape[:-1], n)


def _bound_run(compiled, grid: tuple, args: tuple, index: int) -> Callable[[], None]:
    """``compiled`` launched with fixed arguments (integers and data pointers) on the current stream."""
    run, function, meta = compiled.run, compiled.function, compiled.packed_metadata
    g0, g1, g2 = (*grid, 1, 1)[:3]
    stream = torch._C._cuda_getCurrentRawStream

    def bound() -> None:
        run(g0, g1, g2, stream(index), function, meta, None, None, None, *args)
    return bound


def _output(direct: Callable[[int, int], None], n: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def fast(x: torch.Tensor, x_ptr: int) -> torch.Tensor:
        out = x.new_empty((*x.shape[:-1], n))
        direct(x_ptr, out.data_ptr())
        return out
    return fast


def _direct(compiled, p: Plan, fixed: tuple, ws: torch.Tensor, counters: torch.Tensor, index: int) -> Callable:
    """A launcher of ``compiled`` taking the data pointers of x and the output: the launch Triton's JIT makes,
    with the binding, the specialization check and the pointer queries done once. The tensors behind the
    pointers are the layer's (its Bound keeps them, and goes with its weight) and the shared buffers."""
    run, function, meta = compiled.run, compiled.function, compiled.packed_metadata
    g0, g1, g2 = p.grid
    mid = tuple(t.data_ptr() for t in fixed)
    post = (ws.data_ptr(), counters.data_ptr(), *p.ints, *p.tail)
    stream = torch._C._cuda_getCurrentRawStream

    def direct(x_ptr: int, out_ptr: int) -> None:
        run(g0, g1, g2, stream(index), function, meta, None, None, None, x_ptr, *mid, out_ptr, *post)
    return direct


_BOUND: dict[int, Bound] = {}  # id of a layer's packed weight -> its Bound


def linear(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bias: torch.Tensor | None,
           tf: TritonFormat, measure: Callable | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for an eager call (weight-only formats): the op's result, with the least host work.
    ``measure`` makes the tuner's timer (``tune.config_for``)."""
    b = _BOUND.get(id(w))
    if b is None or not b.matches(w, s, z, bias, tf):
        b = _BOUND[id(w)] = Bound(w, s, z, bias, tf)
    if x.is_contiguous():
        x_ptr = x.data_ptr()
        fast = b.fast.get((x.numel() // x.shape[-1], x.dtype))
        if fast is not None and not x_ptr & 15 and x.get_device() == torch.cuda.current_device():
            return fast(x, x_ptr)
    with on_device(x.device):  # Triton launches on the current device
        return b.launch(x, measure)


def on_device(device: torch.device):
    other = device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device()
    return torch.cuda.device(device) if other else contextlib.nullcontext()
