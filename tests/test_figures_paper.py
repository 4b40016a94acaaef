"""Figure functions on smoke-size results: files, panels, curves and labels."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

import tda_utils as tu
from tda_utils.figures import paper
from tda_utils.analysis import pipeline

from .conftest import make_splits, tiny_model


@pytest.fixture(scope="module")
def small_run():
    splits = make_splits("regression", n_train=30)
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=4, batch_size=8, seeds=range(4), left_out=range(0, 30, 3), dtype="float64"
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    scores = pipeline.run_methods(
        ["grad_cos", "grad_dot"],
        model,
        splits,
        list(cfg.left_out),
        list(range(splits.n_test)),
        progress=False,
    )
    return splits, gold, scores


def labels(ax):
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_agreement_figure_files_curves_labels(small_run, tmp_path):
    _, gold, scores = small_run
    fig, curves = paper.agreement_figure("fig2", gold, scores, "tiny", tmp_path)
    ax = fig.axes[0]
    assert labels(ax) == ["Grad-Dot", "Grad-Cos"]  # the paper's order, whatever the dict order
    assert ax.get_xlabel() == "further training epochs" and ax.get_ylabel() == "cosine similarity"
    assert [line.get_color() for line in ax.get_lines()[:2]] == ["C0", "C1"]
    assert list(ax.get_lines()[0].get_xdata()) == [1, 2, 3, 4]
    assert (tmp_path / "fig2_cos_sim_epochs_sgd_tiny.png").exists() and (
        tmp_path / "fig2_cos_sim_epochs_sgd_tiny.pdf"
    ).exists()
    torch.testing.assert_close(
        torch.as_tensor(ax.get_lines()[0].get_ydata()), curves["grad_dot"].mean
    )
    fig.canvas.draw()  # the legend sits below the plot, off the curves
    assert not fig.legends[0].get_window_extent().overlaps(ax.get_window_extent())
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Grad-Dot", "Grad-Cos"]
    fig6, _ = paper.agreement_figure("fig6", gold, scores, "tiny", tmp_path, metric="spearman")
    assert fig6.axes[0].get_ylabel() == "Spearman correlation"
    fig5, c5 = paper.agreement_figure("fig5", gold, scores, "tiny", tmp_path, subtract_mean=False)
    assert (tmp_path / "fig5_cos_sim_epochs_sgd_subfull_tiny.png").exists()
    assert not torch.allclose(c5["grad_dot"].mean, curves["grad_dot"].mean)
    plt.close("all")


def test_seed_and_sorted_figures(small_run, tmp_path):
    _, gold, scores = small_run
    fig, seed_curves = paper.seed_figure("fig7", gold, scores, "tiny", tmp_path, ks=(1, 2, 4, 100))
    assert seed_curves["grad_dot"].ks == [1, 2, 4] and seed_curves["grad_dot"].n_groups == [4, 2, 1]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "number of seeds averaged"
    assert (tmp_path / "fig7_cos_sim_seeds_sgd_tiny.pdf").exists()
    fig10, curves = paper.sorted_scores_figure(gold, scores, "tiny", tmp_path, time_indices=(0, 3))
    assert list(curves) == [
        "grad_dot",
        "grad_cos",
        "further training, epoch 1",
        "further training, epoch 4",
    ]
    assert all(abs(float(c.norm()) - 1) < 1e-12 for c in curves.values())
    assert labels(fig10.axes[0]) == [
        "Grad-Dot",
        "Grad-Cos",
        "further training, epoch 1",
        "further training, epoch 4",
    ]
    assert fig10.axes[0].get_xlabel() == "rank"
    plt.close("all")


def test_top_instances_table(small_run):
    _, gold, scores = small_run
    table = pipeline.top_instances(gold, scores, query_positions=(0, 2), k=2)
    assert len(table) == 8 and set(table["kind"]) == {"helpful", "harmful"}
    tau0 = gold.attribution()[0]
    first = table.iloc[0]
    assert first["train_index"] == gold.left_out[int(tau0[0].argmax())]
    assert first["tau"] == pytest.approx(float(tau0[0].max()))
    # ranks against the scores themselves: 1 + the number of left-out instances scored higher
    pos = gold.left_out.index(int(first["train_index"]))
    row = scores["grad_dot"].values[0].tolist()
    assert first["grad_dot_rank"] == sorted(row, reverse=True).index(row[pos]) + 1
    assert first["grad_dot_score"] == row[pos]
    assert (table["time"] == float(gold.times[0])).all()


def test_top_instances_skips_evaluations_where_tau_is_still_zero(small_run):
    """With permutation leave-out, tau is exactly 0 before any seed has visited a left-out
    instance; Table 2 then uses the first evaluation with a signal for every chosen query."""
    import dataclasses

    _, gold, scores = small_run
    # prepend an evaluation (time 0.5) at which every left-out run equals the full run
    full0 = gold.loss_full[:1]  # (1, S, Q)
    early = dataclasses.replace(
        gold,
        loss_full=torch.cat([full0, gold.loss_full]),
        loss_loo=torch.cat([full0[:, :, None, :].expand_as(gold.loss_loo[:1]), gold.loss_loo]),
        times=torch.cat([torch.tensor([0.5]), torch.as_tensor(gold.times).float()]),
    )
    assert early.attribution()[0].abs().max() == 0
    table = pipeline.top_instances(early, scores, query_positions=(0, 2), k=2)
    assert (table["time"] == float(early.times[1])).all()
    assert table["tau"].abs().max() > 0
    # an int picks the first queries with a signal; a query whose tau is identically 0 is skipped
    silent = dataclasses.replace(early, loss_loo=early.loss_loo.clone())
    silent.loss_loo[..., 0] = silent.loss_full[..., None, 0]
    assert (silent.attribution()[:, 0] == 0).all()
    auto = pipeline.top_instances(silent, scores, query_positions=2, k=1)
    assert list(dict.fromkeys(auto["query"])) == [silent.query_indices[1], silent.query_indices[2]]
    with pytest.raises(ValueError, match="time_index=9"):
        pipeline.top_instances(early, scores, time_index=9)
    forced = pipeline.top_instances(early, scores, query_positions=(0,), k=1, time_index=0)
    assert (forced["tau"] == 0).all()


def test_markdown_table_formats_times_as_integers():
    import pandas as pd

    md = paper.markdown_table(
        pd.DataFrame(
            {
                "method": ["Grad-Dot"],
                "first": [0.12345],
                "best_time": [16.0],
                "crossing_time": [float("nan")],
                "other": [2.0],
            }
        )
    )
    assert md.splitlines()[2] == "| Grad-Dot | 0.123 | 16 | - | 2.000 |"


def test_results_record_round_trip_and_composed_figure(small_run, tmp_path):
    splits, gold, scores = small_run
    _, curves = paper.agreement_figure("fig2", gold, scores, "tiny", tmp_path)
    record = pipeline.collect_results(
        "01_tabular_regression",
        "concrete",
        "smoke",
        gold,
        scores,
        {"test_mse": 0.5},
        seed_ks=(1, 2),
        sorted_time_indices=(0, 3),
        results_dir=tmp_path,
    )
    torch.testing.assert_close(record.agreement["fig2"]["grad_dot"].mean, curves["grad_dot"].mean)
    stored = torch.load(record.path(tmp_path), weights_only=True)  # plain data only
    assert isinstance(stored, dict) and isinstance(stored["agreement"]["fig2"]["grad_dot"], dict)
    torch.save({"fig2": {}, "summary": object()}, tmp_path / "panels" / "smoke" / "old__format.pt")
    with pytest.warns(UserWarning, match="old__format.pt: not a results record"):
        runs = pipeline.load_results("smoke", tmp_path)
    assert list(runs) == ["01_tabular_regression__concrete"]
    loaded = runs["01_tabular_regression__concrete"]
    torch.testing.assert_close(
        loaded.agreement["fig6"]["grad_cos"].values, record.agreement["fig6"]["grad_cos"].values
    )
    assert loaded.seeds["fig7"]["grad_dot"].ks == [1, 2] and set(loaded.agreement) == {
        "fig2",
        "fig6",
        "fig5",
    }
    fig = paper.compose_figure("fig2", {"concrete": loaded}, title="Fig. 2")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    assert axes[0].get_title() == "(a) concrete" and labels(axes[0]) == ["Grad-Dot", "Grad-Cos"]
    assert (
        "no results" in axes[1].texts[0].get_text()
        and "energy / diabetes" in axes[1].texts[0].get_text()
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Grad-Dot", "Grad-Cos"]
    fig11 = paper.compose_figure("fig11", {"concrete": loaded})
    assert len([ax for ax in fig11.axes if ax.get_visible()]) == 2
    assert "no fig11 data" in fig11.axes[0].texts[0].get_text()
    with pytest.raises(ValueError, match="fig_id='fig99'"):
        paper.compose_figure("fig99", {"concrete": loaded})
    summary = paper.cross_dataset_summary(runs)
    assert list(summary["method"]) == ["Grad-Dot", "Grad-Cos"]
    assert list(summary["dropped"]) == [
        int(curves[m].n_dropped.max()) for m in ("grad_dot", "grad_cos")
    ]
    assert loaded.labels == {"grad_dot": "Grad-Dot", "grad_cos": "Grad-Cos"}
    assert summary["first"].iloc[0] == pytest.approx(float(curves["grad_dot"].mean[0]))
    plt.close("all")


def test_update_readme_writes_only_its_section_and_figure(tmp_path):
    import pandas as pd

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{paper.README_START}\nold\n{paper.README_END}\nrest\n")
    fig = tmp_path / "fig2.png"
    fig.write_bytes(b"png")
    summary = pd.DataFrame(
        [
            {
                "run": "r",
                "method": "Grad-Dot",
                "first": 0.5,
                "best": 0.6,
                "best_time": 2.0,
                "last": 0.4,
                "crossing_time": None,
                "time_unit": "epoch",
            }
        ]
    )
    assert paper.update_readme(summary, fig, "cpu", readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "| r | Grad-Dot | 0.500 | 0.600 | 2 | 0.400 | - |" in text
    assert (tmp_path / paper.README_FIGURE.format(profile="cpu")).read_bytes() == b"png"


def test_crossing_time():
    def mk(xs):
        n = len(xs)
        return tu.Curve(
            mean=torch.tensor(xs, dtype=torch.float64),
            sem=torch.zeros(n),
            values=torch.zeros(n, 1),
            n_nan=torch.zeros(n),
            metric="cosine",
        )

    times = torch.tensor([1.0, 2.0, 3.0, 4.0])
    gd = mk([0.9, 0.7, 0.5, 0.3])

    def cross(**inf):
        return paper.crossing_time({"grad_dot": gd, **{m: mk(v) for m, v in inf.items()}}, times)

    assert cross(cg=[0.4, 0.5, 0.6, 0.6]) == 3.0  # starts below, crosses at the third
    assert cross(cg=[0.95, 0.8, 0.6, 0.6]) == 1.0  # starts above and stays above
    assert cross(cg=[0.95, 0.6, 0.6, 0.6]) == 3.0  # above, falls below, above again from t=3
    assert cross(cg=[0.4, 0.8, 0.6, 0.2]) is None  # crosses, then falls back below at the end
    assert cross(cg=[0.4, 0.5, 0.4, 0.2]) is None  # never above
    assert cross(cg=[0.4, 0.6, 0.4, 0.2], ekfac=[0.4, 0.5, 0.4, 0.4]) == 4.0  # any influence
    assert cross(cg=[0.4, 0.5, 0.6, 0.6], ekfac=[0.4, 0.8, 0.6, 0.4]) == 2.0  # the earliest
    assert cross(grad_cos=[1.0, 1.0, 1.0, 1.0]) is None  # first-order is not influence family
    assert cross(cg=[0.4, float("nan"), 0.6, 0.6]) == 3.0  # NaN counts as not above
    assert paper.crossing_time({"grad_dot": mk([0.9, 0.8, 0.8, 0.8])}, times) is None


def test_reference_score_is_the_ridge_fit_on_the_same_split():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression, Ridge

    splits = make_splits("regression", n_train=40, n_test=10)
    ref = pipeline.reference_score(splits)
    (x, y), (xt, yt) = splits.train.tensors, splits.test.tensors
    pred = Ridge(alpha=1.0).fit(x.numpy(), y.numpy().ravel()).predict(xt.numpy())
    assert ref["ridge_test_mse"] == pytest.approx(float(((pred - yt.numpy().ravel()) ** 2).mean()))
    assert ref["ridge_test_r2"] == pytest.approx(
        1 - ref["ridge_test_mse"] / float(yt.numpy().var())
    )
    cls_splits = make_splits("classification", n_train=60)
    cls = pipeline.reference_score(cls_splits)
    (x, y), (xt, yt) = (
        (t.numpy() for t in cls_splits.train.tensors),
        (t.numpy() for t in cls_splits.test.tensors),
    )
    logistic = LogisticRegression(max_iter=2000).fit(x, y)
    boosting = HistGradientBoostingClassifier(random_state=0).fit(x, y)
    assert cls["logistic_test_accuracy"] == pytest.approx(
        float((logistic.predict(xt) == yt).mean())
    )
    assert cls["boosting_test_accuracy"] == pytest.approx(
        float((boosting.predict(xt) == yt).mean())
    )
