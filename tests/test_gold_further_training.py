"""The gold-standard engine: semantics, exactness, engines agreeing, caching."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import RandomSampler

import tda_utils as tu
from tda_utils import cache as cache_mod
from tda_utils.gold import further_training as ft
from tda_utils.gold.further_training import run_orders
from tda_utils.linalg.grads import per_sample_grads
from tda_utils.final.training import batch_slices, epoch_orders

from .conftest import further_train_uncached, make_splits, tiny_model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max()).item())


# ---------------------------------------------------------------- batch order
def test_epoch_orders_follow_random_sampler_stream():
    for big_n, big_seed in ((927, 0), (5000, 12)):  # the Concrete size, and a larger one
        g = torch.Generator().manual_seed(big_seed)
        sampler = RandomSampler(range(big_n), generator=g)
        want = [list(iter(sampler)) for _ in range(3)]
        assert [p.tolist() for p in epoch_orders(big_n, big_seed, 3)] == want
    n, seed = 11, 3
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(range(n), generator=g)
    expected = [list(iter(sampler)) for _ in range(4)]
    got = [p.tolist() for p in epoch_orders(n, seed, 4)]
    assert got == expected
    # torch's sampler draws a second, discarded permutation per epoch:
    g = torch.Generator().manual_seed(seed)
    draws = [torch.randperm(n, generator=g).tolist() for _ in range(4)]
    assert got[0] == draws[0] and got[1] == draws[2]


def test_permutation_semantics_on_seven_samples():
    """n=7, batch 3: the leave-one-out run uses the full run's permutation with i deleted."""
    perm = next(epoch_orders(7, 0, 1))
    i = int(perm[1])  # an instance early in the order: later batches shift
    rows = run_orders(perm, [i], "permutation")
    full, loo = rows[0].tolist(), rows[1].tolist()
    assert full == perm.tolist()
    expected_loo = [j for j in perm.tolist() if j != i] + [-1]
    assert loo == expected_loo
    slots = batch_slices(7, 3)
    full_batches = [full[s] for s in slots]
    loo_batches = [[j for j in loo[s] if j >= 0] for s in slots]
    assert full_batches == [perm.tolist()[0:3], perm.tolist()[3:6], perm.tolist()[6:7]]
    assert loo_batches[0] == [perm.tolist()[0]] + [perm.tolist()[2]] + [perm.tolist()[3]]
    assert loo_batches[1] == perm.tolist()[4:7]
    assert loo_batches[2] == []  # one shorter: the last slot is empty (no update)
    assert run_orders(perm, [i], "every_batch")[1].tolist() == full


def _manual_linear_sgd(x, y, w0, b0, batches, lr):
    """Reference SGD on a linear model (mean squared error) over explicit index batches."""
    w, b = w0.clone(), b0.clone()
    for idx in batches:
        if not idx:
            continue
        xb, yb = x[idx], y[idx]
        r = xb @ w.T + b - yb  # (B, 1)
        w = w - lr * (2 * r.T @ xb / len(idx))
        b = b - lr * (2 * r.sum(0) / len(idx))
    return w, b


def test_permutation_runs_use_exactly_those_batches():
    splits = make_splits("regression", n_train=7, n_test=3, d=2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()
    x, y = splits.train.tensors
    xq, yq = splits.test.tensors
    cfg = tu.FurtherTrainingConfig(
        lr=0.1,
        epochs=2,
        batch_size=3,
        seeds=[5],
        left_out=[4, 0],
        dtype="float64",
        engine="sequential",
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    w0, b0 = model[0].weight.detach(), model[0].bias.detach()
    for col, i in enumerate([None, 4, 0]):
        batches = []
        for perm in epoch_orders(7, 5, 2):
            order = [j for j in perm.tolist() if j != i]
            batches += [order[s] for s in batch_slices(7, 3)]
        w, b = _manual_linear_sgd(x, y, w0, b0, batches, 0.1)
        loss = ((xq @ w.T + b - yq) ** 2).squeeze(1)
        got = gold.loss_full[-1, 0] if i is None else gold.loss_loo[-1, 0, col - 1]
        torch.testing.assert_close(got, loss, rtol=1e-12, atol=1e-14)


def test_every_batch_loss_formula():
    """every_batch: each step minimises mean batch loss - loss_i / n_train on the full batches."""
    splits = make_splits("regression", n_train=7, n_test=3, d=2)
    model = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()
    x, y = splits.train.tensors
    xq, yq = splits.test.tensors
    cfg = tu.FurtherTrainingConfig(
        lr=0.1,
        epochs=1,
        batch_size=3,
        seeds=[1],
        left_out=[2],
        dtype="float64",
        leave_out="every_batch",
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    w, b = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    perm = next(epoch_orders(7, 1, 1)).tolist()
    for s in batch_slices(7, 3):
        idx = perm[s]
        r = x[idx] @ w.T + b - y[idx]
        ri = x[[2]] @ w.T + b - y[[2]]
        gw = 2 * r.T @ x[idx] / len(idx) - 2 * ri.T @ x[[2]] / 7
        gb = 2 * r.sum(0) / len(idx) - 2 * ri.sum(0) / 7
        w, b = w - 0.1 * gw, b - 0.1 * gb
    loss = ((xq @ w.T + b - yq) ** 2).squeeze(1)
    torch.testing.assert_close(gold.loss_loo[-1, 0, 0], loss, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- engines agree
@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("leave_out", ["permutation", "every_batch"])
@pytest.mark.parametrize("n_train", [22, 17])
def test_vectorized_equals_sequential(task, optimizer, leave_out, n_train):
    # n = 22: every slot holds samples; n = 17 = 2 x 8 + 1: permutation LOO runs have an empty
    # last slot each epoch and sit that step out (Adam's step count must not advance)
    splits = make_splits(task, n_train=n_train)
    lr = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}[optimizer]
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        model = tiny_model(splits).to(getattr(torch, dtype))
        kw = dict(
            optimizer=optimizer,
            lr=lr,
            epochs=3,
            batch_size=8,
            seeds=[0, 7],
            left_out=[0, 5, n_train - 1],
            leave_out=leave_out,
            dtype=dtype,
            weight_decay=0.01 if optimizer == "adamw" else 0.0,
        )
        vec = further_train_uncached(model, splits, engine="vectorized", **kw)
        seq = further_train_uncached(model, splits, engine="sequential", **kw)
        assert rel_err(vec.loss_full, seq.loss_full) <= tol
        assert rel_err(vec.loss_loo, seq.loss_loo) <= tol


def test_vectorized_generic_path_and_chunking_agree():
    """A model outside the MLP fast path (Tanh) goes through vmap; chunking does not matter."""
    splits = make_splits("regression", n_train=17)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
    ).double()
    kw = dict(
        lr=0.05,
        epochs=2,
        batch_size=5,
        seeds=[0, 1, 2],
        left_out=[1, 16],
        dtype="float64",
        grad_clip=0.5,
    )
    seq = further_train_uncached(model, splits, engine="sequential", **kw)
    for max_runs in (128, 4, 1):
        vec = further_train_uncached(model, splits, max_runs_per_chunk=max_runs, **kw)
        assert rel_err(vec.loss_loo, seq.loss_loo) <= 1e-10
        assert rel_err(vec.loss_full, seq.loss_full) <= 1e-10


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_fused_sgd_step_equals_gradients_then_optimizer(task):
    """MLPStack.sgd_step (updates fused into the matmuls) = grads + StackedOptimizer SGD, with
    one run sitting out (all-zero sample weights) and left unchanged."""
    from tda_utils.gold.stacked import MLPStack, StackedOptimizer, stack_runs

    splits = make_splits(task, n_train=17)
    torch.manual_seed(0)
    model = tu.build_model("mlp", splits, seed=0, hidden=6).double()
    base = {k: v.detach() for k, v in model.named_parameters()}
    R, B = 4, 5
    x, y = splits.train.tensors
    idx = torch.stack([torch.randperm(17)[:B] for _ in range(R)])
    w = torch.full((R, B), 1.0 / B, dtype=torch.float64)
    w[2] = 0.0  # run 2 sits this step out
    fused, ref = stack_runs(base, R), stack_runs(base, R)
    mlp = MLPStack.maybe(model, fused)
    assert mlp is not None
    k_out = splits.n_outputs
    check = torch.full((R, k_out), float("nan"), dtype=torch.float64)
    mlp.sgd_step(fused, x[idx], y[idx], w, splits.task, lr=0.3, check=check)
    cfg = tu.FurtherTrainingConfig(lr=0.3, seeds=[0], left_out=[0])
    grads = mlp.grads(ref, x[idx], y[idx], w, splits.task)
    # the check: the weighted training loss (regression) or the output layer's bias gradient
    out = model(x[idx])
    want = (
        (w[..., None] * (out - y[idx]) ** 2).sum(1)
        if task == "regression"
        else grads[mlp.linear[-1][1]]
    )
    torch.testing.assert_close(check, want, rtol=1e-13, atol=1e-15)
    StackedOptimizer(cfg, ref, R).step(grads, w.sum(1) > 0)
    for k in base:
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-13, atol=1e-15)
        assert torch.equal(fused[k][2], base[k])  # the sitting-out run is unchanged
    assert torch.equal(check[2], torch.zeros(k_out, dtype=torch.float64))
    fused["0.weight"][1, 0, 0] = float("nan")  # a run whose outputs are NaN shows in the check
    mlp.sgd_step(fused, x[idx], y[idx], w, splits.task, 0.3, check)
    assert torch.isfinite(check).all(1).tolist() == [True, False, True, True]


def test_fast_path_chunks_of_equal_size_agree():
    """Runs split into balanced parts (no small remainder) give the same numbers."""
    splits = make_splits("regression", n_train=17)
    model = tiny_model(splits)
    kw = dict(lr=0.05, epochs=2, batch_size=5, seeds=[0, 1, 2], left_out=[1, 16], dtype="float64")
    one = further_train_uncached(model, splits, **kw)
    for max_runs in (4, 2):
        parts = further_train_uncached(model, splits, max_runs_per_chunk=max_runs, **kw)
        torch.testing.assert_close(parts.loss_loo, one.loss_loo, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(parts.loss_full, one.loss_full, rtol=1e-12, atol=1e-14)


def test_runs_per_part_automatic_and_explicit():
    """max_runs_per_chunk=None: 34 for the MLP fast path on a CPU, 128 for other models; an
    explicit value (even 128) is honoured."""
    from tda_utils.gold.engines import CPU_MAX_RUNS, MLP_CPU_MAX_RUNS, _Vectorized
    from tda_utils.gold.further_training import eval_schedule

    splits = make_splits("regression", n_train=17)
    mlp = tiny_model(splits)
    tanh = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
    ).double()
    for model, automatic in ((mlp, MLP_CPU_MAX_RUNS), (tanh, CPU_MAX_RUNS)):
        for max_runs, want in ((None, automatic), (128, 128), (3, 3)):
            cfg = tu.FurtherTrainingConfig(
                epochs=1, seeds=[0], left_out=[0], max_runs_per_chunk=max_runs
            )
            points = eval_schedule(cfg, splits.n_train)[0]
            eng = _Vectorized(model, splits, cfg, [0], None, points, device="cpu")
            assert eng._runs_per_chunk() == want


# ---------------------------------------------------------------- the link to Grad-Dot
def test_one_full_batch_step_is_grad_dot():
    """One full-batch SGD step of size eta: tau_i = (eta / n) g_q . g_i to first order."""
    splits = make_splits("regression", n_train=20)
    model = tiny_model(splits)
    n, eta = 20, 1e-4
    left = list(range(20))
    cfg = tu.FurtherTrainingConfig(
        lr=eta,
        epochs=1,
        batch_size=n,
        seeds=[0],
        left_out=left,
        leave_out="every_batch",
        dtype="float64",
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    tau = gold.attribution(subtract_mean=False)[0]  # (Q, L)
    g_train = per_sample_grads(model, splits.train, left, task="regression")
    g_query = per_sample_grads(model, splits.test, None, task="regression")
    predicted = (eta / n) * g_query @ g_train.T
    assert rel_err(tau, predicted) < 1e-3
    grad_dot = tu.attribute("grad_dot", model, splits, train_indices=left).values
    torch.testing.assert_close(grad_dot, g_query @ g_train.T)


def test_evaluation_before_training_gives_zero_and_same_seed_same_result():
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05,
        epochs=2,
        batch_size=8,
        seeds=[3],
        left_out=[0, 1, 2],
        eval_steps=[0, 1, 4, 6],
        dtype="float64",
    )
    a = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    b = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    assert a.time_unit == "step" and a.times.tolist() == [0, 1, 4, 6]
    assert torch.equal(a.attribution(False)[0], torch.zeros_like(a.attribution(False)[0]))
    assert torch.equal(a.loss_loo, b.loss_loo) and torch.equal(a.loss_full, b.loss_full)
    assert a.attribution(False)[-1].abs().max() > 0


def test_attribution_adjustments_and_seed_selection():
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=2, batch_size=8, seeds=[0, 1, 2, 3], left_out=[0, 4, 9], dtype="float64"
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    diff = gold.loss_loo - gold.loss_full[:, :, None, :]  # (E, S, L, Q)
    raw = diff.mean(1).transpose(1, 2)
    torch.testing.assert_close(gold.attribution(subtract_mean=False), raw)
    torch.testing.assert_close(
        gold.attribution(subtract_mean=True), raw - raw.mean(-1, keepdim=True)
    )
    torch.testing.assert_close(
        gold.attribution(False, seeds=2), diff[:, :2].mean(1).transpose(1, 2)
    )
    torch.testing.assert_close(gold.attribution(False, seeds=[3]), diff[:, 3].transpose(1, 2))
    sem = gold.attribution_sem(False)
    torch.testing.assert_close(sem, diff.std(1).transpose(1, 2) / 2)
    with pytest.raises(ValueError, match="seed 9 was not run"):
        gold.attribution(seeds=[9])


# ---------------------------------------------------------------- cache
def test_cache_resumes_and_matches_fresh_run(tmp_path, monkeypatch):
    splits = make_splits("regression")
    model = tiny_model(splits)
    kw = dict(lr=0.05, epochs=2, batch_size=8, left_out=[0, 4], dtype="float64")
    trained: list[int] = []  # seeds the engine actually trains
    real_train = ft._Vectorized._train

    def counting_train(self, pairs, progress):
        trained.extend(sorted({s for s, _ in pairs}))
        return real_train(self, pairs, progress)

    monkeypatch.setattr(ft._Vectorized, "_train", counting_train)
    first = tu.further_train(
        model,
        splits,
        tu.FurtherTrainingConfig(seeds=[0, 1], **kw),
        cache_dir=tmp_path,
        progress=False,
    )
    assert first.from_cache == 0 and trained == [0, 1]
    # plant a sentinel in seed 0's item: a cache hit must return it, a recomputation would not
    (entry,) = (tmp_path / "further_training").iterdir()
    item = torch.load(entry / "seed_0.pt", weights_only=True)
    torch.save({k: v + 1000.0 for k, v in item.items()}, entry / "seed_0.pt")
    trained.clear()
    resumed = tu.further_train(
        model,
        splits,
        tu.FurtherTrainingConfig(seeds=[0, 1, 2], **kw),
        cache_dir=tmp_path,
        progress=False,
    )
    assert resumed.from_cache == 2 and trained == [2]  # only the new seed was trained
    assert torch.equal(
        resumed.loss_full[:, 0], first.loss_full[:, 0] + 1000.0
    )  # the sentinel came back
    torch.save(item, entry / "seed_0.pt")
    resumed = tu.further_train(
        model,
        splits,
        tu.FurtherTrainingConfig(seeds=[0, 1, 2], **kw),
        cache_dir=tmp_path,
        progress=False,
    )
    assert resumed.from_cache == 3
    fresh = further_train_uncached(model, splits, seeds=[0, 1, 2], **kw)
    assert torch.equal(resumed.loss_loo, fresh.loss_loo) and torch.equal(
        resumed.loss_full, fresh.loss_full
    )
    # another config (learning rate) never reuses these entries
    trained.clear()
    other = tu.further_train(
        model,
        splits,
        tu.FurtherTrainingConfig(seeds=[0, 1], **{**kw, "lr": 0.01}),
        cache_dir=tmp_path,
        progress=False,
    )
    assert (
        other.from_cache == 0
        and trained == [0, 1]
        and not torch.equal(other.loss_loo, first.loss_loo)
    )


def test_interrupted_write_leaves_no_corrupt_cache(tmp_path, monkeypatch):
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0, 1], left_out=[0, 4], dtype="float64"
    )
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second seed's write is interrupted half-way
            f.write(b"partial")
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(cache_mod.torch, "save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(cache_mod.torch, "save", real_save)
    entries = list((tmp_path / "further_training").iterdir())
    assert len(entries) == 1
    files = sorted(p.name for p in entries[0].iterdir())
    assert files == ["config.json", "seed_0.pt"]  # no partial seed_1, no temporary file
    resumed = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert resumed.from_cache == 1
    fresh = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    assert torch.equal(resumed.loss_loo, fresh.loss_loo)


def test_cache_with_other_config_is_refused(tmp_path):
    c = cache_mod.Cache(tmp_path, "kind", "key", {"a": 1})
    c.save("x", torch.ones(2))
    with pytest.raises(RuntimeError, match="another config"):
        cache_mod.Cache(tmp_path, "kind", "key", {"a": 2})
    assert torch.equal(cache_mod.Cache(tmp_path, "kind", "key", {"a": 1}).load("x"), torch.ones(2))


def test_final_model_training_is_cached(tmp_path):
    splits = make_splits("regression")
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8)
    a = tu.train_model(
        tu.build_model("mlp", splits, hidden=4).double(),
        splits,
        cfg,
        cache_dir=tmp_path,
        progress=False,
    )
    b = tu.train_model(
        tu.build_model("mlp", splits, hidden=4).double(),
        splits,
        cfg,
        cache_dir=tmp_path,
        progress=False,
    )
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert len(list((tmp_path / "models").iterdir())) == 1
    assert math.isfinite(a.fimo_history["train_loss"][-1])
