"""The papermill runner: ``python -m tda_utils.reproduce --profile {cpu,smoke,paper}``.

Public: ``load_manifest``, ``plan``, ``run``, ``main``, ``Run``.

``reproduce.yaml`` lists, per profile, the (notebook, dataset) runs and their parameter
overrides; ``--set KEY=VALUE`` overrides a parameter of every selected run (the value is read as
YAML, e.g. ``--set data_path=/data/energy.txt --set n_seeds=2``). In a profile with
``skip_missing_data: true`` a run whose ``data_path`` does not exist is skipped (status
``skipped``, naming the path) instead of failing. Each run executes
``notebooks/<notebook>.ipynb`` with papermill into
``reports/<profile>/<notebook>__<dataset>.ipynb``; figures go to ``figures/<profile>/``
(``reports/``, ``figures/`` and the cache ``results/`` lie in the repository root, or in
``$FIMO_OUTPUT_DIR`` when it is set, which ``--output-dir DIR`` sets: ``cache.output_root``).
Each run's command line and parameters are recorded in ``runs.json``. A progress bar runs
across runs, a summary table (run, status, wall time) is printed at the end, and the exit status
is non-zero when any run failed (the failing cell is named). The notebook kernels talk to the
runner over CurveZMQ-encrypted sockets where the kernel supports it (``kernels.kernel_config``).

Input handling: a manifest or ``--set`` value that cannot be read, an unknown ``--set`` key (one
that is not a parameter of any selected notebook, as papermill inspects them) or a reserved key
(``RESERVED``, which the runner sets itself) ends with one ``error:`` line and exit status 2.
Each report is written to a temporary file and replaces the previous report only when the run
succeeds; a failed or interrupted run's report is kept beside it as ``<name>.failed.ipynb``.
Ctrl-C stops after the current run, prints the summary so far and exits with status 130.

README.md: only ``--update-readme`` (maintainers; ``make readme``) lets notebook 05 rewrite the
README's results section and figure; a user's ``make reproduce`` leaves README.md as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from ..cache import output_root, repo_path, repo_root
from .gallery import build_gallery
from .kernels import kernel_config

RESERVED = ("dataset", "profile", "figures_dir")  # set by the runner for every run


@dataclasses.dataclass
class Run:
    """One notebook execution."""

    notebook: str
    dataset: str | None
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        """``<notebook>__<dataset>``, or the notebook alone when the run has no dataset."""
        return f"{self.notebook}__{self.dataset}" if self.dataset else self.notebook

    def missing_data(self, root: Path) -> Path | None:
        """The ``data_path`` parameter (relative to ``root``) when it is set and does not exist."""
        path = self.parameters.get("data_path")
        if path is None:
            return None
        path = repo_path(path, root)
        return None if path.exists() else path


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: yaml value}``; ValueError naming a malformed item."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(
                f"--set {item!r} is not valid; allowed form: KEY=VALUE with KEY a notebook "
                "parameter name, e.g. --set n_seeds=2"
            )
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(
                f"--set {item!r}: the value is not valid YAML ({_yaml_problem(err)}); "
                "quote strings and close brackets, e.g. --set seed_ks=[1,2]"
            ) from None
    reserved = sorted(set(out) & set(RESERVED))
    if reserved:
        raise ValueError(
            f"--set {', '.join(reserved)}: reserved, the runner sets "
            f"{', '.join(RESERVED)} itself; choose the dataset with --only "
            "NOTEBOOK:DATASET and the profile with --profile"
        )
    return out


def _yaml_problem(err: Exception) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(problem)


def check_override_keys(
    runs: list["Run"], overrides: dict[str, Any], root: Path | None = None
) -> None:
    """ValueError for an override key that is not a parameter of any notebook of ``runs``
    (read with ``papermill.inspect_notebook``), naming close matches and the valid keys.
    """
    import difflib

    import papermill as pm

    if not overrides:
        return
    root = Path(root) if root else repo_root()
    known: set[str] = set()
    for nb in sorted({r.notebook for r in runs}):
        known |= set(pm.inspect_notebook(str(root / "notebooks" / f"{nb}.ipynb")))
    known -= set(RESERVED)
    for key in overrides:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"--set {key}: not a parameter of the selected notebooks; {hint}"
                f"allowed keys: {', '.join(sorted(known))}"
            )


def load_manifest(path: Path | None = None) -> dict:
    """The parsed ``reproduce.yaml`` (``{"profiles": {name: {"runs": [...], ...}}}``)."""
    path = Path(path) if path else repo_root() / "reproduce.yaml"
    try:
        with open(path, encoding="utf-8") as f:
            manifest = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f"cannot read the manifest {path}: {err.strerror or err}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"the manifest {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("profiles"), dict):
        raise ValueError(f"{path} must have a top-level 'profiles' mapping")
    for name, spec in manifest["profiles"].items():
        runs = spec.get("runs") if isinstance(spec, dict) else None
        ok = isinstance(runs, list) and all(isinstance(r, dict) and "notebook" in r for r in runs)
        if not ok:
            raise ValueError(
                f"{path}: profile {name!r} needs a 'runs' list of mappings with a 'notebook'"
            )
    return manifest


def plan(
    manifest: dict,
    profile: str,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> list[Run]:
    """The runs of ``profile``, optionally restricted by ``only`` = ["NOTEBOOK[:DATASET]", ...].

    ``overrides`` replace parameters of every selected run. Unknown profile, notebook or dataset
    names raise ValueError listing the valid names.
    """
    profiles = manifest["profiles"]
    if profile not in profiles:
        raise ValueError(
            f"profile={profile!r} is not valid; allowed values: {', '.join(sorted(profiles))}"
        )
    spec = profiles[profile]
    common = dict(spec.get("parameters") or {})
    runs = [
        Run(r["notebook"], r.get("dataset"), {**common, **(r.get("parameters") or {})})
        for r in spec["runs"]
    ]
    if only:
        chosen: list[Run] = []
        for sel in only:
            nb, _, ds = sel.partition(":")
            notebooks = sorted({r.notebook for r in runs})
            if nb not in notebooks:
                raise ValueError(
                    f"notebook {nb!r} is not in profile {profile!r}; "
                    f"allowed values: {', '.join(notebooks)}"
                )
            match = [r for r in runs if r.notebook == nb]
            if ds:
                datasets = sorted({str(r.dataset) for r in match})
                if ds not in datasets:
                    raise ValueError(
                        f"dataset {ds!r} is not run by {nb} in profile {profile!r}; "
                        f"allowed values: {', '.join(datasets)}"
                    )
                match = [r for r in match if r.dataset == ds]
            chosen += [r for r in match if r not in chosen]
        runs = chosen
    for r in runs:
        r.parameters.update(overrides or {})
    return runs


def _describe_failure(exc: BaseException) -> str:
    cell = getattr(exc, "exec_count", None)
    idx = getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {idx} (execution count {cell})" if idx is not None else "before execution"
    return (
        f"{where}: {ename}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"
    )


def run(
    runs: list[Run],
    profile: str,
    root: Path | None = None,
    reports_dir: Path | None = None,
    figures_dir: Path | None = None,
    kernel_name: str | None = None,
    log_output: bool = False,
    skip_missing_data: bool = False,
) -> list[dict]:
    """Execute ``runs`` with papermill; return one summary row per run (never raises on failure).

    ``root``: the repository (its ``notebooks/``; relative ``data_path`` values are read from it;
    default ``repo_root()``). ``reports_dir`` / ``figures_dir``: default ``<out>/reports/<profile>``
    and ``<out>/figures/<profile>``, ``<out>`` being ``root`` when given, else ``output_root()``
    (the repository root, or ``$FIMO_OUTPUT_DIR``). With ``skip_missing_data`` a run whose
    ``data_path`` does not exist is not executed; its row has status ``skipped`` and names the
    missing path.
    """
    import papermill as pm

    out_root = Path(root) if root else output_root()
    root = Path(root) if root else repo_root()
    reports = Path(reports_dir) if reports_dir else out_root / "reports" / profile
    figures = Path(figures_dir) if figures_dir else out_root / "figures" / profile
    reports.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(runs, desc=f"reproduce [{profile}]", unit="run")
    for r in bar:
        bar.set_postfix_str(r.name)
        out = reports / f"{r.name}.ipynb"
        missing = r.missing_data(root) if skip_missing_data else None
        if missing is not None:
            rows.append(
                {
                    "run": r.name,
                    "status": "skipped",
                    "wall_s": 0.0,
                    "report": str(out),
                    "detail": f"no data at data_path={str(missing)!r} "
                    "(see the README's Data section)",
                }
            )
            continue
        params = {**r.parameters, "profile": profile, "figures_dir": str(figures)}
        if r.dataset:
            params["dataset"] = r.dataset
        start = time.perf_counter()
        try:
            status, detail, report = _execute(
                pm,
                root / "notebooks" / f"{r.notebook}.ipynb",
                out,
                params,
                kernel_name,
                root,
                log_output,
            )
        except KeyboardInterrupt:
            not_started = len(runs) - len(rows) - 1
            rows.append(
                {
                    "run": r.name,
                    "status": "stopped",
                    "wall_s": time.perf_counter() - start,
                    "report": str(out.with_suffix(".failed.ipynb")),
                    "detail": f"interrupted (Ctrl-C); {not_started} later runs not started",
                }
            )
            break
        rows.append(
            {
                "run": r.name,
                "status": status,
                "wall_s": time.perf_counter() - start,
                "report": report,
                "detail": detail,
            }
        )
    return rows


def _execute(
    pm, notebook: Path, out: Path, params: dict, kernel_name, root: Path, log_output: bool
) -> tuple[str, str, str]:
    """Run one notebook into a temporary report; on success it replaces ``out``, otherwise it is
    kept as ``<name>.failed.ipynb`` and ``out`` (the last good report) is left alone.
    Returns (status, detail, report path). A KeyboardInterrupt is re-raised after the move.
    """
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.running.ipynb")
    failed = out.with_suffix(".failed.ipynb")
    try:
        pm.execute_notebook(
            str(notebook),
            str(tmp),
            parameters=params,
            kernel_name=kernel_name,
            cwd=str(root / "notebooks"),
            progress_bar=False,
            log_output=log_output,
            config=kernel_config(),
        )
    except BaseException as exc:  # papermill.PapermillExecutionError and friends, Ctrl-C
        if tmp.exists():
            os.replace(tmp, failed)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if getattr(exc, "ename", None) == "KeyboardInterrupt":  # the kernel got the Ctrl-C
            raise KeyboardInterrupt from exc
        return "FAILED", _describe_failure(exc), str(failed)
    os.replace(tmp, out)
    if failed.exists():
        failed.unlink()  # an older failure is superseded by this success
    return "ok", "", str(out)


def format_summary(rows: list[dict]) -> str:
    """A plain-text table: run, status, wall time; failures with their cell."""
    width = max([len(r["run"]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  status   wall time", f"{'-' * width}  -------  ---------"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}  {r['status']:<7}  {r['wall_s']:8.1f}s")
    for r in rows:
        if r["status"] in ("skipped", "stopped"):
            lines.append(f"{r['status']} {r['run']}: {r['detail']}")
        elif r["status"] != "ok":
            lines.append(f"FAILED {r['run']}: {r['detail']} (see {r['report']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tda_utils.reproduce", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--profile",
        default="cpu",
        help="profile in reproduce.yaml: cpu (default), local, smoke, paper",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NOTEBOOK[:DATASET]",
        help="run only these (repeatable), e.g. 01_tabular_regression:concrete",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        dest="overrides",
        help="override a notebook parameter of every selected run (repeatable; YAML value)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="put reports/, figures/ and the results/ cache under DIR instead of the repository "
        "(sets $FIMO_OUTPUT_DIR and $FIMO_RESULTS_DIR for the runs; e.g. a paper-scale run apart "
        "from the cpu profile)",
    )
    parser.add_argument("--manifest", default=None, help="path of reproduce.yaml")
    parser.add_argument("--list", action="store_true", help="list the runs of the profile and exit")
    parser.add_argument(
        "--kernel", default=None, help="Jupyter kernel name (default: the notebook's)"
    )
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="maintainers: let 05_paper_figures rewrite README.md's results section and figure",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print each run's further-training runs, steps and estimated time here, and exit",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        manifest = load_manifest(args.manifest)
        runs = plan(manifest, args.profile, args.only, parse_overrides(args.overrides))
        check_override_keys(runs, parse_overrides(args.overrides))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(r.name for r in runs))
        return 0
    if args.dry_run:
        from .costing import dry_run

        return dry_run(runs)
    command = ["python", "-m", "tda_utils.reproduce", *(sys.argv[1:] if argv is None else argv)]
    names = ("FIMO_OUTPUT_DIR", "FIMO_RESULTS_DIR")
    previous = {name: os.environ.get(name) for name in names}
    if args.output_dir:  # the notebook kernels inherit them: their results/ and figures/ go there
        root = Path(args.output_dir).expanduser().resolve()
        os.environ["FIMO_OUTPUT_DIR"] = str(root)
        os.environ["FIMO_RESULTS_DIR"] = str(root / "results")
    try:
        return _run_and_report(args, manifest, runs, shlex.join(command))
    finally:
        for name, value in previous.items() if args.output_dir else ():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_and_report(args, manifest: dict, runs: list[Run], command: str) -> int:
    """Execute the planned ``runs``, print the summary, record the runs (with ``command`` and
    each run's parameters) and build the gallery; the exit status of ``main``.
    """
    skip = bool(manifest["profiles"][args.profile].get("skip_missing_data", False))
    if args.update_readme:
        runs = [
            dataclasses.replace(r, parameters={**r.parameters, "update_readme": True})
            if r.notebook == "05_paper_figures"
            else r
            for r in runs
        ]
    try:
        rows = run(
            runs,
            args.profile,
            kernel_name=args.kernel,
            log_output=args.log_output,
            skip_missing_data=skip,
        )
    except KeyboardInterrupt:  # between runs; inside a run, `run` records it and returns
        print(
            "interrupted (Ctrl-C) between runs; see the reports folder for the runs that finished",
            file=sys.stderr,
        )
        return 130
    parameters = {r.name: r.parameters for r in runs}
    for row in rows:  # recorded in runs.json (gallery.record_runs)
        row["command"] = command
        row["parameters"] = parameters.get(row["run"], {})
    print(format_summary(rows))
    print(f"gallery (open in a browser): {build_gallery(args.profile, rows)}")
    if any(r["status"] == "stopped" for r in rows):
        return 130
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
