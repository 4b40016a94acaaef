"""Browsable results: executed reports as HTML and one ``index.html`` per profile.

Public: ``provenance``, ``record_runs``, ``export_html``, ``build_gallery``, ``main``.

After the runner (``python -m tda_utils.reproduce``) has executed a profile's notebooks into
``reports/<profile>/*.ipynb``, ``build_gallery(profile, rows)``:

* records each run's status, wall time and provenance (package versions, git commit, device,
  threads; ``provenance()``) in ``reports/<profile>/runs.json``, merged by run name with the
  runs recorded before, so a ``--only`` re-run keeps the others;
* exports every executed report to ``reports/<profile>/<name>.html`` (nbconvert, images inline);
* writes ``reports/<profile>/index.html``: the multi-panel figures (``figures/<profile>/
  *_all_datasets.png``, written by ``05_paper_figures``), the summary table
  (``figures/<profile>/summary.csv``), a "reproduced?" table when a ``reproduced*.csv`` exists
  in ``figures/<profile>/``, ``results/<profile>/`` or ``results/``, the runs (status, runtime,
  provenance, links to the HTML and ``.ipynb`` reports) and every other figure (PNG, with its PDF).

``reports/`` and ``figures/`` lie in the repository root, or in ``$FIMO_OUTPUT_DIR`` when it is
set (``cache.output_root``). Every link in the page is relative, so the folder can be moved or
served as it is.
Rebuild without running anything: ``python -m tda_utils.gallery --profile cpu``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..cache import default_results_dir, output_root, repo_root
from ..devices import cpu_name

#: packages whose versions each run records
PACKAGES = (
    "fimo-tda",
    "torch",
    "torchvision",
    "transformers",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "matplotlib",
    "papermill",
    "nbconvert",
    "dattri",
)
RUNS_FILE = "runs.json"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(root: Path | None = None) -> dict[str, Any]:
    """What a run ran with: package versions, Python, git commit (``+dirty`` when tracked files
    differ from it), device (CUDA device name, else the CPU model), torch threads, CPU count,
    platform and the time (UTC, ISO 8601).
    """
    import torch

    root = Path(root) if root else repo_root()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    commit = _git(root, "rev-parse", "--short=12", "HEAD")
    if commit and _git(root, "status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    else:
        device = f"cpu: {cpu_name()}"
    return {
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit or "unknown",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def record_runs(
    reports_dir: Path, rows: Sequence[Mapping[str, Any]], prov: Mapping[str, Any] | None = None
) -> list[dict]:
    """Merge the runner's summary ``rows`` (run, status, wall_s, detail, and when given the
    ``command`` line and the run's ``parameters``) with the runs already
    recorded in ``<reports_dir>/runs.json`` (a new row replaces the old one of the same run), each
    new row tagged with ``prov`` (default ``provenance()``); returns all recorded rows.
    """
    reports_dir = Path(reports_dir)
    path = reports_dir / RUNS_FILE
    old = json.loads(path.read_text()) if path.exists() else []
    prov = dict(prov) if prov is not None else provenance()
    merged = {r["run"]: r for r in old}
    for r in rows:
        merged[r["run"]] = {
            "run": r["run"],
            "status": r["status"],
            "wall_s": float(r.get("wall_s", 0.0)),
            "detail": r.get("detail", ""),
            "provenance": prov,
            **{k: r[k] for k in ("command", "parameters") if k in r},
        }
    out = list(merged.values())
    reports_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return out


def export_html(notebook: Path, out: Path | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML page (nbconvert's ``lab`` template,
    outputs' images inline) next to it, or to ``out``; returns the HTML path.
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    out = Path(out) if out else notebook.with_suffix(".html")
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(
        nbformat.read(notebook, as_version=4)
    )
    out.write_text(body, encoding="utf-8")
    return out


def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def _link(target: Path, start: Path, text: str) -> str:
    return f'<a href="{html.escape(_rel(target, start))}">{html.escape(text)}</a>'


def _csv_table(path: Path) -> str:
    import pandas as pd

    df = pd.read_csv(path)
    return df.to_html(
        index=False, na_rep="-", float_format=lambda v: f"{v:.3f}", classes="data", border=0
    )


def _find_reproduced(profile: str, figures: Path, results: Path) -> list[Path]:
    found: list[Path] = []
    for folder in (figures, results / profile, results):
        if folder.is_dir():
            found += [p for p in sorted(folder.glob("reproduced*.csv")) if p not in found]
    return found


def _figure_card(png: Path, index_dir: Path, wide: bool = False) -> str:
    pdf = png.with_suffix(".pdf")
    links = _link(png, index_dir, "PNG") + (
        " · " + _link(pdf, index_dir, "PDF") if pdf.exists() else ""
    )
    src = html.escape(_rel(png, index_dir))
    cls = "card wide" if wide else "card"
    return (
        f'<figure class="{cls}"><a href="{src}">'
        f'<img src="{src}" alt="{html.escape(png.stem)}" loading="lazy"></a>'
        f"<figcaption>{html.escape(png.stem)} · {links}</figcaption></figure>"
    )


def _fmt_time(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _final_models(profile: str, results: Path) -> dict[str, str]:
    """{run: where its final model came from} from the runs' results records."""
    import warnings

    from ..analysis.records import load_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an old record is named when 05 reads it
        records = load_results(profile, results)
    return {name: r.final_model.removeprefix("final model: ") for name, r in records.items()}


def _runs_table(
    runs: Sequence[Mapping[str, Any]],
    reports: Path,
    index_dir: Path,
    final_models: Mapping[str, str] | None = None,
) -> str:
    final_models = final_models or {}
    head = (
        "<tr><th>run</th><th>status</th><th>runtime</th><th>report</th><th>final model</th>"
        "<th>git commit</th>"
        "<th>device</th>"
        "<th>threads</th><th>finished (UTC)</th><th>detail</th></tr>"
    )
    body = []
    for r in sorted(runs, key=lambda r: r["run"]):
        nb, page = reports / f"{r['run']}.ipynb", reports / f"{r['run']}.html"
        links = " · ".join(
            _link(p, index_dir, label) for p, label in ((page, "HTML"), (nb, "ipynb")) if p.exists()
        )
        p = r.get("provenance") or {}
        status = html.escape(str(r.get("status", "unknown")))
        body.append(
            f'<tr class="{status.lower()}"><td>{html.escape(r["run"])}</td><td>{status}</td>'
            f"<td>{_fmt_time(float(r.get('wall_s', 0.0)))}</td><td>{links or '-'}</td>"
            f"<td>{html.escape(final_models.get(r['run']) or '-')}</td>"
            f"<td><code>{html.escape(str(p.get('git_commit', '-')))}</code></td>"
            f"<td>{html.escape(str(p.get('device', '-')))}</td>"
            f"<td>{html.escape(str(p.get('torch_threads', '-')))} of "
            f"{html.escape(str(p.get('cpu_count', '-')))}</td>"
            f"<td>{html.escape(str(p.get('time', '-')))}</td>"
            f"<td>{html.escape(str(r.get('detail', '')))}</td></tr>"
        )
    total = sum(float(r.get("wall_s", 0.0)) for r in runs)
    return (
        f'<table class="data">{head}{"".join(body)}</table>'
        f"<p>{len(runs)} runs, total runtime {_fmt_time(total)}.</p>"
    )


def _environment(runs: Sequence[Mapping[str, Any]]) -> str:
    groups: dict[str, list[str]] = {}
    provs: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        p = r.get("provenance") or {}
        key = json.dumps({k: v for k, v in p.items() if k != "time"}, sort_keys=True)
        groups.setdefault(key, []).append(r["run"])
        provs[key] = p
    parts = []
    for key, names in groups.items():
        p = provs[key]
        rows = [("Python", p.get("python", "-")), ("platform", p.get("platform", "-"))]
        rows += [(k, v) for k, v in (p.get("versions") or {}).items()]
        cells = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td><code>{html.escape(str(v))}</code></td></tr>"
            for k, v in rows
        )
        parts.append(
            f"<p>Runs: {html.escape(', '.join(sorted(names)))}</p>"
            f'<table class="data">{cells}</table>'
        )
    return "".join(parts) or "<p>No provenance recorded.</p>"


CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;padding:0 1em;"
    "color:#222}\n"
    "h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}\n"
    "table.data{border-collapse:collapse;font-size:.85em;margin:.5em 0}\n"
    "table.data td,table.data th{border:1px solid #ddd;padding:3px 7px;text-align:left}\n"
    "table.data th{background:#f3f3f3}tr.failed td{background:#fde2e2}tr.skipped td{color:#777}\n"
    ".grid{display:flex;flex-wrap:wrap;gap:12px}.card{margin:0;width:300px}"
    ".card img{width:100%;border:1px solid #ddd}\n"
    ".card.wide{width:calc(50% - 6px)}figcaption{font-size:.8em;color:#555}"
    "nav a{margin-right:1em}\n"
    "details{margin:.5em 0}"
)


def build_gallery(
    profile: str,
    rows: Sequence[Mapping[str, Any]] | None = None,
    root: Path | None = None,
    reports_dir: Path | None = None,
    figures_dir: Path | None = None,
    results_dir: Path | None = None,
    prov: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``reports_dir``'s executed notebooks to HTML and write its ``index.html``.

    Args:
        profile: the profile name (titles and the default folders).
        rows: the runner's summary rows of this invocation (recorded with ``prov`` in
            ``runs.json``); None shows what ``runs.json`` holds, and reports without a record as
            status "unknown".
        root: repository root (default: ``repo_root()``; its git commit is the provenance's).
        reports_dir: the executed notebooks (default ``<root>/reports/<profile>``; without
            ``root``: ``<output_root()>/reports/<profile>``, the repository's or
            ``$FIMO_OUTPUT_DIR``'s).
        figures_dir: the figures (default ``<root>/figures/<profile>``, likewise).
        results_dir: the results folder (default ``default_results_dir()``).
        prov: provenance of ``rows`` (default: ``provenance(root)``).

    Returns:
        The path of ``index.html``.
    """
    out_root = Path(root) if root else output_root()
    root = Path(root) if root else repo_root()
    reports = Path(reports_dir) if reports_dir else out_root / "reports" / profile
    figures = Path(figures_dir) if figures_dir else out_root / "figures" / profile
    results = Path(results_dir) if results_dir else default_results_dir()
    reports.mkdir(parents=True, exist_ok=True)
    runs = (
        record_runs(reports, rows, prov if prov is not None else provenance(root))
        if rows is not None
        else (
            json.loads((reports / RUNS_FILE).read_text()) if (reports / RUNS_FILE).exists() else []
        )
    )
    known = {r["run"] for r in runs}
    notebooks = sorted(reports.glob("*.ipynb"))
    runs = list(runs) + [
        {"run": nb.stem, "status": "unknown", "wall_s": 0.0, "detail": "not recorded by the runner"}
        for nb in notebooks
        if nb.stem not in known
    ]
    export_errors = []
    for nb in notebooks:
        try:
            export_html(nb)
        except (
            Exception
        ) as exc:  # a report that cannot be converted is named, the rest still export
            export_errors.append(f"{nb.name}: {type(exc).__name__}: {exc}")
    pngs = sorted(figures.glob("*.png")) if figures.is_dir() else []
    multi = [p for p in pngs if p.stem.endswith("_all_datasets")]
    multi.sort(key=lambda p: int("".join(c for c in p.stem.split("_")[0] if c.isdigit()) or 0))
    others = [p for p in pngs if p not in multi]
    summary = figures / "summary.csv"
    sections = [
        (
            "figures",
            "Paper figures (multi-panel)",
            f'<div class="grid">{"".join(_figure_card(p, reports, wide=True) for p in multi)}</div>'
            if multi
            else "<p>No multi-panel figures yet (notebook 05_paper_figures writes them).</p>",
        ),
        (
            "summary",
            "Summary",
            (
                f"<p>From {_link(summary, reports, summary.name)}: cosine agreement of each method "
                "with further training at the first evaluation, at its best and at the last.</p>"
                + _csv_table(summary)
            )
            if summary.exists()
            else "<p>No summary.csv yet.</p>",
        ),
    ]
    for path in _find_reproduced(profile, figures, results):
        sections.append(
            (
                path.stem,
                f"Reproduced? ({path.name})",
                f"<p>{_link(path, reports, path.name)}</p>" + _csv_table(path),
            )
        )
    sections += [
        (
            "runs",
            "Runs",
            _runs_table(runs, reports, reports, _final_models(profile, results))
            + "".join(
                f'<p class="failed">HTML export failed: {html.escape(e)}</p>' for e in export_errors
            ),
        ),
        (
            "all-figures",
            "All figures",
            f'<div class="grid">{"".join(_figure_card(p, reports) for p in others)}</div>'
            if others
            else "<p>No other figures.</p>",
        ),
        ("environment", "Environment (provenance)", _environment(runs)),
    ]
    nav = "".join(
        f'<a href="#{html.escape(key)}">{html.escape(title)}</a>' for key, title, _ in sections
    )
    body = "".join(
        f'<h2 id="{html.escape(key)}">{html.escape(title)}</h2>{content}'
        for key, title, content in sections
    )
    n_ok = sum(r.get("status") == "ok" for r in runs)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fimo-tda: {html.escape(profile)} "
        f"profile</title><style>{CSS}</style></head><body>"
        f"<h1>fimo-tda results: profile <code>{html.escape(profile)}"
        f"</code></h1><p>Final-model-only training data attribution "
        f"(Wei et al., NeurIPS 2025), reproduced by "
        f"<code>python -m tda_utils.reproduce --profile {html.escape(profile)}</code>. "
        f"{n_ok} of {len(runs)} runs ok. "
        f"Page built {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}.</p>"
        f"<nav>{nav}</nav>{body}</body></html>\n"
    )
    index = reports / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> int:
    """``python -m tda_utils.gallery --profile P``: rebuild ``reports/P/index.html``."""
    parser = argparse.ArgumentParser(
        prog="python -m tda_utils.gallery", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--profile", default="cpu", help="profile whose reports/<profile>/ to publish (default cpu)"
    )
    args = parser.parse_args(argv)
    print(build_gallery(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
