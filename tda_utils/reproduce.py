"""The papermill runner: ``python -m tda_utils.reproduce --profile {cpu,smoke,paper}``.

Public: ``load_manifest``, ``plan``, ``run``, ``main``, ``Run``.

``reproduce.yaml`` lists, per profile, the (notebook, dataset) runs and their parameter
overrides; ``--set KEY=VALUE`` overrides a parameter of every selected run (the value is read as
YAML, e.g. ``--set data_path=/data/energy.txt --set n_seeds=2``). In a profile with
``skip_missing_data: true`` a run whose ``data_path`` does not exist is skipped (status
``skipped``, naming the path) instead of failing. Each run executes ``notebooks/<notebook>.ipynb`` with papermill into
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

from .cache import repo_path, repo_root
from .gallery import build_gallery


@dataclasses.dataclass
class Run:
    """One notebook execution."""

    notebook: str
    dataset: str | None
    parameters: dict[str, Any]

    @property
    def name(self) -> str:
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
            raise ValueError(f"--set {item!r} is not valid; allowed form: KEY=VALUE with KEY a notebook "
                             "parameter name, e.g. --set n_seeds=2")
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_manifest(path: Path | None = None) -> dict:
    """The parsed ``reproduce.yaml`` (``{"profiles": {name: {"runs": [...], ...}}}``)."""
    path = Path(path) if path else repo_root() / "reproduce.yaml"
    with open(path) as f:
        manifest = yaml.safe_load(f)
    if not isinstance(manifest, dict) or "profiles" not in manifest:
        raise ValueError(f"{path} must have a top-level 'profiles' mapping")
    return manifest


def plan(manifest: dict, profile: str, only: list[str] | None = None,
         overrides: dict[str, Any] | None = None) -> list[Run]:
    """The runs of ``profile``, optionally restricted by ``only`` = ["NOTEBOOK[:DATASET]", ...].

    ``overrides`` replace parameters of every selected run. Unknown profile, notebook or dataset
    names raise ValueError listing the valid names.
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
    for r in runs:
        r.parameters.update(overrides or {})
    return runs


def _describe_failure(exc: BaseException) -> str:
    cell = getattr(exc, "exec_count", None)
    idx = getattr(exc, "cell_index", None)
    ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", str(exc))
    where = f"cell {idx} (execution count {cell})" if idx is not None else "before execution"
    return f"{where}: {ename}: {str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ''}"


def run(runs: list[Run], profile: str, root: Path | None = None, reports_dir: Path | None = None,
        figures_dir: Path | None = None, kernel_name: str | None = None, log_output: bool = False,
        skip_missing_data: bool = False) -> list[dict]:
    """Execute ``runs`` with papermill; return one summary row per run (never raises on failure).

    With ``skip_missing_data`` a run whose ``data_path`` does not exist is not executed; its row
    has status ``skipped`` and names the missing path.
    """
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
        out = reports / f"{r.name}.ipynb"
        missing = r.missing_data(root) if skip_missing_data else None
        if missing is not None:
            rows.append({"run": r.name, "status": "skipped", "wall_s": 0.0, "report": str(out),
                         "detail": f"no data at data_path={str(missing)!r} (see the README's Data section)"})
            continue
        params = {**r.parameters, "profile": profile, "figures_dir": str(figures)}
        if r.dataset:
            params["dataset"] = r.dataset
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
    lines = [f"{'run':<{width}}  status   wall time", f"{'-' * width}  -------  ---------"]
    for r in rows:
        lines.append(f"{r['run']:<{width}}  {r['status']:<7}  {r['wall_s']:8.1f}s")
    for r in rows:
        if r["status"] == "skipped":
            lines.append(f"skipped {r['run']}: {r['detail']}")
        elif r["status"] != "ok":
            lines.append(f"FAILED {r['run']}: {r['detail']} (see {r['report']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tda_utils.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="profile in reproduce.yaml: cpu (default), local, smoke, paper")
    parser.add_argument("--only", action="append", metavar="NOTEBOOK[:DATASET]",
                        help="run only these (repeatable), e.g. 01_tabular_regression:concrete")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="override a notebook parameter of every selected run (repeatable; YAML value)")
    parser.add_argument("--manifest", default=None, help="path of reproduce.yaml")
    parser.add_argument("--list", action="store_true", help="list the runs of the profile and exit")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        manifest = load_manifest(args.manifest)
        runs = plan(manifest, args.profile, args.only, parse_overrides(args.overrides))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(r.name for r in runs))
        return 0
    skip = bool(manifest["profiles"][args.profile].get("skip_missing_data", False))
    rows = run(runs, args.profile, kernel_name=args.kernel, log_output=args.log_output, skip_missing_data=skip)
    print(format_summary(rows))
    print(f"gallery (open in a browser): {build_gallery(args.profile, rows)}")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
