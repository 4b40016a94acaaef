"""The papermill runner: ``python -m tda_utils.reproduce --profile {cpu,smoke,paper}``.

Public: ``load_manifest``, ``plan``, ``run``, ``main``, ``Run``.

``reproduce.yaml`` lists, per profile, the (notebook, dataset) runs and their parameter
overrides. Each run executes ``notebooks/<notebook>.ipynb`` with papermill into
``reports/<profile>/<notebook>__<dataset>.ipynb``; figures go to ``figures/<profile>/``. A
progress bar runs across runs, a summary table (run, status, wall time) is printed at the end,
and the exit status is non-zero when any run failed (the failing cell is named).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from .cache import repo_root


@dataclasses.dataclass
class Run:
    """One notebook execution."""

    notebook: str
    dataset: str | None
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.notebook}__{self.dataset}" if self.dataset else self.notebook


def load_manifest(path: Path | None = None) -> dict:
    """The parsed ``reproduce.yaml`` (``{"profiles": {name: {"runs": [...], ...}}}``)."""
    path = Path(path) if path else repo_root() / "reproduce.yaml"
    with open(path) as f:
        manifest = yaml.safe_load(f)
    if not isinstance(manifest, dict) or "profiles" not in manifest:
        raise ValueError(f"{path} must have a top-level 'profiles' mapping")
    return manifest


def plan(manifest: dict, profile: str, only: list[str] | None = None) -> list[Run]:
    """The runs of ``profile``, optionally restricted by ``only`` = ["NOTEBOOK[:DATASET]", ...].

    Unknown profile, notebook or dataset names raise ValueError listing the valid names.
    """
    profiles = manifest["profiles"]
    if profile not in profiles:
        raise ValueError(f"profile={profile!r} is not valid; allowed values: {', '.join(sorted(profiles))}")
    spec = profiles[profile]
    common = dict(spec.get("parameters") or {})
    runs = [Run(r["notebook"], r.get("dataset"), {**common, **(r.get("parameters") or {})}) for r in spec["runs"]]
    if only:
        chosen: list[Run] = []
        for sel in only:
            nb, _, ds = sel.partition(":")
            notebooks = sorted({r.notebook for r in runs})
            if nb not in notebooks:
                raise ValueError(f"notebook {nb!r} is not in profile {profile!r}; allowed values: {', '.join(notebooks)}")
            match = [r for r in runs if r.notebook == nb]
            if ds:
                datasets = sorted({str(r.dataset) for r in match})
                if ds not in datasets:
                    raise ValueError(f"dataset {ds!r} is not run by {nb} in profile {profile!r}; "
                                     f"allowed values: {', '.join(datasets)}")
                match = [r for r in match if r.dataset == ds]
            chosen += [r for r in match if r not in chosen]
        runs = chosen
    return runs


def _describe_failure(exc: BaseException) -> str:
    cell = getattr(exc, "exec_count", None)
    idx = getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {idx} (execution count {cell})" if idx is not None else "before execution"
    return f"{where}: {ename}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"


def run(runs: list[Run], profile: str, root: Path | None = None, reports_dir: Path | None = None,
        figures_dir: Path | None = None, kernel_name: str | None = None, log_output: bool = False) -> list[dict]:
    """Execute ``runs`` with papermill; return one summary row per run (never raises on failure)."""
    import papermill as pm

    root = Path(root) if root else repo_root()
    reports = Path(reports_dir) if reports_dir else root / "reports" / profile
    figures = Path(figures_dir) if figures_dir else root / "figures" / profile
    reports.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(runs, desc=f"reproduce [{profile}]", unit="run")
    for r in bar:
        bar.set_postfix_str(r.name)
        params = {**r.parameters, "profile": profile, "figures_dir": str(figures)}
        if r.dataset:
            params["dataset"] = r.dataset
        out = reports / f"{r.name}.ipynb"
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(root / "notebooks" / f"{r.notebook}.ipynb"), str(out), parameters=params,
                                kernel_name=kernel_name, cwd=str(root / "notebooks"), progress_bar=False,
                                log_output=log_output)
            status, detail = "ok", ""
        except Exception as exc:  # papermill.PapermillExecutionError and friends
            status, detail = "FAILED", _describe_failure(exc)
        rows.append({"run": r.name, "status": status, "wall_s": time.perf_counter() - start,
                     "report": str(out), "detail": detail})
    return rows


def format_summary(rows: list[dict]) -> str:
    """A plain-text table: run, status, wall time; failures with their cell."""
    width = max([len(r["run"]) for r in rows] + [3])
    lines = [f"{'run':<{width}}  status  wall time", f"{'-' * width}  ------  ---------"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}  {r['status']:<6}  {r['wall_s']:8.1f}s")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"FAILED {r['run']}: {r['detail']} (see {r['report']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tda_utils.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="profile in reproduce.yaml: cpu (default), smoke, paper")
    parser.add_argument("--only", action="append", metavar="NOTEBOOK[:DATASET]",
                        help="run only these (repeatable), e.g. 01_tabular_regression:concrete")
    parser.add_argument("--manifest", default=None, help="path of reproduce.yaml")
    parser.add_argument("--list", action="store_true", help="list the runs of the profile and exit")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        runs = plan(load_manifest(args.manifest), args.profile, args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(r.name for r in runs))
        return 0
    rows = run(runs, args.profile, kernel_name=args.kernel, log_output=args.log_output)
    print(format_summary(rows))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
