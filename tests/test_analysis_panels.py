"""The panels' memo (``analysis.panels``): the same numbers as the reference path (bit for bit on
the CPU, chunked or not), each panel computed once per gold standard and scores, no stale entry
for other scores or changed losses, nothing added to the result's pickle or equality, and CUDA
agreeing with the CPU to float64 rounding."""

from __future__ import annotations

import dataclasses
import gc
import pickle

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

import tda_utils as tu
from tda_utils.analysis import metrics, panels, pipeline

T, S, Q, L = 9, 6, 7, 8
KS = (1, 2, 3, 4, 6)


def make_gold(n_evals=T, n_seeds=S, seed=0, lr=0.03):
    g = torch.Generator().manual_seed(seed)
    full = torch.rand(n_evals, n_seeds, Q, generator=g, dtype=torch.float64)
    loo = full[:, :, None, :] + 1e-3 * torch.randn(n_evals, n_seeds, L, Q, generator=g,
                                                   dtype=torch.float64)
    loo[0] = full[0][:, None, :]  # tau = 0 at the first evaluation: NaN agreement
    loo[1, :, :, 3] = full[1, :, None, 3]  # one query without signal at the second
    cfg = tu.FurtherTrainingConfig(optimizer="sgd", lr=lr, epochs=n_evals, batch_size=4,
                                   seeds=range(n_seeds), left_out=range(L))
    return tu.FurtherTrainingResult(full, loo, torch.arange(1.0, n_evals + 1).double(), "epoch",
                                    tuple(range(n_seeds)), tuple(range(L)), tuple(range(Q)), cfg)


def make_scores(seed=1, lr=0.03):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in ("grad_dot", "grad_cos", "cg", "trak"):
        v = torch.randn(Q, L, generator=g, dtype=torch.float64)
        if m == "grad_cos":
            v[2] = 0  # a zero row: NaN cosine
        out[m] = tu.AttributionScores(m, v, tuple(range(L)), tuple(range(Q)), {}, {}, 0.0, 0.0)
    vbt = torch.randn(T, Q, L, generator=g, dtype=torch.float64)
    vbt[:, 0, :3] = 0.5  # ties for Spearman's average ranks
    out["if_time"] = tu.AttributionScores(
        "if_time", vbt[-1], tuple(range(L)), tuple(range(Q)),
        {"lr": lr, "times": list(range(1, T + 1))}, {"values_by_time": vbt}, 0.0, 0.0)
    return out


def assert_same(a, b, atol=0.0, where="result"):
    """Equal (NaN where NaN); with ``atol`` > 0, tensors within ``atol``."""
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], atol, f"{where}[{k!r}]")
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), atol, f"{where}.{f.name}")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, where
        assert b.device.type == "cpu", where
        if atol:
            torch.testing.assert_close(a, b, rtol=0, atol=atol, equal_nan=True, msg=where)
        else:
            assert torch.equal(torch.isnan(a), torch.isnan(b)), where
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), where
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=not atol, atol=atol or None, rtol=0)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, atol, f"{where}[{i}]")
    else:
        assert a == b, where


def all_panels(gold, scores, **kw):
    """Every panel the pipeline computes, through its public functions."""
    dev = {} if panels.is_reference() else kw
    out = {}
    for sm in (True, False):
        for metric in ("cosine", "spearman"):
            for seeds in (None, 2, [1, 3]):
                out["agree", sm, metric, str(seeds)] = pipeline.agreement_panel(
                    gold, scores, sm, metric, seeds, **dev)
        out["seed", sm] = pipeline.seed_panel(gold, scores, sm, KS, **dev)
    out["sorted"] = pipeline.sorted_panel(gold, scores, (0, 4, -1), **dev)
    out["table2"] = pipeline.top_instances(gold, scores, 3, k=2)
    return out


@pytest.fixture
def gold_scores():
    panels.clear_memo()
    return make_gold(), make_scores()


@pytest.mark.parametrize("budget", [None, 1e-4, 0.003], ids=["one-chunk", "1-eval", "chunks"])
def test_memo_equals_the_reference_bit_for_bit(gold_scores, budget):
    gold, scores = gold_scores
    with panels.reference():
        ref = all_panels(gold, scores)
    if budget is not None:
        step = panels.chunk_evals(T, S * Q * L * 8, "cpu", budget)
        assert step < T  # chunked over time
    values = {m: pipeline.method_values(s) for m, s in scores.items()}
    new = {}
    for sm in (True, False):
        for metric in ("cosine", "spearman"):
            for seeds in (None, 2, [1, 3]):
                new["agree", sm, metric, str(seeds)] = panels.agreement_curves(
                    gold, values, sm, metric, seeds, memory_budget_mb=budget)
        new["seed", sm] = panels.seed_curves(gold, values, sm, KS, memory_budget_mb=budget)
        assert_same(gold.attribution(sm), panels.tau(gold, sm, memory_budget_mb=budget))
    new["sorted"] = pipeline.sorted_panel(gold, scores, (0, 4, -1))
    new["table2"] = pipeline.top_instances(gold, scores, 3, k=2)
    assert_same(ref, new)
    # the pipeline's own calls (device=None: the recorded "cpu") read the same entries
    assert_same(ref, all_panels(gold, scores))


def test_seed_curves_equal_seed_group_agreement_for_spearman(gold_scores):
    gold, scores = gold_scores
    per_seed = gold.per_seed(False)
    values = {m: pipeline.method_values(s) for m, s in scores.items()}
    ref = {m: metrics.seed_group_agreement(per_seed, v, KS, "spearman") for m, v in values.items()}
    assert_same(ref, panels.seed_curves(gold, values, False, KS, "spearman", memory_budget_mb=0.01))


def test_figure_cells_and_collect_results_compute_each_panel_once(gold_scores, tmp_path,
                                                                  monkeypatch):
    gold, scores = gold_scores
    passes, taus = [], []
    seed_pass, tau = panels._seed_pass, panels._diff_chunks
    monkeypatch.setattr(panels, "_seed_pass", lambda *a: passes.append(a[4]) or seed_pass(*a))
    monkeypatch.setattr(panels, "_diff_chunks", lambda *a: taus.append(a[2]) or tau(*a))
    for sm, metric in ((True, "cosine"), (True, "spearman"), (False, "cosine")):
        tu.paper.agreement_figure("fig2", gold, scores, "toy", tmp_path, sm, metric)
    for sm in (True, False):
        tu.paper.seed_figure("fig7", gold, scores, "toy", tmp_path, sm, ks=KS)
    tu.paper.sorted_scores_figure(gold, scores, "toy", tmp_path, time_indices=(0, 1))
    pipeline.top_instances(gold, scores, 2, k=2)
    plt.close("all")
    first = (list(passes), list(taus))
    assert passes == [True, False]  # one pass over the per-seed differences per seed figure
    memo = panels.memo_for(gold)
    misses = memo.misses
    record = pipeline.collect_results("01_tabular_regression", "toy", "test", gold, scores, {},
                                      seed_ks=KS, sorted_time_indices=(0, 1),
                                      results_dir=tmp_path)
    assert (passes, taus) == first and memo.misses == misses  # all from the memo
    with panels.reference():
        ref = pipeline.collect_results("01_tabular_regression", "toy", "ref", gold, scores, {},
                                       seed_ks=KS, sorted_time_indices=(0, 1),
                                       results_dir=tmp_path)
    assert_same(ref.agreement, record.agreement)
    assert_same(ref.seeds, record.seeds)
    assert_same(ref.sorted_scores, record.sorted_scores)


def test_other_scores_or_changed_tensors_never_hit_a_stale_entry(gold_scores):
    gold, scores = gold_scores
    first = pipeline.agreement_panel(gold, scores)
    other = make_scores(seed=7)
    with panels.reference():
        expected = pipeline.agreement_panel(gold, other)
    assert_same(expected, pipeline.agreement_panel(gold, other))
    # same values in a new dict (a copy of every tensor): the entries are shared
    copy = {m: dataclasses.replace(s, values=s.values.clone()) for m, s in scores.items()}
    misses = panels.memo_for(gold).misses
    assert_same(first, pipeline.agreement_panel(gold, copy))
    assert panels.memo_for(gold).misses == misses
    # a score tensor changed in place is a new key
    scores["grad_dot"].values.mul_(-1)
    with panels.reference():
        expected = pipeline.agreement_panel(gold, scores)
    assert_same(expected, pipeline.agreement_panel(gold, scores))
    # the gold standard's losses changed in place: every entry is dropped
    before = panels.tau(gold).clone()
    gold.loss_loo[2:] *= 1.5
    assert not torch.equal(before, panels.tau(gold))
    assert_same(gold.attribution(), panels.tau(gold))
    with panels.reference():
        expected = pipeline.seed_panel(gold, scores, ks=KS)
    assert_same(expected, pipeline.seed_panel(gold, scores, ks=KS))


def test_memo_is_not_part_of_the_result(gold_scores):
    gold, scores = gold_scores
    blob = pickle.dumps(gold)
    pipeline.seed_panel(gold, scores, ks=KS)
    assert panels.memo_for(gold).entries
    assert pickle.dumps(gold) == blob  # no memo in a pickle (or a cache file)
    assert "PanelMemo" not in repr(gold)
    assert not [k for k in vars(gold) if "memo" in k.lower()]  # nothing attached to the result
    assert not [f.name for f in dataclasses.fields(gold) if "memo" in f.name.lower()]
    n = len(panels._MEMOS)
    other = make_gold(seed=3)
    panels.tau(other)
    assert len(panels._MEMOS) == n + 1
    del other
    gc.collect()
    assert len(panels._MEMOS) == n  # dropped with its result


def test_recorded_device_and_chunk_sizes():
    gold = make_gold()
    assert gold.device == "cpu" and dataclasses.replace(gold, device="cuda:0") == gold
    assert next(f for f in dataclasses.fields(gold) if f.name == "device").compare is False
    assert panels.analysis_device(gold).type == "cpu"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ghost = dataclasses.replace(gold, device=f"cuda:{n + 3}")  # not on this machine
    assert panels.analysis_device(ghost) == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        panels.analysis_device(gold, "tpu")
    per_eval = 2**20  # 1 MB per evaluation, 4 working copies
    assert panels.chunk_evals(100, per_eval, "cpu", 40) == 10
    assert panels.chunk_evals(100, per_eval, "cpu", 0.5) == 1  # at least one evaluation
    big = panels.SMALL_MB * 2**20  # one evaluation as large as the small-tensor floor
    assert panels.chunk_evals(8, big, "cpu", 10**6) == 2  # never above one full copy
    assert panels.chunk_evals(8, big, "cpu", 10**6, copies=1) == 8
    assert panels.chunk_evals(8, per_eval, "cpu") == 8  # 8 MB: small, not split
    with pytest.raises(ValueError, match="memory_budget_mb"):
        panels.chunk_evals(8, per_eval, "cpu", 0)


def test_bad_inputs_raise_as_before(gold_scores):
    gold, scores = gold_scores
    bad = {"grad_dot": dataclasses.replace(scores["grad_dot"], values=torch.zeros(Q, L + 1))}
    with pytest.raises(ValueError, match="query-major"):
        pipeline.agreement_panel(gold, bad)
    with pytest.raises(ValueError, match="metric"):
        pipeline.agreement_panel(gold, scores, metric="kendall")
    with pytest.raises(ValueError, match="seed 9 was not run"):
        pipeline.agreement_panel(gold, scores, seeds=[9])
    with pytest.raises(ValueError, match="ks has no value"):
        pipeline.seed_panel(gold, scores, ks=(S + 1,))


@pytest.mark.parametrize(
    "device",
    [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs CUDA"))],
)
def test_cuda_agrees_with_the_cpu_to_float64_rounding(gold_scores, device):
    """Each value is a cosine (|x| <= 1) of sums over L = 8 terms, or a mean over <= 48 of them:
    the CUDA kernels sum in another order, so a value may differ by a few float64 ulps of its
    terms (L * 2.2e-16 ~ 2e-15); 1e-12 leaves room and would catch any real error. Argmax times
    must match exactly (no near ties in this data)."""
    gold, scores = gold_scores
    with panels.reference():
        ref = all_panels(gold, scores)
    on_cuda = dataclasses.replace(gold, device=device)  # as if it had run there
    assert panels.analysis_device(on_cuda).type == "cuda"
    assert_same(ref, all_panels(on_cuda, scores), atol=1e-12)
    # an explicit device, chunked over time
    values = {m: pipeline.method_values(s) for m, s in scores.items()}
    for sm in (True, False):
        got = panels.seed_curves(gold, values, sm, KS, device=device, memory_budget_mb=0.003)
        assert_same(ref["seed", sm], got, atol=1e-12)
        for metric in ("cosine", "spearman"):
            got = panels.agreement_curves(on_cuda, values, sm, metric, [1, 3], device=device,
                                          memory_budget_mb=1e-4)
            assert_same(ref["agree", sm, metric, "[1, 3]"], got, atol=1e-12)


def test_no_applicable_scores_give_empty_panels(gold_scores):
    gold, _ = gold_scores
    assert pipeline.agreement_panel(gold, {}) == {}
    assert pipeline.seed_panel(gold, {}, ks=(99,)) == {}
    with pytest.raises(ValueError, match="seed 9 was not run"):
        pipeline.agreement_panel(gold, {}, seeds=[9])
