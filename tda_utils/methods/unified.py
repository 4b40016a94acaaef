"""The unified view: influence at further-training time t (``if_time``).

Public: ``IfTimeOptions``, ``if_time``, ``gd_weight``, ``LOWRANK_MAX_ROWS``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..config import check_choice
from ..linalg.hessian import (
    dataset_hvp,
    explicit_hessian,
    full_spectrum,
    gnh_spectrum,
    lanczos,
    math_sdpa,
)
from .common import (
    EIGH_MAX_PARAMS,
    JACOBIAN_COPIES_PER_OUTPUT,
    DampedOptions,
    check_hessian,
    check_int,
    check_number,
    prepare,
    resolve_damping,
    spectral_scores,
)

#: route "auto" for the GNH: the low-rank route when min(n k, d) is at most this (and the float64
#: Jacobian fits the memory budget)
LOWRANK_MAX_ROWS = 8000
#: Lanczos default iterations: this many per eigenpair, plus ``LANCZOS_EXTRA``
LANCZOS_PER_EIG, LANCZOS_EXTRA = 2, 20


def _check_times(times) -> torch.Tensor:
    if times is None:
        raise ValueError(
            "times is required: the further-training step counts t, e.g. "
            "times=gold.times * steps_per_epoch"
        )
    t = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
    if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any() or (t != t.round()).any():
        raise ValueError(
            "times must be a non-empty 1-D array of non-negative integer step counts, "
            f"got {times!r}"
        )
    return t


@dataclasses.dataclass(frozen=True)
class IfTimeOptions(DampedOptions):
    """Options of ``if_time`` (see its docstring); ``times`` and ``lr`` are required."""

    DAMPING_ZERO = True

    dtype: str | None = "float64"
    times: Any = None
    lr: float | None = None
    hessian: str = "gnh"
    route: str = "auto"
    n_eigs: int = 200
    lanczos_iter: int | None = None
    hvp_batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        check_hessian(self.hessian)
        check_choice("route", self.route, ("auto", "lowrank", "eigh", "lanczos"))
        _check_times(self.times)
        if self.lr is None:
            raise ValueError("lr is required: the further-training learning rate eta")
        check_number("lr", self.lr)
        check_int("n_eigs", self.n_eigs)
        check_int("hvp_batch_size", self.hvp_batch_size)
        if self.lanczos_iter is not None:
            check_int("lanczos_iter", self.lanczos_iter)
        if self.route == "lowrank" and self.hessian != "gnh":
            raise ValueError(
                "route='lowrank' is exact for hessian='gnh' only; use route='eigh' or 'lanczos'"
            )
        super().__post_init__()


def gd_weight(h: torch.Tensor, times: torch.Tensor, lr: float) -> torch.Tensor:
    """w_t(h) = (1 - (1 - lr h)^t) / h for eigenvalues h (r,) and step counts times (E,), (E, r).

    The spectral function of t steps of gradient descent on a quadratic: sum_{s<t} lr (1 - lr h)^s.
    Equals lr t at h = 0 and 1/h as t -> infinity (if 0 < lr h < 2). float64, stable for small h.
    """
    h = h.to(torch.float64)[None, :]
    t = times.to(torch.float64).to(h.device)[:, None]
    x = lr * h
    safe = torch.where(h == 0, torch.ones_like(h), h)
    stable = x < 1
    w_stable = -torch.expm1(t * torch.log1p(-torch.where(stable, x, torch.zeros_like(x)))) / safe
    w_other = (1 - torch.pow(1 - x, t)) / safe
    w = torch.where(stable, w_stable, w_other)
    return torch.where(h == 0, lr * t.expand_as(w), w)


def _spectrum(ctx, opts: IfTimeOptions):
    """The Hessian's spectrum by ``opts.route`` ("auto" resolved here)."""
    route, hessian = opts.route, opts.hessian
    if route == "auto":
        if hessian == "gnh":
            fits = ctx.n * ctx.k * ctx.d * 8 <= ctx.budget_bytes
            route = (
                "lowrank" if min(ctx.n * ctx.k, ctx.d) <= LOWRANK_MAX_ROWS and fits else "lanczos"
            )
        else:
            route = "eigh" if ctx.d <= EIGH_MAX_PARAMS else "lanczos"
    with math_sdpa():
        if route == "lowrank":
            return gnh_spectrum(
                ctx.model,
                ctx.tr_inputs,
                ctx.tr_target,
                ctx.task,
                chunk=ctx.vec_chunk(JACOBIAN_COPIES_PER_OUTPUT * max(ctx.k, 1)),
            )
        if route == "eigh":
            H = explicit_hessian(
                ctx.model,
                ctx.tr_inputs,
                ctx.tr_target,
                ctx.task,
                hessian,
                opts.hvp_batch_size,
                col_chunk=min(ctx.d, ctx.hvp_vec_chunk(opts.hvp_batch_size)),
                loss_fn=ctx.loss_fn,
            )
            return full_spectrum(H.to(torch.float64))
        n_eigs = opts.n_eigs
        m = min(ctx.d, opts.lanczos_iter or LANCZOS_PER_EIG * min(n_eigs, ctx.d) + LANCZOS_EXTRA)
        if (m + 1) * ctx.d * ctx.elem > ctx.budget_bytes:
            raise ValueError(
                f"if_time: Lanczos keeps {m + 1} vectors of {ctx.d:,} entries "
                f"({(m + 1) * ctx.d * ctx.elem / 2**20:,.0f} MB), over memory_budget_mb="
                f"{ctx.budget_mb:g}; lower n_eigs (now {n_eigs}) or raise memory_budget_mb"
            )
        hvp = dataset_hvp(
            ctx.model,
            ctx.tr_inputs,
            ctx.tr_target,
            ctx.task,
            hessian,
            opts.hvp_batch_size,
            vec_chunk=ctx.hvp_vec_chunk(opts.hvp_batch_size),
            loss_fn=ctx.loss_fn,
        )
        return lanczos(
            hvp,
            ctx.d,
            min(n_eigs, ctx.d),
            opts.lanczos_iter,
            dtype=ctx.dtype,
            device=ctx.device,
            seed=opts.seed,
        )


def if_time(model, splits, train_indices, query_indices, opts: IfTimeOptions):
    """The unified view: influence after t steps of gradient descent on the quadratic model.

    tau_i(t) = (1/n) g_q^T [I - (I - lr H)^t] H^{-1} g_i with H damped (H + lambda I), for
    every t in ``times`` (step counts) at once; + = helpful, IF scale. ``values`` is the last
    time's (Q, T) matrix; ``diagnostics["values_by_time"]`` is (n_evals, Q, T) and
    ``diagnostics["times"]`` the times. Tends to Grad-Dot x (lr t / n) as t -> 0 and to
    ``if_explicit`` as t -> infinity. ``damping`` may be 0 here (no damping).

    ``route``: "lowrank" (GNH only: exact eigendecomposition from the output Jacobian, rank
    <= n k; the complement has eigenvalue 0), "eigh" (explicit H, full eigendecomposition; small
    models), "lanczos" (top ``n_eigs`` eigenpairs by magnitude from Lanczos on HVPs; the
    orthogonal complement is treated as eigenvalue 0, i.e. first order: weight (1 - (1 - lr
    lambda)^t) / lambda, = lr t for lambda = 0), or "auto" (GNH: lowrank when min(n k, d) <=
    ``LOWRANK_MAX_ROWS`` and the (n k, d) float64 Jacobian fits the memory budget; exact: eigh
    when d <= ``EIGH_MAX_PARAMS``; else lanczos). Lanczos keeps ``n_eigs`` x 2 + 20 vectors of d.
    """
    t = _check_times(opts.times)
    lr = float(opts.lr)
    ctx = prepare(model, splits, opts)
    damps, lam0, mode = resolve_damping(opts, ctx.lambda0)
    lam = damps[0][1]
    spec = _spectrum(ctx, opts)
    Gq = ctx.grads("test", query_indices)
    Gt = ctx.grads("train", train_indices)
    by_time = spectral_scores(Gq, Gt, spec, lambda e: gd_weight(e + lam, t, lr)) / ctx.n
    h = spec.evals.to(torch.float64) + lam
    diag = {
        "lambda0": lam0,
        "damping": lam,
        "damping_mode": mode,
        "hessian": opts.hessian,
        "route": spec.source,
        "rank": spec.rank,
        "times": t,
        "lr": lr,
        "values_by_time": by_time.to(ctx.dtype),
        "n_unstable": int(((lr * h) >= 2).sum() + ((h < 0).sum())),
        "max_eigenvalue": float(spec.evals.max()),
        "min_eigenvalue": float(spec.evals.min()),
    }
    if "ritz_residuals" in spec.info:
        diag["ritz_residuals"] = spec.info["ritz_residuals"]
    return by_time[-1].to(ctx.dtype), diag
