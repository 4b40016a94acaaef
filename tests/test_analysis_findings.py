"""The "reproduced?" table, the dropped-query count, LiSSA depth labels and the README section."""

from __future__ import annotations

import dataclasses
import shutil

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

import tda_utils as tu
from tda_utils.figures import paper
from tda_utils.analysis import pipeline
from tda_utils.figures import plotting
from tda_utils.methods.registry import PAPER_LISSA_DEPTH, method_label
from tda_utils.analysis.metrics import SeedCurve
from tda_utils.analysis.records import RunResults


def mk(xs, dropped=None):
    n = len(xs)
    return tu.Curve(
        mean=torch.tensor(xs, dtype=torch.float64),
        sem=torch.zeros(n, dtype=torch.float64),
        values=torch.zeros(n, 1),
        n_nan=torch.zeros(n, dtype=torch.long),
        metric="cosine",
        n_dropped=None if dropped is None else torch.tensor(dropped),
    )


def seed(ks, best):
    return SeedCurve(
        ks=list(ks),
        best=torch.tensor(best, dtype=torch.float64),
        sem=torch.zeros(len(ks), dtype=torch.float64),
        best_time_index=[0] * len(ks),
        n_groups=[1] * len(ks),
    )


def record(dataset, agreement, seeds, labels=None):
    return RunResults(
        notebook="01_tabular_regression",
        dataset=dataset,
        profile="smoke",
        time_unit="epoch",
        times={f: torch.tensor([1.0, 2.0, 3.0]) for f in agreement},
        agreement=agreement,
        seeds=seeds,
        sorted_scores={},
        wall_time={},
        final_eval={},
        labels=labels or {},
    )


def scores(method, diagnostics, config=None):
    return tu.AttributionScores(
        method=method,
        values=torch.zeros(1, 2),
        train_indices=(0, 1),
        query_indices=(0,),
        config=config or {},
        diagnostics=diagnostics,
        wall_time=0.0,
        peak_memory_mb=0.0,
    )


@pytest.fixture
def runs():
    paper_like = record(
        "concrete",
        {
            "fig2": {
                "grad_dot": mk([0.9, 0.6, 0.3]),
                "grad_cos": mk([0.8, 0.5, 0.2]),
                "cg": mk([0.5, 0.55, 0.5]),
                "lissa_h": mk([0.2, 0.4, 0.7]),
            },
            "fig5": {"grad_dot": mk([0.4, 0.3, 0.2])},
        },
        {"fig7": {"grad_dot": seed([1, 2, 4], [0.5, 0.6, 0.8])}},
        labels={"lissa_h": "LiSSA-H (depth 100)"},
    )
    opposite = record(
        "diabetes",
        {
            "fig2": {"grad_dot": mk([0.5, 0.6, 0.7]), "ekfac": mk([0.6, 0.6, 0.6])},
            "fig5": {"grad_dot": mk([0.6, 0.6, 0.6])},
        },
        {"fig7": {"grad_dot": seed([1, 2], [0.7, 0.6])}},
    )
    missing = record("mnist", {"fig2": {"grad_dot": mk([0.5, 0.5, 0.5])}}, {})
    return {"a__concrete": paper_like, "b__diabetes": opposite, "c__mnist": missing}


def test_reproduced_table_verdicts_and_evidence(runs):
    table = paper.reproduced_table(runs)
    assert list(table.columns) == ["run", "panel", "finding", "evidence", "reproduced"]
    assert len(table) == 3 * len(paper.FINDINGS)
    got = {(r.run, r.finding): (r.evidence, r.reproduced) for r in table.itertuples()}
    early, late, seeds_, mean = paper.FINDINGS
    assert got["a__concrete", early] == ("Grad-Dot first 0.900 vs CG first 0.500", "yes")
    assert got["a__concrete", late] == (
        "Grad-Dot last 0.300 vs LiSSA-H (depth 100) last 0.700",
        "yes",
    )
    assert got["a__concrete", seeds_] == ("Grad-Dot best k=4 0.800 vs k=1 0.500", "yes")
    assert got["a__concrete", mean] == ("Grad-Dot first 0.400 (Fig. 5) vs 0.900 (Fig. 2)", "yes")
    assert [got["b__diabetes", f][1] for f in paper.FINDINGS] == ["no"] * 4
    assert got["b__diabetes", early][0] == "Grad-Dot first 0.500 vs EK-FAC first 0.600"
    assert [got["c__mnist", f][1] for f in paper.FINDINGS] == ["not run"] * 4
    assert list(table.drop_duplicates("run")["panel"]) == ["a", "b", "e"]
    empty = paper.reproduced_table({})
    assert empty.empty and list(empty.columns) == list(table.columns)


def test_reproduced_table_ties_and_nan():
    tie = record(
        "energy",
        {"fig2": {"grad_dot": mk([0.5, 0.4, 0.5]), "cg": mk([0.5, float("nan"), 0.5])}},
        {"fig7": {"grad_dot": seed([1], [0.5])}},
    )
    got = paper.reproduced_table({"t": tie}).set_index("finding")["reproduced"]
    early, late, seeds_, mean = paper.FINDINGS
    assert got[early] == "yes" and got[late] == "no"  # >= early, strictly > late
    assert got[seeds_] == "not run" and got[mean] == "not run"  # one k; no Fig. 5


def test_summary_dropped_column_and_dropped_note():
    curves = {"grad_dot": mk([0.9, 0.6, 0.3], dropped=[0, 3, 1]), "cg": mk([0.5, 0.5, 0.5])}
    table = pipeline.summary_table(curves, [1, 2, 3], labels={"cg": "CG (custom)"})
    assert table.loc["Grad-Dot", "dropped"] == 3 and table.loc["CG (custom)", "dropped"] == 0
    note = paper.dropped_note(curves)
    assert "up to 3" in note and "Grad-Dot" in note and "CG" not in note
    assert paper.dropped_note({"cg": curves["cg"]}) == ""
    assert paper._with_dropped("run note", curves) == f"run note; {note}"


def test_cross_dataset_summary_has_dropped_and_labels(runs):
    runs["a__concrete"].agreement["fig2"]["grad_dot"] = mk([0.9, 0.6, 0.3], dropped=[2, 0, 0])
    summary = paper.cross_dataset_summary(runs)
    part = summary[summary["run"] == "a__concrete"].set_index("method")
    assert part.loc["Grad-Dot", "dropped"] == 2 and part.loc["CG", "dropped"] == 0
    assert "LiSSA-H (depth 100)" in part.index
    assert part["crossing_time"].iloc[0] == 3.0


def test_method_label_names_a_non_paper_lissa_depth():
    assert method_label("lissa_h") == "LiSSA-H"
    assert method_label("lissa_h", scores("lissa_h", {"depth": 100})) == "LiSSA-H (depth 100)"
    assert method_label("lissa", scores("lissa", {}, {"depth": 20})) == "LiSSA (depth 20)"
    assert method_label("lissa", scores("lissa", {"depth": PAPER_LISSA_DEPTH})) == "LiSSA"
    assert method_label("grad_dot", scores("grad_dot", {})) == "Grad-Dot"
    labels = pipeline.score_labels({"lissa_h": scores("lissa_h", {"depth": 100})})
    table = pipeline.summary_table(
        {"lissa_h": mk([0.1, 0.2, 0.3])}, [1, 2, 3], {"lissa_h": scores("lissa_h", {"depth": 100})}
    )
    assert list(table.index) == [labels["lissa_h"]] == ["LiSSA-H (depth 100)"]
    fig = plotting.plot_agreement({"lissa_h": mk([0.1, 0.2, 0.3])}, [1, 2, 3], labels=labels)
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["LiSSA-H (depth 100)"]
    fig = plotting.plot_seed_curves({"lissa_h": seed([1, 2], [0.1, 0.2])}, labels=labels)
    assert fig.axes[0].get_legend_handles_labels()[1] == ["LiSSA-H (depth 100)"]
    composed = paper.compose_figure(
        "fig2",
        {"concrete": record("concrete", {"fig2": {"lissa_h": mk([0.1, 0.2, 0.3])}}, {}, labels)},
    )
    assert [t.get_text() for t in composed.legends[0].get_texts()] == ["LiSSA-H (depth 100)"]
    plt.close("all")


def test_update_readme_adds_dropped_and_reproduced_tables(runs, tmp_path):
    readme = tmp_path / "README.md"
    shutil.copyfile(paper.repo_root() / "README.md", readme)
    before = readme.read_text()
    fig = tmp_path / "fig2.png"
    fig.write_bytes(b"png")
    summary = paper.cross_dataset_summary(runs)
    reproduced = paper.reproduced_table(runs)
    assert paper.update_readme(summary, fig, "cpu", readme, reproduced=reproduced)
    text = readme.read_text()
    start, end = text.index(paper.README_START), text.index(paper.README_END)
    assert text[:start] == before[: before.index(paper.README_START)]
    assert text[end:] == before[before.index(paper.README_END) :]
    section = text[start:end]
    assert "| run | method | first | best | best_time | last | dropped | crossing_time |" in section
    assert "| a__concrete | Grad-Dot | 0.900 | 0.900 | 1 | 0.300 | 0 | 3 |" in section
    assert section.index("| run | method |") < section.index("| run | panel | finding |")
    assert (
        "| a__concrete | a | first-order methods agree best early | "
        "Grad-Dot first 0.900 vs CG first 0.500 | yes |" in section
    )
    assert "the first evaluation from which a Hessian-based influence curve" in section
    assert paper.update_readme(pd.DataFrame(), fig, "cpu", readme)  # no reproduced table: none
    assert "| run | panel | finding |" not in readme.read_text()


def test_record_without_labels_loads(runs, tmp_path):
    data = runs["a__concrete"].to_data()
    del data["labels"]  # a record written before labels existed
    assert RunResults.from_data(data).labels == {}
    replaced = dataclasses.replace(runs["a__concrete"], profile="other")
    assert RunResults.from_data(replaced.to_data()).labels == {"lissa_h": "LiSSA-H (depth 100)"}
