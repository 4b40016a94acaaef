"""Influence functions: explicit Hessian, conjugate gradient, LiSSA and LiSSA-H.

Public: ``ExplicitOptions``, ``CGOptions``, ``LissaOptions``, ``LissaHOptions``, ``if_explicit``,
``cg``, ``lissa``, ``lissa_h``, ``LISSA_SCALE_GRID``, ``MAX_EXPLICIT_PARAMS``.

Every method here returns score_i = (1/n) g_q^T (H + lambda I)^{-1} g_i, (Q, T), + = helpful: the
first-order change f(theta_{-i}) - f(theta) when i is removed from the mean training loss
(n = ``splits.n_train``). H is the Hessian (``hessian="exact"``) or the Gauss-Newton Hessian
(``"gnh"``) of the mean loss over the full training set; lambda = ``damping_multiple`` x lambda0
(the mean squared per-sample gradient entry) or an absolute ``damping``.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import torch

from ..config import check_choice
from ..linalg.hessian import (
    batch_hvp,
    dataset_hvp,
    explicit_hessian,
    full_spectrum,
    gnh_spectrum,
    math_sdpa,
)
from ..linalg.solvers import LissaDiverged, batched_cg, lissa as lissa_solve, lissa_gnh_subspace
from .common import (
    EIGH_MAX_PARAMS,
    HVP_MODES,
    JACOBIAN_COPIES_PER_OUTPUT,
    DampedOptions,
    check_explicit_size,
    check_hessian,
    check_int,
    check_number,
    inverse_scores,
    jacobian_gnh,
    prepare,
    resolve_damping,
    spectral_scores,
)
from .registry import scalable_methods

#: the largest model ``if_explicit`` accepts by default
MAX_EXPLICIT_PARAMS = 25_000
#: the paper's grid for LiSSA's scale (it used the smallest value that converges), extended upwards
LISSA_SCALE_GRID = (10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 1000, 2000, 5000, 10000, 100000)
#: d-vectors per query that CG (x, r, p, A p, ...) and LiSSA (v, h, estimate, ...) keep
CG_COPIES, LISSA_COPIES = 8, 6


@dataclasses.dataclass(frozen=True)
class ExplicitOptions(DampedOptions):
    """Options of ``if_explicit`` (see its docstring); the damping may be a list."""

    DAMPING_LIST = True

    dtype: str | None = "float64"
    hessian: str = "gnh"
    max_params: int = MAX_EXPLICIT_PARAMS
    hvp_batch_size: int = 128
    solver: str = "auto"

    def __post_init__(self) -> None:
        check_hessian(self.hessian)
        check_choice("solver", self.solver, ("auto", "eigh", "solve"))
        check_int("hvp_batch_size", self.hvp_batch_size)
        check_int("max_params", self.max_params)
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class CGOptions(DampedOptions):
    """Options of ``cg`` (see its docstring)."""

    hessian: str = "gnh"
    tol: float = 1e-6
    max_iter: int = 1000
    hvp_batch_size: int = 128
    hvp_mode: str = "auto"

    def __post_init__(self) -> None:
        check_hessian(self.hessian)
        check_number("tol", self.tol)
        check_int("max_iter", self.max_iter)
        check_int("hvp_batch_size", self.hvp_batch_size)
        check_choice("hvp_mode", self.hvp_mode, HVP_MODES)
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class LissaOptions(DampedOptions):
    """Options of ``lissa`` (see its docstring)."""

    hessian: str = "gnh"
    depth: int = 1000
    scale: float | str = "auto"
    batch_size: int = 128
    repeat: int = 1
    seed: int = 0
    divergence_factor: float = 1e3
    hvp_mode: str = "auto"

    def __post_init__(self) -> None:
        check_hessian(self.hessian)
        check_int("depth", self.depth)
        if isinstance(self.scale, str):
            check_choice("scale", self.scale, ("auto",))
        else:
            check_number("scale", self.scale)
        check_int("batch_size", self.batch_size)
        check_int("repeat", self.repeat)
        check_int("seed", self.seed, minimum=0)
        check_number("divergence_factor", self.divergence_factor)
        check_choice("hvp_mode", self.hvp_mode, HVP_MODES)
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class LissaHOptions(LissaOptions):
    """Options of ``lissa_h``: ``lissa``'s, with the exact (indefinite) Hessian by default."""

    hessian: str = "exact"


def if_explicit(model, splits, train_indices, query_indices, opts: ExplicitOptions):
    """Influence function with the damped Hessian formed explicitly, (Q, T), + = helpful, IF scale.

    ``hessian="gnh"``: the exact Gauss-Newton eigendecomposition from the per-sample output
    Jacobian (rank <= n k; seconds on the Concrete MLP). ``"exact"``: the explicit (d, d) Hessian
    from HVPs (d / chunk passes of batched HVPs: minutes at d ~ 18k on 2 cores), then ``solver``:
    "eigh" (one decomposition for every damping; about 7 min at d ~ 18k on 2 cores, memory about
    3 d^2 float64 = 7.6 GB), "solve" (Cholesky, LU if indefinite; per damping value, a few
    minutes and about 2 d^2 float64 at d ~ 18k) or "auto" (eigh when several dampings or
    d <= ``EIGH_MAX_PARAMS``). ``damping`` / ``damping_multiple`` may be lists: ``values`` uses
    the first, and ``diagnostics["values_by_damping"]`` = {given value: (Q, T)} holds all.
    Refuses models with more than ``max_params`` parameters.
    """
    ctx = prepare(model, splits, opts)
    check_explicit_size(
        "if_explicit",
        ctx.d,
        opts.max_params,
        ", ".join(scalable_methods()) + " (or if_time for time-resolved influence)",
    )
    damps, lam0, mode = resolve_damping(opts, ctx.lambda0)
    Gq = ctx.grads("test", query_indices)
    Gt = ctx.grads("train", train_indices)
    diag: dict[str, Any] = {
        "lambda0": lam0,
        "damping_mode": mode,
        "hessian": opts.hessian,
        "n_params": ctx.d,
    }
    by_damp = {}
    if opts.hessian == "gnh":
        spec = gnh_spectrum(
            ctx.model,
            ctx.tr_inputs,
            ctx.tr_target,
            ctx.task,
            chunk=ctx.vec_chunk(JACOBIAN_COPIES_PER_OUTPUT * max(ctx.k, 1)),
        )
        diag.update(route=spec.source, rank=spec.rank)
        for key, lam in damps:
            by_damp[key] = spectral_scores(Gq, Gt, spec, lambda e, lam=lam: 1.0 / (e + lam)) / ctx.n
    else:
        with math_sdpa():
            H = explicit_hessian(
                ctx.model,
                ctx.tr_inputs,
                ctx.tr_target,
                ctx.task,
                "exact",
                opts.hvp_batch_size,
                col_chunk=min(ctx.d, ctx.hvp_vec_chunk(opts.hvp_batch_size)),
                loss_fn=ctx.loss_fn,
            ).to(torch.float64)
        use_eigh = opts.solver == "eigh" or (
            opts.solver == "auto" and (len(damps) > 1 or ctx.d <= EIGH_MAX_PARAMS)
        )
        if use_eigh:
            spec = full_spectrum(H)
            diag.update(
                route="eigh",
                min_eigenvalue=float(spec.evals[0]),
                max_eigenvalue=float(spec.evals[-1]),
            )
            for key, lam in damps:
                by_damp[key] = (
                    spectral_scores(Gq, Gt, spec, lambda e, lam=lam: 1.0 / (e + lam)) / ctx.n
                )
        else:
            diag["route"] = "solve"
            rhs = Gq.to(torch.float64).T
            for key, lam in damps:
                H.diagonal().add_(lam)  # in place: H + lambda I (d^2 memory matters at d ~ 18k)
                Lc, info = torch.linalg.cholesky_ex(H)
                X = torch.cholesky_solve(rhs, Lc) if int(info) == 0 else torch.linalg.solve(H, rhs)
                del Lc
                H.diagonal().sub_(lam)
                diag.setdefault("positive_definite", {})[key] = int(info) == 0
                by_damp[key] = X.T @ Gt.to(torch.float64).T / ctx.n
    diag["damping"] = damps[0][1]
    diag["dampings"] = dict(damps)
    diag["values_by_damping"] = by_damp
    return by_damp[damps[0][0]], diag


def cg(model, splits, train_indices, query_indices, opts: CGOptions):
    """Influence via conjugate gradient on HVPs, (Q, T): score_i = (1/n) g_i^T x_q with
    (H + lambda I) x_q = g_q, + = helpful.

    HVPs in batches of ``hvp_batch_size``. All queries are solved together (one batched HVP per
    iteration; each query has its own CG step sizes and stops when its relative residual <=
    ``tol``), in chunks that fit the memory budget. Diagnostics: ``iterations``, ``residuals``
    (true relative residuals), ``converged``, ``indefinite`` per query; a warning is issued when
    some query did not converge. ``hvp_mode``: "jacobian" (GNH products from the precomputed
    per-sample output Jacobian, (n k, d): fast), "autodiff" (jvp/vjp per batch of
    ``hvp_batch_size``) or "auto" (jacobian for the GNH when it fits half the memory budget).
    """
    ctx = prepare(model, splits, opts)
    damps, lam0, mode = resolve_damping(opts, ctx.lambda0)
    lam = damps[0][1]
    jac = jacobian_gnh(ctx, opts.hessian, opts.hvp_mode)
    if jac is not None:
        hvp = jac.matvec
    else:
        hvp = dataset_hvp(
            ctx.model,
            ctx.tr_inputs,
            ctx.tr_target,
            ctx.task,
            opts.hessian,
            opts.hvp_batch_size,
            vec_chunk=ctx.hvp_vec_chunk(opts.hvp_batch_size),
            loss_fn=ctx.loss_fn,
        )
    values, infos = inverse_scores(
        ctx,
        train_indices,
        query_indices,
        CG_COPIES,
        lambda Gq: batched_cg(hvp, Gq, lam, opts.tol, opts.max_iter),
    )
    diag = {key: torch.cat([i[key] for i in infos]) for key in infos[0]}
    diag.update(
        lambda0=lam0,
        damping=lam,
        damping_mode=mode,
        hessian=opts.hessian,
        tol=opts.tol,
        max_iter=opts.max_iter,
        hvp_mode="jacobian" if jac is not None else "autodiff",
    )
    n_bad = int((~diag["converged"]).sum())
    if n_bad:
        indefinite = (
            "; the damped Hessian is indefinite for some" if bool(diag["indefinite"].any()) else ""
        )
        warnings.warn(
            f"cg: {n_bad} of {len(query_indices)} queries did not reach tol={opts.tol} within "
            f"max_iter={opts.max_iter} (max relative residual {float(diag['residuals'].max()):.2e}"
            f"{indefinite})",
            stacklevel=2,
        )
    return values, diag


def _lissa_fixed_scale(model, splits, train_indices, query_indices, opts: LissaOptions):
    ctx = prepare(model, splits, opts)
    damps, lam0, mode = resolve_damping(opts, ctx.lambda0)
    lam = damps[0][1]
    vchunk = ctx.hvp_vec_chunk(opts.batch_size)
    jac = jacobian_gnh(ctx, opts.hessian, opts.hvp_mode)

    def batch_matvec(idx: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        idx = idx.to(ctx.device)
        hv = batch_hvp(
            ctx.model,
            tuple(x[idx] for x in ctx.tr_inputs),
            ctx.tr_target[idx],
            ctx.task,
            opts.hessian,
            ctx.loss_fn,
        )
        return torch.cat([hv(V[c : c + vchunk]) for c in range(0, V.shape[0], vchunk)], dim=0)

    def solve(Gq: torch.Tensor):
        gen = torch.Generator().manual_seed(opts.seed)  # same batches for every query chunk
        args = (opts.scale, opts.depth, opts.batch_size, opts.repeat, gen, opts.divergence_factor)
        if jac is not None:
            return lissa_gnh_subspace(jac, Gq, lam, *args)
        return lissa_solve(batch_matvec, Gq, ctx.n, lam, *args)

    values, infos = inverse_scores(ctx, train_indices, query_indices, LISSA_COPIES, solve)
    diag = {
        "lambda0": lam0,
        "damping": lam,
        "damping_mode": mode,
        "hessian": opts.hessian,
        "depth": opts.depth,
        "scale": opts.scale,
        "batch_size": opts.batch_size,
        "repeat": opts.repeat,
        "seed": opts.seed,
        "estimate_norms": torch.cat([i["estimate_norms"] for i in infos], dim=1),
        "hvp_mode": "jacobian" if jac is not None else "autodiff",
    }
    return values, diag


def lissa(model, splits, train_indices, query_indices, opts: LissaOptions):
    """LiSSA, (Q, T): score_i = (1/n) g_i^T est_q, est_q ~ (H + lambda I)^{-1} g_q, + = helpful.

    The paper's stochastic Neumann series: h_0 = v = g_q, h_t = v + h_{t-1} - (H_{B_t} + lambda I)
    h_{t-1} / scale for t = 1..``depth``, est = h_depth / scale, averaged over ``repeat`` runs;
    B_t are ``batch_size`` training indices drawn with replacement (torch.Generator seeded by
    ``seed``; every query sees the same batches). ``hessian="gnh"`` (LiSSA) or "exact" (LiSSA-H,
    registered as ``lissa_h``). Batched over queries. Raises ValueError (suggesting a larger
    ``scale``) when the iteration diverges. ``scale="auto"`` (default) is the paper's protocol:
    the smallest value of ``LISSA_SCALE_GRID`` for which the iteration converges. The paper used
    depth 5000. ``hvp_mode`` as in ``cg``; with "jacobian" the same recursion (same batches)
    runs in the row space of the Jacobian (``hessian.lissa_gnh_subspace``).
    """
    if opts.scale != "auto":
        return _lissa_fixed_scale(model, splits, train_indices, query_indices, opts)
    tried = []
    for candidate in LISSA_SCALE_GRID:
        try:
            values, diag = _lissa_fixed_scale(
                model,
                splits,
                train_indices,
                query_indices,
                dataclasses.replace(opts, scale=float(candidate)),
            )
        except LissaDiverged:
            tried.append(candidate)
            continue
        diag.update(
            scale_mode="auto: smallest converging value of the paper's grid", scales_diverged=tried
        )
        return values, diag
    raise LissaDiverged(
        f"LiSSA diverged for every scale in {LISSA_SCALE_GRID}; increase the damping"
    )


def lissa_h(model, splits, train_indices, query_indices, opts: LissaHOptions):
    """LiSSA-H: ``lissa`` with the exact (indefinite) Hessian by default."""
    return lissa(model, splits, train_indices, query_indices, opts)
