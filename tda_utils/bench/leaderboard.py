"""The leaderboard: one row per (run, method), its CSV and Markdown files, and its figures.

Public: ``COLUMNS``, ``MARKDOWN_COLUMNS``, ``SIGN_THRESHOLD``, ``PLUGIN_MARKERS``, ``run_rows``,
``failed_row``, ``crossing_time_against``, ``sign_warnings``, ``markdown``, ``write_leaderboard``,
``leaderboard_figure``, ``curves_figure``.

A row holds, for one method on one run, the agreement with the run's SGD gold standard exactly
as the notebooks compute it (``analysis.pipeline.agreement_panel``: mean-subtracted tau, mean and
SEM over queries; ``summary_table``'s first / best / last): cosine (``first``, ``best``,
``best_time``, ``last`` and their SEMs) and Spearman (``spearman_*``), the largest number of
queries left out of a mean (``dropped``), the first evaluation from which the method's cosine
curve stays above Grad-Dot's until the last (``crossing_time``, as
``figures.paper.crossing_time``), its wall time and peak memory. ``method`` is the plug-in's
``module:function`` or the built-in's registry key; ``kind`` says which; ``status`` is "ok",
"failed" or "not applicable" (then ``error`` says why and the numbers are empty).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..analysis.metrics import Curve, nan_argmax
from ..analysis.pipeline import agreement_panel
from ..cache import atomic_write_text
from ..figures import plotting
from ..figures.paper import markdown_table
from ..methods import AttributionScores, method_style
from ..methods.registry import method_label
from .inputs import RunInputs

#: every column of the CSV, in order
COLUMNS = (
    "run", "method", "kind", "label", "status",
    "first", "first_sem", "best", "best_sem", "best_time", "last", "last_sem",
    "spearman_first", "spearman_first_sem", "spearman_best", "spearman_best_sem",
    "spearman_best_time", "spearman_last", "spearman_last_sem",
    "dropped", "crossing_time", "time_unit", "wall_time_s", "peak_memory_mb", "error",
)
#: the Markdown table's columns (the CSV has the SEMs too)
MARKDOWN_COLUMNS = (
    "run", "method", "kind", "first", "best", "best_time", "last", "spearman_first",
    "spearman_best", "spearman_last", "crossing_time", "wall_time_s", "peak_memory_mb", "status",
)
#: a plug-in whose first-evaluation cosine is below this on most runs gets a sign warning
SIGN_THRESHOLD = -0.2
#: the reference curve of ``crossing_time``
REFERENCE = "grad_dot"


def crossing_time_against(curve: Curve, reference: Curve | None, times) -> float | None:
    """The first evaluation time from which ``curve`` stays above ``reference`` until the last
    (the first evaluation itself when it is above from the start); None when it is not above at
    the last evaluation or without a reference. NaN entries count as not above
    (``figures.paper.crossing_time`` for one curve).
    """
    if reference is None:
        return None
    above = (curve.mean.double() > reference.mean.double()).tolist()
    if not above or not above[-1]:
        return None
    j = len(above) - 1
    while j > 0 and above[j - 1]:
        j -= 1
    return float(torch.as_tensor(times)[j])


def _curve_stats(prefix: str, c: Curve, times: torch.Tensor) -> dict[str, float]:
    best = nan_argmax(c.mean)
    return {
        f"{prefix}first": float(c.mean[0]),
        f"{prefix}first_sem": float(c.sem[0]),
        f"{prefix}best": float(c.mean[best]),
        f"{prefix}best_sem": float(c.sem[best]),
        f"{prefix}best_time": float(times[best]),
        f"{prefix}last": float(c.mean[-1]),
        f"{prefix}last_sem": float(c.sem[-1]),
    }


def run_rows(
    inputs: RunInputs, plugin_scores: Mapping[str, AttributionScores]
) -> tuple[list[dict], dict[str, Curve]]:
    """The rows of one run: every built-in method it computed, then each plug-in, and the cosine
    curves ({method: Curve}) they come from.
    """
    gold = inputs.gold
    every = {**inputs.scores, **plugin_scores}
    cos = agreement_panel(gold, every)
    spear = agreement_panel(gold, every, metric="spearman")
    times = gold.times.double()
    reference = cos.get(REFERENCE)
    rows = []
    for m, c in cos.items():
        plug = m in plugin_scores
        score = every[m]
        rows.append({
            "run": inputs.name,
            "method": m,
            "kind": "plug-in" if plug else "built-in",
            "label": m if plug else method_label(m, score),
            "status": "ok",
            **_curve_stats("", c, times),
            **_curve_stats("spearman_", spear[m], times),
            "dropped": int(torch.as_tensor(c.n_dropped).max()),
            "crossing_time": None if m == REFERENCE else crossing_time_against(c, reference, times),
            "time_unit": gold.time_unit,
            "wall_time_s": float(score.wall_time),
            "peak_memory_mb": float(score.peak_memory_mb),
            "error": "",
        })
    return rows, cos


def failed_row(
    run: str, method: str, error: str, kind: str = "plug-in", status: str = "failed"
) -> dict:
    """The row of a method that could not be scored on ``run``: ``status`` ("failed", or "not
    applicable"), ``error`` (why).
    """
    row = {c: math.nan for c in COLUMNS}
    row.update(run=run, method=method, kind=kind, label=method, status=status,
               error=str(error), crossing_time=None, time_unit="")
    return row


def sign_warnings(table: pd.DataFrame, threshold: float = SIGN_THRESHOLD) -> list[str]:
    """A warning per plug-in whose first-evaluation cosine is below ``threshold`` on most (more
    than half) of the runs it was scored on: its sign may be harmful-positive.
    """
    out = []
    ok = table[(table["kind"] == "plug-in") & (table["status"] == "ok")]
    for method, rows in ok.groupby("method", sort=False):
        bad = rows[rows["first"] < threshold]
        if len(bad) > len(rows) / 2:
            firsts = ", ".join(f"{r} {v:.2f}" for r, v in zip(bad["run"], bad["first"]))
            out.append(
                f"plug-in {method!r}: first-evaluation cosine agreement below {threshold} on "
                f"{len(bad)} of {len(rows)} runs ({firsts}); its sign may be harmful-positive: "
                "the contract is positive = helpful (removing the instance raises the query's "
                "loss), so return -scores if yours count harm"
            )
    return out


def markdown(table: pd.DataFrame, errors: Sequence[str] = (), notes: Sequence[str] = ()) -> str:
    """The leaderboard as Markdown: a note on the columns, the table, the errors and notes."""
    head = (
        "*Agreement of each method with further training (the SGD gold standard of each run): "
        "cosine at the first evaluation, at its best (`best_time`) and at the last, the same "
        "for Spearman; `crossing_time`: the first evaluation from which the method's cosine "
        "curve stays above Grad-Dot's until the last (\"-\": never); wall time in seconds, "
        "peak memory in MB. `method`: a plug-in's `module:function` or a built-in registry "
        "key.*"
    )
    shown = table[[c for c in MARKDOWN_COLUMNS if c in table.columns]]
    parts = [head, "", markdown_table(shown)]
    if errors:
        parts += ["", "## Errors", ""] + [f"- {e}".replace("\n", " ") for e in errors]
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}".replace("\n", " ") for n in notes]
    return "\n".join(parts) + "\n"


def wide_markdown(table: pd.DataFrame) -> str:
    """One row per method, one column per run: "first / last" cosine agreement (2 decimals), or
    the row's status where it was not scored ("not applicable", "failed"), and the method's mean
    wall time (s) over the runs it was scored on. Methods in order of appearance; a plug-in's
    ``module:`` prefix is dropped when its function name is unique.
    """
    runs = list(dict.fromkeys(table["run"]))
    methods = list(dict.fromkeys(table["method"]))
    short = {m: m.rsplit(":", 1)[-1] for m in methods}
    if len(set(short.values())) < len(methods):
        short = {m: m for m in methods}
    head = "*Cosine agreement with further training, first / last evaluation; mean wall time (s) " \
           "over the runs scored.*"
    lines = ["| method | kind | " + " | ".join(runs) + " | mean wall time (s) |",
             "|---" * (len(runs) + 3) + "|"]
    for m in methods:
        rows = table[table["method"] == m].set_index("run")
        cells = []
        for r in runs:
            if r not in rows.index:
                cells.append("")
                continue
            row = rows.loc[r]
            cells.append(f"{row['first']:.2f} / {row['last']:.2f}" if row["status"] == "ok"
                         else str(row["status"]))
        times = rows.loc[rows["status"] == "ok", "wall_time_s"].astype(float)
        wall = f"{times.mean():.1f}" if len(times) else ""
        kind = rows["kind"].iloc[0]
        lines.append(f"| `{short[m]}` | {kind} | " + " | ".join(cells) + f" | {wall} |")
    return head + "\n\n" + "\n".join(lines) + "\n"


def write_leaderboard(
    table: pd.DataFrame,
    folder: Path | str,
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
    name: str = "leaderboard",
) -> list[Path]:
    """Write ``<folder>/<name>.csv`` (every column), ``<name>.md``, ``<name>_wide.md``
    (``wide_markdown``: a method per row, first / last per run) and the figure
    ``<name>.png`` / ``.pdf`` (``leaderboard_figure``); returns the paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    wide = folder / f"{name}_wide.md"
    atomic_write_text(table.to_csv(index=False), csv)
    atomic_write_text(markdown(table, errors, notes), md)
    atomic_write_text(wide_markdown(table), wide)
    fig = leaderboard_figure(table)
    try:
        paths = plotting.save_figure(fig, name, folder)
    finally:
        plt.close(fig)
    return [csv, md, wide, *paths]


def _grid(n: int, size: tuple[float, float]):
    cols = min(n, 3)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


#: the markers of the plug-ins (black), in the order given
PLUGIN_MARKERS = ("*", "D", "X", "P", "^", "v", "s", "h")


def leaderboard_figure(table: pd.DataFrame, title: str | None = None):
    """Per run, first vs last cosine agreement of every method scored: built-ins as dots in
    their registry colours, plug-ins as large black markers; one legend for all. Returns the
    figure.
    """
    ok = table[table["status"] == "ok"]
    runs = list(dict.fromkeys(ok["run"])) or ["(no run scored)"]
    plugins = list(dict.fromkeys(ok[ok["kind"] == "plug-in"]["method"]))
    fig, axes = _grid(len(runs), (4.2, 4.0))
    handles: dict[str, object] = {}
    for ax, run in zip(axes, runs):
        rows = ok[ok["run"] == run]
        for _, r in rows.iterrows():
            if r["kind"] == "plug-in":
                k = plugins.index(r["method"])
                style = dict(marker=PLUGIN_MARKERS[k % len(PLUGIN_MARKERS)], s=150, color="k",
                             edgecolor="w", linewidth=0.5, zorder=4)
                label = r["method"]
            else:
                style = dict(marker="o", s=45, color=method_style(r["method"]).get("color", "0.5"),
                             alpha=0.85, zorder=3)
                label = r["label"]
            handles.setdefault(label, ax.scatter(r["first"], r["last"], label=label, **style))
        values = np.r_[rows["first"].to_numpy(float), rows["last"].to_numpy(float), 0.0]
        lo = min(float(np.nanmin(values)), 0.0) - 0.05
        ax.plot([lo, 1], [lo, 1], color="0.7", linestyle=":", linewidth=1, zorder=1)
        ax.set_xlim(lo, 1.03)
        ax.set_ylim(lo, 1.03)
        ax.set_title(run, fontsize=9)
        ax.set_xlabel("cosine, first evaluation")
        ax.set_ylabel("cosine, last evaluation")
    fig.suptitle(title or "Agreement with further training: first vs last evaluation "
                 "(plug-ins in black)")
    fig.tight_layout()
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    return fig


def curves_figure(
    curves: Mapping[str, Mapping[str, Curve]],
    times: Mapping[str, tuple[torch.Tensor, str]],
    plugins: Sequence[str] = (),
    title: str | None = None,
):
    """Per run, every method's cosine agreement over further-training time (``curves``: {run:
    {method: Curve}}, ``times``: {run: (times, unit)}) with its SEM band; plug-ins in black
    (dash-dot, then dashed, dotted, ...), on top; one legend for all. Returns the figure.
    """
    runs = list(curves) or ["(no run scored)"]
    dashes = ("-.", "--", ":", (0, (5, 1, 1, 1, 1, 1)))
    fig, axes = _grid(len(runs), (4.2, 3.6))
    handles: dict[str, object] = {}
    for ax, run in zip(axes, runs):
        if run not in curves:
            continue
        t, unit = times[run]
        plotting.plot_agreement(curves[run], t, unit, ax=ax, legend=False, title=run)
        for line, band in zip(ax.lines, ax.collections):
            if line.get_label() in plugins:
                k = list(plugins).index(line.get_label())
                line.set(color="k", linestyle=dashes[k % len(dashes)], linewidth=2, zorder=5)
                band.set_color("k")
            handles.setdefault(line.get_label(), line)
        ax.title.set_fontsize(9)
    fig.suptitle(title or "Cosine agreement with further training (plug-ins in black)")
    fig.tight_layout()
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="center left",
                   bbox_to_anchor=(1.0, 0.5), fontsize="small", frameon=False)
    return fig
