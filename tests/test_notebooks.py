"""Notebook structure, papermill smoke runs of every notebook, and the runner's failure report.

(The notebooks at their defaults are executed by ``pytest --nbval-lax notebooks`` in ``make test``.)
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import papermill
import pytest

from tda_utils.run import reproduce

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SMOKE = reproduce.plan(reproduce.load_manifest(), "smoke")


def test_every_notebook_has_a_smoke_run_and_a_cpu_run():
    stems = {p.stem for p in NOTEBOOKS}
    assert stems, "no notebooks found"
    assert stems == {r.notebook for r in SMOKE}
    assert stems == {r.notebook for r in reproduce.plan(reproduce.load_manifest(), "cpu")}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_structure(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        "committed with outputs"
    )
    for c in code:
        src = "".join(c["source"])
        assert not re.search(r"^\s*(def|class|async def)\s", src, re.M), (
            f"def/class in a notebook cell:\n{src}"
        )
        if c not in tagged:
            assert len(src.splitlines()) <= 15, f"cell longer than 15 lines:\n{src}"
    assert nb["cells"][0]["cell_type"] == "markdown" and "Fig" in "".join(nb["cells"][0]["source"])


#: notebooks whose parameters are typed by another open issue (remove once they are)
UNTYPED_YET: set[str] = set()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(reason="typed by its own issue"))
        if p.stem in UNTYPED_YET
        else p
        for p in NOTEBOOKS
    ],
    ids=lambda p: p.stem,
)
def test_parameters_are_typed_and_described(path):
    """``papermill --help-notebook`` lists every parameter with its type and a description."""
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = [
        t.id
        for node in ast.parse("".join(cell["source"])).body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
    ]
    params = papermill.inspect_notebook(str(path))
    assert list(params) == assigned, (
        "papermill cannot parse some parameters (one '=' per line, no '=' in comments)"
    )
    for name, p in params.items():
        assert p["inferred_type_name"] not in ("None", ""), f"{name}: no type annotation"
        assert p["help"], f"{name}: no description comment"


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    """One results folder for all smoke runs, so 05_paper_figures (run last) composes theirs."""
    return tmp_path_factory.mktemp("smoke")


@pytest.mark.notebook
@pytest.mark.parametrize("run", SMOKE, ids=lambda r: r.name)
def test_papermill_smoke_run(run, smoke_dir):
    run.parameters = {**run.parameters, "results_dir": str(smoke_dir / "results")}
    if run.notebook == "05_paper_figures":
        run.parameters["update_readme"] = False
    rows = reproduce.run(
        [run], "smoke", reports_dir=smoke_dir / "reports", figures_dir=smoke_dir / "figures"
    )
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    assert (smoke_dir / "reports" / f"{run.name}.ipynb").exists()
    pngs = sorted((smoke_dir / "figures").glob("*.png"))
    assert pngs and all(p.with_suffix(".pdf").exists() for p in pngs)
    if run.notebook == "05_paper_figures":
        done = {
            r.name for r in SMOKE if r.notebook[:2] in ("01", "02", "03", "04")
        }  # those save panels
        assert {p.stem for p in (smoke_dir / "results" / "panels" / "smoke").glob("*.pt")} == done
        assert (smoke_dir / "figures" / "fig2_all_datasets.png").exists()
        assert (smoke_dir / "figures" / "summary.csv").read_text().count("Grad-Dot") == len(done)


def _other_offline_runs() -> list:
    """Smoke runs of the tabular notebooks on the offline stand-ins that the smoke profile leaves
    out (so that its 05 run keeps a missing dataset): same sizes as the default dataset's."""
    base = {r.notebook: r for r in SMOKE}
    cpu = {(r.notebook, r.dataset): r for r in reproduce.plan(reproduce.load_manifest(), "cpu")}
    runs = []
    for nb, ds in [("01_tabular_regression", "diabetes"), ("02_tabular_classification", "cps1988")]:
        params = {**cpu[(nb, ds)].parameters, **base[nb].parameters}
        runs.append(reproduce.Run(nb, ds, params))
    return runs


@pytest.mark.notebook
@pytest.mark.parametrize("run", _other_offline_runs(), ids=lambda r: r.name)
def test_papermill_smoke_run_other_offline_datasets(run, tmp_path):
    assert run.dataset not in {r.dataset for r in SMOKE}
    run.parameters["results_dir"] = str(tmp_path / "results")
    rows = reproduce.run(
        [run], "smoke", reports_dir=tmp_path / "reports", figures_dir=tmp_path / "figures"
    )
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    assert (tmp_path / "figures" / f"fig2_cos_sim_epochs_sgd_{run.dataset}.png").exists()
    assert (tmp_path / "results" / "panels" / "smoke" / f"{run.name}.pt").exists()


@pytest.mark.notebook
def test_runner_names_the_failing_run_and_cell(tmp_path, capsys):
    bad = reproduce.Run(
        "01_tabular_regression",
        "no_such_dataset",
        {**SMOKE[0].parameters, "results_dir": str(tmp_path)},
    )
    rows = reproduce.run([bad], "smoke", reports_dir=tmp_path / "r", figures_dir=tmp_path / "f")
    assert rows[0]["status"] == "FAILED"
    assert "ValueError" in rows[0]["detail"] and "dataset='no_such_dataset'" in rows[0]["detail"]
    assert re.search(r"cell \d+", rows[0]["detail"])
    text = reproduce.format_summary(rows)
    assert "FAILED 01_tabular_regression__no_such_dataset: cell" in text


def test_set_overrides_every_selected_run():
    overrides = reproduce.parse_overrides(
        [
            "n_seeds=2",
            "data_path=/x/energy.txt",
            "method_options={lissa: {depth: 3}}",
            "adam_lr=null",
        ]
    )
    assert overrides == {
        "n_seeds": 2,
        "data_path": "/x/energy.txt",
        "method_options": {"lissa": {"depth": 3}},
        "adam_lr": None,
    }
    runs = reproduce.plan(reproduce.load_manifest(), "cpu", ["01_tabular_regression"], overrides)
    assert [r.dataset for r in runs] == ["concrete", "diabetes"]
    assert all(r.parameters["n_seeds"] == 2 and r.parameters["adam_lr"] is None for r in runs)
    assert runs[1].parameters["damping_multiple"] == 1000  # the profile's own overrides stay
    untouched = reproduce.plan(reproduce.load_manifest(), "cpu", ["01_tabular_regression"])
    assert "n_seeds" not in untouched[0].parameters
    for bad in ["n_seeds", "=2", "n seeds=2"]:
        with pytest.raises(ValueError, match="KEY=VALUE"):
            reproduce.parse_overrides([bad])


def test_local_profile_skips_runs_whose_data_is_missing(tmp_path):
    manifest = reproduce.load_manifest()
    assert manifest["profiles"]["local"]["skip_missing_data"] is True
    runs = reproduce.plan(
        manifest,
        "local",
        ["01_tabular_regression:energy"],
        {"data_path": str(tmp_path / "nowhere" / "energy.txt")},
    )
    rows = reproduce.run(
        runs,
        "local",
        reports_dir=tmp_path / "r",
        figures_dir=tmp_path / "f",
        skip_missing_data=True,
    )
    assert rows[0]["status"] == "skipped" and "nowhere" in rows[0]["detail"]
    assert not (tmp_path / "r" / "01_tabular_regression__energy.ipynb").exists()
    assert (
        "skipped 01_tabular_regression__energy: no data at data_path="
        in reproduce.format_summary(rows)
    )
    # relative paths are read from the repository root; existing ones are not skipped
    assert reproduce.Run("x", None, {"data_path": "notebooks"}).missing_data(ROOT) is None
    assert (
        reproduce.Run("x", None, {"data_path": "data/none"}).missing_data(ROOT)
        == ROOT / "data/none"
    )
    assert reproduce.Run("x", None, {}).missing_data(ROOT) is None
