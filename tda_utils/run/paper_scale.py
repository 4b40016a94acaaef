"""The published paper-scale results: ``docs/paper_scale/`` from the runner's paper-profile runs.

Public: ``STAND_INS``, ``summary_frame``, ``comparison_frame``, ``runtimes_frame``,
``fig2_slots``, ``build_paper_scale``, ``main``.

After ``python -m tda_utils.reproduce --profile paper --output-dir OUT ...`` (the maintainer's
recipe: ``benchmarks/paper_scale.sh``, ``make paper-scale``) has run some of the paper
profile's runs, ``python -m tda_utils.run.paper_scale --output-dir OUT`` writes into the docs
folder (default ``docs/paper_scale/``):

* ``fig2_paper_scale.png`` / ``.pdf``: the multi-panel Fig. 2 of the runs present ((a) Concrete,
  (b) Energy, ...; ``figures.paper.compose_figure``), from the ``RunResults`` records under
  ``OUT/results/panels/<profile>/``;
* ``summary.csv`` / ``.md``: per run and method, the Fig. 2 cosine agreement at the first
  evaluation, at its best and at the last with their SEMs, and the time from which a
  Hessian-based influence curve stays above Grad-Dot (``figures.paper.cross_dataset_summary``);
* ``comparison.csv`` / ``.md``: each paper-scale number next to the cpu profile's number of the
  same dataset, or of its stand-in (``STAND_INS``: energy -> diabetes, ...), when such a record
  exists (default: the repository's ``results/panels/cpu/``);
* ``runtimes.csv`` / ``.md``: per run its wall time, device, git commit, date, profile and the
  exact command (the runner's ``OUT/reports/<profile>/runs.json``);
* ``index.md``: the figure and the three tables.

The Markdown tables show the CSVs' numbers rounded to 3 decimals (``figures.paper.markdown_table``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..analysis.metrics import nan_argmax
from ..analysis.records import RunResults, load_results
from ..cache import atomic_write_text, default_results_dir, output_root, repo_root
from ..figures import plotting
from ..figures.paper import (
    PAPER_PANELS,
    compose_figure,
    cross_dataset_summary,
    markdown_table,
    panel_datasets,
)
from ..methods import method_order
from .gallery import RUNS_FILE

#: the cpu profile's dataset standing in for each paper dataset (paper.md; reproduce.yaml)
STAND_INS = {
    "concrete": "concrete",
    "energy": "diabetes",
    "heloc": "credit",
    "folktables": "cps1988",
    "cifar10": "mnist",
    "fashion_mnist": "mnist",
    "sst2": "finefood",
}
#: the columns of each table, in order
SUMMARY_COLUMNS = [
    "run", "dataset", "method_id", "method", "first", "first_sem", "best", "best_sem",
    "best_time", "last", "last_sem", "dropped", "crossing_time", "time_unit",
]  # fmt: skip
STATS = ("first", "best", "last", "crossing_time")
COMPARISON_COLUMNS = ["run", "cpu_run", "method"] + [
    f"{side}_{s}" for s in STATS for side in ("paper", "cpu")
]
RUNTIME_COLUMNS = [
    "run", "status", "wall_s", "device", "device_setting", "git_commit", "date", "profile",
    "command",
]  # fmt: skip
DOC_FILES = ("summary", "comparison", "runtimes")
FIGURE_STEM = "fig2_paper_scale"


def summary_frame(runs: Mapping[str, RunResults]) -> pd.DataFrame:
    """``cross_dataset_summary(runs)`` with the run's dataset, the method's registry name
    (``method_id``) and the SEMs of the first, best and last evaluation (columns
    ``SUMMARY_COLUMNS``; one row per run with a Fig. 2 panel and method, in the paper's order).
    """
    base = cross_dataset_summary(runs)
    extra = []
    for run, r in runs.items():
        if "fig2" not in r.agreement:
            continue
        for m in method_order(list(r.agreement["fig2"])):
            c = r.agreement["fig2"][m]
            extra.append(
                {
                    "dataset": r.dataset,
                    "method_id": m,
                    "first_sem": float(c.sem[0]),
                    "best_sem": float(c.sem[nan_argmax(c.mean)]),
                    "last_sem": float(c.sem[-1]),
                }
            )
    if not extra:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    df = pd.concat([base.reset_index(drop=True), pd.DataFrame(extra)], axis=1)
    return df[SUMMARY_COLUMNS]


def _cpu_run(dataset: str, cpu_runs: Mapping[str, RunResults]) -> str | None:
    """The cpu record of ``dataset``, else of its stand-in; None when neither exists."""
    for ds in dict.fromkeys([dataset, STAND_INS.get(dataset, dataset)]):
        hit = next((name for name, r in cpu_runs.items() if r.dataset == ds), None)
        if hit is not None:
            return hit
    return None


def comparison_frame(
    paper_runs: Mapping[str, RunResults], cpu_runs: Mapping[str, RunResults]
) -> pd.DataFrame:
    """Paper scale vs cpu profile: per paper run and method, ``paper_<stat>`` next to
    ``cpu_<stat>`` for first / best / last cosine and the crossing time; ``cpu_run`` names the
    cpu record used (the same dataset, else ``STAND_INS``), "-" and empty cpu numbers when none.
    """
    paper, cpu = summary_frame(paper_runs), summary_frame(cpu_runs)
    rows = []
    for _, p in paper.iterrows():
        cpu_name = _cpu_run(p["dataset"], cpu_runs)
        match = cpu[(cpu["run"] == cpu_name) & (cpu["method_id"] == p["method_id"])]
        c = match.iloc[0] if len(match) else None
        row = {"run": p["run"], "cpu_run": cpu_name or "-", "method": p["method"]}
        for s in STATS:
            row[f"paper_{s}"] = p[s]
            row[f"cpu_{s}"] = c[s] if c is not None else None
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def runtimes_frame(reports_dir: Path, profile: str) -> pd.DataFrame:
    """Per run recorded in ``<reports_dir>/runs.json``: status, wall time, device (CUDA device
    name, else the CPU model), the run's ``device`` parameter, git commit, date, profile and the
    exact command (columns ``RUNTIME_COLUMNS``).
    """
    import json

    path = Path(reports_dir) / RUNS_FILE
    records = json.loads(path.read_text()) if path.exists() else []
    rows = []
    for r in records:
        prov = r.get("provenance") or {}
        rows.append(
            {
                "run": r["run"],
                "status": r.get("status", "unknown"),
                "wall_s": round(float(r.get("wall_s", 0.0)), 1),
                "device": prov.get("device", "unknown"),
                "device_setting": str((r.get("parameters") or {}).get("device", "auto")),
                "git_commit": prov.get("git_commit", "unknown"),
                "date": prov.get("time", "unknown"),
                "profile": profile,
                "command": r.get("command", "unknown"),
            }
        )
    return pd.DataFrame(rows, columns=RUNTIME_COLUMNS)


def fig2_slots(datasets) -> dict[str, tuple[str, ...]]:
    """The Fig. 2 panels to draw: each of the paper's panels (a)-(f) that has one of
    ``datasets``, then a panel (g), (h), ... for each dataset that is in none of them.
    """
    chosen = panel_datasets(list(datasets), PAPER_PANELS)
    slots = {k: PAPER_PANELS[k] for k, ds in chosen.items() if ds is not None}
    covered = {d for cands in PAPER_PANELS.values() for d in cands}
    extra = [d for d in datasets if d not in covered]
    for i, d in enumerate(extra):
        slots[chr(ord("g") + i)] = (d,)
    return slots


def _markdown(df: pd.DataFrame) -> str:
    return markdown_table(df) if len(df) else "(no runs)"


def build_paper_scale(
    docs_dir: Path | None = None,
    profile: str = "paper",
    results_dir: Path | None = None,
    reports_dir: Path | None = None,
    cpu_profile: str = "cpu",
    cpu_results_dir: Path | None = None,
) -> dict[str, Path]:
    """Write the figure, ``summary``, ``comparison`` and ``runtimes`` (CSV + Markdown) and
    ``index.md`` into ``docs_dir`` (default ``<repo>/docs/paper_scale``); returns {name: path}.

    ``results_dir``: where the runner's cache went (default ``default_results_dir()``: the
    output root's ``results/``); ``reports_dir``: its reports (default
    ``<output_root()>/reports/<profile>``); ``cpu_results_dir``: the cpu profile's results
    (default ``<repo>/results``). ValueError when ``results_dir`` holds no record of ``profile``.
    """
    docs = Path(docs_dir) if docs_dir else repo_root() / "docs" / "paper_scale"
    results = Path(results_dir) if results_dir else default_results_dir()
    reports = Path(reports_dir) if reports_dir else output_root() / "reports" / profile
    runs = load_results(profile, results)
    if not runs:
        raise ValueError(
            f"no results of profile {profile!r} under {results / 'panels' / profile}; run "
            f"python -m tda_utils.reproduce --profile {profile} first (benchmarks/paper_scale.sh)"
        )
    cpu_runs = load_results(cpu_profile, cpu_results_dir or repo_root() / "results")
    docs.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    by_dataset = {r.dataset: r for r in runs.values()}
    fig = compose_figure(
        "fig2",
        by_dataset,
        slots=fig2_slots(list(by_dataset)),
        title=f"Fig. 2 at the paper's scale (profile {profile})",
    )
    out["figure_png"], out["figure_pdf"] = plotting.save_figure(fig, FIGURE_STEM, docs)
    plt.close(fig)
    frames = {
        "summary": summary_frame(runs),
        "comparison": comparison_frame(runs, cpu_runs),
        "runtimes": runtimes_frame(reports, profile),
    }
    for name, df in frames.items():
        out[f"{name}_csv"] = docs / f"{name}.csv"
        atomic_write_text(df.to_csv(index=False), out[f"{name}_csv"])
        out[f"{name}_md"] = docs / f"{name}.md"
        atomic_write_text(_markdown(df) + "\n", out[f"{name}_md"])
    out["index"] = docs / "index.md"
    atomic_write_text(_index(profile, cpu_profile, frames), out["index"])
    return out


def _index(profile: str, cpu_profile: str, frames: Mapping[str, pd.DataFrame]) -> str:
    summary_cols = [c for c in SUMMARY_COLUMNS if c not in ("dataset", "method_id", "time_unit")]
    return (
        f"# Results at the paper's scale (profile `{profile}`)\n\n"
        "Written by `python -m tda_utils.run.paper_scale` (`make paper-scale`); cosine agreement "
        "of each method with further training (Fig. 2) at the first evaluation, at its best and "
        "at the last, +- SEM over queries; `crossing_time`: the first evaluation from which a "
        'Hessian-based influence curve stays above Grad-Dot until the last ("-": none).\n\n'
        f"![Fig. 2, profile {profile}]({FIGURE_STEM}.png)\n\n"
        f"## Summary\n\n{_markdown(frames['summary'][summary_cols])}\n\n"
        f"## Paper scale vs the `{cpu_profile}` profile\n\n"
        "The cpu record of the same dataset, else of its stand-in (energy -> diabetes, ...); "
        '"-": no such record.\n\n'
        f"{_markdown(frames['comparison'])}\n\n"
        f"## Runtimes\n\n{_markdown(frames['runtimes'])}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m tda_utils.run.paper_scale``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m tda_utils.run.paper_scale", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="the runner's --output-dir (its results/ and reports/; default: the output root)",
    )
    parser.add_argument("--profile", default="paper", help="the profile run (default: paper)")
    parser.add_argument(
        "--docs-dir", default=None, help="where to write (default: <repo>/docs/paper_scale)"
    )
    parser.add_argument("--cpu-profile", default="cpu", help="the profile compared against")
    parser.add_argument(
        "--cpu-results-dir",
        default=None,
        help="results folder of the cpu profile (default: <repo>/results)",
    )
    args = parser.parse_args(argv)
    base = Path(args.output_dir) if args.output_dir else None
    try:
        paths = build_paper_scale(
            docs_dir=args.docs_dir,
            profile=args.profile,
            results_dir=base / "results" if base else None,
            reports_dir=base / "reports" / args.profile if base else None,
            cpu_profile=args.cpu_profile,
            cpu_results_dir=args.cpu_results_dir,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"paper-scale docs: {paths['index'].parent}")
    for p in paths.values():
        print(f"  {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
