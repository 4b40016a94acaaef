"""The benchmark on per-run inputs built in-process from tiny problems (seconds): the saved
inputs round-trip, a copy of a built-in method reproduces its row exactly, the command line writes
the leaderboard, and every kind of bad plug-in gets a clear error while the other rows are kept.

The inputs stand in for the smoke profile's runs 01_tabular_regression:concrete and
02_tabular_classification:credit (same names, tiny data), so the command line finds them with
``--profile smoke --results-dir``; ``test_bench_smoke.py`` runs the real notebooks.
"""

from __future__ import annotations

import hashlib
import math
import textwrap
import warnings

import pandas as pd
import pytest
import torch

import tda_utils as tu
from tda_utils.bench import __main__ as cli
from tda_utils.bench import leaderboard

from .conftest import make_splits, tiny_model

RUNS = {
    "01_tabular_regression__concrete": "regression",
    "02_tabular_classification__credit": "classification",
}
ONLY = ["01_tabular_regression:concrete", "02_tabular_classification:credit"]
METHODS = ["grad_dot", "grad_cos", "cg", "if_time"]
NUMBERS = [c for c in leaderboard.COLUMNS
           if c not in ("method", "kind", "label", "wall_time_s", "peak_memory_mb")]

PLUGINS = '''
import numpy as np
import tda_utils as tu


def copy_grad_dot(model, splits, train_indices, query_indices, device="auto"):
    return tu.attribute("grad_dot", model, splits, train_indices=train_indices,
                        query_indices=query_indices, device=device).values


def copy_cg(model, splits, train_indices, query_indices, **options):
    return tu.attribute("cg", model, splits, train_indices=train_indices,
                        query_indices=query_indices, **options).values


def as_numpy(model, splits, train_indices, query_indices):
    return copy_grad_dot(model, splits, train_indices, query_indices).numpy()


def negated(model, splits, train_indices, query_indices):
    return -copy_grad_dot(model, splits, train_indices, query_indices)


def transposed(model, splits, train_indices, query_indices):
    return copy_grad_dot(model, splits, train_indices, query_indices).T


def with_nan(model, splits, train_indices, query_indices):
    v = copy_grad_dot(model, splits, train_indices, query_indices).clone()
    v[0, :3] = float("nan")
    v[1, 0] = float("inf")
    return v


def raises(model, splits, train_indices, query_indices):
    raise RuntimeError("kaboom inside the plug-in")


def too_big(model, splits, train_indices, query_indices):
    raise tu.bench.NotApplicable("this model is too large for me")


def scaled(model, splits, train_indices, query_indices, factor=1.0):
    return factor * copy_grad_dot(model, splits, train_indices, query_indices)


def slow(model, splits, train_indices, query_indices):
    import time
    end = time.monotonic() + 60
    try:
        while time.monotonic() < end:
            time.sleep(0.01)
    except Exception:  # a plug-in's own handler must not swallow the stop
        pass
    return copy_grad_dot(model, splits, train_indices, query_indices)


def hungry(model, splits, train_indices, query_indices):
    import time
    blocks = []
    for _ in range(200):  # up to 4 GiB, 20 MiB at a time
        blocks.append(np.ones(20 * 2**20, dtype=np.uint8))
        time.sleep(0.01)
    return copy_grad_dot(model, splits, train_indices, query_indices)


def mutates(model, splits, train_indices, query_indices):
    for p in model.parameters():
        p.data.zero_()
    return np.ones((len(query_indices), len(train_indices)))
'''


@pytest.fixture(scope="module")
def plugins_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "bench_test_plugins.py").write_text(textwrap.dedent(PLUGINS))
    (folder / "bench_broken_plugin.py").write_text("raise ImportError('needs libfoo 9.9')\n")
    return folder


@pytest.fixture(autouse=True)
def _importable(plugins_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugins_dir))


def _make_run(name: str, task: str, results: "Path") -> "Path":  # noqa: F821
    notebook, dataset = name.split("__")
    splits = make_splits(task, n_train=40, n_test=6, d=4, seed=1 if task == "regression" else 2)
    model = tiny_model(splits, train_epochs=20)
    left_out, queries = list(range(0, 40, 3)), list(range(6))
    cfg = tu.FurtherTrainingConfig(lr=0.1, epochs=4, batch_size=8, seeds=range(3),
                                   left_out=left_out)
    gold = tu.further_train(model, splits, cfg, query_indices=queries, cache_dir=None,
                            progress=False)
    scores = tu.pipeline.run_methods(METHODS, model, splits, left_out, queries, gold=gold,
                                     progress=False)
    record = tu.pipeline.collect_results(notebook, dataset, "smoke", gold, scores,
                                         {"test_loss": 0.5}, seed_ks=[1, 2],
                                         results_dir=results)
    return tu.bench.save_run_inputs(record, model, splits, gold, scores, results_dir=results)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench_results")
    for name, task in RUNS.items():
        _make_run(name, task, folder)
    return folder


def _bench(results, tmp_path, methods, **kw):
    return tu.bench.benchmark(methods, profile="smoke", only=ONLY, results_dir=results,
                              out_dir=tmp_path / "out", compute_missing=False, progress=False,
                              **kw)


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "bench" / "smoke").glob("*.pt"))}


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b or (pd.isna(a) and pd.isna(b))


# ----------------------------------------------------------------------------------------------
def test_inputs_are_plain_data_and_round_trip(results):
    path = tu.bench.inputs_path("smoke", "01_tabular_regression__concrete", results)
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == tu.bench.inputs.INPUTS_VERSION and raw["profile"] == "smoke"
    assert set(raw["scores"]) == set(METHODS)
    inp = tu.bench.load_run_inputs(path)
    assert inp.name == "01_tabular_regression__concrete" and inp.splits.task == "regression"
    assert next(inp.model.parameters()).dtype == torch.float64
    assert inp.model.fimo_spec["name"] == "mlp"
    assert len(inp.gold.seeds) == 3 and inp.gold.attribution().shape == (4, 6, 14)
    assert "values_by_time" in inp.scores["if_time"].diagnostics
    # the rebuilt model is the trained one: Grad-Dot on it reproduces the saved scores bit for bit
    again = tu.attribute("grad_dot", inp.model, inp.splits, train_indices=inp.left_out,
                         query_indices=inp.queries)
    assert torch.equal(again.values, inp.scores["grad_dot"].values)


def test_copy_of_a_builtin_reproduces_its_row_exactly(results, tmp_path):
    out = _bench(results, tmp_path, ["bench_test_plugins:copy_grad_dot",
                                      "bench_test_plugins:copy_cg", "bench_test_plugins:as_numpy"])
    assert out.ok, out.errors
    t = out.table.set_index(["run", "method"])
    for run in RUNS:
        for copy, builtin in [("copy_grad_dot", "grad_dot"), ("copy_cg", "cg"),
                              ("as_numpy", "grad_dot")]:
            mine, ref = t.loc[(run, f"bench_test_plugins:{copy}")], t.loc[(run, builtin)]
            assert mine["kind"] == "plug-in" and ref["kind"] == "built-in"
            diff = [c for c in NUMBERS if c not in ("run", "crossing_time")
                    and not _same(mine[c], ref[c])]
            assert not diff, f"{run} {copy}: {diff}"
            if builtin != "grad_dot":  # crossing against Grad-Dot: None for Grad-Dot itself
                assert _same(mine["crossing_time"], ref["crossing_time"])
    # every built-in method the run computed is there, with its numbers from the notebook's panel
    assert set(t.loc["01_tabular_regression__concrete"].index) >= set(METHODS)
    rec = tu.pipeline.load_results("smoke", results)["01_tabular_regression__concrete"]
    for m in METHODS:
        curve = rec.agreement["fig2"][m]
        assert t.loc[("01_tabular_regression__concrete", m), "first"] == float(curve.mean[0])
        assert t.loc[("01_tabular_regression__concrete", m), "last_sem"] == float(curve.sem[-1])
        spear = rec.agreement["fig6"][m]
        assert t.loc[("01_tabular_regression__concrete", m), "spearman_last"] == float(
            spear.mean[-1])


def test_crossing_time_is_the_papers_for_one_curve(results):
    inp = tu.bench.load_run_inputs(tu.bench.inputs_path("smoke", "01_tabular_regression__concrete",
                                                        results))
    curves = tu.pipeline.agreement_panel(inp.gold, inp.scores)
    paper = tu.paper.crossing_time({"grad_dot": curves["grad_dot"], "cg": curves["cg"]},
                                   inp.gold.times)
    mine = leaderboard.crossing_time_against(curves["cg"], curves["grad_dot"], inp.gold.times)
    assert mine == paper


def test_cli_writes_csv_markdown_and_figure(results, tmp_path, capsys):
    out = tmp_path / "board"
    status = cli.main(["--method", "bench_test_plugins:copy_grad_dot", "--profile", "smoke",
                       "--only", *ONLY, "--results-dir", str(results), "--out-dir", str(out),
                       "--no-compute"])
    assert status == 0
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png", "leaderboard.pdf"):
        assert (out / name).stat().st_size > 0, name
    csv = pd.read_csv(out / "leaderboard.csv")
    assert list(csv.columns) == list(leaderboard.COLUMNS)
    assert len(csv) == len(RUNS) * (len(METHODS) + 1)
    assert set(csv["run"]) == set(RUNS) and (csv["status"] == "ok").all()
    md = (out / "leaderboard.md").read_text()
    assert "| run | method |" in md and "bench_test_plugins:copy_grad_dot" in md
    printed = capsys.readouterr().out
    assert "bench_test_plugins:copy_grad_dot" in printed and "leaderboard.csv" in printed
    wide = (out / "leaderboard_wide.md").read_text().splitlines()
    assert wide[2] == "| method | kind | " + " | ".join(RUNS) + " | mean wall time (s) |"
    body = {line.split(" | ")[0]: line for line in wide[4:]}
    assert set(body) == {f"| `{m}`" for m in METHODS + ["copy_grad_dot"]}
    row = csv.set_index(["run", "method"])
    cells = [f"{row.loc[(r, 'grad_dot'), 'first']:.2f} / {row.loc[(r, 'grad_dot'), 'last']:.2f}"
             for r in RUNS]
    assert body["| `grad_dot`"] == "| `grad_dot` | built-in | " + " | ".join(cells) + " | " + \
        f"{row.xs('grad_dot', level='method')['wall_time_s'].mean():.1f} |"


def test_bad_plugins_get_clear_errors_and_the_others_keep_their_rows(results, tmp_path, capsys):
    before = _digest(results)
    bad = {
        "bench_no_such_module:f": ["cannot import module 'bench_no_such_module'",
                                   "current directory"],
        "bench_test_plugins:no_such_fn": ["has no function 'no_such_fn'", "copy_grad_dot"],
        "bench_broken_plugin:f": ["importing module 'bench_broken_plugin' raised ImportError",
                                  "needs libfoo 9.9"],
        "no_colon": ["not of the form MODULE:FUNCTION"],
        "bench_test_plugins:transposed": ["returned shape (14, 6); expected (6, 14)",
                                          "transposed"],
        "bench_test_plugins:with_nan": ["returned 3 NaN and 1 inf values out of 84"],
        "bench_test_plugins:raises": ["raised RuntimeError: kaboom inside the plug-in",
                                      "bench_test_plugins.py"],
    }
    good = "bench_test_plugins:copy_grad_dot"
    status = cli.main(["--method", good, *[a for m in bad for a in ("--method", m)],
                       "--profile", "smoke", "--only", *ONLY, "--results-dir", str(results),
                       "--out-dir", str(tmp_path / "out"), "--no-compute"])
    assert status == 1
    err = capsys.readouterr().err
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    for method, parts in bad.items():
        lines = [ln for ln in err.splitlines() if ln.startswith("ERROR:") and repr(method) in ln]
        assert lines, f"no error line for {method}:\n{err}"
        for part in parts:
            assert any(part in ln for ln in lines), f"{method}: {part!r} not in {lines}"
        per_run = "transposed" in method or "nan" in method or "raises" in method
        if per_run:  # a failure on a run names the run
            for run in RUNS:
                assert any(f"on run {run}" in ln for ln in lines), (method, run, lines)
        rows = csv[csv["method"] == method]
        assert len(rows) == len(RUNS) and (rows["status"] == "failed").all()
        assert rows["first"].isna().all() and rows["error"].str.len().gt(0).all()
    ok = csv[csv["method"] == good]
    assert len(ok) == len(RUNS) and (ok["status"] == "ok").all()
    assert (csv[csv["kind"] == "built-in"]["status"] == "ok").all()
    assert "## Errors" in (tmp_path / "out" / "leaderboard.md").read_text()
    assert _digest(results) == before  # nothing cached or saved is touched


def test_a_plugin_that_does_not_apply_is_a_row_and_a_note_not_an_error(results, tmp_path, capsys):
    status = cli.main(["--method", "bench_test_plugins:too_big", "--method",
                       "bench_test_plugins:copy_grad_dot", "--profile", "smoke", "--only", *ONLY,
                       "--results-dir", str(results), "--out-dir", str(tmp_path / "out"),
                       "--no-compute"])
    assert status == 0
    err = capsys.readouterr().err
    assert "ERROR" not in err
    for run in RUNS:
        assert (f"note: plug-in 'bench_test_plugins:too_big' on run {run} does not apply: this "
                "model is too large for me") in err
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    rows = csv[csv["method"] == "bench_test_plugins:too_big"]
    assert len(rows) == len(RUNS) and (rows["status"] == "not applicable").all()
    assert rows["first"].isna().all() and rows["error"].str.contains("too large").all()
    assert (csv[csv["method"] == "bench_test_plugins:copy_grad_dot"]["status"] == "ok").all()


def test_a_plugin_cannot_change_what_the_next_one_sees(results, tmp_path):
    out = _bench(results, tmp_path, ["bench_test_plugins:mutates",
                                      "bench_test_plugins:copy_grad_dot"])
    assert out.ok, out.errors
    t = out.table.set_index(["run", "method"])
    for run in RUNS:
        assert t.loc[(run, "bench_test_plugins:copy_grad_dot"), "first"] == t.loc[
            (run, "grad_dot"), "first"]


def test_harmful_positive_sign_gets_a_warning(results, tmp_path):
    with pytest.warns(tu.bench.BenchWarning, match="harmful-positive"):
        out = _bench(results, tmp_path, ["bench_test_plugins:negated"])
    firsts = out.plugin_rows()["first"]
    assert (firsts < leaderboard.SIGN_THRESHOLD).all(), firsts
    assert any("bench_test_plugins:negated" in n and "harmful-positive" in n for n in out.notes)
    assert "harmful-positive" in (tmp_path / "out" / "leaderboard.md").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tu.bench.BenchWarning)
        _bench(results, tmp_path, ["bench_test_plugins:copy_grad_dot"])


def test_sign_warning_needs_most_runs():
    rows = [{"run": f"r{i}", "method": "m:f", "kind": "plug-in", "status": "ok", "first": v}
            for i, v in enumerate([-0.5, -0.3, 0.4])]
    assert len(leaderboard.sign_warnings(pd.DataFrame(rows))) == 1
    rows[1]["first"] = -0.1
    assert leaderboard.sign_warnings(pd.DataFrame(rows)) == []


def test_missing_inputs_without_compute_are_errors(tmp_path, capsys):
    status = cli.main(["--method", "bench_test_plugins:copy_grad_dot", "--profile", "smoke",
                       "--only", "03_image_classification:mnist", "--results-dir",
                       str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out"),
                       "--no-compute"])
    assert status == 1
    err = capsys.readouterr().err
    assert "run 03_image_classification__mnist: no benchmark inputs" in err
    assert "--only 03_image_classification:mnist" in err
    csv = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert list(csv["status"]) == ["failed"]


def test_cli_input_errors_exit_2(tmp_path, capsys):
    assert cli.main(["--profile", "nope", "--out-dir", str(tmp_path)]) == 2
    assert "profile='nope'" in capsys.readouterr().err
    assert cli.main(["--profile", "smoke", "--only", "05_paper_figures"]) == 2
    assert "no run of notebooks 01-04" in capsys.readouterr().err
    assert cli.main(["--profile", "smoke", "--option", "x"]) == 2
    assert cli.main(["--profile", "smoke", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "01_tabular_regression__concrete" in listed and "05_paper_figures" not in listed
    assert cli.main(["--profile", "smoke", "--libraries", "kronfluence_x", "--list"]) == 2
    err = capsys.readouterr().err
    assert "--libraries 'kronfluence_x' matches no adapter" in err and "dattri_trak" in err


def test_libraries_name_the_shipped_adapters():
    from tda_utils.bench.adapters import ADAPTERS

    every = cli.library_plugins([])
    assert every == [f"tda_utils.bench.adapters:{a}" for a in ADAPTERS] and len(every) == 12
    assert cli.library_plugins(None) == []
    picked = cli.library_plugins(["kronfluence_ekfac", "dattri_if", "dattri_if_cg"])
    assert [p.split(":")[1] for p in picked] == [
        "kronfluence_ekfac", "dattri_if_explicit", "dattri_if_cg", "dattri_if_lissa",
        "dattri_if_arnoldi",
    ]


@pytest.mark.filterwarnings("ignore:dataset 'sst2'")
def test_bert_head_round_trips(tmp_path):
    from tda_utils.models import text as mtx

    from .test_modality_text import tiny_model as tiny_bert
    from .test_modality_text import write_sst2

    splits = tu.load_dataset("sst2", path=write_sst2(tmp_path / "glue", "glue"), max_length=16)
    data, head = mtx.precompute_trunk(tiny_bert(splits, "last_layer"), splits, cache_dir=None,
                                      progress=False)
    saved = tu.bench.inputs.model_to_data(head)
    torch.save(saved, tmp_path / "m.pt")
    again = tu.bench.inputs.model_from_data(torch.load(tmp_path / "m.pt", weights_only=True),
                                            data)
    assert isinstance(again, mtx.BertClassifier) and again.embeddings is None
    assert [n for n, p in again.named_parameters() if p.requires_grad] == [
        n for n, p in head.named_parameters() if p.requires_grad]
    x, mask, _ = data.test.tensors
    assert torch.equal(again(x, mask), head.eval()(x, mask))
    a = tu.attribute("grad_dot", head, data, train_indices=range(6), query_indices=range(3))
    b = tu.attribute("grad_dot", again, data, train_indices=range(6), query_indices=range(3))
    assert torch.equal(a.values, b.values)
    # a whole model (no cached trunk, e.g. the paper's SST-2 run): embeddings rebuilt too
    full = tiny_bert(splits, "all")
    again = tu.bench.inputs.model_from_data(tu.bench.inputs.model_to_data(full), splits)
    ids, mask, _ = splits.test.tensors
    assert again.embeddings is not None and torch.equal(again(ids, mask), full.eval()(ids, mask))


def test_unreadable_inputs_name_the_file_and_what_to_do(tmp_path, capsys):
    path = tu.bench.inputs_path("smoke", "01_tabular_regression__concrete", tmp_path / "res")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    status = cli.main(["--method", "bench_test_plugins:copy_grad_dot", "--profile", "smoke",
                       "--only", "01_tabular_regression:concrete", "--results-dir",
                       str(tmp_path / "res"), "--out-dir", str(tmp_path / "out"), "--no-compute"])
    assert status == 1
    err = capsys.readouterr().err
    assert f"benchmark inputs {path} cannot be read" in err and "rerun its notebook" in err
    assert path.read_bytes() == b"not a torch file"  # left for the notebook to replace


def test_options_reach_the_plugin_and_an_unknown_one_is_refused(results, tmp_path):
    out = _bench(results, tmp_path, ["bench_test_plugins:scaled"], options={"factor": 3.0})
    assert out.ok, out.errors
    t = out.table.set_index(["run", "method"])
    for run in RUNS:
        assert t.loc[(run, "bench_test_plugins:scaled"), "first"] == pytest.approx(
            t.loc[(run, "grad_dot"), "first"], abs=1e-12)
    out = _bench(results, tmp_path, ["bench_test_plugins:negated"], options={"factor": 3.0})
    assert not out.ok
    assert "takes no option(s) ['factor']" in out.errors[0] and "on run" in out.errors[0]


def test_limits_stop_a_slow_or_hungry_plugin_and_keep_the_other_rows(results, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["--method", "bench_test_plugins:slow",
                       "--method", "bench_test_plugins:hungry",
                       "--method", "bench_test_plugins:copy_grad_dot", "--profile", "smoke",
                       "--only", *ONLY, "--results-dir", str(results), "--out-dir", str(out),
                       "--no-compute", "--time-limit", "1.5", "--memory-limit", "0.25"])
    assert status == 1
    err = capsys.readouterr().err
    csv = pd.read_csv(out / "leaderboard.csv").set_index(["run", "method"])
    for run in RUNS:
        assert (f"plug-in 'bench_test_plugins:slow' on run {run} stopped after the time limit of "
                "1.5 s (limits: 1.5 s, 0.25 GiB)") in err
        hungry = f"plug-in 'bench_test_plugins:hungry' on run {run} stopped when its memory grew"
        assert hungry in err
        assert csv.loc[(run, "bench_test_plugins:slow"), "status"] == "failed"
        assert csv.loc[(run, "bench_test_plugins:hungry"), "status"] == "failed"
        assert "past the memory limit of 0.25 GiB" in csv.loc[(run, "bench_test_plugins:hungry"),
                                                               "error"]
        assert csv.loc[(run, "bench_test_plugins:copy_grad_dot"), "first"] == csv.loc[
            (run, "grad_dot"), "first"]


def test_limits_are_validated_and_restore_the_signal_handlers():
    import signal

    for bad in (0, -1.0, float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="time_limit"):
            tu.bench.Limits(time_s=bad)
        with pytest.raises(ValueError, match="memory_limit"):
            tu.bench.Limits(memory_gb=bad)
    before = signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGUSR1)
    with tu.bench.limits.enforced(tu.bench.Limits(time_s=5.0, memory_gb=1.0)):
        total = sum(range(1000))
    assert total == 499500
    assert (signal.getsignal(signal.SIGALRM), signal.getsignal(signal.SIGUSR1)) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with pytest.raises(tu.bench.LimitExceeded, match="time limit of 0.2 s"):
        with tu.bench.limits.enforced(tu.bench.Limits(time_s=0.2)):
            while True:
                pass
    assert signal.getsignal(signal.SIGALRM) == before[0]
