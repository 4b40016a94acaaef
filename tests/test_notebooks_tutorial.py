"""Course-ready notebook 00: objectives, typed parameters, exercises whose checks can say both
"correct" and "not yet", the from-scratch and LiSSA cells, and the fixed trajectory figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib
import pytest
import torch

from tda_utils.figures import plotting
from tda_utils.run import reproduce

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "notebooks" / "00_unified_view_tutorial.ipynb"
SMOKE = {r.notebook: r for r in reproduce.plan(reproduce.load_manifest(), "smoke")}
WRONG = {"ex1": 1.0, "ex2": 0.0, "ex3": [[0.0]], "ex4": [0.5, 3], "ex5": "if_explicit"}


def _cells():
    return json.loads(TUTORIAL.read_text())["cells"]


def _src(c):
    return "".join(c["source"])


def test_objectives_prerequisites_exercises_and_short_cells():
    cells = _cells()
    top = _src(cells[0]) + _src(cells[1])
    assert "Learning objectives" in top and "Prerequisites" in top
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(
        len(_src(c).splitlines()) <= 15
        for c in code
        if "parameters" not in c["metadata"].get("tags", [])
    )
    exercises = [
        c for c in cells if c["cell_type"] == "markdown" and re.search(r"\*\*Exercise \d", _src(c))
    ]
    assert 3 <= len(exercises) <= 5
    checks = [c for c in code if re.search(r"Exercise \d: correct", _src(c))]
    assert len(checks) == len(exercises) and all("not yet" in _src(c) for c in checks)
    text = "".join(_src(c) for c in code)
    assert (
        "torch.linalg.eigh(H)" in text and "lissa_depth + 1" in text and 'clip=["grad_dot"]' in text
    )


@pytest.mark.parametrize("stem", ["00_unified_view_tutorial", "06_your_model"])
def test_parameters_are_typed_and_described(stem):
    """Each parameter line has a type papermill can read and a one-line description, and
    ``papermill --help-notebook`` lists every one of them with its type."""
    import papermill

    path = ROOT / "notebooks" / f"{stem}.ipynb"
    cells = json.loads(path.read_text())["cells"]
    params = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    lines = [ln for ln in _src(params).splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines
    for ln in lines:
        assert re.match(r"^\w+: (\"?)[\w\[\], ]+\1 = .+  # \S", ln), (
            f"untyped or undescribed parameter: {ln}"
        )
    listed = papermill.inspect_notebook(str(path))
    assert set(listed) == {ln.split(":")[0] for ln in lines}
    assert all(
        p["inferred_type_name"] not in ("None", "") and p["help"] for p in listed.values()
    ), listed


def _run(tmp_path, **params):
    run = SMOKE["00_unified_view_tutorial"]
    run = reproduce.Run(
        run.notebook, None, {**run.parameters, **params, "results_dir": str(tmp_path / "results")}
    )
    rows = reproduce.run(
        [run], "smoke", reports_dir=tmp_path / "reports", figures_dir=tmp_path / "figures"
    )
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    nb = json.loads((tmp_path / "reports" / f"{run.name}.ipynb").read_text())
    return "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c["outputs"]
    )


@pytest.mark.notebook
def test_exercises_are_green_with_the_reference_answers(tmp_path):
    text = _run(tmp_path, show_solutions=True)
    for k in range(1, 6):
        assert f"Exercise {k}: correct" in text
    assert "not yet" not in text and "exercises correct: 5 of 5" in text
    diffs = re.findall(r"relative difference between if_time\(eta=[^)]*\) and LiSSA: (\S+)", text)
    assert len(diffs) == 1 and float(diffs[0]) < 1e-10
    scratch = re.findall(
        r"from scratch vs tu.attribute\('if_time'\): relative difference (\S+)", text
    )
    assert len(scratch) == 1 and float(scratch[0]) < 1e-10
    assert (tmp_path / "figures" / "tutorial_trajectories.png").exists()


@pytest.mark.notebook
def test_exercises_say_not_yet_for_wrong_or_missing_answers(tmp_path):
    text = _run(tmp_path, show_solutions=False, exercise_answers=WRONG)
    for k in range(1, 6):
        assert f"Exercise {k}: not yet" in text and f"Exercise {k}: correct" not in text
    assert "exercises correct: 0 of 5" in text
    text = _run(tmp_path, show_solutions=False)
    assert "exercises correct: 0 of 5" in text


def test_trajectory_figure_log_axis_and_clipped_first_order_line():
    t = torch.tensor([1.0, 10.0, 100.0, 1000.0])
    gold = torch.tensor([[0.1], [0.5], [0.9], [1.0]])
    preds = {
        "grad_dot": t[:, None] * 0.1,
        "if_time": gold * 1.01,
        "if_explicit": torch.tensor([1.0]),
    }
    fig = plotting.plot_trajectories(t, gold, preds, ["z"], clip=["grad_dot"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == pytest.approx(1.0)
    lo, hi = ax.get_ylim()
    assert hi < 2 and lo > -0.1  # Grad-Dot's 100 at step 1000 does not set the range
    assert any("leaves the axes" in t.get_text() for t in fig.legends[0].get_texts())
    unclipped = plotting.plot_trajectories(t, gold, preds, ["z"]).axes[0]
    assert unclipped.get_ylim()[1] > 50
