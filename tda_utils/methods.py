"""Attribution methods registry.

Public: ``attribute``, ``register_method``, ``METHODS``, ``AttributionScores``, ``PeakMemory``,
``train_query_grads``, ``method_options``, and the methods themselves: ``grad_dot``,
``grad_cos``, ``if_explicit``, ``cg``, ``lissa`` (+ ``lissa_h``), ``datainf``, ``ekfac``,
``trak``, ``if_time``.

Every method returns ``AttributionScores`` whose ``values`` have shape (n_query, n_train_indices)
(query-major) and estimate tau_i = f(theta without i) - f(theta), the change of the query's test
loss when training instance i is left out: positive = helpful. The sign is fixed here; notebooks
never negate.

Scale. Influence-type methods (if_explicit, cg, lissa, datainf, ekfac, if_time) include the
1/n_train factor (n_train = ``splits.n_train``, the full training set):
score_i = (1/n) g_q^T (H + lambda I)^{-1} g_i, the first-order change f(theta_{-i}) - f(theta)
when i is removed from the mean training loss L = (1/n) sum_j loss_j (at a minimum,
theta_{-i} - theta ~ (1/n) H^{-1} g_i). First-order methods (Grad-Dot, Grad-Cos) are reported
unscaled (their scale eta t / n is unknown and irrelevant to cosine and Spearman agreement).
TRAK estimates the change of the query's *output* (margin / prediction), see ``trak``.

Damping (every Hessian-based method): ``damping_multiple`` x lambda0 with lambda0 = the mean
squared per-sample training gradient entry = sum_j ||g_j||^2 / (n d) over the full training set
(the paper's protocol; default multiple 100, the paper's plotted value), or an absolute
``damping``; both are reported in ``diagnostics`` (``lambda0``, ``damping``).

Dtype: ``dtype=None`` computes in the model's dtype (a float32 model stays float32);
``"float64"`` runs on a float64 copy. if_explicit and if_time default to float64; explicit
factorisations (eigh, Cholesky, EK-FAC factors, TRAK's projected Gram) are float64 always.
Memory: per-sample gradients, HVP vector batches and query chunks are sized to
``memory_budget_mb``; results do not depend on it.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import numbers
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from . import ekfac as _ekfac
from .config import check_choice, check_indices, check_positive
from .data import Splits
from .grads import (activation_numel, dataset_tensors, frozen_state, iter_per_sample_grads, per_sample_grads,
                    trainable_params)
from .hessian import (HESSIANS, JacobianGNH, LissaDiverged, Spectrum, batch_hvp, batched_cg, dataset_hvp,
                      explicit_hessian, full_spectrum, gnh_spectrum, grad_stats, lanczos, lissa as _lissa_solve,
                      lissa_gnh_subspace, math_sdpa, sqrt_gnh_jacobian)

METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {}

#: the largest model ``if_explicit`` accepts by default
MAX_EXPLICIT_PARAMS = 25_000
SCALABLE = "cg, lissa, ekfac, datainf, trak"


@dataclasses.dataclass
class AttributionScores:
    """``values``: (n_query, n_train_indices). ``config``: the options the method ran with.
    ``diagnostics``: method-specific (iterations, residuals, lambda0, damping, ...); time-resolved
    methods (``if_time``) put their (n_evals, n_query, n_train) tensor in
    ``diagnostics["values_by_time"]`` (``values`` is then the last time's matrix)."""

    method: str
    values: torch.Tensor
    train_indices: tuple[int, ...]
    query_indices: tuple[int, ...]
    config: dict[str, Any]
    diagnostics: dict[str, Any]
    wall_time: float
    peak_memory_mb: float


def register_method(name: str) -> Callable:
    """Decorator: register ``fn(model, splits, train_indices, query_indices, **options)`` returning
    ``(values (n_query, n_train), diagnostics dict)``."""

    def deco(fn):
        METHODS[name] = fn
        return fn

    return deco


class PeakMemory:
    """Context manager: peak increase of the process's resident memory (MB), sampled every 2 ms."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak_mb = interval, 0.0

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20


def method_options(method: str) -> dict[str, Any]:
    """{option: default} of a registered method (``inspect.Parameter.empty`` if required)."""
    check_choice("method", method, sorted(METHODS))
    sig = inspect.signature(METHODS[method])
    return {k: p.default for k, p in list(sig.parameters.items())[4:]}


def attribute(method: str, model: nn.Module, splits: Splits, train_indices: Sequence[int] | None = None,
              query_indices: Sequence[int] | None = None, **options: Any) -> AttributionScores:
    """Run attribution ``method`` (see ``METHODS``) for test ``query_indices`` x ``train_indices``.

    Defaults: all training instances, all test instances. ``options`` go to the method (see
    ``method_options(method)``); an unknown option raises ValueError naming the allowed ones.
    """
    check_choice("method", method, sorted(METHODS))
    allowed = method_options(method)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; allowed options: "
                         f"{', '.join(allowed)}")
    train_idx = check_indices("train_indices", range(splits.n_train) if train_indices is None else train_indices,
                              splits.n_train)
    query_idx = check_indices("query_indices", range(splits.n_test) if query_indices is None else query_indices,
                              splits.n_test)
    was = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with PeakMemory() as mem:
            values, diag = METHODS[method](model, splits, list(train_idx), list(query_idx), **options)
    finally:
        model.train(was)
    wall = time.perf_counter() - start
    values = values.detach().cpu()
    if values.shape != (len(query_idx), len(train_idx)):
        raise RuntimeError(f"method {method} returned shape {tuple(values.shape)}, expected "
                           f"{(len(query_idx), len(train_idx))}")
    return AttributionScores(method=method, values=values, train_indices=train_idx, query_indices=query_idx,
                             config=dict(options), diagnostics=diag, wall_time=wall,
                             peak_memory_mb=mem.peak_mb)


def train_query_grads(model: nn.Module, splits: Splits, train_indices, query_indices,
                      memory_budget_mb: float = 1024.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradients (n_train_indices, d) and (n_query, d) at the model's parameters."""
    g_train = per_sample_grads(model, splits.train, train_indices, splits.task, memory_budget_mb=memory_budget_mb)
    g_query = per_sample_grads(model, splits.test, query_indices, splits.task, memory_budget_mb=memory_budget_mb)
    return g_train, g_query


# ----------------------------------------------------------------------------------------------
# Shared machinery
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Ctx:
    """A model (possibly a cast copy, eval mode) with its data on its device and dtype."""

    model: nn.Module
    task: str
    n: int
    d: int
    k: int
    dtype: torch.dtype
    device: torch.device
    tr_inputs: tuple[torch.Tensor, ...]
    tr_target: torch.Tensor
    te_inputs: tuple[torch.Tensor, ...]
    te_target: torch.Tensor
    budget_mb: float

    @property
    def elem(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def budget_bytes(self) -> float:
        return self.budget_mb * 2**20

    def rows(self, split: str, indices) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        inputs, target = (self.tr_inputs, self.tr_target) if split == "train" else (self.te_inputs, self.te_target)
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        return tuple(x[idx] for x in inputs), target[idx]

    def grad_chunks(self, split: str, indices=None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Per-sample loss gradients (chunk, d) of ``split`` rows ``indices`` (None: all), chunked."""
        if indices is None:
            inputs, target = (self.tr_inputs, self.tr_target) if split == "train" else (self.te_inputs, self.te_target)
        else:
            inputs, target = self.rows(split, indices)
        yield from iter_per_sample_grads(self.model, inputs, target, self.task, memory_budget_mb=self.budget_mb / 2)

    def grads(self, split: str, indices=None) -> torch.Tensor:
        return torch.cat([g for _, g in self.grad_chunks(split, indices)], dim=0)

    def vec_chunk(self, copies: int, minimum: int = 1) -> int:
        """How many d-vectors fit ``copies`` times in the budget."""
        return max(minimum, int(self.budget_bytes // (copies * self.d * self.elem)))

    def hvp_vec_chunk(self, batch_size: int) -> int:
        """Vectors per vmapped HVP on a batch of ``batch_size`` samples within half the budget."""
        acts = activation_numel(self.model, tuple(x[:1] for x in self.tr_inputs))
        per_vec = self.elem * (6 * self.d + 6 * acts * batch_size)
        return max(1, int(0.5 * self.budget_bytes // per_vec))


def _prepare(model: nn.Module, splits: Splits, dtype: str | None, memory_budget_mb: float) -> _Ctx:
    check_positive("memory_budget_mb", memory_budget_mb)
    params = trainable_params(model)
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    ref = next(iter(params.values()))
    if dtype is not None:
        check_choice("dtype", dtype, ("float32", "float64"))
        tdt = getattr(torch, dtype)
        if ref.dtype != tdt:
            model = copy.deepcopy(model).to(tdt)
            model.eval()
    params = trainable_params(model)
    ref = next(iter(params.values()))
    dev = ref.device

    def cast(t):
        t = t.to(dev)
        return t.to(ref.dtype) if t.is_floating_point() else t

    tr_in, tr_t = dataset_tensors(splits.train)
    te_in, te_t = dataset_tensors(splits.test)
    return _Ctx(model=model, task=splits.task, n=splits.n_train, d=sum(p.numel() for p in params.values()),
                k=splits.n_outputs, dtype=ref.dtype, device=dev,
                tr_inputs=tuple(cast(x) for x in tr_in), tr_target=cast(tr_t),
                te_inputs=tuple(cast(x) for x in te_in), te_target=cast(te_t), budget_mb=float(memory_budget_mb))


def _scores_vs_train(ctx: _Ctx, X: torch.Tensor, train_indices) -> torch.Tensor:
    """X (Q, d) against the training gradients of ``train_indices``: X G_train^T, (Q, T)."""
    return torch.cat([X @ g.T for _, g in ctx.grad_chunks("train", train_indices)], dim=1)


def _check_number(name: str, value: Any, allow_zero: bool) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else ValueError naming ``name``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{name}={value!r} must be a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite number {bound}")
    return value


def _resolve_damping(ctx: _Ctx, damping, damping_multiple, allow_list: bool = False, allow_zero: bool = False,
                     default_multiple: float = 100.0) -> tuple[list[tuple[float, float]], float | None, str]:
    """[(key, absolute damping)], lambda0 (None if not needed), "multiple" | "absolute".

    ``damping`` (absolute) and ``damping_multiple`` (x lambda0) are exclusive; either may be a
    list when ``allow_list``. The key is the value as given (multiple or absolute).
    """
    if damping is not None and damping_multiple is not None:
        raise ValueError("give either damping (absolute) or damping_multiple (x lambda0), not both")
    mode, given, name = ("absolute", damping, "damping") if damping is not None else \
        ("multiple", default_multiple if damping_multiple is None else damping_multiple, "damping_multiple")
    is_seq = isinstance(given, (list, tuple, range)) or (
        isinstance(given, (np.ndarray, torch.Tensor)) and given.ndim == 1)
    values = list(given) if is_seq else [given]
    if len(values) > 1 and not allow_list:
        raise ValueError(f"{name} must be a single number for this method (got {len(values)} values)")
    if not values:
        raise ValueError(f"{name} is empty")
    values = [_check_number(name, v, allow_zero) for v in values]
    if mode == "absolute":
        return [(v, v) for v in values], None, mode
    lam0 = grad_stats(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, ctx.budget_mb / 2)["lambda0"]
    return [(v, v * lam0) for v in values], lam0, mode


def _check_hessian(hessian: str) -> str:
    return check_choice("hessian", hessian, HESSIANS)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


HVP_MODES = ("auto", "jacobian", "autodiff")


def _jacobian_gnh(ctx: _Ctx, hessian: str, hvp_mode: str) -> JacobianGNH | None:
    """The precomputed-Jacobian GNH when ``hvp_mode`` asks for it (or "auto" and it fits half the
    memory budget), else None (products by jvp/vjp or jvp-of-grad)."""
    check_choice("hvp_mode", hvp_mode, HVP_MODES)
    if hvp_mode == "autodiff":
        return None
    if hessian != "gnh":
        if hvp_mode == "jacobian":
            raise ValueError("hvp_mode='jacobian' needs hessian='gnh' (the exact Hessian has no such factor); "
                             "use hvp_mode='autodiff' or 'auto'")
        return None
    fits = ctx.n * ctx.k * ctx.d * ctx.elem <= ctx.budget_bytes / 2
    if hvp_mode == "auto" and not fits:
        return None
    with math_sdpa():
        M = sqrt_gnh_jacobian(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, chunk=ctx.vec_chunk(4 * ctx.k))
    return JacobianGNH(M, ctx.n)


def _spectral_scores(Gq: torch.Tensor, Gt: torch.Tensor, spec: Spectrum, weight: Callable[[torch.Tensor], torch.Tensor]
                     ) -> torch.Tensor:
    """g_q^T w(H) g_t for a spectral function w, (..., Q, T).

    ``weight(evals)`` maps eigenvalues (r,) to weights (..., r) (extra leading dims allowed, e.g.
    one row per time); the complement of the eigenvectors gets ``weight(complement)``.
    """
    Gq, Gt = Gq.to(torch.float64), Gt.to(torch.float64)
    Aq, At = spec.project(Gq), spec.project(Gt)
    w = weight(spec.evals.to(torch.float64))  # (..., r)
    lead = w.shape[:-1]
    w2 = w.reshape(-1, w.shape[-1])
    step = max(1, int(2**27 // max(1, Aq.numel())))  # rows of w per matmul (<= 1 GiB intermediate)
    out = torch.cat([(Aq[None] * w2[e:e + step, None, :]) @ At.T for e in range(0, w2.shape[0], step)])
    out = out.reshape(*lead, Aq.shape[0], At.shape[0])
    if spec.complement is not None:
        wc = weight(torch.tensor([spec.complement], dtype=torch.float64, device=Gq.device))[..., 0]
        rest = Gq @ Gt.T - Aq @ At.T
        out = out + wc[..., None, None] * rest
    return out


# ----------------------------------------------------------------------------------------------
# First order
# ----------------------------------------------------------------------------------------------
def _dot_scores(ctx: _Ctx, train_indices, query_indices, normalize: bool) -> torch.Tensor:
    g_query = ctx.grads("test", query_indices)
    if normalize:
        g_query = g_query / g_query.norm(dim=1, keepdim=True).clamp_min(1e-30)
    cols = []
    for _, g in ctx.grad_chunks("train", train_indices):
        if normalize:
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cols.append(g_query @ g.T)
    return torch.cat(cols, dim=1)


@register_method("grad_dot")
def grad_dot(model, splits, train_indices, query_indices, memory_budget_mb: float = 1024.0, dtype: str | None = None):
    """Grad-Dot: g_query . g_i, (Q, T) (first order in further-training time; + = helpful; unscaled:
    tau_i ~ (eta t / n) g_q . g_i for t small steps of size eta)."""
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    return _dot_scores(ctx, train_indices, query_indices, False), {}


@register_method("grad_cos")
def grad_cos(model, splits, train_indices, query_indices, memory_budget_mb: float = 1024.0, dtype: str | None = None):
    """Grad-Cos: g_query . g_i / (|g_query| |g_i|), (Q, T)."""
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    return _dot_scores(ctx, train_indices, query_indices, True), {}


# ----------------------------------------------------------------------------------------------
# Influence function, explicit Hessian
# ----------------------------------------------------------------------------------------------
def _check_size(method: str, d: int, max_params: int, extra: str = "") -> None:
    _check_int("max_params", max_params)
    if d > max_params:
        raise ValueError(f"{method} forms the Hessian explicitly and refuses a model with {d:,} trainable "
                         f"parameters (max_params={max_params:,}). Use a scalable method instead: "
                         f"{SCALABLE}{extra}, or raise max_params.")


@register_method("if_explicit")
def if_explicit(model, splits, train_indices, query_indices, hessian: str = "gnh", damping=None,
                damping_multiple=None, max_params: int = MAX_EXPLICIT_PARAMS, hvp_batch_size: int = 128,
                solver: str = "auto", dtype: str | None = "float64", memory_budget_mb: float = 1024.0):
    """Influence function with the damped Hessian formed explicitly, (Q, T).

    score_i = (1/n) g_q^T (H + lambda I)^{-1} g_i, + = helpful (first-order LOO change).
    ``hessian="gnh"``: the exact Gauss-Newton eigendecomposition from the per-sample output
    Jacobian (rank <= n k; seconds on the Concrete MLP). ``"exact"``: the explicit (d, d) Hessian
    from HVPs (d / chunk passes of batched HVPs: minutes at d ~ 18k on 2 cores), then ``solver``:
    "eigh" (one decomposition for every damping; about 7 min at d ~ 18k on 2 cores, memory about
    3 d^2 float64 = 7.6 GB), "solve" (Cholesky, LU if indefinite; per damping value, a few
    minutes and about 2 d^2 float64 at d ~ 18k) or "auto" (eigh when several dampings or
    d <= 4000).
    ``damping`` / ``damping_multiple`` may be lists: ``values`` uses the first, and
    ``diagnostics["values_by_damping"]`` = {given value: (Q, T)} holds all. Refuses models with
    more than ``max_params`` parameters.
    """
    _check_hessian(hessian)
    check_choice("solver", solver, ("auto", "eigh", "solve"))
    _check_int("hvp_batch_size", hvp_batch_size)
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    _check_size("if_explicit", ctx.d, max_params, " (or if_time for time-resolved influence)")
    damps, lam0, mode = _resolve_damping(ctx, damping, damping_multiple, allow_list=True)
    Gq = ctx.grads("test", query_indices)
    Gt = ctx.grads("train", train_indices)
    diag: dict[str, Any] = {"lambda0": lam0, "damping_mode": mode, "hessian": hessian, "n_params": ctx.d}
    by_damp = {}
    if hessian == "gnh":
        spec = gnh_spectrum(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task,
                            chunk=ctx.vec_chunk(4 * max(ctx.k, 1)))
        diag.update(route=spec.source, rank=spec.rank)
        for key, lam in damps:
            by_damp[key] = _spectral_scores(Gq, Gt, spec, lambda e, lam=lam: 1.0 / (e + lam)) / ctx.n
    else:
        with math_sdpa():
            H = explicit_hessian(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, "exact", hvp_batch_size,
                                 col_chunk=min(ctx.d, ctx.hvp_vec_chunk(hvp_batch_size))).to(torch.float64)
        use_eigh = solver == "eigh" or (solver == "auto" and (len(damps) > 1 or ctx.d <= 4000))
        if use_eigh:
            spec = full_spectrum(H)
            diag.update(route="eigh", min_eigenvalue=float(spec.evals[0]), max_eigenvalue=float(spec.evals[-1]))
            for key, lam in damps:
                by_damp[key] = _spectral_scores(Gq, Gt, spec, lambda e, lam=lam: 1.0 / (e + lam)) / ctx.n
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
    diag["dampings"] = {k: v for k, v in damps}
    diag["values_by_damping"] = by_damp
    return by_damp[damps[0][0]], diag


# ----------------------------------------------------------------------------------------------
# Conjugate gradient
# ----------------------------------------------------------------------------------------------
@register_method("cg")
def cg(model, splits, train_indices, query_indices, hessian: str = "gnh", damping=None, damping_multiple=None,
       tol: float = 1e-6, max_iter: int = 1000, hvp_batch_size: int = 128, hvp_mode: str = "auto",
       dtype: str | None = None, memory_budget_mb: float = 1024.0):
    """Influence via conjugate gradient on HVPs, (Q, T): score_i = (1/n) g_i^T x_q with
    (H + lambda I) x_q = g_q, + = helpful.

    H is the Hessian (``hessian="gnh"`` default, or "exact") of the mean training loss over the
    full training set, HVPs in batches of ``hvp_batch_size``. All queries are solved together
    (one batched HVP per iteration; each query has its own CG step sizes and stops when its
    relative residual <= ``tol``), in chunks that fit the memory budget. Diagnostics:
    ``iterations``, ``residuals`` (true relative residuals), ``converged``, ``indefinite`` per
    query; a warning is issued when some query did not converge. ``hvp_mode``: "jacobian" (GNH
    products from the precomputed per-sample output Jacobian, (n k, d): fast), "autodiff"
    (jvp/vjp per batch of ``hvp_batch_size``) or "auto" (jacobian for the GNH when it fits half
    the memory budget).
    """
    _check_hessian(hessian)
    _check_number("tol", tol, allow_zero=False)
    _check_int("max_iter", max_iter)
    _check_int("hvp_batch_size", hvp_batch_size)
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    damps, lam0, mode = _resolve_damping(ctx, damping, damping_multiple)
    lam = damps[0][1]
    jac = _jacobian_gnh(ctx, hessian, hvp_mode)
    if jac is not None:
        hvp = jac.matvec
    else:
        hvp = dataset_hvp(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, hessian, hvp_batch_size,
                          vec_chunk=ctx.hvp_vec_chunk(hvp_batch_size))
    qchunk = ctx.vec_chunk(8)
    vals, infos = [], []
    for s in range(0, len(query_indices), qchunk):
        Gq = ctx.grads("test", query_indices[s:s + qchunk])
        X, info = batched_cg(hvp, Gq, lam, tol, max_iter)
        vals.append(_scores_vs_train(ctx, X, train_indices) / ctx.n)
        infos.append(info)
    diag = {key: torch.cat([i[key] for i in infos]) for key in infos[0]}
    diag.update(lambda0=lam0, damping=lam, damping_mode=mode, hessian=hessian, tol=tol, max_iter=max_iter,
                hvp_mode="jacobian" if jac is not None else "autodiff")
    n_bad = int((~diag["converged"]).sum())
    if n_bad:
        warnings.warn(f"cg: {n_bad} of {len(query_indices)} queries did not reach tol={tol} within "
                      f"max_iter={max_iter} (max relative residual {float(diag['residuals'].max()):.2e}"
                      f"{'; the damped Hessian is indefinite for some' if bool(diag['indefinite'].any()) else ''})",
                      stacklevel=2)
    return torch.cat(vals, dim=0), diag


# ----------------------------------------------------------------------------------------------
# LiSSA
# ----------------------------------------------------------------------------------------------
#: the paper's grid for LiSSA's scale (it used the smallest value that converges), extended upwards
LISSA_SCALE_GRID = (10, 20, 50, 100, 150, 200, 250, 300, 400, 500, 1000, 2000, 5000, 10000, 100000)


def _lissa_impl(model, splits, train_indices, query_indices, hessian, damping, damping_multiple, depth, scale,
                batch_size, repeat, seed, divergence_factor, hvp_mode, dtype, memory_budget_mb):
    if isinstance(scale, str):
        check_choice("scale", scale, ("auto",))
        tried = []
        for candidate in LISSA_SCALE_GRID:
            try:
                values, diag = _lissa_impl(model, splits, train_indices, query_indices, hessian, damping,
                                           damping_multiple, depth, float(candidate), batch_size, repeat, seed,
                                           divergence_factor, hvp_mode, dtype, memory_budget_mb)
            except LissaDiverged:
                tried.append(candidate)
                continue
            diag.update(scale_mode="auto: smallest converging value of the paper's grid", scales_diverged=tried)
            return values, diag
        raise LissaDiverged(f"LiSSA diverged for every scale in {LISSA_SCALE_GRID}; increase the damping")
    _check_hessian(hessian)
    _check_int("depth", depth)
    _check_number("scale", scale, allow_zero=False)
    _check_int("batch_size", batch_size)
    _check_int("repeat", repeat)
    _check_int("seed", seed, minimum=0)
    _check_number("divergence_factor", divergence_factor, allow_zero=False)
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    damps, lam0, mode = _resolve_damping(ctx, damping, damping_multiple)
    lam = damps[0][1]
    vchunk = ctx.hvp_vec_chunk(batch_size)
    jac = _jacobian_gnh(ctx, hessian, hvp_mode)

    def batch_matvec(idx: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        idx = idx.to(ctx.device)
        hv = batch_hvp(ctx.model, tuple(x[idx] for x in ctx.tr_inputs), ctx.tr_target[idx], ctx.task, hessian)
        return torch.cat([hv(V[c:c + vchunk]) for c in range(0, V.shape[0], vchunk)], dim=0)

    qchunk = ctx.vec_chunk(6)
    vals, norms = [], []
    for s in range(0, len(query_indices), qchunk):
        Gq = ctx.grads("test", query_indices[s:s + qchunk])
        gen = torch.Generator().manual_seed(seed)  # same batches for every query chunk
        if jac is not None:
            est, info = lissa_gnh_subspace(jac, Gq, lam, scale, depth, batch_size, repeat, gen, divergence_factor)
        else:
            est, info = _lissa_solve(batch_matvec, Gq, ctx.n, lam, scale, depth, batch_size, repeat, gen,
                                     divergence_factor)
        vals.append(_scores_vs_train(ctx, est, train_indices) / ctx.n)
        norms.append(info["estimate_norms"])
    diag = {"lambda0": lam0, "damping": lam, "damping_mode": mode, "hessian": hessian, "depth": depth,
            "scale": scale, "batch_size": batch_size, "repeat": repeat, "seed": seed,
            "estimate_norms": torch.cat(norms, dim=1), "hvp_mode": "jacobian" if jac is not None else "autodiff"}
    return torch.cat(vals, dim=0), diag


@register_method("lissa")
def lissa(model, splits, train_indices, query_indices, hessian: str = "gnh", damping=None, damping_multiple=None,
          depth: int = 1000, scale: float | str = "auto", batch_size: int = 128, repeat: int = 1, seed: int = 0,
          divergence_factor: float = 1e3, hvp_mode: str = "auto", dtype: str | None = None,
          memory_budget_mb: float = 1024.0):
    """LiSSA, (Q, T): score_i = (1/n) g_i^T est_q, est_q ~ (H + lambda I)^{-1} g_q, + = helpful.

    The paper's stochastic Neumann series: h_0 = v = g_q, h_t = v + h_{t-1} - (H_{B_t} + lambda I)
    h_{t-1} / scale for t = 1..``depth``, est = h_depth / scale, averaged over ``repeat`` runs;
    B_t are ``batch_size`` training indices drawn with replacement (torch.Generator seeded by
    ``seed``; every query sees the same batches). ``hessian="gnh"`` (LiSSA) or "exact" (LiSSA-H,
    also registered as ``lissa_h``). Batched over queries. Raises ValueError (suggesting a larger
    ``scale``) when the iteration diverges. ``scale="auto"`` (default) is the paper's protocol:
    the smallest value of ``LISSA_SCALE_GRID`` for which the iteration converges. The paper used depth 5000. ``hvp_mode`` as in ``cg``;
    with "jacobian" the same recursion (same batches) runs in the row space of the Jacobian
    (``hessian.lissa_gnh_subspace``), a second or two on the Concrete MLP.
    """
    return _lissa_impl(model, splits, train_indices, query_indices, hessian, damping, damping_multiple, depth,
                       scale, batch_size, repeat, seed, divergence_factor, hvp_mode, dtype, memory_budget_mb)


@register_method("lissa_h")
def lissa_h(model, splits, train_indices, query_indices, hessian: str = "exact", damping=None,
            damping_multiple=None, depth: int = 1000, scale: float | str = "auto", batch_size: int = 128, repeat: int = 1,
            seed: int = 0, divergence_factor: float = 1e3, hvp_mode: str = "auto", dtype: str | None = None,
            memory_budget_mb: float = 1024.0):
    """LiSSA-H: ``lissa`` with the exact (indefinite) Hessian by default."""
    return _lissa_impl(model, splits, train_indices, query_indices, hessian, damping, damping_multiple, depth,
                       scale, batch_size, repeat, seed, divergence_factor, hvp_mode, dtype, memory_budget_mb)


# ----------------------------------------------------------------------------------------------
# DataInf
# ----------------------------------------------------------------------------------------------
def _param_offsets(model: nn.Module) -> dict[str, tuple[int, int]]:
    offsets, o = {}, 0
    for name, p in trainable_params(model).items():
        offsets[name] = (o, o + p.numel())
        o += p.numel()
    return offsets


@register_method("datainf")
def datainf(model, splits, train_indices, query_indices, c: float = 10.0, n_hessian_samples: int | None = None,
            seed: int = 0, dtype: str | None = None, memory_budget_mb: float = 1024.0):
    """DataInf (Kwon et al. 2024), (Q, T), + = helpful, IF scale (includes 1/n_train).

    Per parameter tensor l (weights and biases separately), over the m Hessian samples j (all
    training instances, or ``n_hessian_samples`` drawn without replacement with ``seed``):
    lambda_l = (1/c) mean_j mean(g_{j,l}^2);
    v_hat_l = (1/(m lambda_l)) sum_j [v_l - (v_l . g_{j,l}) / (lambda_l + ||g_{j,l}||^2) g_{j,l}]
    with v = g_q (v_hat_l ~ (G_l + lambda_l I)^{-1} v_l, G_l the layer's empirical Fisher);
    score_i = (1/n_train) sum_l v_hat_l . g_{i,l}. ``c=10``: lambda_l = 0.1 x the tensor's mean
    squared gradient entry (the paper's figures). Two chunked passes over the sample gradients.
    """
    _check_number("c", c, allow_zero=False)
    _check_int("seed", seed, minimum=0)
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    if n_hessian_samples is None:
        sample = None
        m = ctx.n
    else:
        _check_int("n_hessian_samples", n_hessian_samples)
        m = min(n_hessian_samples, ctx.n)
        g = torch.Generator().manual_seed(seed)
        sample = torch.randperm(ctx.n, generator=g)[:m].sort().values.tolist()
    offsets = _param_offsets(ctx.model)
    sq = {name: 0.0 for name in offsets}
    for _, gj in ctx.grad_chunks("train", sample):
        for name, (a, b) in offsets.items():
            sq[name] += float((gj[:, a:b].double() ** 2).sum())
    lam = {name: sq[name] / (m * (b - a)) / c for name, (a, b) in offsets.items()}
    if any(v <= 0 for v in lam.values()):
        zero = [k for k, v in lam.items() if v <= 0]
        raise ValueError(f"datainf: the parameter tensors {zero} have zero gradients on every Hessian sample, "
                         f"so lambda_l = 0; freeze them (requires_grad=False)")
    qchunk = ctx.vec_chunk(4)
    vals = []
    for s in range(0, len(query_indices), qchunk):
        V = ctx.grads("test", query_indices[s:s + qchunk])
        Vl = {name: V[:, a:b].contiguous() for name, (a, b) in offsets.items()}
        acc = {name: torch.zeros_like(v) for name, v in Vl.items()}
        for _, gj in ctx.grad_chunks("train", sample):
            for name, (a, b) in offsets.items():
                gl = gj[:, a:b]
                coef = (Vl[name] @ gl.T) / (lam[name] + (gl * gl).sum(1))[None, :]
                acc[name].addmm_(coef, gl)
        for name, (a, b) in offsets.items():
            V[:, a:b] = (Vl[name] - acc[name] / m) / lam[name]  # V now holds v_hat
        del Vl, acc
        vals.append(_scores_vs_train(ctx, V, train_indices) / ctx.n)
    return torch.cat(vals, dim=0), {"lambdas": lam, "c": c, "n_hessian_samples": m,
                                    "hessian_sample": sample}


# ----------------------------------------------------------------------------------------------
# EK-FAC
# ----------------------------------------------------------------------------------------------
@register_method("ekfac")
def ekfac(model, splits, train_indices, query_indices, damping=None, damping_multiple=None,
          dtype: str | None = None, memory_budget_mb: float = 1024.0):
    """EK-FAC influence (Grosse et al. 2023), (Q, T): (1/n) g_q^T (G_ekfac + lambda I)^{-1} g_i,
    + = helpful, IF scale.

    G_ekfac: the block-diagonal (per layer) eigenvalue-corrected Kronecker factorisation of the
    Gauss-Newton matrix over every ``nn.Linear`` / ``nn.Conv2d`` layer (``tda_utils.ekfac``),
    fitted on the full training set with the exact expected output-gradient factors. Other
    trainable parameters are ignored: their gradient entries do not enter the scores
    (``diagnostics["ignored_params"]``; ``"skipped_layers"`` lists unsupported layers, and
    ``"unhooked_layers"`` layers whose weights are also used outside their module's forward,
    which are ignored too, with a warning).
    lambda = damping_multiple x lambda0 (lambda0 over all trainable parameters).
    """
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    layers, ignored, skipped = _ekfac.kfac_layers(ctx.model)
    if not layers:
        raise ValueError("ekfac found no supported nn.Linear / nn.Conv2d layer with a trainable weight "
                         f"(skipped: {skipped}); use cg, lissa, datainf or trak")
    unhooked = _ekfac.unhooked_layers(ctx.model, layers, tuple(x[:4] for x in ctx.tr_inputs), ctx.tr_target[:4],
                                      ctx.task)
    if unhooked:
        warnings.warn(f"ekfac: layers {unhooked} use their weights outside their module's forward (hooks cannot "
                      "see those uses); they are ignored like other unsupported parameters (for bert_classifier "
                      "use last_block='cls_kv' or 'full' to include them)", stacklevel=2)
        dropped = [ly for ly in layers if ly.module_name in unhooked]
        layers = [ly for ly in layers if ly.module_name not in unhooked]
        ignored = ignored + [name for ly in dropped for name in (ly.weight, ly.bias) if name]
        if not layers:
            raise ValueError("ekfac: no layer left whose weights are used only through its module's forward")
    damps, lam0, mode = _resolve_damping(ctx, damping, damping_multiple)
    lam = damps[0][1]
    acts = activation_numel(ctx.model, tuple(x[:1] for x in ctx.tr_inputs))
    chunk = min(1024, max(1, int(0.5 * ctx.budget_bytes // (8 * (2 * ctx.d + 4 * acts * max(ctx.k, 1))))))
    _ekfac.fit_ekfac(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, chunk=chunk, layers=layers,
                     check_hooks=False)  # unhooked layers were dropped above

    def rotated(split: str, indices) -> Iterator[list[torch.Tensor]]:
        for c in range(0, len(indices), chunk):
            inputs, target = ctx.rows(split, indices[c:c + chunk])
            yield _ekfac.rotated_loss_grads(ctx.model, layers, inputs, target, ctx.task)

    qchunk = max(1, min(len(query_indices), int(0.25 * ctx.budget_bytes // (8 * ctx.d))))
    vals = []
    for s in range(0, len(query_indices), qchunk):
        q_rot = [torch.cat(parts) for parts in zip(*rotated("test", query_indices[s:s + qchunk]))]
        cols = [_ekfac.ekfac_inverse_scores(q_rot, t_rot, layers, lam) for t_rot in rotated("train", train_indices)]
        vals.append(torch.cat(cols, dim=1) / ctx.n)
    diag = {"lambda0": lam0, "damping": lam, "damping_mode": mode, "layers": [ly.module_name for ly in layers],
            "ignored_params": ignored, "skipped_layers": skipped, "unhooked_layers": unhooked,
            "min_corrected_eigenvalue": min(float(ly.evals.min()) for ly in layers)}
    return torch.cat(vals, dim=0).to(ctx.dtype), diag


# ----------------------------------------------------------------------------------------------
# TRAK
# ----------------------------------------------------------------------------------------------
def _output_grad_fn(model: nn.Module, task: str, k: int):
    """vmapped per-sample gradient of TRAK's output function: the margin log p_y - log(1 - p_y)
    (classification) or the prediction (regression, k = 1). Returns fn(params, inputs, target)."""
    state = frozen_state(model)

    def f(params, *args):
        *xs, y = args
        out = functional_call(model, {**params, **state}, tuple(x.unsqueeze(0) for x in xs)).squeeze(0)
        if task == "regression":
            return out.reshape(-1)[0]
        mask = torch.arange(out.shape[-1], device=out.device) == y
        zy = (out * mask).sum()
        rest = torch.where(mask, torch.full_like(out, -torch.inf), out).logsumexp(-1)
        return zy - rest

    return f


def _projection_blocks(d: int, p: int, seed: int, dtype, device, block: int = 8192):
    """Gaussian projection P (d, p), entries N(0, 1/p), as row blocks (slice, (rows, p)); the
    blocks depend only on (d, p, seed) (drawn in float32, then cast to ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    for r in range(0, d, block):
        rows = min(block, d - r)
        Pb = torch.randn(rows, p, generator=g, dtype=torch.float32) / math.sqrt(p)
        yield slice(r, r + rows), Pb.to(device=device, dtype=dtype)


SKETCH_ABOVE = 2**28  # TRAK "auto": entries of a dense projection above which a count sketch is used


@register_method("trak")
def trak(model, splits, train_indices, query_indices, proj_dim: int = 2048, seed: int = 0, reweight: bool | None = None,
         damping=None, damping_multiple=None, projection: str = "auto", dtype: str | None = None,
         memory_budget_mb: float = 1024.0):
    """Single-model TRAK (Park et al. 2023), (Q, T).

    phi_j = P^T grad f_j, with f the margin log p_y - log(1 - p_y) (classification) or the
    prediction (regression, one output) and P a Gaussian (d, proj_dim) projection with entries
    N(0, 1/proj_dim) (``seed``). ``projection``: "gaussian", "sketch" (a count sketch: each
    parameter's gradient entry goes to one random feature with a random sign, a sparse JL
    embedding costing O(d) per sample, for models whose dense P does not fit), "none"
    (phi = grad f) or "auto" (none when proj_dim >= d; else gaussian when P has at most
    ``SKETCH_ABOVE`` entries, sketch otherwise).
    score_i = (1/n) phi_q^T (Phi^T Phi / n + lambda I)^{-1} phi_i x Q_i
            = phi_q^T (Phi^T Phi + n lambda I)^{-1} phi_i x Q_i  (TRAK's formula, damping n lambda),
    Phi over the full training set; Q_i = 1 - p_i (the probability of i's label) when
    ``reweight`` (default: True for classification; regression has no reweighting).
    Sign and scale: + = helpful in the paper's convention; for classification the score is the
    estimated decrease of the query's margin when i is removed (its loss change is that times
    (1 - p_q) > 0, up to TRAK's unweighted Gauss-Newton); for regression it is the estimated
    change of the query's prediction per unit residual, whose sign is not tied to helpfulness.
    lambda = damping_multiple x lambda0_phi, lambda0_phi = ||Phi||_F^2 / (n p) the mean squared
    feature entry (TRAK works in its own feature space); default multiple 0.01 (TRAK's reference
    implementation does not damp; a small damping keeps Phi^T Phi invertible when p > n).
    """
    _check_int("proj_dim", proj_dim)
    _check_int("seed", seed, minimum=0)
    check_choice("projection", projection, ("auto", "gaussian", "sketch", "none"))
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    if ctx.task == "regression" and ctx.k != 1:
        raise ValueError(f"trak needs a single regression output (the prediction); this model has {ctx.k}")
    if reweight is None:
        reweight = ctx.task == "classification"
    if reweight and ctx.task != "classification":
        raise ValueError("reweight=True (TRAK's Q = diag(1 - p_i)) applies to classification only")
    if damping is not None and damping_multiple is not None:
        raise ValueError("give either damping (absolute) or damping_multiple (x lambda0), not both")
    if damping is not None:
        lam, mode = _check_number("damping", damping, allow_zero=False), "absolute"
    else:
        mult = _check_number("damping_multiple", 0.01 if damping_multiple is None else damping_multiple, False)
        mode = "multiple"
    project = projection in ("gaussian", "sketch") or (projection == "auto" and proj_dim < ctx.d)
    # "auto": a dense Gaussian P up to SKETCH_ABOVE entries, else a count sketch (one random +-1
    # entry per row of P: O(d) per sample and memory, a sparse JL embedding); the choice depends
    # on (d, proj_dim) only, never on the memory budget, so results do not either
    sketch = projection == "sketch" or (projection == "auto" and project and ctx.d * proj_dim > SKETCH_ABOVE)
    p = proj_dim if project else ctx.d
    params = trainable_params(ctx.model)
    gfn = vmap(grad(_output_grad_fn(ctx.model, ctx.task, ctx.k)), in_dims=(None,) + (0,) * (len(ctx.tr_inputs) + 1))
    cache_P = project and not sketch and ctx.d * p * ctx.elem <= ctx.budget_bytes / 2
    if sketch:
        gen = torch.Generator().manual_seed(seed)
        buckets = torch.randint(0, p, (ctx.d,), generator=gen).to(ctx.device)
        signs = (torch.randint(0, 2, (ctx.d,), generator=gen) * 2 - 1).to(device=ctx.device, dtype=ctx.dtype)
    P_cached = list(_projection_blocks(ctx.d, p, seed, ctx.dtype, ctx.device)) if cache_P else None
    # samples per chunk: their gradients (about 3 d each) in a quarter of the budget, or in almost
    # half of it when P is regenerated chunk by chunk (fewer regenerations)
    share = 0.25 if (cache_P or sketch or not project) else 0.45
    chunk = max(1, min(4096, int(share * ctx.budget_bytes // ((3 * ctx.d + p) * ctx.elem))))

    def features(split: str, indices) -> Iterator[torch.Tensor]:
        """Projected output gradients phi (chunk, p), float64, chunk by chunk."""
        for s in range(0, len(indices), chunk):
            inputs, target = ctx.rows(split, indices[s:s + chunk])
            with math_sdpa():
                gd = gfn(params, *inputs, target)
            G = torch.cat([v.reshape(v.shape[0], -1) for v in gd.values()], dim=1)
            del gd
            if not project:
                yield G.to(torch.float64)
                continue
            if sketch:
                yield torch.zeros(G.shape[0], p, dtype=G.dtype, device=G.device).index_add_(
                    1, buckets, G * signs).to(torch.float64)
                continue
            blocks = P_cached if P_cached is not None else _projection_blocks(ctx.d, p, seed, ctx.dtype, ctx.device)
            yield sum(G[:, sl] @ Pb for sl, Pb in blocks).to(torch.float64)

    pos = {int(i): j for j, i in enumerate(train_indices)}
    gram = torch.zeros(p, p, dtype=torch.float64, device=ctx.device)
    phi_t = torch.empty(len(train_indices), p, dtype=torch.float64, device=ctx.device)
    rows = list(range(ctx.n))
    for c, phi in enumerate(features("train", rows)):
        gram += phi.T @ phi
        for r, i in enumerate(rows[c * chunk:(c + 1) * chunk]):
            if i in pos:
                phi_t[pos[i]] = phi[r]
    lam0 = float(torch.diagonal(gram).sum() / (ctx.n * p))
    if damping is None:
        lam = mult * lam0
    K = gram / ctx.n + lam * torch.eye(p, dtype=torch.float64, device=ctx.device)
    Lc, info = torch.linalg.cholesky_ex(K)
    phi_q = torch.cat(list(features("test", query_indices)))
    X = torch.cholesky_solve(phi_q.T, Lc) if int(info) == 0 else torch.linalg.solve(K, phi_q.T)
    vals = X.T @ phi_t.T / ctx.n
    diag = {"lambda0": lam0, "lambda0_kind": "mean squared projected output-gradient entry", "damping": lam,
            "projection_used": "sketch" if sketch else "gaussian" if project else "none",
            "damping_mode": mode, "proj_dim": p, "projected": project, "reweight": bool(reweight)}
    if reweight:
        tin, tt = ctx.rows("train", train_indices)
        with torch.no_grad():
            prob = torch.softmax(ctx.model(*tin), dim=-1).gather(-1, tt.long()[:, None]).squeeze(-1)
        q_weight = (1 - prob).to(torch.float64)
        vals = vals * q_weight[None, :]
        diag["one_minus_p_train"] = q_weight.cpu()
    return vals.to(ctx.dtype), diag


# ----------------------------------------------------------------------------------------------
# Unified view: influence at further-training time t
# ----------------------------------------------------------------------------------------------
def _check_times(times) -> torch.Tensor:
    if times is None:
        raise ValueError("times is required: the further-training step counts t, e.g. "
                         "times=gold.times * steps_per_epoch")
    t = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
    if t.numel() == 0 or not torch.isfinite(t).all() or (t < 0).any() or (t != t.round()).any():
        raise ValueError(f"times must be a non-empty 1-D array of non-negative integer step counts, got {times!r}")
    return t


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


@register_method("if_time")
def if_time(model, splits, train_indices, query_indices, times=None, lr: float | None = None, hessian: str = "gnh",
            damping=None, damping_multiple=None, route: str = "auto", n_eigs: int = 200,
            lanczos_iter: int | None = None, hvp_batch_size: int = 128, seed: int = 0,
            dtype: str | None = "float64", memory_budget_mb: float = 1024.0):
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
    lambda)^t) / lambda, = lr t for lambda = 0), or "auto" (GNH: lowrank when min(n k, d) <= 8000
    and the (n k, d) float64 Jacobian fits the memory budget; exact: eigh when d <= 4000; else
    lanczos). Lanczos keeps ``n_eigs`` x 2 + 20 vectors of size d.
    """
    _check_hessian(hessian)
    check_choice("route", route, ("auto", "lowrank", "eigh", "lanczos"))
    t = _check_times(times)
    if lr is None:
        raise ValueError("lr is required: the further-training learning rate eta")
    lr = _check_number("lr", lr, allow_zero=False)
    _check_int("n_eigs", n_eigs)
    _check_int("hvp_batch_size", hvp_batch_size)
    ctx = _prepare(model, splits, dtype, memory_budget_mb)
    if route == "auto":
        if hessian == "gnh":
            fits = ctx.n * ctx.k * ctx.d * 8 <= ctx.budget_bytes
            route = "lowrank" if min(ctx.n * ctx.k, ctx.d) <= 8000 and fits else "lanczos"
        else:
            route = "eigh" if ctx.d <= 4000 else "lanczos"
    if route == "lowrank" and hessian != "gnh":
        raise ValueError("route='lowrank' is exact for hessian='gnh' only; use route='eigh' or 'lanczos'")
    damps, lam0, mode = _resolve_damping(ctx, damping, damping_multiple, allow_zero=True)
    lam = damps[0][1]
    with math_sdpa():
        if route == "lowrank":
            spec = gnh_spectrum(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task,
                                chunk=ctx.vec_chunk(4 * max(ctx.k, 1)))
        elif route == "eigh":
            H = explicit_hessian(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, hessian, hvp_batch_size,
                                 col_chunk=min(ctx.d, ctx.hvp_vec_chunk(hvp_batch_size)))
            spec = full_spectrum(H.to(torch.float64))
        else:
            m = min(ctx.d, lanczos_iter or 2 * min(n_eigs, ctx.d) + 20)
            if (m + 1) * ctx.d * ctx.elem > ctx.budget_bytes:
                raise ValueError(f"if_time: Lanczos keeps {m + 1} vectors of {ctx.d:,} entries "
                                 f"({(m + 1) * ctx.d * ctx.elem / 2**20:,.0f} MB), over memory_budget_mb="
                                 f"{ctx.budget_mb:g}; lower n_eigs (now {n_eigs}) or raise memory_budget_mb")
            hvp = dataset_hvp(ctx.model, ctx.tr_inputs, ctx.tr_target, ctx.task, hessian, hvp_batch_size,
                              vec_chunk=ctx.hvp_vec_chunk(hvp_batch_size))
            spec = lanczos(hvp, ctx.d, min(n_eigs, ctx.d), lanczos_iter, dtype=ctx.dtype, device=ctx.device,
                           seed=seed)
    Gq = ctx.grads("test", query_indices)
    Gt = ctx.grads("train", train_indices)
    by_time = _spectral_scores(Gq, Gt, spec, lambda e: gd_weight(e + lam, t, lr)) / ctx.n
    h = spec.evals.to(torch.float64) + lam
    diag = {"lambda0": lam0, "damping": lam, "damping_mode": mode, "hessian": hessian, "route": spec.source,
            "rank": spec.rank, "times": t, "lr": lr, "values_by_time": by_time.to(ctx.dtype),
            "n_unstable": int(((lr * h) >= 2).sum() + ((h < 0).sum())),
            "max_eigenvalue": float(spec.evals.max()), "min_eigenvalue": float(spec.evals.min())}
    if "ritz_residuals" in spec.info:
        diag["ritz_residuals"] = spec.info["ritz_residuals"]
    return by_time[-1].to(ctx.dtype), diag
