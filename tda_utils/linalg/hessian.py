"""Hessian-vector products, Gauss-Newton products, explicit Hessians, spectra and solvers.

Public: ``math_sdpa``, ``output_hessian_apply``, ``output_hessian_sqrt``, ``batch_hvp``,
``dataset_hvp``, ``explicit_hessian``, ``sqrt_gnh_jacobian``, ``JacobianGNH``, ``Spectrum``,
``gnh_spectrum``,
``full_spectrum``, ``gram_eigh``, ``lanczos``, ``grad_stats`` (solvers: ``tda_utils.solvers``).

Conventions. Every Hessian here is that of the *mean* loss of the data it is given,
L(theta) = (1/n) sum_j loss_j(theta), with ``models.per_sample_loss`` (per-sample MSE = mean over
the k output dims of the squared error; cross-entropy). Vectors are flattened over the model's
trainable parameters in the order of ``grads.trainable_params`` (d entries); batches of vectors
are (m, d). ``hessian="exact"`` is the true Hessian (forward-over-reverse, ``jvp`` of ``grad``);
``hessian="gnh"`` is the Gauss-Newton Hessian J^T H_out J with J the Jacobian of the model output
and H_out the Hessian of the loss w.r.t. the output: (2/k) I for MSE, diag(p) - p p^T for
cross-entropy. All HVP code runs under ``math_sdpa()`` so that attention (HF transformers) is
twice differentiable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from ..config import check_choice
from .grads import (
    flatten,
    frozen_state,
    iter_per_sample_grads,
    param_offsets,
    trainable_params,
    unflatten,
)
from ..models.registry import resolve_loss

warnings.filterwarnings("ignore", message=r".*torch\.func.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*forward-mode.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*functorch.*", category=FutureWarning)
# the first forward-mode jvp scripts its decompositions: a harmless deprecation notice in torch 2.14
warnings.filterwarnings(
    "ignore", message=r".*torch\.jit\.script.*deprecated.*", category=FutureWarning
)

HESSIANS = ("exact", "gnh")

Matvec = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def math_sdpa():
    """Context: force the math scaled-dot-product-attention kernel (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel(SDPBackend.MATH):
        yield


# ----------------------------------------------------------------------------------------------
# Output Hessians
# ----------------------------------------------------------------------------------------------
def output_hessian_apply(out: torch.Tensor, u: torch.Tensor, task: str) -> torch.Tensor:
    """H_out u per sample. ``out``: (B, k) model outputs; ``u``: (..., B, k) -> (..., B, k).

    Regression (per-sample MSE averaged over k outputs): (2/k) u. Classification
    (cross-entropy): (diag(p) - p p^T) u with p = softmax(out).
    """
    if task == "regression":
        return u * (2.0 / out.shape[-1])
    p = torch.softmax(out, dim=-1)
    return p * u - p * (p * u).sum(-1, keepdim=True)


def output_hessian_sqrt(out: torch.Tensor, task: str) -> torch.Tensor:
    """A square root L (B, k, k) of the per-sample output Hessian: H_out = L L^T.

    Regression: sqrt(2/k) I. Classification: L = diag(sqrt p) - p sqrt(p)^T, whose column c is
    sqrt(p_c) (e_c - p), i.e. sqrt(p_c) times minus the loss gradient for label c (the exact
    expectation over labels sampled from the model).
    """
    B, k = out.shape
    if task == "regression":
        eye = torch.eye(k, dtype=out.dtype, device=out.device)
        return (math.sqrt(2.0 / k) * eye).expand(B, k, k).clone()
    p = torch.softmax(out, dim=-1)
    sp = p.sqrt()
    return torch.diag_embed(sp) - p[:, :, None] * sp[:, None, :]


def check_gnh_loss(hessian: str, loss_fn) -> None:
    """Refuse a custom ``loss_fn`` with the Gauss-Newton Hessian.

    The GNH's output Hessian is the built-in MSE / cross-entropy one.
    """
    if loss_fn is not None and hessian != "exact":
        raise ValueError(
            f"loss_fn (a custom loss) needs hessian='exact' (got hessian="
            f"{hessian!r}): the Gauss-Newton Hessian assumes the built-in MSE / "
            "cross-entropy loss"
        )


# ----------------------------------------------------------------------------------------------
# Hessian-vector products
# ----------------------------------------------------------------------------------------------
def _out_fn(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    state = frozen_state(model)

    def f(params):
        return functional_call(model, {**params, **state}, tuple(inputs))

    return f


def batch_hvp(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    hessian: str = "gnh",
    loss_fn=None,
) -> Matvec:
    """Products with the Hessian of the batch's mean loss: V (m, d) -> H V (m, d).

    ``hessian="exact"``: jvp of grad (forward-over-reverse). ``"gnh"``: J^T H_out J V / B with one
    ``jvp`` and one ``vjp`` of the model output. Vectorised over the m vectors with ``vmap``.
    ``loss_fn``: None (the built-in loss) or a custom per-sample loss (``models.resolve_loss``),
    for ``hessian="exact"`` only (the GNH's output Hessian is the built-in loss's).
    """
    check_choice("hessian", hessian, HESSIANS)
    check_gnh_loss(hessian, loss_fn)
    loss_of = resolve_loss(task, loss_fn)
    params = trainable_params(model)
    out_fn = _out_fn(model, inputs)
    B = target.shape[0]
    if hessian == "exact":

        def loss(p):
            return loss_of(out_fn(p), target).mean()

        g = grad(loss)

        def one(v):
            return jvp(g, (params,), (v,))[1]
    else:
        with math_sdpa():
            out, vjp_fn = vjp(out_fn, params)
        out = out.detach()

        def one(v):
            jv = jvp(out_fn, (params,), (v,))[1]
            return vjp_fn(output_hessian_apply(out, jv, task) / B)[0]

    many = vmap(one)

    def apply(V: torch.Tensor) -> torch.Tensor:
        with math_sdpa():
            return flatten(many(unflatten(V, params)), batch_dims=1)

    return apply


def dataset_hvp(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    hessian: str = "gnh",
    batch_size: int = 128,
    vec_chunk: int | None = None,
    loss_fn=None,
) -> Matvec:
    """Products with the Hessian of the mean loss over the whole dataset, in batches.

    H V = sum_b (|B_b| / n) H_{B_b} V over consecutive batches of ``batch_size``; the m vectors
    are processed ``vec_chunk`` at a time (None: all at once). V (m, d) -> (m, d). ``loss_fn``:
    as in ``batch_hvp``.
    """
    n = target.shape[0]
    check_gnh_loss(hessian, loss_fn)

    def apply(V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)
        step = vec_chunk or V.shape[0]
        for s in range(0, n, batch_size):
            sl = slice(s, min(n, s + batch_size))
            hv = batch_hvp(model, tuple(x[sl] for x in inputs), target[sl], task, hessian, loss_fn)
            w = (sl.stop - sl.start) / n
            for c in range(0, V.shape[0], step):
                out[c : c + step] += w * hv(V[c : c + step])
        return out

    return apply


def explicit_hessian(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    hessian: str = "exact",
    batch_size: int = 128,
    col_chunk: int = 256,
    loss_fn=None,
) -> torch.Tensor:
    """The explicit (d, d) Hessian (or GNH) of the dataset's mean loss, symmetrised.

    Built from HVPs with ``col_chunk`` identity columns at a time. Cost: d / col_chunk passes
    over the data; only for small models (memory d^2, symmetrised in place). ``loss_fn``: as in
    ``batch_hvp``.
    """
    params = trainable_params(model)
    d = sum(p.numel() for p in params.values())
    ref = next(iter(params.values()))
    hvp = dataset_hvp(model, inputs, target, task, hessian, batch_size, loss_fn=loss_fn)
    H = torch.empty(d, d, dtype=ref.dtype, device=ref.device)
    for c in range(0, d, col_chunk):
        cols = torch.arange(c, min(d, c + col_chunk), device=ref.device)
        E = torch.zeros(len(cols), d, dtype=ref.dtype, device=ref.device)
        E[torch.arange(len(cols), device=ref.device), cols] = 1.0
        H[c : c + len(cols)] = hvp(E)
    return _symmetrize_(H)


def _symmetrize_(H: torch.Tensor, block: int = 2048) -> torch.Tensor:
    """(H + H^T) / 2 in place, block by block (no second d x d matrix)."""
    d = H.shape[0]
    for i in range(0, d, block):
        for j in range(i, d, block):
            S = 0.5 * (H[i : i + block, j : j + block] + H[j : j + block, i : i + block].T)
            H[i : i + block, j : j + block] = S
            H[j : j + block, i : i + block] = S.T
    return H


def sqrt_gnh_jacobian(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    chunk: int = 64,
) -> torch.Tensor:
    """Rows M (n k, d) with GNH = M^T M / n: per sample j the k rows L_j^T J_j.

    J_j (k, d) is the Jacobian of sample j's output; L_j the square root of its output Hessian
    (``output_hessian_sqrt``). Row order: sample-major (rows j k .. j k + k - 1 belong to j).
    """
    params = trainable_params(model)
    state = frozen_state(model)

    def single(p, *x):
        return functional_call(model, {**p, **state}, tuple(xi.unsqueeze(0) for xi in x)).squeeze(0)

    jac = vmap(jacrev(single), in_dims=(None, *([0] * len(inputs))))
    n = target.shape[0]
    parts = []
    with math_sdpa():
        for s in range(0, n, chunk):
            sl = slice(s, min(n, s + chunk))
            xs = tuple(x[sl] for x in inputs)
            J = flatten(jac(params, *xs), batch_dims=2)  # (B, k, d)
            with torch.no_grad():
                out = functional_call(model, {**params, **state}, xs)
            L = output_hessian_sqrt(out, task)  # (B, k, k)
            parts.append(torch.einsum("bkc,bkd->bcd", L, J).reshape(-1, J.shape[-1]))
    return torch.cat(parts, dim=0)


class JacobianGNH:
    """Gauss-Newton products from the precomputed rows M (n k, d) of ``sqrt_gnh_jacobian``.

    ``matvec(V)`` = GNH of the mean loss over all n samples times V (m, d): (V M^T) M / n;
    ``batch_matvec(idx, V)``: the mean-loss GNH of the samples ``idx`` (duplicates allowed) times
    V. Exact (same numbers as the jvp/vjp products up to rounding), and fast whenever M fits in
    memory (n k d entries).
    """

    def __init__(self, M: torch.Tensor, n: int):
        self.M, self.n = M, n
        self.k = M.shape[0] // n
        self.d = M.shape[1]

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        """The mean-loss GNH over all n samples times V (m, d)."""
        return (V @ self.M.T) @ self.M / self.n

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows of M of the samples ``idx``, (len(idx) k, d)."""
        return self.M.view(self.n, self.k, self.d)[idx.to(self.M.device)].reshape(-1, self.d)

    def batch_matvec(self, idx: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """The mean-loss GNH of the samples ``idx`` (duplicates allowed) times V (m, d)."""
        R = self.rows(idx)
        return (V @ R.T) @ R / idx.numel()


# ----------------------------------------------------------------------------------------------
# Spectra
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Spectrum:
    """H ~ V diag(evals) V^T + complement (I - V V^T).

    ``evals``: (r,); V (d, r) has orthonormal columns, stored either as ``evecs`` or implicitly as
    ``factor`` = (M (N, d), W (N, r)) with V = M^T W (the low-rank GNH: V is never formed);
    ``complement``: the eigenvalue assumed on the orthogonal complement of V (0 for the low-rank
    GNH, where it is exact), or None when r = d (full spectrum). ``source``: how it was computed.
    """

    evals: torch.Tensor
    evecs: torch.Tensor | None
    complement: float | None
    source: str
    info: dict = dataclasses.field(default_factory=dict)
    factor: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        """The number of eigenpairs r."""
        return int(self.evals.numel())

    def project(self, G: torch.Tensor) -> torch.Tensor:
        """Coordinates G V (m, r) of the rows of G (m, d)."""
        if self.evecs is not None:
            return G @ self.evecs.to(G.dtype)
        M, W = self.factor
        return (G @ M.T.to(G.dtype)) @ W.to(G.dtype)

    def vectors(self) -> torch.Tensor:
        """V (d, r), formed if stored implicitly."""
        if self.evecs is not None:
            return self.evecs
        M, W = self.factor
        return M.T @ W


def full_spectrum(H: torch.Tensor, source: str = "eigh") -> Spectrum:
    """Full eigendecomposition of a symmetric (d, d) matrix (float64 recommended)."""
    evals, evecs = torch.linalg.eigh(H)
    return Spectrum(evals=evals, evecs=evecs, complement=None, source=source)


def gram_eigh(
    M: torch.Tensor, scale: float = 1.0, rel_tol: float = 1e-12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs (e (r,), U (N, r)) of the Gram matrix M M^T / ``scale`` of rows M (N, d).

    Symmetrised before ``eigh``; eigenvalues at or below ``rel_tol`` x the largest are dropped,
    so the r kept ones are positive.
    """
    K = M @ M.T / scale if scale != 1 else M @ M.T
    e, U = torch.linalg.eigh(0.5 * (K + K.T))
    keep = e > rel_tol * e.abs().max().clamp_min(torch.finfo(e.dtype).tiny)
    return e[keep], U[:, keep]


def gnh_spectrum(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    chunk: int = 64,
    rel_tol: float = 1e-12,
) -> Spectrum:
    """Exact eigendecomposition of the dataset's mean GNH from the output Jacobian.

    With M = ``sqrt_gnh_jacobian`` (N = n k rows) the GNH is M^T M / n. If N < d the N x N Gram
    matrix M M^T / n = U diag(e) U^T gives V = M^T U diag(1/sqrt(n e)) (eigenvalues below
    ``rel_tol`` x max dropped; the complement has eigenvalue exactly 0; V is kept implicit as
    M^T W). Otherwise the (d, d) GNH is formed and fully decomposed. Compute in float64.
    """
    n = target.shape[0]
    M = sqrt_gnh_jacobian(model, inputs, target, task, chunk)
    N, d = M.shape
    if N >= d:
        return full_spectrum(M.T @ M / n, source="gnh-explicit")
    e, U = gram_eigh(M, n, rel_tol)
    W = U / torch.sqrt(n * e)[None, :]
    return Spectrum(
        evals=e,
        evecs=None,
        complement=0.0,
        source="gnh-lowrank",
        factor=(M, W),
        info={"jacobian_rows": N, "rank": int(e.numel())},
    )


def lanczos(
    matvec: Matvec,
    d: int,
    k: int,
    n_iter: int | None = None,
    dtype=torch.float64,
    device=None,
    seed: int = 0,
) -> Spectrum:
    """Top-``k`` (by magnitude) eigenpairs of a symmetric operator by Lanczos.

    ``matvec``: (m, d) -> (m, d) (called with m = 1). Full re-orthogonalisation (twice) against
    all previous Lanczos vectors; ``n_iter`` iterations (default min(d, 2 k + 20)); Rayleigh-Ritz
    on the tridiagonal matrix. The complement is given eigenvalue 0. ``info["ritz_residuals"]``
    holds |beta_m s_{m,i}| for the returned pairs.
    """
    m = min(d, n_iter or 2 * k + 20)
    g = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.zeros(m + 1, d, dtype=dtype, device=device)
    q = torch.randn(d, generator=g, dtype=dtype).to(device)
    Q[0] = q / q.norm()
    alpha = torch.zeros(m, dtype=dtype)
    beta = torch.zeros(m, dtype=dtype)
    steps = m
    for j in range(m):
        w = matvec(Q[j][None])[0].to(dtype)
        alpha[j] = w @ Q[j]
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        b = w.norm()
        beta[j] = b
        if j + 1 == m:
            break
        if b <= 1e-10 * alpha[: j + 1].abs().max().clamp_min(1e-300):
            steps = j + 1
            break
        Q[j + 1] = w / b
    T = (
        torch.diag(alpha[:steps])
        + torch.diag(beta[: steps - 1], 1)
        + torch.diag(beta[: steps - 1], -1)
    )
    theta, S = torch.linalg.eigh(T)
    order = theta.abs().argsort(descending=True)[: min(k, steps)]
    theta, S = theta[order], S[:, order]
    V = Q[:steps].T @ S.to(Q.device)
    res = (beta[steps - 1] * S[-1]).abs()
    exhausted = steps == d
    return Spectrum(
        evals=theta.to(Q.device),
        evecs=V,
        complement=None if exhausted and k >= d else 0.0,
        source="lanczos",
        info={"lanczos_steps": steps, "ritz_residuals": res},
    )


# ----------------------------------------------------------------------------------------------
# Gradient statistics
# ----------------------------------------------------------------------------------------------
def grad_stats(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    memory_budget_mb: float = 1024.0,
    per_tensor: bool = False,
    loss_fn=None,
) -> dict:
    """Statistics of the per-sample loss gradients over a dataset (one chunked pass).

    Returns ``lambda0`` = sum_j ||g_j||^2 / (n d) (the mean squared per-sample gradient entry,
    the mean eigenvalue of the empirical Fisher), ``sq_norms`` (n,), ``n``, ``d``, and with
    ``per_tensor`` the per-parameter-tensor sums of squares ``tensor_sq`` {name: float} and
    sizes ``tensor_numel``. ``loss_fn``: None (the built-in loss) or a custom per-sample loss.
    """
    params = trainable_params(model)
    d = sum(p.numel() for p in params.values())
    n = target.shape[0]
    sq = []
    offsets = param_offsets(model)
    tensor_sq = {name: 0.0 for name in params}
    for _, g in iter_per_sample_grads(
        model, inputs, target, task, memory_budget_mb=memory_budget_mb, loss_fn=loss_fn
    ):
        g2 = g * g
        sq.append(g2.sum(1).double().cpu())
        if per_tensor:
            for name, (a, b) in offsets.items():
                tensor_sq[name] += float(g2[:, a:b].sum())
    sq_norms = torch.cat(sq)
    res = {"lambda0": float(sq_norms.sum() / (n * d)), "sq_norms": sq_norms, "n": n, "d": d}
    if per_tensor:
        res["tensor_sq"] = tensor_sq
        res["tensor_numel"] = {name: p.numel() for name, p in params.items()}
    return res
