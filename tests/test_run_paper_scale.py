"""docs/paper_scale/ (``tda_utils.run.paper_scale``) and the maintainer's recipe
(``benchmarks/paper_scale.sh``): the figure, the tables' columns, and every number in the Markdown
equal to the CSV's and to the records'. Everything is written under tmp_path.

The end-to-end test runs the recipe on the CPU at tiny sizes (the paper profile with ``--set``
overrides) on Concrete and on the published UCI Energy file from ../shared/data (skipped when it
is absent)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from tda_utils.analysis.metrics import Curve
from tda_utils.analysis.records import RunResults, load_results
from tda_utils.cache import repo_root
from tda_utils.run import paper_scale
from tda_utils.run.gallery import RUNS_FILE

SHARED = Path(
    os.environ.get("FIMO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
ENERGY_FILE = SHARED / "energy" / "energy_y1.txt"
SCRIPT = repo_root() / "benchmarks" / "paper_scale.sh"
#: the paper profile at tiny sizes (a few seconds of further training per run)
TINY = {
    "n_seeds": "2", "n_seeds_adam": "2", "n_left_out": "5", "n_queries": "8", "train_epochs": "5",
    "ft_epochs": "3", "retrain_epochs": "3", "retrain_eval_every": "1", "seed_ks": "[1,2]",
    "sorted_time_indices": "[0,1]", "table_queries": "[0,1]",
    "method_options": "{lissa: {depth: 10}, lissa_h: {depth: 10}, cg: {max_iter: 20}, "
    "if_time: {n_eigs: 5}}",
}  # fmt: skip


def _record(dataset: str, profile: str, shift: float = 0.0) -> RunResults:
    """A synthetic record with a Fig. 2 panel of Grad-Dot, CG and LiSSA over 4 evaluations."""
    times = torch.tensor([1.0, 2.0, 3.0, 4.0])
    means = {
        "grad_dot": [0.5, 0.4, 0.3, 0.2],
        "cg": [0.1, 0.3, 0.35, 0.4],
        "lissa": [0.2, float("nan"), 0.1, 0.15],
    }
    curves = {}
    for i, (m, mean) in enumerate(means.items()):
        mean = torch.tensor(mean) + shift
        curves[m] = Curve(
            mean=mean,
            sem=torch.full((4,), 0.01 * (i + 1)) + torch.arange(4) * 1e-3,
            values=mean[:, None].repeat(1, 3),
            n_nan=torch.zeros(4, dtype=torch.long),
            metric="cosine",
        )
    return RunResults(
        notebook="01_tabular_regression", dataset=dataset, profile=profile, time_unit="epoch",
        times={"fig2": times}, agreement={"fig2": curves}, seeds={}, sorted_scores={},
        wall_time={}, final_eval={},
    )  # fmt: skip


def _md_rows(path: Path) -> list[dict[str, str]]:
    """The rows of the (single) Markdown table in ``path`` as {column: cell text}."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= {"|", "-"}
    return [dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _assert_markdown_equals_csv(docs: Path, name: str, columns: list[str]) -> pd.DataFrame:
    """``<name>.csv`` has exactly ``columns``; ``<name>.md`` shows each of its cells (numbers
    rounded to 3 decimals, missing ones as "-")."""
    df = pd.read_csv(docs / f"{name}.csv")
    assert list(df.columns) == columns
    md = _md_rows(docs / f"{name}.md")
    assert len(md) == len(df) and list(md[0]) == columns
    for row, cells in zip(df.to_dict("records"), md):
        for col in columns:
            v, cell = row[col], cells[col]
            if _missing(v):
                assert cell == "-", (name, col, cell)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                assert float(cell) == pytest.approx(v, abs=5.1e-4), (name, col, v, cell)
            else:
                assert cell == str(v), (name, col, v, cell)
    return df


def _assert_summary_matches_records(df: pd.DataFrame, runs: dict[str, RunResults]) -> None:
    assert set(df["run"]) == set(runs)
    for row in df.to_dict("records"):
        r = runs[row["run"]]
        c = r.agreement["fig2"][row["method_id"]]
        assert row["dataset"] == r.dataset
        assert row["first"] == pytest.approx(float(c.mean[0]), abs=1e-6)
        assert row["last"] == pytest.approx(float(c.mean[-1]), abs=1e-6)
        assert row["first_sem"] == pytest.approx(float(c.sem[0]), abs=1e-6)
        assert row["last_sem"] == pytest.approx(float(c.sem[-1]), abs=1e-6)
        best = int(torch.nan_to_num(c.mean.double(), nan=-math.inf).argmax())
        assert row["best"] == pytest.approx(float(c.mean[best]), abs=1e-6)
        assert row["best_sem"] == pytest.approx(float(c.sem[best]), abs=1e-6)
        assert row["best_time"] == pytest.approx(float(r.times["fig2"][best]))


def _check_docs(docs: Path, runs: dict[str, RunResults]) -> dict[str, pd.DataFrame]:
    for f in ("fig2_paper_scale.png", "fig2_paper_scale.pdf", "index.md"):
        assert (docs / f).stat().st_size > 0, f
    summary = _assert_markdown_equals_csv(docs, "summary", paper_scale.SUMMARY_COLUMNS)
    _assert_summary_matches_records(summary, runs)
    comparison = _assert_markdown_equals_csv(docs, "comparison", paper_scale.COMPARISON_COLUMNS)
    runtimes = _assert_markdown_equals_csv(docs, "runtimes", paper_scale.RUNTIME_COLUMNS)
    return {"summary": summary, "comparison": comparison, "runtimes": runtimes}


def test_docs_from_records_with_the_cpu_stand_in(tmp_path):
    paper_dir, cpu_dir, reports = tmp_path / "paper", tmp_path / "cpu", tmp_path / "reports"
    for ds in ("concrete", "energy", "toyset"):  # toyset: in none of the paper's panels
        _record(ds, "paper").save(paper_dir)
    _record("diabetes", "cpu", shift=-0.1).save(cpu_dir)  # Energy's stand-in; no cpu Concrete
    reports.mkdir()
    command = "python -m tda_utils.reproduce --profile paper --set device=cuda"
    (reports / RUNS_FILE).write_text(json.dumps([
        {"run": "01_tabular_regression__energy", "status": "ok", "wall_s": 12.34, "detail": "",
         "provenance": {"device": "cuda: NVIDIA H100", "git_commit": "abc", "time": "2026-12-07"},
         "command": command, "parameters": {"device": "cuda"}},
    ]))  # fmt: skip
    docs = tmp_path / "docs"
    paths = paper_scale.build_paper_scale(docs, "paper", paper_dir, reports, "cpu", cpu_dir)
    assert paths["index"] == docs / "index.md"
    tables = _check_docs(docs, load_results("paper", paper_dir))
    assert paper_scale.fig2_slots(["concrete", "energy", "toyset"]) == {
        "a": ("concrete",), "b": ("energy", "diabetes"), "g": ("toyset",),
    }  # fmt: skip
    # crossing time: CG stays above Grad-Dot from the third evaluation (time 3)
    assert set(tables["summary"]["crossing_time"]) == {3.0}
    comp = tables["comparison"]
    energy = comp[comp["run"] == "01_tabular_regression__energy"]
    assert set(energy["cpu_run"]) == {"01_tabular_regression__diabetes"}
    assert list(energy["cpu_first"]) == pytest.approx([0.4, 0.0, 0.1], abs=1e-6)
    assert list(energy["paper_first"]) == pytest.approx([0.5, 0.1, 0.2], abs=1e-6)
    concrete = comp[comp["run"] == "01_tabular_regression__concrete"]
    assert set(concrete["cpu_run"]) == {"-"} and concrete["cpu_best"].isna().all()
    rt = tables["runtimes"].iloc[0]
    assert (rt["device"], rt["device_setting"], rt["command"]) == (
        "cuda: NVIDIA H100", "cuda", command,
    )  # fmt: skip
    index = (docs / "index.md").read_text()
    assert "fig2_paper_scale.png" in index and "Paper scale vs the `cpu` profile" in index


def test_no_paper_records_is_one_error_line(tmp_path, capsys):
    status = paper_scale.main(["--output-dir", str(tmp_path), "--docs-dir", str(tmp_path / "d")])
    assert status == 2
    assert capsys.readouterr().err.startswith("error: no results of profile 'paper'")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.skipif(not ENERGY_FILE.is_file(), reason="../shared/data/energy is absent")
def test_recipe_runs_concrete_and_energy_tiny_on_the_cpu(tmp_path):
    out, docs, cpu = tmp_path / "out", tmp_path / "docs", tmp_path / "cpu_results"
    _record("concrete", "cpu", shift=0.05).save(cpu)  # a cpu-profile record to compare with
    env = {
        **os.environ,
        "RUNS": "01_tabular_regression:concrete 01_tabular_regression:energy",
        "DEVICE": "cpu",
        "ENERGY_FILE": str(ENERGY_FILE),
        "OUT": str(out),
        "DOCS": str(docs),
        "CPU_RESULTS": str(cpu),
        "PY": sys.executable,
        "INSTALL": "0",
        "PYTHONPATH": os.pathsep.join(
            [str(repo_root()), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    env.pop("FIMO_OUTPUT_DIR", None)
    args = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = load_results("paper", out / "results")
    assert set(runs) == {"01_tabular_regression__concrete", "01_tabular_regression__energy"}
    assert runs["01_tabular_regression__energy"].final_eval  # trained on the 9-column file
    tables = _check_docs(docs, runs)
    rt = tables["runtimes"].set_index("run")
    assert set(rt.index) == set(runs) and (rt["status"] == "ok").all()
    assert (rt["wall_s"] > 0).all() and (rt["device_setting"] == "cpu").all()
    assert (rt["profile"] == "paper").all() and rt["device"].str.startswith("cpu: ").all()
    for run, command in rt["command"].items():
        assert f"--only {run.replace('__', ':')}" in command and "--output-dir" in command
    assert "data_path=" in rt.loc["01_tabular_regression__energy", "command"]
    comp = tables["comparison"]
    assert set(comp["cpu_run"]) == {"01_tabular_regression__concrete", "-"}
    # the paper run never mixes with the cpu profile's folders
    assert (out / "reports" / "paper" / RUNS_FILE).exists()
    assert not (out / "results" / "panels" / "cpu").exists()


class _FakePapermill:
    """Stands in for papermill: writes a report and notes where the outputs were meant to go."""

    def __init__(self):
        self.seen = []

    def execute_notebook(self, notebook, out, parameters, **kw):
        self.seen.append((os.environ.get("FIMO_OUTPUT_DIR"), parameters))
        Path(out).write_text("report")


def test_runner_output_dir_moves_every_output_and_records_the_command(tmp_path, monkeypatch):
    from tda_utils.run import reproduce

    fake = _FakePapermill()
    monkeypatch.setitem(sys.modules, "papermill", fake)
    monkeypatch.setattr(reproduce, "check_override_keys", lambda *a, **k: None)
    monkeypatch.delenv("FIMO_OUTPUT_DIR", raising=False)
    out = tmp_path / "out"
    argv = ["--profile", "paper", "--only", "01_tabular_regression:concrete",
            "--output-dir", str(out), "--set", "device=cpu"]  # fmt: skip
    assert reproduce.main(argv) == 0
    assert "FIMO_OUTPUT_DIR" not in os.environ  # restored after the run
    ((where, params),) = fake.seen
    assert where == str(out.resolve()) and params["figures_dir"] == str(out / "figures" / "paper")
    assert (out / "reports" / "paper" / "01_tabular_regression__concrete.ipynb").exists()
    (rec,) = json.loads((out / "reports" / "paper" / RUNS_FILE).read_text())
    assert rec["command"] == "python -m tda_utils.reproduce " + " ".join(argv)
    assert rec["parameters"]["device"] == "cpu" and rec["parameters"]["n_seeds"] == 100


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PY": "/no/such/python", "INSTALL": "0"}, "error: PY=/no/such/python is not a Python"),
        ({"RUNS": "01_tabular_regression:energy", "ENERGY_FILE": "/no/energy.txt"},
         "error: no Energy file at ENERGY_FILE=/no/energy.txt"),
    ],
)  # fmt: skip
def test_recipe_bad_input_is_one_error_line_and_exit_2(tmp_path, env, message):
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"),
           "DOCS": str(tmp_path / "docs"), **env}  # fmt: skip
    proc = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message)
    assert not (tmp_path / "docs").exists()
