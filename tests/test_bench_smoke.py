"""The benchmark on real smoke-profile runs: the bench computes the missing inputs by running
notebooks 01 (concrete, an MLP) and 04 (finefood, a BERT head over cached trunk features) through
the runner once per session, into a temporary folder; then ``python -m tda_utils.bench`` (a
subprocess, with the runner's CPU math kernels) scores plug-ins on them: a copy of a built-in
method reproduces its row exactly next to a failing plug-in, and the leaderboard files are
written where it is told.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

import tda_utils as tu
from tda_utils.bench import leaderboard

from .test_bench_plugins import NUMBERS, PLUGINS, _same

ONLY = ["01_tabular_regression:concrete", "04_text_classification:finefood"]
RUNS = ["01_tabular_regression__concrete", "04_text_classification__finefood"]

pytestmark = pytest.mark.notebook


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """(root folder, BenchResult) after the bench computed the two runs' inputs."""
    root = tmp_path_factory.mktemp("bench_smoke")
    result = tu.bench.benchmark([], profile="smoke", only=ONLY, results_dir=root / "results",
                                reports_dir=root / "reports", figures_dir=root / "figures",
                                out_dir=root / "builtin", progress=False)
    (root / "plugins").mkdir()
    (root / "plugins" / "bench_smoke_plugins.py").write_text(textwrap.dedent(PLUGINS))
    return root, result


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "tda_utils.bench", "--profile", "smoke", "--only", *ONLY,
         "--results-dir", str(root / "results"), "--reports-dir", str(root / "reports"),
         "--figures-dir", str(root / "figures"), *args],
        cwd=root / "plugins", env=env, capture_output=True, text=True, timeout=900,
    )


def test_missing_inputs_are_computed_through_the_runner(smoke):
    root, result = smoke
    assert result.ok, result.errors
    for run in RUNS:
        assert (root / "reports" / f"{run}.ipynb").exists()  # the runner's report, not the repo's
        raw = torch.load(tu.bench.inputs_path("smoke", run, root / "results"), weights_only=True)
        assert raw["profile"] == "smoke" and raw["scores"]
    assert set(result.table["run"]) == set(RUNS)
    assert (result.table["kind"] == "built-in").all() and (result.table["status"] == "ok").all()
    text = tu.bench.load_run_inputs(tu.bench.inputs_path("smoke", RUNS[1], root / "results"))
    assert type(text.model).__name__ == "BertClassifier" and text.model.embeddings is None
    assert text.splits.train.tensors[0].is_floating_point()  # the trunk features the methods saw


def test_cli_copy_of_grad_dot_reproduces_the_row_next_to_a_failing_plugin(smoke):
    """One command: the copy's rows equal Grad-Dot's exactly, the failing plug-in gets failed
    rows and an error naming it and each run, exit status 1, and every file is still written."""
    root, _ = smoke
    out = root / "cli"
    done = _cli(root, "--method", "bench_smoke_plugins:copy_grad_dot", "--method",
                "bench_smoke_plugins:raises", "--out-dir", str(out), "--no-compute")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "bench_smoke_plugins:copy_grad_dot" in done.stdout
    for run in RUNS:
        assert f"plug-in 'bench_smoke_plugins:raises' on run {run} raised RuntimeError" in (
            done.stderr)
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "leaderboard.pdf"):
        assert (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv.columns) == list(leaderboard.COLUMNS)
    assert (csv[csv["method"] == "bench_smoke_plugins:raises"]["status"] == "failed").all()
    assert (csv[csv["method"] != "bench_smoke_plugins:raises"]["status"] == "ok").all()
    t = csv.set_index(["run", "method"])
    for run in RUNS:
        mine, ref = t.loc[(run, "bench_smoke_plugins:copy_grad_dot")], t.loc[(run, "grad_dot")]
        diff = [c for c in NUMBERS if c != "run" and not _same(mine[c], ref[c])]
        assert not diff, f"{run}: {diff}\n{mine}\n{ref}"
        builtins = {m for (r, m) in t.index if r == run and not m.startswith("bench_smoke")}
        record = tu.pipeline.load_results("smoke", root / "results")[run]
        assert builtins == set(record.agreement["fig2"])
