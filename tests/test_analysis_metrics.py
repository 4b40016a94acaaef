"""Agreement metrics on hand-computed examples."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

import tda_utils as tu
from tda_utils.analysis.metrics import cosine_rows, rank_rows, spearman_rows


def test_cosine_hand_example_and_constant_vector():
    tau = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])  # (E=1, Q=3, L=3)
    scores = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [1.0, 2.0, 3.0]])
    c = tu.agreement(tau, scores, "cosine")
    assert c.values[0, 0].item() == pytest.approx(1 / math.sqrt(2))
    assert c.values[0, 1].item() == pytest.approx(1.0)
    assert math.isnan(c.values[0, 2].item())  # tau is all zeros: left out and counted
    assert c.n_nan.tolist() == [1]
    mean = (1 / math.sqrt(2) + 1) / 2
    assert c.mean[0].item() == pytest.approx(mean)
    sd = math.sqrt(((1 / math.sqrt(2) - mean) ** 2 + (1 - mean) ** 2) / 1)
    assert c.sem[0].item() == pytest.approx(sd / math.sqrt(2))


def test_spearman_with_ties_matches_scipy_and_constants_are_nan():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (6, 9), generator=g).double()  # many ties
    b = torch.randn(6, 9, generator=g, dtype=torch.float64)
    b[1, :3] = b[1, 3]
    got = spearman_rows(a, b)
    for q in range(6):
        assert got[q].item() == pytest.approx(
            spearmanr(a[q].numpy(), b[q].numpy()).statistic, abs=1e-12
        )
    assert rank_rows(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).tolist() == [[3.5, 1.0, 3.5, 2.0]]
    assert math.isnan(spearman_rows(torch.ones(1, 5), torch.arange(5.0)[None])[0].item())
    c = tu.agreement(torch.stack([a, torch.ones_like(a)]), b, "spearman")  # second time: constant
    assert c.n_nan.tolist() == [0, 6] and math.isnan(c.mean[1].item())


def test_agreement_accepts_time_resolved_scores_and_checks_shapes():
    tau = torch.randn(4, 3, 5, dtype=torch.float64)
    assert tu.agreement(tau, tau, "cosine").mean.tolist() == pytest.approx([1.0] * 4)
    torch.testing.assert_close(cosine_rows(tau, -tau), -torch.ones(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="query-major"):
        tu.agreement(tau, torch.randn(5, 3))
    with pytest.raises(
        ValueError, match="metric='pearson' is not valid; allowed values: 'cosine', 'spearman'"
    ):
        tu.agreement(tau, tau[0], metric="pearson")


def test_seed_groups_by_hand():
    """4 seeds, k=2: groups {0,1} and {2,3}; max over time of the mean over (query, group)."""
    from tda_utils.analysis.metrics import seed_group_agreement

    per_seed = torch.zeros(2, 4, 1, 2, dtype=torch.float64)  # (E, S, Q, L)
    per_seed[0, :, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    per_seed[1, :, 0] = torch.tensor([[1.0, 0.1], [1.0, 0.1], [1.0, 0.1], [1.0, 0.1]])
    scores = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    sc = seed_group_agreement(per_seed, scores, ks=(1, 2, 4, 8))
    assert sc.ks == [1, 2, 4] and sc.n_groups == [4, 2, 1]
    c1 = 1 / math.sqrt(1.01)
    # time 0, k=1: cosines 1, 0, 1/sqrt2, 1/sqrt2 -> mean 0.6036; time 1: all c1 -> best is time 1
    assert sc.best_time_index[0] == 1 and sc.best[0].item() == pytest.approx(c1)
    assert sc.sem[0].item() == pytest.approx(0.0, abs=1e-12)
    # k=2 at time 0: group means (0.5, 0.5) and (1, 0) -> cosines 1/sqrt2 and 1 -> mean 0.854 < c1
    assert sc.best[1].item() == pytest.approx(c1)
    # k=4 at time 0: mean (0.75, 0.25) -> cosine 0.9487 < c1
    assert sc.best[2].item() == pytest.approx(c1) and math.isnan(sc.sem[2].item())


def test_sorted_scores_by_hand():
    from tda_utils.analysis.metrics import sorted_scores

    v = torch.tensor([[3.0, -1.0, 0.0], [1.0, 2.0, -3.0]])
    curve = sorted_scores(v)  # sorted rows: (-1, 0, 3), (-3, 1, 2) -> mean (-2, 0.5, 2.5)
    expected = torch.tensor([-2.0, 0.5, 2.5], dtype=torch.float64)
    torch.testing.assert_close(curve, expected / expected.norm())
