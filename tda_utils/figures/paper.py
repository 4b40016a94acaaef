"""The paper's figures: file names, per-dataset figures, panel layouts, multi-panel composition,
the cross-dataset summary and the README's results section.

Public: ``FIGURE_NAMES``, ``figure_name``, ``agreement_figure``, ``seed_figure``,
``sorted_scores_figure``, ``image_table_figure``, ``PAPER_PANELS``, ``FIGURE_SLOTS``,
``panel_datasets``, ``compose_figure``, ``crossing_time``, ``cross_dataset_summary``,
``markdown_table``, ``reproduced_table``, ``update_readme``.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from . import plotting
from ..cache import repo_root
from ..data.registry import Splits
from ..gold.further_training import FurtherTrainingResult
from ..methods import AttributionScores, hessian_methods, method_style, methods_in_family
from ..analysis.metrics import Curve
from ..analysis.pipeline import (
    AGREEMENT_FIGURES,
    SEED_KS,
    RunResults,
    agreement_panel,
    score_labels,
    seed_panel,
    sorted_panel,
    summary_table,
)
from ..analysis.findings import FINDINGS, PAPER_PANELS, reproduced_table  # noqa: F401 (public here)

#: the y-axis label of each agreement metric
AXIS_LABELS = {"cosine": "cosine similarity", "spearman": "Spearman correlation"}
#: the paper's file name of each per-dataset figure
FIGURE_NAMES = {
    "fig2": "cos_sim_epochs_{opt}_{ds}",
    "fig6": "spearman_epochs_{opt}_{ds}",
    "fig5": "cos_sim_epochs_{opt}_subfull_{ds}",
    "fig4": "cos_sim_epochs_{opt}_{ds}",
    "fig7": "cos_sim_seeds_{opt}_{ds}",
    "fig8": "cos_sim_seeds_{opt}_{ds}",
    "fig9": "cos_sim_seeds_{opt}_subfull_{ds}",
    "fig10": "attrib_scores_{ds}",
    "fig11": "cos_sim_epochs_re-train_{ds}",
}


def figure_name(fig_id: str, dataset: str, optimizer: str = "sgd") -> str:
    """File stem of a per-dataset panel: ``<fig_id>_<the paper's file name>``, e.g.
    ``fig2_cos_sim_epochs_sgd_concrete``.
    """
    if fig_id not in FIGURE_NAMES:
        raise ValueError(
            f"fig_id={fig_id!r} is not valid; allowed values: {', '.join(FIGURE_NAMES)}"
        )
    return f"{fig_id}_" + FIGURE_NAMES[fig_id].format(opt=optimizer, ds=dataset)


def _title(
    fig_id: str, dataset: str, gold: FurtherTrainingResult, subtract_mean: bool, note: str
) -> str:
    adj = "" if subtract_mean else ", full-data run subtracted only"
    head = f"{fig_id.replace('fig', 'Fig. ')}: {dataset}, {gold.config.optimizer.upper()}{adj}"
    return head + (f"\n{note}" if note else "")


def dropped_note(curves: Mapping[str, Curve]) -> str:
    """The empty string when no curve leaves a query out of its mean; else e.g. "queries left
    out of the mean (undefined agreement): up to 3 (Grad-Dot, CG)" (max over time and methods).
    """
    counts = {m: int(torch.as_tensor(c.n_dropped).max()) for m, c in curves.items()}
    worst = max(counts.values(), default=0)
    if worst == 0:
        return ""
    names = ", ".join(method_style(m)["label"] for m, n in counts.items() if n)
    return f"queries left out of the mean (undefined agreement): up to {worst} ({names})"


def _with_dropped(note: str, curves: Mapping[str, Curve]) -> str:
    extra = dropped_note(curves)
    return "; ".join(x for x in (note, extra) if x)


def agreement_figure(
    fig_id: str,
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    dataset: str,
    figures_dir,
    subtract_mean: bool = True,
    metric: str = "cosine",
    seeds=None,
    note: str = "",
    xlabel: str | None = None,
):
    """Agreement vs further-training time for every method (Figs. 2, 4, 5, 6, 11).

    Returns ``(figure, {method: Curve})``; the figure is saved as PNG + PDF. When some method
    leaves queries out of its agreement mean (``Curve.n_dropped``), the note says how many.
    """
    curves = agreement_panel(gold, scores, subtract_mean, metric, seeds)
    title = _title(fig_id, dataset, gold, subtract_mean, _with_dropped(note, curves))
    fig = plotting.plot_agreement(
        curves,
        gold.times,
        gold.time_unit,
        AXIS_LABELS[metric],
        title=title,
        xlabel=xlabel,
        labels=score_labels(scores),
    )
    plotting.save_figure(fig, figure_name(fig_id, dataset, gold.config.optimizer), figures_dir)
    return fig, curves


def seed_figure(
    fig_id: str,
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    dataset: str,
    figures_dir,
    subtract_mean: bool = True,
    ks=SEED_KS,
    note: str = "",
):
    """Best cosine agreement vs number of seeds averaged (Figs. 3/7, 8, 9).

    Returns ``(figure, {method: SeedCurve})``.
    """
    curves = seed_panel(gold, scores, subtract_mean, ks)
    fig = plotting.plot_seed_curves(
        curves,
        title=_title(fig_id, dataset, gold, subtract_mean, note),
        labels=score_labels(scores),
    )
    plotting.save_figure(fig, figure_name(fig_id, dataset, gold.config.optimizer), figures_dir)
    return fig, curves


def sorted_scores_figure(
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    dataset: str,
    figures_dir,
    time_indices=(0,),
    methods=("grad_dot", "grad_cos"),
):
    """Fig. 10: sorted attribution scores of Grad-Dot, Grad-Cos and further training at the
    evaluation indices ``time_indices``. Returns ``(figure, {label: curve})``.
    """
    curves = sorted_panel(gold, scores, time_indices, methods)
    fig = plotting.plot_sorted_scores(curves, title=f"Fig. 10: {dataset}")
    plotting.save_figure(fig, figure_name("fig10", dataset), figures_dir)
    return fig, curves


def crossing_time(curves: Mapping[str, Curve], times) -> float | None:
    """First evaluation time from which a Hessian-based influence curve stays above the first-order
    one until the last evaluation, whatever the start; None if it is not above at the last.

    The curves compared: the first registered first-order method present (Grad-Dot) and each
    Hessian-based influence method present (``methods.hessian_methods()``: CG, LiSSA, LiSSA-H,
    EK-FAC, explicit IF; not DataInf, TRAK or ``if_time``). For each, the crossing is the
    first evaluation j with ``inf[k] > fo[k]`` for every k >= j (the first evaluation itself when
    the curve is above from the start); the result is the earliest over the influence methods. A
    curve that goes above and falls back below before the end does not count; NaN entries count
    as not above.

    Args:
        curves: {method: Curve} of one panel (e.g. Fig. 2's cosine curves).
        times: (n_evals,) evaluation times.

    Returns:
        The time of that evaluation, or None.
    """
    fo = next((curves[m] for m in methods_in_family("first_order") if m in curves), None)
    infs = [curves[m] for m in hessian_methods() if m in curves]
    if fo is None or not infs:
        return None
    t = torch.as_tensor(times)
    found = []
    for inf in infs:
        above = (inf.mean.double() > fo.mean.double()).tolist()
        if not above or not above[-1]:
            continue
        j = len(above) - 1
        while j > 0 and above[j - 1]:
            j -= 1
        found.append(j)
    return float(t[min(found)]) if found else None


def cross_dataset_summary(runs: Mapping[str, RunResults]) -> pd.DataFrame:
    """One row per (notebook run, method): cosine agreement at the first evaluation, at its best
    and at the last (Fig. 2 curves), the number of queries left out of the mean (``dropped``:
    max over time), and the time from which a Hessian-based influence curve stays above the
    first-order one (``crossing_time``).
    """
    rows = []
    for run, r in runs.items():
        if "fig2" not in r.agreement:
            continue
        cross = crossing_time(r.agreement["fig2"], r.times["fig2"])
        table = summary_table(r.agreement["fig2"], r.times["fig2"], labels=r.labels)
        for method, row in table.iterrows():
            rows.append(
                {
                    "run": run,
                    "method": method,
                    "first": row["first"],
                    "best": row["best"],
                    "best_time": row["best_time"],
                    "last": row["last"],
                    "dropped": int(row["dropped"]),
                    "crossing_time": cross,
                    "time_unit": r.time_unit,
                }
            )
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats rounded, NaN/None shown as "-"; whole
    numbers in columns named ``*time*`` shown without decimals).
    """

    def cell(v, column):
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        if isinstance(v, float) and "time" in str(column) and v.is_integer():
            return str(int(v))
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += [
        "| " + " | ".join(cell(v, c) for v, c in zip(row, df.columns)) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join(lines)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


#: the README's copy of the multi-panel Fig. 2 (committed; written only by ``update_readme``)
README_FIGURE = "docs/results_fig2_{profile}.png"


def update_readme(
    summary: pd.DataFrame,
    figure: Path,
    profile: str,
    readme: Path | None = None,
    reproduced: pd.DataFrame | None = None,
) -> bool:
    """Replace the README's results section (between the ``results`` markers) with the
    multi-panel Fig. 2, the summary table of ``profile`` (with ``dropped``, the queries left out
    of the agreement mean, max over time, and ``crossing_time``, the first evaluation from which
    a Hessian-based influence curve stays above Grad-Dot) and, below it, the ``reproduced`` table
    (``reproduced_table``) when given.

    ``figure`` is copied to ``README_FIGURE`` next to the README, which the section links, so
    that the notebooks' own outputs never touch a committed file. Returns False if the README has
    no markers (then nothing is written).
    """
    readme = Path(readme) if readme else repo_root() / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text()
    # the markers count only on lines of their own (prose may quote them)
    lines = text.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.strip() == README_START]
    to = [i for i, line in enumerate(lines) if line.strip() == README_END]
    if not at or not to or to[0] < at[0]:
        return False
    rel = Path(README_FIGURE.format(profile=profile))
    (readme.parent / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(figure, readme.parent / rel)
    cols = ["run", "method", "first", "best", "best_time", "last", "dropped", "crossing_time"]
    cols = [c for c in cols if c in summary.columns]
    table = markdown_table(summary[cols]) if len(summary) else "(no results)"
    repro = ""
    if reproduced is not None:
        repro = (
            "\n\n*Reproduced? Each of the paper's findings on each run, with the two numbers "
            "compared (from this run's results).*\n\n"
            + (markdown_table(reproduced) if len(reproduced) else "(no results)")
        )
    body = (
        f"{README_START}\n*Generated by `make reproduce` (profile `{profile}`) from "
        "`notebooks/05_paper_figures.ipynb`; cosine agreement of each method with further "
        "training at the first evaluation, at its best and at the last; `dropped`: the most "
        "queries left out of the agreement mean at any evaluation (undefined cosine); "
        "`crossing_time`: the first evaluation from which a Hessian-based influence curve "
        'stays above Grad-Dot until the last ("-": none).*\n\n'
        f"![Fig. 2, {profile} profile]({rel.as_posix()})"
        f"\n\n{table}{repro}\n{README_END}"
    )
    readme.write_text("".join(lines[: at[0]]) + body + "\n" + "".join(lines[to[0] + 1 :]))
    return True


def image_table_figure(
    table: pd.DataFrame, splits: Splits, dataset: str, figures_dir, methods: Sequence[str] = ()
):
    """Table 2 as an image grid (one row per query: the query, then its most helpful and most
    harmful training images by the gold standard, titled with tau and each method's rank).
    """
    x_test, x_train = splits.test.tensors[0], splits.train.tensors[0]
    names = splits.meta.get("class_names")
    label = lambda y: names[int(y)] if names else str(int(y))  # noqa: E731
    y_test, y_train = splits.test.tensors[-1], splits.train.tensors[-1]
    queries = list(dict.fromkeys(table["query"].tolist()))
    rows = []
    for q in queries:
        part = table[table["query"] == q]
        cells = []
        for _, r in part.iterrows():
            ranks = [
                f"{method_style(m)['label']} #{int(r[f'{m}_rank'])}"
                for m in methods
                if f"{m}_rank" in r
            ]
            ranks = "\n".join(", ".join(ranks[i : i + 2]) for i in range(0, len(ranks), 2))
            text = f"{r['kind']} {label(y_train[int(r['train_index'])])}\ntau={r['tau']:.2g}" + (
                f"\n{ranks}" if ranks else ""
            )
            cells.append((x_train[int(r["train_index"])], text))
        rows.append(cells)
    norm = splits.meta.get("normalization") or {}
    fig = plotting.plot_image_table(
        x_test[queries],
        [f"test {q}: {label(y_test[q])}" for q in queries],
        rows,
        title=f"Table 2: {dataset}",
        mean=norm.get("mean"),
        std=norm.get("std"),
    )
    plotting.save_figure(fig, f"table2_{dataset}", figures_dir)
    return fig


#: which slots each multi-panel figure of the paper has
FIGURE_SLOTS: dict[str, tuple[str, ...]] = {
    "fig2": tuple("abcdef"),
    "fig5": tuple("abcdef"),
    "fig6": tuple("abcdef"),
    "fig7": tuple("abcdef"),
    "fig9": tuple("abcdef"),
    "fig10": tuple("abcdef"),
    "fig4": tuple("abcd"),
    "fig8": tuple("abcd"),
    "fig11": tuple("ab"),
    "fig3": ("d", "f"),
}
#: multi-panel figures drawn from each run's agreement curves, seed curves or sorted scores (the
#: paper's Fig. 3 shows the Fig. 7 data of two panels)
TIME_FIGURES = {f: AXIS_LABELS["spearman" if f == "fig6" else "cosine"] for f in AGREEMENT_FIGURES}
SEED_FIGURE_DATA = {"fig3": "fig7", "fig7": "fig7", "fig8": "fig8", "fig9": "fig9"}


def panel_datasets(
    available: Sequence[str], slots: Mapping[str, Sequence[str]] = PAPER_PANELS
) -> dict[str, str | None]:
    """{panel letter: the dataset shown there, or None when none of its datasets has results}."""
    return {k: next((d for d in cands if d in available), None) for k, cands in slots.items()}


def _empty_panel(ax, text: str) -> None:
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4"
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_panel(fig_id: str, record: RunResults, ax) -> bool:
    """Draw ``fig_id``'s panel of ``record`` on ``ax``; False when the record has no such data."""
    if fig_id in TIME_FIGURES:
        if fig_id not in record.agreement:
            return False
        plotting.plot_agreement(
            record.agreement[fig_id],
            record.times[fig_id],
            record.time_unit,
            TIME_FIGURES[fig_id],
            ax=ax,
            legend=False,
            xlabel="re-training epochs" if fig_id == "fig11" else None,
            labels=record.labels,
        )
    elif fig_id in SEED_FIGURE_DATA:
        if SEED_FIGURE_DATA[fig_id] not in record.seeds:
            return False
        plotting.plot_seed_curves(
            record.seeds[SEED_FIGURE_DATA[fig_id]], ax=ax, legend=False, labels=record.labels
        )
    else:
        plotting.plot_sorted_scores(record.sorted_scores, ax=ax, legend=True)
    return True


def compose_figure(
    fig_id: str,
    runs_by_dataset: Mapping[str, RunResults],
    slots: Mapping[str, Sequence[str]] = PAPER_PANELS,
    title: str | None = None,
):
    """A multi-panel paper figure: one panel per slot in the paper's order, one shared legend.

    ``runs_by_dataset``: {dataset: its ``RunResults``}. A slot whose dataset has no results (or
    no data for this figure) shows a note instead of failing.
    """
    allowed = sorted([*TIME_FIGURES, *SEED_FIGURE_DATA, "fig10"])
    if fig_id not in allowed:
        raise ValueError(f"fig_id={fig_id!r} is not valid; allowed values: {', '.join(allowed)}")
    if slots is PAPER_PANELS and fig_id in FIGURE_SLOTS:
        slots = {k: PAPER_PANELS[k] for k in FIGURE_SLOTS[fig_id]}
    chosen = panel_datasets(list(runs_by_dataset), slots)
    n = len(chosen)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4.2 * rows), squeeze=False)
    handles: dict[str, object] = {}
    for ax, (letter, ds) in zip(axes.flat, chosen.items()):
        record = runs_by_dataset.get(ds) if ds else None
        if record is None or not _draw_panel(fig_id, record, ax):
            why = "no results" if record is None else f"no {fig_id} data"
            _empty_panel(ax, f"({letter}) {' / '.join(slots[letter])}:\n{why} for this profile")
            continue
        ax.set_title(f"({letter}) {ds}")
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    bottom = 0.0
    if handles and fig_id != "fig10":
        ncol = min(5, len(handles))
        bottom = (
            0.3 * -(-len(handles) // ncol) + 0.2
        ) / fig.get_figheight()  # legend rows, in figure units
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="lower center",
            ncol=ncol,
            bbox_to_anchor=(0.5, 0.0),
            fontsize="small",
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    return fig
