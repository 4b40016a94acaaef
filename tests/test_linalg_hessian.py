"""Unit tests of tda_utils.linalg (hessian, solvers, per-sample gradients) on exact problems."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from tda_utils.linalg import hessian as hs
from tda_utils.linalg import solvers
from tda_utils.linalg.grads import flatten, per_sample_grads, trainable_params
from tda_utils.models.registry import per_sample_loss

warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
F64 = torch.float64


def _mlp(n_in=3, hidden=5, n_out=1, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_out),
    ).to(F64)


def _data(task, n=23, n_in=3, n_out=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, n_in, generator=g, dtype=F64)
    if task == "regression":
        y = torch.randn(n, n_out, generator=g, dtype=F64)
    else:
        y = torch.randint(0, n_out, (n,), generator=g)
    return X, y


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _loss_of_flat(model, X, y, task):
    """Mean loss as a function of the flat parameter vector (for torch.autograd.functional)."""
    shapes = [p.shape for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def f(theta):
        params, i = {}, 0
        for name, s in zip(names, shapes):
            params[name] = theta[i : i + s.numel()].reshape(s)
            i += s.numel()
        out = torch.func.functional_call(model, params, (X,))
        return per_sample_loss(out, y, task).mean()

    return f


def _explicit_gnh(model, X, y, task):
    """(1/n) sum_j J_j^T H_out,j J_j with an autograd loop over samples and outputs."""
    params = list(model.parameters())
    d = sum(p.numel() for p in params)
    G = torch.zeros(d, d, dtype=F64)
    for j in range(X.shape[0]):
        out = model(X[j : j + 1])[0]
        J = torch.stack(
            [
                torch.cat(
                    [g.reshape(-1) for g in torch.autograd.grad(out[c], params, retain_graph=True)]
                )
                for c in range(out.shape[0])
            ]
        )
        if task == "regression":
            Hout = torch.eye(out.shape[0], dtype=F64) * 2 / out.shape[0]
        else:
            p = torch.softmax(out.detach(), -1)
            Hout = torch.diag(p) - torch.outer(p, p)
        G += J.T @ Hout @ J
    return G / X.shape[0]


# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "task,n_out", [("regression", 1), ("regression", 2), ("classification", 3)]
)
def test_per_sample_grads_match_autograd_loop(task, n_out):
    model = _mlp(n_out=n_out)
    X, y = _data(task, n=9, n_out=n_out)
    ds = torch.utils.data.TensorDataset(X, y)
    G = per_sample_grads(model, ds, task=task, chunk_size=4)
    for j in range(X.shape[0]):
        loss = per_sample_loss(model(X[j : j + 1]), y[j : j + 1], task).sum()
        ref = torch.cat(
            [g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))]
        )
        torch.testing.assert_close(G[j], ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("task,n_out", [("regression", 2), ("classification", 3)])
def test_batch_hvp_exact_and_gnh_match_explicit(task, n_out):
    model = _mlp(n_out=n_out)
    X, y = _data(task, n_out=n_out)
    H = torch.autograd.functional.hessian(_loss_of_flat(model, X, y, task), _flat_params(model))
    G = _explicit_gnh(model, X, y, task)
    V = torch.randn(4, H.shape[0], dtype=F64)
    torch.testing.assert_close(
        hs.batch_hvp(model, (X,), y, task, "exact")(V), V @ H, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(
        hs.batch_hvp(model, (X,), y, task, "gnh")(V), V @ G, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("hessian", ["exact", "gnh"])
def test_dataset_hvp_does_not_depend_on_batch_size(hessian):
    model = _mlp(n_out=3)
    X, y = _data("classification", n_out=3)
    V = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=F64)
    ref = hs.batch_hvp(model, (X,), y, "classification", hessian)(V)
    for bs, vc in [(1, 1), (5, 2), (23, None), (100, None)]:
        out = hs.dataset_hvp(
            model, (X,), y, "classification", hessian, batch_size=bs, vec_chunk=vc
        )(V)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-13)


def test_explicit_hessian_and_sqrt_jacobian():
    model = _mlp(n_out=3)
    X, y = _data("classification", n_out=3)
    H = torch.autograd.functional.hessian(
        _loss_of_flat(model, X, y, "classification"), _flat_params(model)
    )
    torch.testing.assert_close(
        hs.explicit_hessian(model, (X,), y, "classification", "exact", batch_size=7, col_chunk=11),
        H,
        rtol=1e-10,
        atol=1e-12,
    )
    M = hs.sqrt_gnh_jacobian(model, (X,), y, "classification", chunk=5)
    assert M.shape == (X.shape[0] * 3, H.shape[0])
    torch.testing.assert_close(
        M.T @ M / X.shape[0], _explicit_gnh(model, X, y, "classification"), rtol=1e-10, atol=1e-12
    )
    jac = hs.JacobianGNH(M, X.shape[0])
    V = torch.randn(2, H.shape[0], dtype=F64)
    idx = torch.tensor([0, 3, 3, 7])
    ref = hs.batch_hvp(model, (X[idx],), y[idx], "classification", "gnh")(V)
    torch.testing.assert_close(jac.batch_matvec(idx, V), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [8, 60])  # n k < d (low-rank route) and n k >= d (explicit route)
def test_gnh_spectrum_reconstructs_gnh(n):
    model = _mlp(hidden=4)
    X, y = _data("regression", n=n)
    G = _explicit_gnh(model, X, y, "regression")
    spec = hs.gnh_spectrum(model, (X,), y, "regression", chunk=3)
    V, e = spec.vectors(), spec.evals
    torch.testing.assert_close(V.T @ V, torch.eye(V.shape[1], dtype=F64), atol=1e-9, rtol=0)
    torch.testing.assert_close(V @ torch.diag(e) @ V.T, G, atol=1e-10, rtol=1e-8)
    assert (spec.complement == 0.0) == (n < G.shape[0])


def test_lanczos_top_eigenpairs():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=F64))
    evals = torch.cat(
        [torch.tensor([9.0, -7.0, 5.0, 4.0], dtype=F64), torch.linspace(-0.5, 0.5, 36, dtype=F64)]
    )
    A = Q @ torch.diag(evals) @ Q.T
    spec = hs.lanczos(lambda V: V @ A, 40, k=4, n_iter=30)
    torch.testing.assert_close(
        spec.evals, torch.tensor([9.0, -7.0, 5.0, 4.0], dtype=F64), atol=1e-8, rtol=0
    )
    for i in range(4):
        v = spec.evecs[:, i]
        torch.testing.assert_close(A @ v, spec.evals[i] * v, atol=1e-7, rtol=0)
    full = hs.lanczos(lambda V: V @ A, 40, k=40, n_iter=40)
    torch.testing.assert_close(full.evals.sort().values, evals.sort().values, atol=1e-9, rtol=0)


def test_batched_cg_solves_each_row():
    torch.manual_seed(0)
    B = torch.randn(30, 30, dtype=F64)
    H = B @ B.T / 30
    b = torch.randn(5, 30, dtype=F64)
    b[2] = 0.0  # a zero right-hand side converges at once
    X, info = solvers.batched_cg(lambda V: V @ H, b, damping=0.1, tol=1e-12, max_iter=200)
    ref = torch.linalg.solve(H + 0.1 * torch.eye(30, dtype=F64), b.T).T
    torch.testing.assert_close(X, ref, rtol=1e-9, atol=1e-11)
    assert (
        info["converged"].all()
        and info["iterations"][2] == 0
        and (info["residuals"][[0, 1, 3, 4]] < 1e-10).all()
    )
    _, info = solvers.batched_cg(lambda V: V @ H, b, damping=0.1, tol=1e-12, max_iter=3)
    assert not info["converged"][0] and (info["iterations"] <= 3).all()
    _, info = solvers.batched_cg(lambda V: -(V @ H), b[:1], damping=0.01, tol=1e-12, max_iter=50)
    assert info["indefinite"][0]


def test_lissa_converges_and_detects_divergence():
    torch.manual_seed(0)
    B = torch.randn(10, 10, dtype=F64)
    H = B @ B.T / 10
    v = torch.randn(3, 10, dtype=F64)
    full = lambda idx, V: V @ H  # noqa: E731  (a deterministic "batch": LiSSA becomes the Neumann series)
    est, _ = solvers.lissa(full, v, n=10, damping=0.5, scale=10.0, depth=3000, batch_size=4)
    ref = torch.linalg.solve(H + 0.5 * torch.eye(10, dtype=F64), v.T).T
    torch.testing.assert_close(est, ref, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="scale"):
        solvers.lissa(full, v, n=10, damping=0.5, scale=0.1, depth=200)


def test_lissa_subspace_equals_plain_lissa():
    model = _mlp(hidden=6, n_out=3)
    X, y = _data("classification", n=7, n_out=3)  # n k = 21 < d: a proper subspace
    jac = hs.JacobianGNH(hs.sqrt_gnh_jacobian(model, (X,), y, "classification"), 7)
    v = torch.randn(2, jac.d, dtype=F64)
    a, _ = solvers.lissa(
        jac.batch_matvec, v, 7, 0.05, 3.0, 150, 5, 2, torch.Generator().manual_seed(3)
    )
    b, info = solvers.lissa_gnh_subspace(
        jac, v, 0.05, 3.0, 150, 5, 2, torch.Generator().manual_seed(3)
    )
    assert info["subspace_rank"] <= 21
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_grad_stats_lambda0():
    model = _mlp()
    X, y = _data("regression")
    G = per_sample_grads(model, torch.utils.data.TensorDataset(X, y), task="regression")
    st = hs.grad_stats(model, (X,), y, "regression", memory_budget_mb=0.001, per_tensor=True)
    assert st["lambda0"] == pytest.approx(float((G**2).mean()), rel=1e-12)
    assert sum(st["tensor_sq"].values()) == pytest.approx(float((G**2).sum()), rel=1e-12)
    assert st["d"] == flatten(trainable_params(model)).numel()


def test_output_hessian_sqrt():
    out = torch.randn(4, 3, dtype=F64)
    L = hs.output_hessian_sqrt(out, "classification")
    u = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(
        torch.einsum("bij,bkj,bk->bi", L, L, u), hs.output_hessian_apply(out, u, "classification")
    )
    L = hs.output_hessian_sqrt(out, "regression")
    torch.testing.assert_close(
        L @ L.transpose(1, 2), (2 / 3) * torch.eye(3, dtype=F64).expand(4, 3, 3)
    )
