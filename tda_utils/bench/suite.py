"""The benchmark suite: score plug-ins on every run of a profile that has a gold standard.

Public: ``benchmark``, ``BenchResult``, ``gold_runs``, ``ensure_inputs``, ``default_reports_dir``,
``GOLD_NOTEBOOKS``, ``BenchWarning``.

``benchmark(["mod:fn"], profile="smoke")`` plans the profile's runs of notebooks 01-04
(``reproduce.yaml``), makes sure each has its inputs (``inputs.save_run_inputs``; a missing one
is computed by running its notebook through the runner, which reuses the cached final models and
gold standards), calls every plug-in on every run (``plugin.run_plugin``) and builds the
leaderboard (``leaderboard.run_rows``) with the built-in methods the run computed, side by side.
A plug-in that fails on a run gets a failed row and an entry in ``errors``; the other rows are
still built and written, and nothing cached is touched.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..analysis.metrics import Curve
from ..cache import default_results_dir, output_root, repo_root
from ..devices import math_kernels
from ..run import reproduce
from . import leaderboard
from .inputs import inputs_path, load_run_inputs
from .limits import Limits
from .plugin import NotApplicable, Plugin, PluginError, load_plugin, run_plugin

#: the notebooks whose runs have a gold standard (and save benchmark inputs)
GOLD_NOTEBOOKS = ("01_", "02_", "03_", "04_")


class BenchWarning(UserWarning):
    """A plug-in's scores look wrong (e.g. a harmful-positive sign) or an input was stale."""


@dataclasses.dataclass
class BenchResult:
    """What ``benchmark`` found.

    Attributes:
        table: the leaderboard, one row per (run, method), columns ``leaderboard.COLUMNS``.
        curves: {run: {method: Curve}}: the cosine agreement curves of the scored runs.
        times: {run: (evaluation times, unit)}.
        plugins: the plug-in names, in the order given.
        errors: one message per failure (a plug-in that cannot be loaded or failed on a run, a
            run without inputs), naming the plug-in and the run.
        notes: warnings and remarks (skipped runs, sign warnings, other CPU kernels).
        paths: the files written (CSV, Markdown, figures).
    """

    table: pd.DataFrame
    curves: dict[str, dict[str, Curve]]
    times: dict[str, tuple[torch.Tensor, str]]
    plugins: list[str]
    errors: list[str]
    notes: list[str]
    paths: list[Path] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.errors

    def plugin_rows(self) -> pd.DataFrame:
        """The plug-ins' rows only."""
        return self.table[self.table["kind"] == "plug-in"].reset_index(drop=True)


def default_reports_dir(profile: str) -> Path:
    """``<outputs>/reports/<profile>`` (``cache.output_root``): the runner's reports; the
    leaderboard goes to ``bench/``.
    """
    return output_root() / "reports" / profile


def gold_runs(
    profile: str, only: Sequence[str] | None = None, manifest: Path | str | None = None
) -> list[reproduce.Run]:
    """The runs of ``profile`` (``reproduce.yaml``) whose notebook is one of 01-04, restricted by
    ``only`` (``NOTEBOOK[:DATASET]`` as the runner's ``--only``).

    Raises:
        ValueError: an unknown profile, notebook or dataset, a selection without any run of
            01-04, or a profile without one.
    """
    loaded = reproduce.load_manifest(Path(manifest) if manifest else None)
    runs = reproduce.plan(loaded, profile, list(only) if only else None)
    chosen = [r for r in runs if r.notebook.startswith(GOLD_NOTEBOOKS) and r.dataset]
    if not chosen:
        raise ValueError(
            f"no run of notebooks 01-04 in profile {profile!r}"
            + (f" among {list(only)}" if only else "")
            + "; only those have a gold standard to score against"
        )
    return chosen


def ensure_inputs(
    runs: Sequence[reproduce.Run],
    profile: str,
    results_dir: Path | None = None,
    reports_dir: Path | None = None,
    figures_dir: Path | None = None,
    rerun: bool = False,
    compute_missing: bool = True,
    skip_missing_data: bool = False,
) -> tuple[dict[str, Path], list[str], list[str], set[str]]:
    """Make sure every run has its inputs; returns ({run: inputs file}, errors, notes, skipped).

    A run without inputs (or every run, with ``rerun``) is executed through the runner
    (``reproduce.run``: papermill, a progress bar, reports in ``reports_dir``), which reuses the
    cached final model and gold standard. Without ``compute_missing`` a missing run is an error
    instead.
    With ``skip_missing_data`` (the profile's setting) a run whose ``data_path`` does not exist
    is skipped (named in ``skipped`` and a note), as the runner does.
    """
    results = Path(results_dir) if results_dir else default_results_dir()
    paths = {r.name: inputs_path(profile, r.name, results) for r in runs}
    errors: list[str] = []
    notes: list[str] = []
    skipped: set[str] = set()
    todo = [r for r in runs if rerun or not paths[r.name].exists()]
    if skip_missing_data:
        for r in list(todo):
            missing = r.missing_data(repo_root())
            if missing is not None:
                notes.append(f"run {r.name} skipped: no data at data_path={str(missing)!r}")
                todo.remove(r)
                skipped.add(r.name)
    if todo and not compute_missing:
        for r in todo:
            errors.append(
                f"run {r.name}: no benchmark inputs at {paths[r.name]}; run its notebook "
                f"(python -m tda_utils.reproduce --profile {profile} --only "
                f"{r.notebook}:{r.dataset}) or let the benchmark compute it"
            )
        todo = []
    if todo:
        for r in todo:
            r.parameters = {**r.parameters, "results_dir": str(results)}
        rows = reproduce.run(
            list(todo),
            profile,
            reports_dir=reports_dir or default_reports_dir(profile),
            figures_dir=figures_dir,
            skip_missing_data=skip_missing_data,
        )
        for row in rows:
            if row["status"] == "skipped":
                notes.append(f"run {row['run']} skipped: {row['detail']}")
                skipped.add(row["run"])
            elif row["status"] != "ok":
                errors.append(
                    f"run {row['run']}: its notebook failed, so it has no benchmark inputs: "
                    f"{row['detail']} (see {row['report']})"
                )
    available = {name: p for name, p in paths.items() if p.exists() and name not in skipped}
    return available, errors, notes, skipped


def benchmark(
    methods: Sequence[str],
    profile: str = "smoke",
    only: Sequence[str] | None = None,
    results_dir: Path | str | None = None,
    reports_dir: Path | str | None = None,
    figures_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
    compute_missing: bool = True,
    rerun: bool = False,
    manifest: Path | str | None = None,
    write: bool = True,
    progress: bool = True,
    time_limit: float | None = None,
    memory_limit: float | None = None,
) -> BenchResult:
    """Score each plug-in of ``methods`` on every run of ``profile`` with a gold standard.

    Args:
        methods: plug-ins, each ``"module:function"`` (``plugin`` module docstring); may be empty
            (the built-in methods' leaderboard).
        profile: a profile of ``reproduce.yaml`` (its runs of notebooks 01-04).
        only: restrict to these runs, ``NOTEBOOK[:DATASET]`` (as the runner's ``--only``).
        results_dir: the results folder holding the inputs and the cache (default:
            ``$FIMO_RESULTS_DIR`` or ``results/``).
        reports_dir: the runner's reports of notebooks run for missing inputs (default
            ``reports/<profile>``).
        figures_dir: their figures (default ``figures/<profile>``).
        out_dir: where the leaderboard goes (default ``<reports_dir>/bench``).
        device: passed to every plug-in that takes ``device``.
        options: more keyword options for every plug-in.
        compute_missing: run the notebook of a run without inputs (else it is an error).
        rerun: run every selected notebook again first (the cache makes it cheap).
        manifest: another ``reproduce.yaml``.
        write: write ``leaderboard.csv``, ``.md`` and the figure
            (``leaderboard.write_leaderboard``).
        progress: show progress bars.
        time_limit: seconds one plug-in may take on one run (None: no limit); past it, the
            plug-in is stopped and its row fails, saying so (``limits``).
        memory_limit: GiB of memory one plug-in call may add to the process (None: no limit).

    Returns:
        A ``BenchResult``; ``errors`` lists every failure (never raised, so that the other rows
        are kept).
    """
    limits = Limits(time_limit, memory_limit)
    runs = gold_runs(profile, only, manifest)
    loaded_manifest = reproduce.load_manifest(Path(manifest) if manifest else None)
    skip = bool(loaded_manifest["profiles"][profile].get("skip_missing_data", False))
    reports = Path(reports_dir) if reports_dir else default_reports_dir(profile)
    where = (Path(results_dir) if results_dir else None, reports,
             Path(figures_dir) if figures_dir else None)
    available, errors, notes, skipped = ensure_inputs(
        runs, profile, *where, rerun, compute_missing, skip,
    )
    plugins: list[Plugin] = []
    rows: list[dict] = []
    for spec in dict.fromkeys(methods):
        try:
            plugins.append(load_plugin(spec))
        except PluginError as err:
            errors.append(str(err))
            rows += [leaderboard.failed_row(r.name, spec, str(err)) for r in runs
                     if r.name in available]
    for r in runs:
        if r.name not in available and r.name not in skipped:
            rows += [leaderboard.failed_row(r.name, spec, "no benchmark inputs for this run")
                     for spec in dict.fromkeys(methods)]
    curves: dict[str, dict[str, Curve]] = {}
    times: dict[str, tuple[torch.Tensor, str]] = {}
    math_here = math_kernels()
    other_math: dict[str, list[str]] = {}
    bar = tqdm(total=len(available) * max(1, len(plugins)), desc=f"bench [{profile}]",
               unit="score", disable=not progress)
    for r in runs:
        if r.name not in available:
            continue
        bar.set_postfix_str(r.name)
        try:
            try:
                inputs = load_run_inputs(available[r.name])
            except ValueError as stale:  # unreadable or of another version: rerun its notebook
                if not compute_missing or rerun:
                    raise
                notes.append(f"run {r.name}: {stale}; rerunning its notebook")
                again, more, _, _ = ensure_inputs([r], profile, *where, rerun=True)
                errors += more
                inputs = load_run_inputs(again.get(r.name, available[r.name]))
        except ValueError as err:
            errors.append(f"run {r.name}: {err}")
            rows += [leaderboard.failed_row(r.name, p.name, str(err)) for p in plugins]
            bar.update(max(1, len(plugins)))
            continue
        if inputs.cpu_math != math_here:
            other_math.setdefault(inputs.cpu_math or "unknown", []).append(r.name)
        scored, failed = {}, []
        for p in plugins:
            try:
                scored[p.name] = run_plugin(p, r.name, inputs.model, inputs.splits,
                                            inputs.left_out, inputs.queries, device, options,
                                            limits)
            except NotApplicable as err:
                notes.append(str(err))
                failed.append(leaderboard.failed_row(r.name, p.name, str(err),
                                                     status="not applicable"))
            except PluginError as err:
                errors.append(str(err))
                failed.append(leaderboard.failed_row(r.name, p.name, str(err).splitlines()[0]))
            bar.update(1)
        if not plugins:
            bar.update(1)
        run_rows, curves[r.name] = leaderboard.run_rows(inputs, scored)
        times[r.name] = (inputs.gold.times.double(), inputs.gold.time_unit)
        rows += run_rows + failed
        del inputs
    bar.close()
    for kernels, names in other_math.items():
        notes.append(
            f"the built-in scores of {', '.join(names)} were computed with the CPU math kernels "
            f"{kernels}, this process uses {math_here}: a plug-in copying a built-in method may "
            "differ from it by rounding"
        )
    table = pd.DataFrame(rows, columns=list(leaderboard.COLUMNS))
    order = {r.name: i for i, r in enumerate(runs)}
    table = table.sort_values("run", key=lambda s: s.map(order), kind="stable")
    table = table.reset_index(drop=True)
    for message in leaderboard.sign_warnings(table):
        notes.append(message)
        warnings.warn(message, BenchWarning, stacklevel=2)
    result = BenchResult(table, curves, times, [p for p in dict.fromkeys(methods)], errors, notes)
    if write:
        result.paths = leaderboard.write_leaderboard(table, Path(out_dir) if out_dir else
                                                     reports / "bench", errors, notes)
    return result
