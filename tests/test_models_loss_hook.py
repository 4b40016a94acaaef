"""The custom per-sample loss hook (``loss_fn``): exactness against references, and clear errors."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import tda_utils as tu
from tda_utils.linalg.grads import flatten, per_sample_grads, trainable_params, unflatten
from tda_utils.models.registry import loss_key, resolve_loss
from tda_utils.final.training import epoch_orders

from .conftest import make_splits, tiny_model


def mse(output, target):
    """The built-in regression loss written by hand: (..., k), (..., k) -> (...)."""
    return ((output - target) ** 2).mean(-1)


def huber(output, target):
    """Huber loss with delta 0.5, averaged over outputs: (..., k), (..., k) -> (...)."""
    r = output - target
    a = r.abs()
    return torch.where(a < 0.5, 0.5 * r**2, 0.5 * (a - 0.25)).mean(-1)


@pytest.fixture(scope="module")
def setup():
    splits = make_splits("regression", n_train=17, n_test=4)
    return splits, tiny_model(splits, hidden=8, train_epochs=5)


def _ft_cfg(engine: str, **kw) -> tu.FurtherTrainingConfig:
    base = dict(
        lr=0.05,
        epochs=2,
        batch_size=8,
        seeds=(0, 1),
        left_out=(0, 5),
        engine=engine,
        dtype="float64",
    )
    return tu.FurtherTrainingConfig(**{**base, **kw})


# ------------------------------------------------------------------ (1) built-in loss reproduced
def test_builtin_mse_as_loss_fn_reproduces_defaults(setup):
    splits, model = setup
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8, seed=1)
    fresh = lambda: tu.build_model("mlp", splits, seed=2, hidden=4).double()  # noqa: E731
    a = tu.train_model(fresh(), splits, cfg, cache_dir=None, progress=False)
    b = tu.train_model(fresh(), splits, cfg, cache_dir=None, progress=False, loss_fn=mse)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    for engine in ("sequential", "vectorized"):
        kw = dict(cache_dir=None, progress=False, device="cpu")
        r0 = tu.further_train(model, splits, _ft_cfg(engine), **kw)
        r1 = tu.further_train(model, splits, _ft_cfg(engine), loss_fn=mse, **kw)
        # vectorized: the default takes the MLP fast path, the custom loss autograd
        torch.testing.assert_close(r1.loss_full, r0.loss_full, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(r1.loss_loo, r0.loss_loo, rtol=1e-12, atol=1e-14)
    for method, opts in (
        ("grad_dot", {}),
        ("grad_cos", {}),
        ("datainf", {}),
        ("cg", dict(hessian="exact", damping=2.0)),
    ):
        s0 = tu.attribute(method, model, splits, device="cpu", **opts).values
        s1 = tu.attribute(method, model, splits, device="cpu", loss_fn=mse, **opts).values
        torch.testing.assert_close(s1, s0, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ (2) a custom loss, exactly
def test_custom_loss_per_sample_grads_match_autograd_loop(setup):
    splits, model = setup
    got = per_sample_grads(model, splits.train, task="regression", loss_fn=huber)
    x, y = splits.train.tensors
    for j in range(len(y)):
        model.zero_grad()
        huber(model(x[j : j + 1]), y[j : j + 1]).sum().backward()
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(got[j], ref, rtol=1e-12, atol=1e-14)
    model.zero_grad(set_to_none=True)
    builtin = per_sample_grads(model, splits.train, task="regression")
    assert (got - builtin).abs().max() > 1e-3  # the hook really changes the loss


def _reference_further_training(model, splits, cfg, loss_fn):
    """A plain loop: SGD on ``loss_fn`` (mean over each batch of the seed's permutation, i deleted);
    query ``loss_fn`` after every epoch. Returns (full (E, S, Q), loo (E, S, L, Q))."""
    x, y = splits.train.tensors
    xq, yq = splits.test.tensors
    n = len(y)
    full, loo = [], []
    for seed in cfg.seeds:
        runs = []
        for i in (None, *cfg.left_out):
            m = copy.deepcopy(model)
            opt = torch.optim.SGD(m.parameters(), lr=cfg.lr)
            per_epoch = []
            for perm in epoch_orders(n, seed, cfg.epochs):
                order = [j for j in perm.tolist() if j != i]
                for s in range(0, len(order), cfg.batch_size):
                    idx = torch.tensor(order[s : s + cfg.batch_size])
                    opt.zero_grad()
                    loss_fn(m(x[idx]), y[idx]).mean().backward()
                    opt.step()
                with torch.no_grad():
                    per_epoch.append(loss_fn(m(xq), yq))
            runs.append(torch.stack(per_epoch))  # (E, Q)
        full.append(runs[0])
        loo.append(torch.stack(runs[1:], dim=1))  # (E, L, Q)
    return torch.stack(full, dim=1), torch.stack(loo, dim=1)


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_custom_loss_further_train_matches_reference_loop(setup, engine):
    splits, model = setup
    cfg = _ft_cfg(engine)
    res = tu.further_train(
        model, splits, cfg, cache_dir=None, progress=False, device="cpu", loss_fn=huber
    )
    ref_full, ref_loo = _reference_further_training(model, splits, cfg, huber)
    torch.testing.assert_close(res.loss_full, ref_full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.loss_loo, ref_loo, rtol=1e-10, atol=1e-12)
    default = tu.further_train(model, splits, cfg, cache_dir=None, progress=False, device="cpu")
    assert (default.loss_loo - res.loss_loo).abs().max() > 1e-8


_PROJ32 = torch.tensor([[1.5]])  # a float32 constant: the loss works in the runs' dtype only


def projected_mse(output, target):
    """MSE after a fixed float32 projection (a matmul refuses a float64 input)."""
    return ((output - target) @ _PROJ32).pow(2).mean(-1)


def test_custom_loss_with_float32_constants_in_a_float32_run(setup):
    """The query loss runs in the runs' dtype, so a loss holding float32 constants works."""
    splits, model = setup
    model32 = copy.deepcopy(model).float()
    splits32 = tu.data.Splits(
        name=splits.name,
        task=splits.task,
        train=torch.utils.data.TensorDataset(*(t.float() for t in splits.train.tensors)),
        test=torch.utils.data.TensorDataset(*(t.float() for t in splits.test.tensors)),
        meta=splits.meta,
    )
    runs = {}
    for engine in ("sequential", "vectorized"):
        cfg = _ft_cfg(engine, dtype="float32")
        runs[engine] = tu.further_train(
            model32, splits32, cfg, cache_dir=None, progress=False, loss_fn=projected_mse
        )
        assert runs[engine].loss_loo.dtype == torch.float64
    torch.testing.assert_close(
        runs["vectorized"].loss_loo, runs["sequential"].loss_loo, rtol=1e-4, atol=1e-6
    )


def test_custom_loss_if_explicit_matches_explicit_hessian_solve(setup):
    splits, model = setup
    params = trainable_params(model)
    x, y = splits.train.tensors

    def mean_loss(flat):
        out = torch.func.functional_call(model, unflatten(flat, params), (x,))
        return huber(out, y).mean()

    theta = flatten(params)
    H = torch.autograd.functional.hessian(mean_loss, theta)
    lam = 0.05 + max(0.0, -float(torch.linalg.eigvalsh(H)[0]))  # H + lam I positive definite
    got = tu.attribute(
        "if_explicit", model, splits, device="cpu", loss_fn=huber, hessian="exact", damping=lam
    ).values
    Gt = per_sample_grads(model, splits.train, task="regression", loss_fn=huber)
    Gq = per_sample_grads(model, splits.test, task="regression", loss_fn=huber)
    eye = torch.eye(len(theta), dtype=H.dtype)
    ref = Gq @ torch.linalg.solve(H + lam * eye, Gt.T) / splits.n_train
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-12)
    cg = tu.attribute(
        "cg",
        model,
        splits,
        device="cpu",
        loss_fn=huber,
        hessian="exact",
        damping=lam,
        tol=1e-12,
        max_iter=500,
    ).values
    torch.testing.assert_close(cg, ref, rtol=1e-6, atol=1e-10)
    # if_time with the exact Hessian: (1/n) g_q^T [sum_{s<t} lr (I - lr H)^s] g_t, t = 7 steps
    lr, t = 0.1, 7
    W = sum(lr * torch.linalg.matrix_power(eye - lr * H, s) for s in range(t))
    ref_t = Gq @ W @ Gt.T / splits.n_train
    got_t = tu.attribute(
        "if_time",
        model,
        splits,
        device="cpu",
        loss_fn=huber,
        hessian="exact",
        route="eigh",
        times=[t],
        lr=lr,
        damping=0.0,
    ).values
    torch.testing.assert_close(got_t, ref_t, rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------------ (3) clear errors, cache keys
@pytest.mark.parametrize(
    "method,opts",
    [
        ("ekfac", {}),
        ("trak", {}),
        ("cg", {"hessian": "gnh"}),
        ("lissa", {}),
        ("if_explicit", {"hessian": "gnh"}),
        ("if_time", {"hessian": "gnh", "times": [1], "lr": 0.1}),
    ],
)
def test_methods_assuming_the_builtin_loss_refuse_loss_fn(setup, method, opts):
    splits, model = setup
    with pytest.raises(ValueError, match=r"loss_fn.*grad_dot, grad_cos, datainf, cg"):
        tu.attribute(method, model, splits, device="cpu", loss_fn=huber, **opts)


def test_bad_loss_fn_and_uncacheable_loss(setup, tmp_path):
    splits, model = setup
    with pytest.raises(ValueError, match="loss_fn must be None"):
        tu.attribute("grad_dot", model, splits, device="cpu", loss_fn="huber")
    with pytest.raises(ValueError, match="loss_fn must be None"):
        resolve_loss("regression", 3)
    assert loss_key(None) is None and loss_key(huber) != loss_key(mse)
    part = functools.partial(huber)
    cfg = tu.TrainConfig(lr=0.1, epochs=1, batch_size=8, seed=0)
    fresh = lambda: tu.build_model("mlp", splits, seed=2, hidden=4).double()  # noqa: E731
    with pytest.raises(ValueError, match="source code is unavailable.*cache_dir=None"):
        tu.train_model(fresh(), splits, cfg, cache_dir=tmp_path, progress=False, loss_fn=part)
    tu.train_model(fresh(), splits, cfg, cache_dir=None, progress=False, loss_fn=part)  # no cache
    a = tu.train_model(fresh(), splits, cfg, cache_dir=tmp_path, progress=False)
    b = tu.train_model(fresh(), splits, cfg, cache_dir=tmp_path, progress=False, loss_fn=huber)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(list((tmp_path / "models").iterdir())) == 2  # a custom loss gets its own entry
