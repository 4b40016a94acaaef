"""Unit tests of the attribution methods: tiny float64 problems with closed-form answers."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import tda_utils as tu
from tda_utils import methods as methods_mod
from tda_utils.linalg import kfac as ek
from tda_utils.data.registry import Splits
from tda_utils.linalg.grads import per_sample_grads
from tda_utils.analysis.metrics import cosine_rows
from tda_utils.models.registry import per_sample_loss

warnings.filterwarnings("ignore", category=FutureWarning)
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
F64 = torch.float64
RIDGE = 0.3


def rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
def linear_splits(n=40, p=3, k=1, n_test=5, noise=0.5, seed=0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(p, k, generator=g, dtype=F64)
    X = torch.randn(n, p, generator=g, dtype=F64)
    Xt = torch.randn(n_test, p, generator=g, dtype=F64)
    Y = X @ w + noise * torch.randn(n, k, generator=g, dtype=F64)
    Yt = Xt @ w + noise * torch.randn(n_test, k, generator=g, dtype=F64)
    return Splits("linear", TensorDataset(X, Y), TensorDataset(Xt, Yt), "regression")


def design(X):
    return torch.cat([X, torch.ones(X.shape[0], 1, dtype=F64)], dim=1)


def ridge_hessian(splits, ridge):
    """Hessian of (1/n) sum_j mean_k (theta^T xa_j - y_j)^2 + ridge/2 |theta|^2 for k = 1."""
    Xa = design(splits.train.tensors[0])
    n = Xa.shape[0]
    return 2 / n * Xa.T @ Xa + ridge * torch.eye(Xa.shape[1], dtype=F64)


def ridge_model(splits, ridge=RIDGE, drop=None):
    """nn.Linear at the exact ridge minimiser (optionally with loss_drop / n removed)."""
    X, Y = splits.train.tensors
    Xa = design(X)
    n, p = X.shape
    A = ridge_hessian(splits, ridge)
    b = 2 / n * Xa.T @ Y
    if drop is not None:
        A = A - 2 / n * torch.outer(Xa[drop], Xa[drop])
        b = b - 2 / n * Xa[drop, :, None] @ Y[drop, None]
    theta = torch.linalg.solve(A, b)
    model = nn.Linear(p, Y.shape[1]).to(F64)
    with torch.no_grad():
        model.weight.copy_(theta[:p].T)
        model.bias.copy_(theta[p])
    return model


def ols_model(splits):
    X, Y = splits.train.tensors
    theta = torch.linalg.lstsq(design(X), Y).solution
    model = nn.Linear(X.shape[1], Y.shape[1]).to(F64)
    with torch.no_grad():
        model.weight.copy_(theta[:-1].T)
        model.bias.copy_(theta[-1])
    return model


def mlp_splits(task="regression", n=30, p=3, n_test=4, n_classes=3, seed=0) -> Splits:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, p, generator=g, dtype=F64)
    Xt = torch.randn(n_test, p, generator=g, dtype=F64)
    if task == "regression":
        f = lambda Z: torch.sin(Z.sum(1, keepdim=True))  # noqa: E731
        Y = f(X) + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)
        Yt = f(Xt)
        return Splits("mlp-reg", TensorDataset(X, Y), TensorDataset(Xt, Yt), "regression")
    Y = torch.randint(0, n_classes, (n,), generator=g)
    Yt = torch.randint(0, n_classes, (n_test,), generator=g)
    return Splits(
        "mlp-cls",
        TensorDataset(X, Y),
        TensorDataset(Xt, Yt),
        "classification",
        meta={"n_classes": n_classes},
    )


def mlp(splits, hidden=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(splits.n_features, hidden),
        nn.Tanh(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, splits.n_outputs),
    ).to(F64)


def grads(model, splits, split, indices=None):
    ds = splits.train if split == "train" else splits.test
    return per_sample_grads(model, ds, indices, splits.task)


# ----------------------------------------------------------------------------------------------
# Influence on ridge regression: closed forms
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hessian", ["gnh", "exact"])
def test_if_explicit_equals_first_order_loo_on_ridge(hessian):
    sp = linear_splits(n=200)
    model = ridge_model(sp)
    tr = list(range(0, 200, 20))
    s = tu.attribute("if_explicit", model, sp, tr, None, damping=RIDGE, hessian=hessian)
    A = ridge_hessian(sp, RIDGE)
    Gt, Gq = grads(model, sp, "train", tr), grads(model, sp, "test")
    expected = Gq @ torch.linalg.solve(A, Gt.T) / sp.n_train
    torch.testing.assert_close(s.values, expected, rtol=1e-10, atol=1e-14)
    # and the first-order change is close to the actual leave-one-out change (error O(1/n))
    Xt, Yt = sp.test.tensors
    base = per_sample_loss(model(Xt), Yt, "regression")
    loo = torch.stack(
        [per_sample_loss(ridge_model(sp, drop=i)(Xt), Yt, "regression") - base for i in tr], 1
    )
    assert rel(s.values, loo.detach()) < 0.05
    assert s.diagnostics["damping"] == RIDGE and s.diagnostics["lambda0"] is None


def test_if_explicit_damping_list_and_multiple():
    sp = linear_splits()
    model = ridge_model(sp)
    s = tu.attribute("if_explicit", model, sp, damping_multiple=[1, 100])
    lam0 = s.diagnostics["lambda0"]
    Gt, Gq = grads(model, sp, "train"), grads(model, sp, "test")
    assert lam0 == pytest.approx(float((Gt**2).mean()), rel=1e-12)
    A0 = ridge_hessian(sp, 0.0)
    for m in (1, 100):
        expected = (
            Gq
            @ torch.linalg.solve(A0 + m * lam0 * torch.eye(A0.shape[0], dtype=F64), Gt.T)
            / sp.n_train
        )
        torch.testing.assert_close(
            s.diagnostics["values_by_damping"][m], expected, rtol=1e-10, atol=1e-14
        )
    torch.testing.assert_close(s.values, s.diagnostics["values_by_damping"][1])
    # the exact Hessian with several dampings uses one eigendecomposition; a single one may solve
    e = tu.attribute("if_explicit", model, sp, damping=[0.1, 1.0], hessian="exact")
    one = tu.attribute("if_explicit", model, sp, damping=1.0, hessian="exact", solver="solve")
    assert e.diagnostics["route"] == "eigh" and one.diagnostics["route"] == "solve"
    torch.testing.assert_close(
        e.diagnostics["values_by_damping"][1.0], one.values, rtol=1e-10, atol=1e-14
    )


def test_cg_and_lissa_agree_with_if_explicit_on_ridge():
    sp = linear_splits()
    model = ridge_model(sp)
    ref = tu.attribute("if_explicit", model, sp, damping=RIDGE).values
    c = tu.attribute("cg", model, sp, damping=RIDGE, tol=1e-12)
    assert rel(c.values, ref) < 1e-6
    assert c.diagnostics["converged"].all() and (c.diagnostics["residuals"] < 1e-10).all()
    assert c.diagnostics["iterations"].shape == (sp.n_test,)
    li = tu.attribute("lissa", model, sp, damping=RIDGE, depth=300, batch_size=2000, repeat=2)
    assert rel(li.values, ref) < 1e-2


def test_cg_and_lissa_on_mlp_gnh_and_exact():
    sp = mlp_splits("classification", n=16)
    model = mlp(sp, hidden=4)
    for hessian, damping in [("gnh", 1e-3), ("exact", 0.5)]:
        ref = tu.attribute("if_explicit", model, sp, damping=damping, hessian=hessian).values
        for mode in ["jacobian", "autodiff"] if hessian == "gnh" else ["autodiff"]:
            c = tu.attribute(
                "cg", model, sp, damping=damping, hessian=hessian, tol=1e-11, hvp_mode=mode
            )
            assert rel(c.values, ref) < 1e-6, (hessian, mode)
    # LiSSA: the Jacobian-subspace recursion equals the jvp/vjp one (same batches)
    a = tu.attribute(
        "lissa", model, sp, damping=1e-2, depth=60, batch_size=8, scale=2.0, hvp_mode="jacobian"
    )
    b = tu.attribute(
        "lissa", model, sp, damping=1e-2, depth=60, batch_size=8, scale=2.0, hvp_mode="autodiff"
    )
    torch.testing.assert_close(a.values, b.values, rtol=1e-8, atol=1e-12)
    # LiSSA-H: the exact Hessian; large batches drawn with replacement make H_B close to H, and
    # 200 steps of a 0.9-contraction converge, so it matches CG on the exact Hessian
    h = tu.attribute("lissa_h", model, sp, damping=0.5, depth=200, batch_size=4000, scale=5.0)
    ref = tu.attribute("cg", model, sp, damping=0.5, hessian="exact", tol=1e-11).values
    assert h.diagnostics["hessian"] == "exact" and rel(h.values, ref) < 0.02
    assert cosine_rows(h.values, ref).min() > 0.999


# ----------------------------------------------------------------------------------------------
# Unified view: if_time against the gold standard
# ----------------------------------------------------------------------------------------------
def _gold_gap(n, lr=0.1, epochs=30):
    """Relative error of if_time (damping 0, exact H) against full-batch every-batch further
    training of OLS linear regression started at its minimiser, per evaluation time."""
    sp = linear_splits(n=n, p=3, noise=1.0, n_test=6, seed=1)
    model = ols_model(sp)
    left_out = list(range(0, n, n // 8))[:8]
    cfg = tu.FurtherTrainingConfig(
        optimizer="sgd",
        lr=lr,
        epochs=epochs,
        batch_size=n,
        seeds=(0,),
        left_out=left_out,
        leave_out="every_batch",
        dtype="float64",
    )
    gold = tu.further_train(model, sp, cfg, cache_dir=None, progress=False)
    tau = gold.attribution(subtract_mean=False)  # (E, Q, L)
    s = tu.attribute(
        "if_time", model, sp, left_out, None, times=gold.times, lr=lr, damping=0.0, hessian="exact"
    )
    pred = s.diagnostics["values_by_time"]
    assert pred.shape == tau.shape
    torch.testing.assert_close(s.values, pred[-1])
    return torch.stack([rel(pred[e], tau[e]) * torch.ones(()) for e in range(tau.shape[0])])


def test_if_time_matches_gold_standard_on_quadratic():
    gap500 = _gold_gap(500)
    assert (gap500 < 1e-2).all(), gap500
    assert _gold_gap(2000).max() < _gold_gap(250).max()


def test_if_time_limits_and_routes():
    sp = mlp_splits("regression", n=20)
    model = mlp(sp, hidden=3)
    lr, lam = 0.05, 0.01
    t = tu.attribute("if_time", model, sp, times=[0, 1, 10, 10**7], lr=lr, damping=lam)
    vt = t.diagnostics["values_by_time"]
    assert vt[0].abs().max() == 0
    gd = tu.attribute("grad_dot", model, sp).values
    torch.testing.assert_close(
        vt[1], gd * lr / sp.n_train, rtol=1e-10, atol=1e-14
    )  # one step: exactly first order
    ife = tu.attribute("if_explicit", model, sp, damping=lam).values
    torch.testing.assert_close(vt[-1], ife, rtol=1e-8, atol=1e-12)
    # the routes agree: low-rank GNH == explicit GNH eigh; Lanczos with every eigenpair == eigh
    e = tu.attribute("if_time", model, sp, times=[1, 10, 100], lr=lr, damping=lam, route="eigh")
    lo = tu.attribute("if_time", model, sp, times=[1, 10, 100], lr=lr, damping=lam, route="lowrank")
    torch.testing.assert_close(
        e.diagnostics["values_by_time"], lo.diagnostics["values_by_time"], rtol=1e-8, atol=1e-13
    )
    for hessian in ("gnh", "exact"):
        ref = tu.attribute(
            "if_time", model, sp, times=[3, 30], lr=lr, damping=lam, route="eigh", hessian=hessian
        )
        d = ref.diagnostics["rank"]
        la = tu.attribute(
            "if_time",
            model,
            sp,
            times=[3, 30],
            lr=lr,
            damping=lam,
            route="lanczos",
            hessian=hessian,
            n_eigs=d,
        )
        torch.testing.assert_close(
            la.diagnostics["values_by_time"],
            ref.diagnostics["values_by_time"],
            rtol=1e-6,
            atol=1e-12,
        )
    # few eigenpairs: the complement is first order, exact at t = 1 whatever n_eigs
    few = tu.attribute(
        "if_time", model, sp, times=[1, 30], lr=lr, damping=lam, route="lanczos", n_eigs=5
    )
    torch.testing.assert_close(
        few.diagnostics["values_by_time"][0], gd * lr / sp.n_train, rtol=1e-8, atol=1e-13
    )


# ----------------------------------------------------------------------------------------------
# DataInf, EK-FAC, TRAK
# ----------------------------------------------------------------------------------------------
def _datainf_brute(model, sp, tr, c, sample=None):
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    Gall = grads(model, sp, "train")
    Gs = Gall if sample is None else Gall[sample]
    Gq = grads(model, sp, "test")
    m = Gs.shape[0]
    out = torch.zeros(Gq.shape[0], len(tr), dtype=F64)
    o = 0
    for _, size in zip(names, sizes):
        sl = slice(o, o + size)
        o += size
        lam = float((Gs[:, sl] ** 2).mean()) / c
        for q in range(Gq.shape[0]):
            v = Gq[q, sl]
            acc = torch.zeros_like(v)
            for j in range(m):
                g = Gs[j, sl]
                acc += v - (v @ g) / (lam + g @ g) * g
            vhat = acc / (m * lam)
            for a, i in enumerate(tr):
                out[q, a] += vhat @ Gall[i, sl] / sp.n_train
    return out


def test_datainf_equals_brute_force():
    sp = mlp_splits("classification", n=12)
    model = mlp(sp, hidden=4)
    tr = [0, 3, 5, 11]
    s = tu.attribute("datainf", model, sp, tr, None)
    torch.testing.assert_close(
        s.values, _datainf_brute(model, sp, tr, 10.0), rtol=1e-10, atol=1e-14
    )
    s = tu.attribute("datainf", model, sp, tr, None, c=0.5, n_hessian_samples=7, seed=3)
    sample = s.diagnostics["hessian_sample"]
    assert len(sample) == 7
    torch.testing.assert_close(
        s.values, _datainf_brute(model, sp, tr, 0.5, sample), rtol=1e-10, atol=1e-14
    )


@pytest.mark.parametrize("k", [1, 2])
def test_ekfac_equals_explicit_gnh_on_linear_model(k):
    sp = linear_splits(n=30, p=4, k=k)
    model = ridge_model(sp) if k == 1 else ols_model(sp)
    for damping in (1e-3, 0.3):
        e = tu.attribute("ekfac", model, sp, damping=damping)
        ref = tu.attribute("if_explicit", model, sp, damping=damping, hessian="gnh").values
        torch.testing.assert_close(e.values, ref, rtol=1e-8, atol=1e-14)
        assert e.diagnostics["ignored_params"] == []


def _conv_splits(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 5, 5, generator=g, dtype=F64)
    Xt = torch.randn(5, 1, 5, 5, generator=g, dtype=F64)
    f = lambda Z: 3 * Z[:, :, 1:4, 1:4].mean((1, 2, 3))[:, None]  # noqa: E731
    return Splits(
        "conv",
        TensorDataset(X, f(X) + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)),
        TensorDataset(Xt, f(Xt)),
        "regression",
    )


def _conv_model(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1, stride=2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(27, 1),
        nn.LayerNorm(1),
    ).to(F64)


def test_ekfac_conv_eigenvalue_correction_is_exact_diagonal():
    """The corrected eigenvalues are exactly the diagonal of each layer's GNH block in the
    Kronecker eigenbasis (conv layers included); the approximation only drops off-diagonal terms."""
    sp = _conv_splits()
    model = _conv_model()
    X, y = sp.train.tensors
    layers, ignored, _ = ek.kfac_layers(model)
    assert ignored == ["4.weight", "4.bias"]  # LayerNorm: not Kronecker-factored
    ek.fit_ekfac(model, (X,), y, "regression", chunk=7, layers=layers)
    from tda_utils.linalg.hessian import explicit_hessian

    G = explicit_hessian(model, (X,), y, "regression", "gnh")
    offsets, o = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = o
        o += p.numel()
    for ly in layers:
        in_w = ly.in_dim - 1
        idx = torch.tensor(
            [
                [
                    offsets[ly.weight] + a * in_w + b if b < in_w else offsets[ly.bias] + a
                    for b in range(ly.in_dim)
                ]
                for a in range(ly.out_dim)
            ]
        )
        block = G[idx.reshape(-1)][:, idx.reshape(-1)].reshape(
            ly.out_dim, ly.in_dim, ly.out_dim, ly.in_dim
        )
        diag = torch.einsum("os,ia,oipj,ps,ja->sa", ly.QS, ly.QA, block, ly.QS, ly.QA)
        torch.testing.assert_close(ly.evals, diag, rtol=1e-9, atol=1e-13)
    # per-sample gradients rotated from their factors == the dense per-sample gradients rotated
    shapes = {n: p.shape for n, p in model.named_parameters()}
    offs = {n: (o, o + p.numel()) for (n, p), o in zip(model.named_parameters(), offsets.values())}
    dense = grads(model, sp, "train", range(6))
    fast = ek.rotated_loss_grads(model, layers, (X[:6],), y[:6], "regression")
    for ly, r in zip(layers, fast):
        torch.testing.assert_close(
            r, ek.rotate(ek.layer_matrices(dense, ly, offs, shapes), ly), rtol=1e-9, atol=1e-13
        )


def test_ekfac_conv_correlates_with_explicit_gnh():
    sp = _conv_splits()
    model = _conv_model()[:4]  # without the LayerNorm: every parameter is covered
    for mult, floor in [(1, 0.8), (100, 0.999)]:
        e = tu.attribute("ekfac", model, sp, damping_multiple=mult)
        ref = tu.attribute("if_explicit", model, sp, damping_multiple=mult)
        assert e.diagnostics["lambda0"] == pytest.approx(ref.diagnostics["lambda0"], rel=1e-12)
        assert cosine_rows(e.values, ref.values).min() > floor


def test_ekfac_classification_close_to_explicit_gnh():
    """Cross-entropy: the GNH block of a linear layer is not an exact Kronecker product, so EK-FAC
    approximates it (closely for a single layer, less so across layers at light damping)."""
    sp = mlp_splits("classification", n=40)
    torch.manual_seed(0)
    for model, floor in [(nn.Linear(3, 3).to(F64), 0.98), (mlp(sp), 0.8)]:
        e = tu.attribute("ekfac", model, sp, damping_multiple=1)
        ref = tu.attribute("if_explicit", model, sp, damping_multiple=1)
        assert cosine_rows(e.values, ref.values).min() > floor


class _TiedLinear(nn.Module):
    """A Linear whose weight is used a second time through F.linear (invisible to its hooks)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return self.head(torch.nn.functional.linear(h, self.lin.weight))


def test_ekfac_ignores_layers_used_outside_their_forward():
    sp = mlp_splits("regression", n=15)
    torch.manual_seed(0)
    model = _TiedLinear().to(F64)
    X, y = sp.train.tensors
    layers, _, _ = ek.kfac_layers(model)
    assert ek.unhooked_layers(model, layers, (X,), y, "regression") == ["lin"]
    with pytest.raises(ValueError, match="outside their module's forward"):
        ek.fit_ekfac(model, (X,), y, "regression", layers=layers)
    with pytest.warns(UserWarning, match="outside their module's forward"):
        s = tu.attribute("ekfac", model, sp, damping=0.1)
    assert (
        s.diagnostics["unhooked_layers"] == ["lin"]
        and "lin.weight" in s.diagnostics["ignored_params"]
    )
    # ignoring the layer is EK-FAC on the same model with that layer frozen (same absolute damping)
    frozen = copy.deepcopy(model)
    frozen.lin.requires_grad_(False)
    torch.testing.assert_close(
        s.values, tu.attribute("ekfac", frozen, sp, damping=0.1).values, rtol=1e-10, atol=1e-14
    )


def test_ekfac_with_a_frozen_layer_equals_ekfac_on_the_model_without_it():
    """A frozen first layer is a fixed feature map: EK-FAC on the model equals EK-FAC on the rest
    of the model applied to the features."""
    sp = mlp_splits("classification", n=25)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)
    ).to(F64)
    model[0].requires_grad_(False)
    rest = model[2:]
    with torch.no_grad():
        feats = Splits(
            "features",
            TensorDataset(model[:2](sp.train.tensors[0]), sp.train.tensors[1]),
            TensorDataset(model[:2](sp.test.tensors[0]), sp.test.tensors[1]),
            "classification",
            meta={"n_classes": 3},
        )
    for opts in ({"damping": 0.05}, {"damping_multiple": 10}):
        full = tu.attribute("ekfac", model, sp, [1, 4, 7, 20], None, **opts)
        without = tu.attribute("ekfac", rest, feats, [1, 4, 7, 20], None, **opts)
        assert (
            full.diagnostics["layers"] == without.diagnostics["layers"] == ["2", "4"]
        )  # Sequential slices keep names
        torch.testing.assert_close(full.values, without.values, rtol=1e-10, atol=1e-14)


def _output_grads(model, sp, split, task):
    X, y = (sp.train if split == "train" else sp.test).tensors
    rows = []
    for j in range(X.shape[0]):
        out = model(X[j : j + 1])[0]
        if task == "regression":
            f = out[0]
        else:
            lp = torch.log_softmax(out, -1)[y[j]]
            f = lp - torch.log1p(-lp.exp())
        rows.append(
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(f, list(model.parameters()))])
        )
    return torch.stack(rows)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_trak_equals_gnh_influence_of_output_function(task):
    sp = mlp_splits(task, n=30)
    model = mlp(sp, hidden=3)  # d = 3*3+3+9+3+3*k+k < n
    d = sum(p.numel() for p in model.parameters())
    Phi, Phq = _output_grads(model, sp, "train", task), _output_grads(model, sp, "test", task)
    n = sp.n_train
    lam = 0.05
    ref = Phq @ torch.linalg.solve(Phi.T @ Phi / n + lam * torch.eye(d, dtype=F64), Phi.T) / n
    s = tu.attribute("trak", model, sp, proj_dim=d, damping=lam, reweight=False)
    assert not s.diagnostics["projected"]
    torch.testing.assert_close(s.values, ref, rtol=1e-9, atol=1e-13)
    # a Gaussian projection with proj_dim >= d and (almost) no damping gives the unprojected
    # scores
    # (when Phi^T Phi is well conditioned: a linear model)
    torch.manual_seed(0)
    lin = nn.Linear(sp.n_features, sp.n_outputs).to(F64)
    Phi, Phq = _output_grads(lin, sp, "train", task), _output_grads(lin, sp, "test", task)
    d = Phi.shape[1]
    ref0 = Phq @ torch.linalg.solve(Phi.T @ Phi / n, Phi.T) / n
    g = tu.attribute(
        "trak", lin, sp, proj_dim=d + 7, damping=1e-11, reweight=False, projection="gaussian"
    )
    assert g.diagnostics["projected"] and rel(g.values, ref0) < 1e-6
    if task == "classification":
        r = tu.attribute("trak", model, sp, proj_dim=100, damping=lam)
        X, y = sp.train.tensors
        p = torch.softmax(model(X), -1).gather(1, y[:, None]).squeeze(1).detach()
        torch.testing.assert_close(r.values, ref * (1 - p)[None, :], rtol=1e-9, atol=1e-13)


def test_trak_projection_is_deterministic_and_chunk_free():
    sp = mlp_splits("classification", n=25)
    model = mlp(sp)
    a = tu.attribute("trak", model, sp, [1, 4, 9], None, proj_dim=16, seed=5)
    b = tu.attribute(
        "trak", model, sp, [1, 4, 9], None, proj_dim=16, seed=5, memory_budget_mb=0.001
    )
    c = tu.attribute("trak", model, sp, [1, 4, 9], None, proj_dim=16, seed=6)
    torch.testing.assert_close(a.values, b.values, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(a.values, c.values)


def test_trak_count_sketch_preserves_the_scores():
    """A count sketch with proj_dim >> d (here d = 89) has few collisions: nearly the unprojected
    scores: with the same absolute damping they depend on the features' inner products only."""
    sp = mlp_splits("classification", n=25)
    model = mlp(sp)
    exact = tu.attribute("trak", model, sp, [1, 4, 9, 12], None, projection="none", damping=1e-2)
    sk = tu.attribute(
        "trak", model, sp, [1, 4, 9, 12], None, projection="sketch", proj_dim=3000, damping=1e-2
    )
    sk2 = tu.attribute(
        "trak",
        model,
        sp,
        [1, 4, 9, 12],
        None,
        projection="sketch",
        proj_dim=3000,
        damping=1e-2,
        memory_budget_mb=0.01,
    )
    assert sk.diagnostics["projection_used"] == "sketch"
    assert cosine_rows(exact.values.flatten(), sk.values.flatten()).item() > 0.99
    torch.testing.assert_close(sk.values, sk2.values, rtol=1e-9, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Invariances and bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,opts",
    [
        ("grad_dot", {}),
        ("grad_cos", {}),
        ("datainf", {}),
        ("ekfac", {}),
        ("if_explicit", {}),
        ("cg", {"tol": 1e-12}),
        ("cg", {"tol": 1e-12, "hvp_mode": "autodiff"}),
        ("lissa", {"depth": 20, "scale": 5.0, "batch_size": 6}),
        ("if_time", {"times": [1, 5], "lr": 0.1, "route": "lowrank"}),
    ],
)
def test_results_do_not_depend_on_memory_budget(method, opts):
    sp = mlp_splits("classification", n=20, n_test=3)
    model = mlp(sp, hidden=4)
    a = tu.attribute(method, model, sp, [0, 5, 7], None, **opts)
    b = tu.attribute(method, model, sp, [0, 5, 7], None, memory_budget_mb=0.002, **opts)
    torch.testing.assert_close(a.values, b.values, rtol=1e-9, atol=1e-14)


def test_results_do_not_depend_on_hvp_batch_size():
    sp = mlp_splits("regression", n=12)
    model = mlp(sp, hidden=3)
    for hessian in ("gnh", "exact"):
        vals = [
            tu.attribute(
                "cg",
                model,
                sp,
                damping=2.0,
                hessian=hessian,
                tol=1e-12,
                hvp_mode="autodiff",
                hvp_batch_size=bs,
            ).values
            for bs in (5, 128)
        ]
        for v in vals[1:]:
            torch.testing.assert_close(v, vals[0], rtol=1e-9, atol=1e-14)
    e = [
        tu.attribute(
            "if_explicit", model, sp, damping=0.5, hessian="exact", hvp_batch_size=bs
        ).values
        for bs in (3, 128)
    ]
    torch.testing.assert_close(e[0], e[1], rtol=1e-10, atol=1e-14)


def test_float32_model_runs_in_its_dtype_or_float64():
    sp = mlp_splits("regression", n=20)
    model = mlp(sp, hidden=4).float()
    s32 = tu.attribute("cg", model, sp, damping=0.5)
    s64 = tu.attribute("cg", model, sp, damping=0.5, dtype="float64", tol=1e-12)
    assert s32.values.dtype == torch.float32 and s64.values.dtype == F64
    assert rel(s32.values.double(), s64.values) < 1e-4
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


def test_bad_input_raises_clear_errors():
    sp = mlp_splits("regression", n=12)
    model = mlp(sp, hidden=3)
    with pytest.raises(ValueError, match="method='nope'"):
        tu.attribute("nope", model, sp)
    for m in ("if_explicit", "cg", "lissa", "ekfac", "trak"):
        with pytest.raises(ValueError, match="damping"):
            tu.attribute(m, model, sp, damping=0.0)
        with pytest.raises(ValueError, match="damping_multiple"):
            tu.attribute(m, model, sp, damping_multiple=-1.0)
    with pytest.raises(ValueError, match="not both"):
        tu.attribute("cg", model, sp, damping=1.0, damping_multiple=1.0)
    with pytest.raises(ValueError, match="max_params.*datainf, cg, lissa, lissa_h, ekfac, trak"):
        tu.attribute("if_explicit", model, sp, max_params=10)
    with pytest.raises(ValueError, match="unknown option.*'dampin'"):
        tu.attribute("cg", model, sp, dampin=1.0)
    with pytest.raises(ValueError, match="hessian"):
        tu.attribute("cg", model, sp, hessian="fisher")
    with pytest.raises(ValueError, match="scale"):
        tu.attribute("lissa", model, sp, damping=0.1, scale=1e-3, depth=50)
    with pytest.raises(ValueError, match="times"):
        tu.attribute("if_time", model, sp, lr=0.1)
    with pytest.raises(ValueError, match="times"):
        tu.attribute("if_time", model, sp, lr=0.1, times=[1.5])
    with pytest.raises(ValueError, match="lr"):
        tu.attribute("if_time", model, sp, times=[1])
    with pytest.raises(ValueError, match="reweight"):
        tu.attribute("trak", model, sp, reweight=True)
    with pytest.raises(ValueError, match="single number"):
        tu.attribute("cg", model, sp, damping_multiple=[1, 10])
    with pytest.raises(ValueError, match="hvp_mode"):
        tu.attribute("cg", model, sp, hessian="exact", hvp_mode="jacobian")
    with pytest.raises(ValueError, match="n_eigs"):
        tu.attribute(
            "if_time", model, sp, times=[1], lr=0.1, route="lanczos", memory_budget_mb=0.001
        )
    with pytest.raises(ValueError, match="memory_budget_mb"):
        tu.attribute("grad_dot", model, sp, memory_budget_mb=0)


def test_lissa_auto_scale_takes_the_smallest_converging_grid_value():
    """The paper's protocol: scale = the smallest grid value for which LiSSA converges."""
    sp = mlp_splits("regression", n=30)
    model = mlp(sp)
    auto = tu.attribute("lissa_h", model, sp, [0, 3], [0, 1], depth=200, damping_multiple=1.0)
    chosen = auto.diagnostics["scale"]
    assert chosen in methods_mod.LISSA_SCALE_GRID and auto.diagnostics["scales_diverged"] == [10]
    for smaller in auto.diagnostics["scales_diverged"]:
        assert smaller < chosen
        with pytest.raises(ValueError, match="LiSSA diverged"):
            tu.attribute(
                "lissa_h", model, sp, [0, 3], [0, 1], depth=200, damping_multiple=1.0, scale=smaller
            )
    fixed = tu.attribute(
        "lissa_h", model, sp, [0, 3], [0, 1], depth=200, damping_multiple=1.0, scale=chosen
    )
    torch.testing.assert_close(auto.values, fixed.values)
