"""Fidelity of the measurement: float64 query losses, dropped-query accounting in agreement."""

from __future__ import annotations

import math

import pytest
import torch

import tda_utils as tu
from tda_utils.models.registry import per_sample_loss, query_loss

from .conftest import further_train_uncached, make_splits


# ---------------------------------------------------------------- float64 query losses
def test_query_loss_matches_cross_entropy_and_keeps_tiny_losses():
    z = torch.tensor(
        [
            [2.0, -1.0, 0.5],
            [0.0, 3.0, 1.0],
            [40.0, 0.0, -5.0],
            [400.0, 0.0, 10.0],
            [-2.0, 800.0, 0.0],
        ],
        dtype=torch.float64,
    )
    y = torch.tensor([0, 2, 0, 0, 0])
    got = query_loss(z, y, "classification")
    assert got.dtype == torch.float64
    # moderate margins: the ordinary cross-entropy
    assert torch.allclose(
        got[:2], per_sample_loss(z[:2], y[:2], "classification"), rtol=1e-14, atol=0
    )
    # confident: log(1 + e^-40 + e^-45) ~ e^-40 + e^-45 (relative error ~e^-40)
    assert math.isclose(float(got[2]), math.exp(-40) + math.exp(-45), rel_tol=1e-12)
    assert math.isclose(float(got[3]), math.exp(-400) + math.exp(-390), rel_tol=1e-12)
    assert (
        float(per_sample_loss(z[2:4], y[2:4], "classification").abs().max()) == 0.0
    )  # the old formula
    # badly wrong: logsumexp branch, no overflow
    assert math.isclose(float(got[4]), 802.0, rel_tol=1e-12)
    # regression: float64 squared error from float32 outputs
    out = torch.tensor([[1.5], [0.25]], dtype=torch.float32)
    t = torch.tensor([[1.0], [0.0]], dtype=torch.float32)
    assert query_loss(out, t, "regression").tolist() == [0.25, 0.0625]


def _confident_problem():
    """float32 logistic model where query 0 is classified with a margin of ~30 logits."""
    splits = make_splits(
        "classification", n_train=20, n_test=4, d=3, n_classes=2, dtype=torch.float32
    )
    x, y = splits.test.tensors
    model = tu.build_model("linear", splits, seed=0)
    with torch.no_grad():
        w = torch.zeros(2, 3)
        w[int(y[0]), :] = 30.0 * x[0] / x[0].norm() ** 2  # logit gap 30 on query 0
        model[0].weight.copy_(w)
        model[0].bias.zero_()
    return splits, model


@pytest.mark.parametrize("engine", ["sequential", "vectorized"])
def test_confident_query_gets_a_nonzero_tau(engine):
    splits, model = _confident_problem()
    xq, yq = splits.test.tensors
    with torch.no_grad():
        ce32 = per_sample_loss(model(xq[:1]), yq[:1], "classification")
    assert float(ce32) == 0.0  # float32 rounds this query's loss to exactly 0
    cfg = tu.FurtherTrainingConfig(
        lr=0.1,
        epochs=2,
        batch_size=5,
        seeds=[0, 1],
        left_out=[0, 3, 7],
        dtype="float32",
        engine=engine,
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    assert gold.loss_full.dtype == torch.float64
    assert float(gold.loss_full[-1, :, 0].min()) > 0
    tau = gold.attribution(subtract_mean=False)
    assert float(tau[-1, 0].abs().max()) > 0
    assert float(tau[-1, 0].abs().max()) < 1e-6  # tiny, as a loss of ~e^-30 should be


def test_engines_agree_on_confident_query_losses():
    splits, model = _confident_problem()
    kw = dict(lr=0.1, epochs=2, batch_size=5, seeds=[0], left_out=[0, 3], dtype="float32")
    seq = further_train_uncached(model, splits, engine="sequential", **kw)
    vec = further_train_uncached(model, splits, engine="vectorized", **kw)
    rel = (vec.loss_loo - seq.loss_loo).abs() / seq.loss_loo.abs()
    assert float(rel.max()) < 1e-4


# ---------------------------------------------------------------- dropped queries in agreement
def test_agreement_counts_dropped_queries_and_offers_the_authors_convention():
    tau = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [2.0, 1.0, 0.0]]])
    scores = torch.tensor([[1.0, 2.0, 2.5], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, -1.0]])
    cos = [
        float(torch.nn.functional.cosine_similarity(tau[0, q].double(), scores[q].double(), dim=0))
        for q in (0, 3)
    ]
    c = tu.agreement(tau, scores)
    assert c.n_nan.tolist() == [2] and c.n_dropped.tolist() == [2]
    assert math.isclose(float(c.mean[0]), sum(cos) / 2, rel_tol=1e-12)
    assert math.isclose(
        float(c.sem[0]), abs(cos[0] - cos[1]) / 2, rel_tol=1e-12
    )  # std(2 values)/sqrt 2
    z = tu.agreement(tau, scores, nan_as_zero=True)
    assert z.n_nan.tolist() == [2] and z.n_dropped.tolist() == [0]
    assert math.isclose(float(z.mean[0]), sum(cos) / 4, rel_tol=1e-12)
    # the authors' cosine: torch's F.cosine_similarity (eps-clamped norms) gives 0 for a zero row
    authors = torch.nn.functional.cosine_similarity(tau[0].double(), scores.double(), dim=-1)
    assert torch.allclose(z.values[0], authors, atol=1e-12)
    assert math.isclose(float(z.sem[0]), float(authors.std() / 2), rel_tol=1e-12)


def test_agreement_nan_as_zero_spearman_and_errors():
    tau = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]])
    scores = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    c = tu.agreement(tau, scores, metric="spearman")
    assert c.n_dropped.tolist() == [1, 0] and math.isclose(float(c.mean[0]), 1.0)
    z = tu.agreement(tau, scores, metric="spearman", nan_as_zero=True)
    assert z.n_dropped.tolist() == [0, 0] and math.isclose(float(z.mean[0]), 0.5)
    assert torch.equal(z.mean[1], c.mean[1])
    with pytest.raises(ValueError, match="nan_as_zero"):
        tu.agreement(tau, scores, nan_as_zero="yes")


def test_curve_built_without_n_dropped_takes_n_nan():
    c = tu.Curve(
        mean=torch.zeros(2),
        sem=torch.zeros(2),
        values=torch.zeros(2, 3),
        n_nan=torch.tensor([1, 0]),
        metric="cosine",
    )
    assert c.n_dropped.tolist() == [1, 0]


# ---------------------------------------------------------------- TRAK for regression
def test_trak_loss_output_is_the_gnh_influence_function_on_least_squares():
    splits = make_splits("regression", n_train=40, n_test=6, d=4)
    model = tu.build_model("linear", splits, seed=0).double()
    model = tu.train_model(
        model,
        splits,
        tu.TrainConfig(lr=0.05, epochs=3, batch_size=8, seed=0),
        cache_dir=None,
        progress=False,
    )
    kw = dict(train_indices=range(0, 40, 2), query_indices=range(6))
    lam = 1e-4
    ref = tu.attribute("if_explicit", model, splits, hessian="gnh", damping=2 * lam, **kw).values
    loss = tu.attribute("trak", model, splits, output="loss", projection="none", damping=lam, **kw)
    pred = tu.attribute("trak", model, splits, projection="none", damping=lam, **kw).values
    assert loss.diagnostics["output"] == "loss"
    cos = tu.metrics.cosine_rows(loss.values, ref)
    assert float(cos.min()) > 0.999
    torch.testing.assert_close(loss.values, ref, rtol=1e-8, atol=1e-12)  # the same formula
    assert (
        float(tu.metrics.cosine_rows(pred, ref).abs().mean()) < 0.9
    )  # prediction: random signs per row
    same = tu.attribute("trak_loss", model, splits, projection="none", damping=lam, **kw).values
    assert torch.equal(same, loss.values)


def test_trak_output_validated():
    splits = make_splits("classification", n_train=12, n_test=3)
    model = tu.build_model("linear", splits, seed=0).double()
    with pytest.raises(ValueError, match="output"):
        tu.attribute("trak", model, splits, output="margin")
    with pytest.raises(ValueError, match="output='loss' applies to regression"):
        tu.attribute("trak", model, splits, output="loss")
