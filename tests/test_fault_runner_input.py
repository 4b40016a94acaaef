"""Fault class: runner input. Bad manifests and ``--set`` items end with one clear line and exit
status 2; Ctrl-C prints the summary so far (exit 130); a failed run never replaces the last good
report, which is kept (nothing already computed is lost)."""

from __future__ import annotations

import json
import re

import pytest

from tda_utils.run import reproduce


def _main(capsys, *argv):
    code = reproduce.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (
            ["--set", "n_seed=3"],
            r"^error: --set n_seed: not a parameter of the selected notebooks; "
            r"did you mean n_seeds",
        ),
        (["--set", "n_seeds=[1,"], r"^error: --set 'n_seeds=\[1,': the value is not valid YAML"),
        (
            ["--set", "n_seeds: 2"],
            r"^error: --set 'n_seeds: 2' is not valid; allowed form: KEY=VALUE",
        ),
        (
            ["--set", "dataset=energy"],
            r"^error: --set dataset: reserved, the runner sets dataset, profile, figures_dir",
        ),
        (["--set", "profile=paper"], r"^error: --set profile: reserved"),
        (["--set", "figures_dir=/tmp/x"], r"^error: --set figures_dir: reserved"),
        (
            ["--only", "05_paper_figures", "--set", "sgd_lr=0.1"],
            r"^error: --set sgd_lr: not a parameter",
        ),
        (
            ["--manifest", "/no/such/reproduce.yaml"],
            r"^error: cannot read the manifest /no/such/reproduce.yaml",
        ),
    ],
)
def test_bad_runner_input_is_one_line_and_exit_2(capsys, argv, match):
    code, out, err = _main(capsys, *argv, "--list")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err


@pytest.mark.parametrize(
    "text, match",
    [
        ("profiles:\n  cpu: [a\n", r"is not valid YAML: .* at line \d+, column \d+"),
        ("- a\n- b\n", r"must have a top-level 'profiles' mapping"),
        ("profiles:\n  cpu: {runs: 3}\n", r"profile 'cpu' needs a 'runs' list"),
        ("\x00\x01binary", r"is not valid YAML"),
    ],
)
def test_bad_manifest_is_one_line_and_exit_2(tmp_path, capsys, text, match):
    path = tmp_path / "reproduce.yaml"
    path.write_text(text)
    code, out, err = _main(capsys, "--manifest", str(path), "--list")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err


def test_valid_set_keys_pass(capsys):
    code, out, _ = _main(capsys, "--set", "n_seeds=2", "--set", "data_path=/x", "--list")
    assert code == 0 and "01_tabular_regression__concrete" in out


class FakePapermill:
    """Stands in for papermill: writes a report, then fails or is interrupted as told."""

    def __init__(self, behaviour: dict[str, str]):
        self.behaviour, self.calls = behaviour, []

    def execute_notebook(self, notebook, out, parameters, **kw):
        self.calls.append(parameters.get("dataset"))
        what = self.behaviour.get(parameters.get("dataset"), "ok")
        with open(out, "w") as f:
            f.write(f"report {what} {len(self.calls)}")
        if what == "fail":
            raise RuntimeError("cell 3 broke")
        if what == "interrupt":
            raise KeyboardInterrupt


def _runs():
    return [reproduce.Run("01_tabular_regression", ds, {}) for ds in ("a", "b", "c")]


def test_failed_run_keeps_the_last_good_report(tmp_path, monkeypatch):
    import sys

    reports = tmp_path / "reports"
    fake = FakePapermill({})
    monkeypatch.setitem(sys.modules, "papermill", fake)
    rows = reproduce.run(_runs(), "cpu", reports_dir=reports, figures_dir=tmp_path / "f")
    assert [r["status"] for r in rows] == ["ok", "ok", "ok"]
    good = (reports / "01_tabular_regression__b.ipynb").read_text()
    fake.behaviour = {"b": "fail"}
    rows = reproduce.run(_runs(), "cpu", reports_dir=reports, figures_dir=tmp_path / "f")
    assert [r["status"] for r in rows] == ["ok", "FAILED", "ok"]
    assert (
        reports / "01_tabular_regression__b.ipynb"
    ).read_text() == good  # the last good report survives
    failed = reports / "01_tabular_regression__b.failed.ipynb"
    assert failed.read_text().startswith("report fail") and rows[1]["report"] == str(failed)
    assert (
        sorted(p.name for p in reports.iterdir() if p.name.startswith(".")) == []
    )  # no temporary file
    fake.behaviour = {}
    reproduce.run(_runs(), "cpu", reports_dir=reports, figures_dir=tmp_path / "f")
    assert not failed.exists()  # superseded by the new success


def test_ctrl_c_prints_summary_so_far_and_exits_130(tmp_path, monkeypatch, capsys):
    import sys

    fake = FakePapermill({"b": "interrupt"})
    monkeypatch.setitem(sys.modules, "papermill", fake)
    rows = reproduce.run(_runs(), "cpu", reports_dir=tmp_path / "r", figures_dir=tmp_path / "f")
    assert [r["status"] for r in rows] == ["ok", "stopped"] and fake.calls == ["a", "b"]
    assert "1 later runs not started" in rows[1]["detail"]
    assert (tmp_path / "r" / "01_tabular_regression__a.ipynb").exists()  # finished work kept
    monkeypatch.setattr(reproduce, "plan", lambda *a, **k: _runs())
    monkeypatch.setattr(reproduce, "run", lambda runs, profile, **kw: rows)
    monkeypatch.setenv("FIMO_OUTPUT_DIR", str(tmp_path / "out"))  # the gallery and runs.json
    code = reproduce.main(["--profile", "cpu"])
    out = capsys.readouterr().out
    assert (
        code == 130
        and "01_tabular_regression__a" in out
        and "stopped 01_tabular_regression__b" in out
    )
    recorded = json.loads((tmp_path / "out" / "reports" / "cpu" / "runs.json").read_text())
    assert [r["status"] for r in recorded] == ["ok", "stopped"]  # the stopped run is recorded
    assert f"gallery (open in a browser): {tmp_path / 'out' / 'reports' / 'cpu'}" in out
