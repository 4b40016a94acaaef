"""Notebook structure, papermill smoke runs of every notebook, and the runner's failure report.

(The notebooks at their defaults are executed by ``pytest --nbval-lax notebooks`` in ``make test``.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tda_utils import reproduce

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
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "committed with outputs"
    for c in code:
        src = "".join(c["source"])
        assert not re.search(r"^\s*(def|class|async def)\s", src, re.M), f"def/class in a notebook cell:\n{src}"
        assert len(src.splitlines()) <= 30, f"cell longer than 30 lines:\n{src}"
    assert nb["cells"][0]["cell_type"] == "markdown" and "Fig" in "".join(nb["cells"][0]["source"])


@pytest.mark.notebook
@pytest.mark.parametrize("run", SMOKE, ids=lambda r: r.name)
def test_papermill_smoke_run(run, tmp_path):
    run.parameters = {**run.parameters, "results_dir": str(tmp_path / "results")}
    rows = reproduce.run([run], "smoke", reports_dir=tmp_path / "reports", figures_dir=tmp_path / "figures")
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    assert (tmp_path / "reports" / f"{run.name}.ipynb").exists()
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert pngs and all(p.with_suffix(".pdf").exists() for p in pngs)


@pytest.mark.notebook
def test_runner_names_the_failing_run_and_cell(tmp_path, capsys):
    bad = reproduce.Run("01_tabular_regression", "no_such_dataset", {**SMOKE[0].parameters,
                                                                    "results_dir": str(tmp_path)})
    rows = reproduce.run([bad], "smoke", reports_dir=tmp_path / "r", figures_dir=tmp_path / "f")
    assert rows[0]["status"] == "FAILED"
    assert "ValueError" in rows[0]["detail"] and "dataset='no_such_dataset'" in rows[0]["detail"]
    assert re.search(r"cell \d+", rows[0]["detail"])
    text = reproduce.format_summary(rows)
    assert "FAILED 01_tabular_regression__no_such_dataset: cell" in text
