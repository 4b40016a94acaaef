"""Tests leave the repository's outputs alone: the guard (``tests/guard.py``) sees every write,
the conftest fixture fails a test that writes, and ``FIMO_OUTPUT_DIR`` moves every default
output folder (without it the defaults are the repository's, as before)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tda_utils import cache
from tda_utils.analysis import pipeline
from tda_utils.run import gallery, reproduce

from . import guard

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tree(tmp_path):
    """A fake repository: two outputs, a README, and a file the guard does not watch."""
    (tmp_path / "results" / "final_model" / "k").mkdir(parents=True)
    (tmp_path / "results" / "final_model" / "k" / "model.pt").write_bytes(b"weights")
    (tmp_path / "figures" / "cpu").mkdir(parents=True)
    (tmp_path / "figures" / "cpu" / "fig2.png").write_bytes(b"png")
    (tmp_path / "README.md").write_text("readme\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "x.ipynb").write_text("{}")
    return tmp_path


def test_snapshot_records_every_file_with_size_and_mtime(tree):
    snap = guard.snapshot(tree)
    st = os.stat(tree / "figures" / "cpu" / "fig2.png")
    assert snap["figures/cpu/fig2.png"] == (3, st.st_mtime_ns)
    assert set(snap) == {
        "README.md",
        "figures/",
        "figures/cpu/",
        "figures/cpu/fig2.png",
        "results/",
        "results/final_model/",
        "results/final_model/k/",
        "results/final_model/k/model.pt",
    }  # notebooks/ is not watched; missing reports/ and docs/ figure are left out
    assert guard.compare(snap, guard.snapshot(tree)) == []  # reading changes nothing
    assert guard.check(snap, tree) is None


def _touch(path: Path) -> None:
    os.utime(path, ns=(1, 1))  # same size, another mtime


@pytest.mark.parametrize(
    "write, expected",
    [
        (
            lambda t: (t / "reports" / "cpu").mkdir(parents=True),
            ["added reports/", "added reports/cpu/"],  # an empty folder counts
        ),
        (
            lambda t: (t / "figures" / "cpu" / "new.pdf").write_bytes(b"%PDF"),
            ["added figures/cpu/new.pdf"],
        ),
        (
            lambda t: (t / "figures" / "cpu" / "fig2.png").write_bytes(b"PNG!"),
            ["modified figures/cpu/fig2.png"],
        ),
        (lambda t: (t / "README.md").write_text("readme\nmore\n"), ["modified README.md"]),
        (
            lambda t: _touch(t / "results" / "final_model" / "k" / "model.pt"),
            ["modified results/final_model/k/model.pt"],
        ),
        (
            lambda t: shutil.rmtree(t / "results" / "final_model" / "k"),
            ["removed results/final_model/k/", "removed results/final_model/k/model.pt"],
        ),
        (lambda t: (t / "notebooks" / "y.ipynb").write_text("{}"), []),  # not an output
    ],
    ids=["empty-folder", "new-file", "rewrite", "readme", "touch", "rmtree", "not-watched"],
)
def test_compare_names_every_write(tree, write, expected):
    before = guard.snapshot(tree)
    write(tree)
    assert guard.compare(before, guard.snapshot(tree)) == expected
    problem = guard.check(before, tree, what="probe")
    if expected:
        assert problem.startswith("probe wrote into the repository's outputs")
        assert all(line in problem for line in expected)
    else:
        assert problem is None


def test_the_conftest_fixture_fails_a_test_that_writes(tmp_path):
    """A copy of tests/conftest.py and tests/guard.py in a fake repository: its test that writes
    into results/ FAILS naming the file, the one that writes under tmp_path passes, and one that
    fails anyway keeps its failure and gets an error at teardown naming what it wrote."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    for name in ("__init__.py", "conftest.py", "guard.py"):
        shutil.copy(REPO / "tests" / name, tests / name)
    (tests / "test_probe.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            REPO = Path(__file__).resolve().parents[1]

            def test_writes_into_results():
                (REPO / "results").mkdir()
                (REPO / "results" / "cache.pt").write_bytes(b"x")

            def test_writes_under_tmp_path(tmp_path):
                (tmp_path / "results").mkdir()

            def test_fails_and_writes():
                (REPO / "figures").mkdir()
                assert 1 == 2, "its own failure"
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIMO_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests"],
        cwd=tmp_path / "repo",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "FAILED tests/test_probe.py::test_writes_into_results" in out
    assert "2 failed, 1 passed, 1 error" in out
    assert "this test wrote into the repository's outputs" in out
    assert "added results/cache.pt" in out and "added results/" in out
    # a test that fails anyway keeps its own failure; its write is an error at teardown
    assert "AssertionError: its own failure" in out
    assert "ERROR tests/test_probe.py::test_fails_and_writes" in out and "added figures/" in out


# --- FIMO_OUTPUT_DIR ------------------------------------------------------------------------------


def test_default_output_folders_are_the_repository_s(monkeypatch):
    monkeypatch.delenv("FIMO_OUTPUT_DIR", raising=False)
    monkeypatch.delenv("FIMO_RESULTS_DIR", raising=False)
    assert cache.output_root() == cache.repo_root() == REPO
    assert cache.default_results_dir() == REPO / "results"


def test_fimo_output_dir_moves_every_default(monkeypatch, tmp_path):
    monkeypatch.setenv("FIMO_OUTPUT_DIR", str(tmp_path))
    monkeypatch.delenv("FIMO_RESULTS_DIR", raising=False)
    assert cache.output_root() == tmp_path
    assert cache.default_results_dir() == tmp_path / "results"
    paths = pipeline.output_paths("smoke")
    assert paths.figures == tmp_path / "figures" / "smoke" and paths.figures.is_dir()
    assert paths.results == tmp_path / "results"
    monkeypatch.setenv("FIMO_RESULTS_DIR", str(tmp_path / "cache"))  # moves the cache alone
    assert pipeline.output_paths("smoke").results == tmp_path / "cache"
    assert pipeline.output_paths("smoke", str(tmp_path / "f"), str(tmp_path / "r")).figures == (
        tmp_path / "f"
    )  # explicit folders win


class _FakePapermill:
    def __init__(self):
        self.kwargs = []

    def execute_notebook(self, notebook, out, parameters, **kw):
        self.kwargs.append({"parameters": parameters, **kw})
        nb = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        Path(out).write_text(json.dumps(nb))


def test_runner_and_gallery_write_under_fimo_output_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FIMO_OUTPUT_DIR", str(tmp_path))
    fake = _FakePapermill()
    monkeypatch.setitem(sys.modules, "papermill", fake)
    rows = reproduce.run([reproduce.Run("01_tabular_regression", "concrete", {})], "smoke")
    assert rows[0]["status"] == "ok"
    assert Path(rows[0]["report"]) == tmp_path / "reports" / "smoke" / (
        "01_tabular_regression__concrete.ipynb"
    )
    assert fake.kwargs[0]["parameters"]["figures_dir"] == str(tmp_path / "figures" / "smoke")
    assert fake.kwargs[0]["cwd"] == str(REPO / "notebooks")  # the notebooks are the repository's
    index = gallery.build_gallery("smoke", rows, prov={"git_commit": "x"})
    assert index == tmp_path / "reports" / "smoke" / "index.html"
    assert json.loads((tmp_path / "reports" / "smoke" / "runs.json").read_text())[0]["status"] == (
        "ok"
    )
