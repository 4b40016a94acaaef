"""Iterative solvers of (H + damping I) x = v on Hessian-vector products: CG and LiSSA.

Public: ``batched_cg``, ``lissa``, ``lissa_gnh_subspace``, ``LissaDiverged``.

Vectors come in batches (m, d); ``matvec`` maps (m, d) -> (m, d) (``hessian.dataset_hvp`` or
``hessian.JacobianGNH.matvec``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .hessian import JacobianGNH, Matvec, gram_eigh


class LissaDiverged(ValueError):
    """LiSSA's Neumann iteration diverged (a ValueError that names the remedy)."""


def batched_cg(
    matvec: Matvec, b: torch.Tensor, damping: float, tol: float = 1e-6, max_iter: int = 1000
) -> tuple[torch.Tensor, dict]:
    """Solve (H + damping I) X = b for every row of ``b`` (m, d) by conjugate gradient.

    Each right-hand side runs its own CG (own step sizes), all vectorised: one batched HVP per
    iteration over the still-active rows. A row stops when ||r|| <= tol ||b||. Returns X (m, d)
    and info: ``iterations`` (m,), ``residuals`` (m,) = the true relative residual
    ||b - (H + damping I) X|| / ||b|| (one extra HVP), ``converged`` (m,), ``indefinite`` (m,)
    (a non-positive curvature p^T A p was met; that row stops there).
    """
    m = b.shape[0]
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(1)
    bnorm = b.norm(dim=1)
    iters = torch.zeros(m, dtype=torch.long, device=b.device)
    indefinite = torch.zeros(m, dtype=torch.bool, device=b.device)
    active = rs.sqrt() > tol * bnorm
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        P = p[idx]
        AP = matvec(P) + damping * P
        pAp = (P * AP).sum(1)
        bad = ~(pAp > 0)
        if bad.any():
            indefinite[idx[bad]] = True
            active[idx[bad]] = False
            keep = ~bad
            idx, P, AP, pAp = idx[keep], P[keep], AP[keep], pAp[keep]
            if idx.numel() == 0:
                break
        a = rs[idx] / pAp
        x[idx] += a[:, None] * P
        r[idx] -= a[:, None] * AP
        rs_new = (r[idx] ** 2).sum(1)
        beta = rs_new / rs[idx]
        p[idx] = r[idx] + beta[:, None] * P
        rs[idx] = rs_new
        iters[idx] += 1
        active[idx] = rs_new.sqrt() > tol * bnorm[idx]
    true_r = b - (matvec(x) + damping * x)
    rel = true_r.norm(dim=1) / bnorm.clamp_min(torch.finfo(b.dtype).tiny)
    converged = (rel <= max(10 * tol, tol + 1e-12)) & ~indefinite
    return x, {
        "iterations": iters.cpu(),
        "residuals": rel.cpu(),
        "converged": converged.cpu(),
        "indefinite": indefinite.cpu(),
    }


def _check_lissa(
    hn: torch.Tensor, vnorm: torch.Tensor, t: int, scale: float, divergence_factor: float
) -> None:
    """Raise ``LissaDiverged`` if an iterate norm ``hn`` (m,) is non-finite or above
    ``divergence_factor`` (t + 1) ||v|| (with a contraction, ||h_t|| <= (t + 1) ||v|| always).
    """
    if not torch.isfinite(hn).all() or (hn > divergence_factor * (t + 1) * vnorm).any():
        raise LissaDiverged(
            f"LiSSA diverged at iteration {t} with scale={scale}: the iteration is not a "
            f"contraction (the largest eigenvalue of H_B + damping exceeds 2 x scale, or H is "
            f"indefinite beyond the damping). Use a larger `scale` (e.g. {scale * 5:g}) or a "
            f"larger damping."
        )


def lissa(
    batch_matvec: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    n: int,
    damping: float,
    scale: float = 10.0,
    depth: int = 1000,
    batch_size: int = 128,
    repeat: int = 1,
    generator: torch.Generator | None = None,
    divergence_factor: float = 1e3,
) -> tuple[torch.Tensor, dict]:
    """LiSSA (Agarwal et al. 2017, as in torch-influence): approximate (H + damping I)^{-1} v.

    h_0 = v; h_t = v + h_{t-1} - (H_{B_t} + damping I) h_{t-1} / scale for t = 1..depth with
    B_t ``batch_size`` indices drawn uniformly with replacement from range(n) (``generator``);
    estimate = h_depth / scale, averaged over ``repeat`` runs. ``batch_matvec(idx, V)`` returns
    the mean-loss Hessian of the batch ``idx`` times V (m, d). ``v``: (m, d).

    Divergence: if h becomes non-finite or ||h_t|| > divergence_factor (t + 1) ||v|| for some
    row (with a contraction, ||h_t|| <= (t + 1) ||v|| always holds), raises ValueError asking for
    a larger ``scale``.
    """
    vnorm = v.norm(dim=1)
    est = torch.zeros_like(v)
    norms = []
    for _ in range(repeat):
        h = v.clone()
        for t in range(1, depth + 1):
            idx = torch.randint(0, n, (batch_size,), generator=generator)
            h = v + h - (batch_matvec(idx, h) + damping * h) / scale
            _check_lissa(h.norm(dim=1), vnorm, t, scale, divergence_factor)
        est += h / scale
        norms.append((h / scale).norm(dim=1).cpu())
    return est / repeat, {"estimate_norms": torch.stack(norms)}


def lissa_gnh_subspace(
    jac: JacobianGNH,
    v: torch.Tensor,
    damping: float,
    scale: float = 10.0,
    depth: int = 1000,
    batch_size: int = 128,
    repeat: int = 1,
    generator: torch.Generator | None = None,
    divergence_factor: float = 1e3,
    rel_tol: float = 1e-12,
) -> tuple[torch.Tensor, dict]:
    """``lissa`` for the Gauss-Newton Hessian, run in the row space of the Jacobian rows M.

    Every batch GNH M_B^T M_B / B maps into the row space of M (rank r <= n k), so with an
    orthonormal basis V (d, r) of that space (from the eigendecomposition of M M^T) the iterate
    splits into V c_t, updated with the (r, r) batch matrices (M_B V)^T (M_B V) / B, and a
    component in the complement that follows h_t = v_perp + (1 - damping / scale) h_{t-1} in
    closed form. Same batches (same ``generator`` draws), same recursion and the same divergence
    test as ``lissa``; only the arithmetic is reorganised (cost per step B r m instead of B d m).
    """
    M = jac.M
    e, U = gram_eigh(M, 1, rel_tol)
    W = U / e.sqrt()[None, :]  # V = M^T W (d, r) has orthonormal columns; never formed
    MV = (U * e.sqrt()[None, :]).view(jac.n, jac.k, -1)  # rows of M V, per sample
    cv = (v @ M.T) @ W  # (m, r)
    v_perp = v - (cv @ W.T) @ M
    vnorm = v.norm(dim=1)
    pnorm = v_perp.norm(dim=1)
    rho = 1.0 - damping / scale
    est = torch.zeros_like(v)
    norms = []
    for _ in range(repeat):
        c = cv.clone()
        geo = 1.0  # h_perp_t = geo * v_perp with geo = sum_{i<=t} rho^i
        for t in range(1, depth + 1):
            idx = torch.randint(0, jac.n, (batch_size,), generator=generator)
            R = MV[idx.to(MV.device)].reshape(-1, MV.shape[-1])
            c = cv + c - (((c @ R.T) @ R) / batch_size + damping * c) / scale
            geo = 1.0 + rho * geo
            hn = torch.sqrt((c * c).sum(1) + (geo * pnorm) ** 2)
            _check_lissa(hn, vnorm, t, scale, divergence_factor)
        h = ((c @ W.T) @ M + geo * v_perp) / scale
        est += h
        norms.append(h.norm(dim=1).cpu())
    return est / repeat, {"estimate_norms": torch.stack(norms), "subspace_rank": int(W.shape[1])}
