"""GPTQ's linear algebra done inside the Hessian's own storage: no second K x K matrix.

GPTQ needs ``U``, the upper Cholesky factor of ``H^-1`` (``H^-1 = U^T U``). The reference computes it as
``cholesky(cholesky_inverse(cholesky(H)), upper=True)``: three K x K results besides H. Here, with
``H = V V^T`` and ``V`` upper triangular (the Cholesky factorization run from the last row up), ``U = V^-1``;
both steps are blocked and overwrite H's upper triangle in place, block by block, so the temporaries are a
few ``K x BLOCK`` panels (about 8 MiB at K = 8192). H's strict lower triangle is never written, so after a
failure H is still there (with the saved diagonal) to retry in fp64. ``permute_`` reorders H for act_order
in place the same way.
"""

from __future__ import annotations

import torch

BLOCK = 256


def _ul_small(d: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``V`` upper with ``V V^T = d`` for a small symmetric block given by its upper triangle; info != 0 on
    failure (the flip turns it into an ordinary lower Cholesky factorization)."""
    sym = d.triu() + d.triu(1).mT
    low, info = torch.linalg.cholesky_ex(sym.flip(0, 1))
    return low.flip(0, 1), int(info)


def _ul_factor_(h: torch.Tensor, block: int) -> bool:
    """``H = V V^T`` with ``V`` upper, written over H's upper triangle (lower untouched); False if H is not
    positive definite."""
    k = h.shape[0]
    for s in range(((k - 1) // block) * block, -1, -block):  # last block first
        e = min(s + block, k)
        v22, info = _ul_small(h[s:e, s:e])
        if info or not torch.isfinite(v22).all():
            return False
        h[s:e, s:e].copy_(torch.where(torch.ones_like(v22, dtype=torch.bool).triu(), v22, h[s:e, s:e]))
        if s == 0:
            break
        panel = torch.linalg.solve_triangular(v22.mT, h[:s, s:e], upper=False, left=False)  # H12 V22^-T
        h[:s, s:e].copy_(panel)
        for r in range(0, s, block):  # H11 -= V12 V12^T, upper triangle only
            re = min(r + block, s)
            if re < s:
                h[r:re, re:s].addmm_(panel[r:re], panel[re:s].mT, alpha=-1)
            h[r:re, r:re].sub_((panel[r:re] @ panel[r:re].mT).triu_())
    return True


def _invert_upper_(h: torch.Tensor, block: int) -> None:
    """The upper triangular matrix in H's upper triangle replaced by its inverse (LAPACK trtri's blocked order)."""
    k = h.shape[0]
    for s in range(0, k, block):
        e = min(s + block, k)
        panel = h[:s, s:e]
        for r in range(0, s, block):  # panel := U11^-1 panel (U11 already inverted); rows top down, in place
            re = min(r + block, s)
            rows = h[r:re, r:re].triu() @ panel[r:re]
            if re < s:
                rows.addmm_(h[r:re, re:s], panel[re:s])
            panel[r:re].copy_(rows)
        d = h[s:e, s:e].triu()
        if s:
            panel.copy_(torch.linalg.solve_triangular(d, panel, upper=True, left=False).neg_())
        eye = torch.eye(e - s, dtype=h.dtype, device=h.device)
        inv = torch.linalg.solve_triangular(d, eye, upper=True)
        h[s:e, s:e].copy_(torch.where(eye.bool().logical_not().tril(), h[s:e, s:e], inv))


def _symmetrize_from_lower_(h: torch.Tensor, block: int) -> None:
    k = h.shape[0]
    for s in range(0, k, block):
        e = min(s + block, k)
        h[s:e, e:].copy_(h[e:, s:e].mT)
        d = h[s:e, s:e]
        d.copy_(d.tril() + d.tril(-1).mT)


def inverse_factor_(h: torch.Tensor, block: int = BLOCK) -> bool:
    """``h`` (symmetric, fp32 or fp64) → the upper Cholesky factor of its inverse, in place (strict lower
    triangle zeroed). False if ``h`` is not positive definite in its dtype; ``h`` then still holds the matrix."""
    diag = h.diagonal().clone()
    if _ul_factor_(h, block):
        _invert_upper_(h, block)
        if torch.isfinite(h.triu_().sum()):  # one reduction: no K x K mask
            return True
    h.diagonal().copy_(diag)
    _symmetrize_from_lower_(h, block)
    return False


def permute_(h: torch.Tensor, perm: torch.Tensor, block: int = BLOCK) -> None:
    """``h`` := ``h[perm][:, perm]`` in place for a symmetric ``h``: columns permuted (row panel by row panel),
    transposed by block swaps (``(H[:, p])^T = H[p]`` by symmetry), columns permuted again."""
    k = h.shape[0]
    _permute_columns_(h, perm, block)
    for s in range(0, k, block):
        for t in range(s, k, block):
            a = h[s:s + block, t:t + block].clone()
            if t > s:
                h[s:s + block, t:t + block] = h[t:t + block, s:s + block].mT
            h[t:t + block, s:s + block] = a.mT
    _permute_columns_(h, perm, block)


def _permute_columns_(h: torch.Tensor, perm: torch.Tensor, block: int) -> None:
    for s in range(0, h.shape[0], block):
        h[s:s + block] = h[s:s + block, perm]
