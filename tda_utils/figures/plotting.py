"""Paper-style figures.

Public: ``set_style``, ``plot_agreement``, ``plot_seed_curves``, ``plot_sorted_scores``,
``plot_scatter``, ``plot_trajectories``, ``plot_image_table``, ``legend_below``, ``save_figure``,
``time_label``.

One style for every figure: each method's label, colour and line style and the paper's method
order come from the method registry (``methods.method_style``, ``methods.method_order``);
seaborn theme; curves are means over test instances with +-SEM bands. A single-panel figure
keeps its legend below the axes, off the curves (``legend_below``); on an ``ax`` given by a
multi-panel composition the legend is left to the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.ticker
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..methods.registry import METHODS, method_order, method_style


def set_style() -> None:
    """The seaborn theme used for every figure."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.1)


def _finish(fig, ax, title: str | None, legend: bool, own: bool):
    """Title, legend and layout; returns the figure. On a figure of its own (``own``) the
    legend goes below the axes (``legend_below``), on an ``ax`` given inside the axes.
    """
    if title:
        ax.set_title(title)
    if own:
        if legend:
            legend_below(fig, ax)
        return fig
    if legend:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _figure_axes(ax, figsize: tuple[float, float]):
    """(figure, axes, own): a new constrained-layout figure of ``figsize`` if ``ax`` is None
    (``own`` True), else ``ax`` and its figure.
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax, True
    return ax.figure, ax, False


#: the legend's font size, and the inches per character / per legend entry's handle (a guess
#: used only where the canvas cannot measure text)
LEGEND_FONTSIZE = "small"
_CHAR_INCHES, _HANDLE_INCHES, _ROW_INCHES = 0.085, 0.6, 0.28


def _legend_size(fig, leg, labels: Sequence[str], ncol: int) -> tuple[float, float]:
    """(width, height) of ``leg`` in inches: measured on the canvas (Agg, the notebooks' inline
    backend), else estimated from its labels in ``ncol`` columns.
    """
    get_renderer = getattr(fig.canvas, "get_renderer", None)
    if get_renderer is not None:
        box = leg.get_window_extent(get_renderer())
        return box.width / fig.dpi, box.height / fig.dpi
    rows = -(-len(labels) // ncol)
    width = ncol * (_CHAR_INCHES * max(map(len, labels), default=1) + _HANDLE_INCHES)
    return width, _ROW_INCHES * rows + 0.15


def legend_below(fig, ax, fontsize: str | float = LEGEND_FONTSIZE):
    """Put the legend of ``ax``'s labelled curves below the axes, outside the plot, so that it
    covers no curve: one figure legend under the x-axis label, in as many columns as fit the
    figure's width; the figure grows by the legend's height so the axes keep theirs.

    Replaces an earlier legend of ``ax`` or of the figure (call it again after restyling curves:
    the figure then grows only by the difference). The figure gets constrained layout. Returns
    the legend, or None when nothing is labelled.
    """
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    old = [(leg, [t.get_text() for t in leg.get_texts()]) for leg in fig.legends]
    if not handles:
        return None
    engine = fig.get_layout_engine()
    if engine is None or "Constrained" not in type(engine).__name__:
        fig.set_layout_engine("constrained")
    ncol = len(labels)
    while True:
        leg = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=fontsize)
        width, height = _legend_size(fig, leg, labels, ncol)
        if ncol == 1 or width <= 0.97 * fig.get_figwidth():
            break
        leg.remove()
        ncol = min(ncol - 1, -(-len(labels) // (-(-len(labels) // ncol) + 1)))  # a row more
    old_height = sum(_legend_size(fig, o, names, ncol)[1] for o, names in old)
    for o, _ in old:
        o.remove()
    fig.set_figheight(fig.get_figheight() - old_height + height)
    return leg


def time_label(unit: str) -> str:
    """Axis label for further-training time: "further training epochs" / "steps"."""
    return {"epoch": "further training epochs", "step": "further training steps"}.get(unit, unit)


def plot_agreement(
    curves: Mapping[str, object],
    times,
    time_unit: str = "epoch",
    ylabel: str = "cosine similarity",
    title: str | None = None,
    ax=None,
    legend: bool = True,
    xlabel: str | None = None,
    labels: Mapping[str, str] | None = None,
):
    """Agreement vs further-training time, one curve per method with a +-SEM band.

    ``curves``: {method: metrics.Curve}; ``times``: (n_evals,); ``labels``: {method: legend
    label} overriding the registered one (``methods.registry.method_label``). Returns the figure.
    """
    fig, ax, own = _figure_axes(ax, (6, 4.8))
    t = np.asarray(torch.as_tensor(times).double())
    for m in method_order(list(curves)):
        c = curves[m]
        style = method_style(m)
        mean, sem = np.asarray(c.mean), np.asarray(c.sem)
        ax.plot(
            t,
            mean,
            label=(labels or {}).get(m, style.get("label", m)),
            color=style.get("color"),
            linestyle=style.get("linestyle", "-"),
        )
        ax.fill_between(
            t,
            mean - np.nan_to_num(sem),
            mean + np.nan_to_num(sem),
            color=style.get("color"),
            alpha=0.2,
            linewidth=0,
        )
    ax.set_xlabel(xlabel or time_label(time_unit))
    ax.set_ylabel(ylabel)
    return _finish(fig, ax, title, legend, own)


def save_figure(fig, name: str, figures_dir: str | Path) -> list[Path]:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (150 dpi) and ``.pdf``; return the paths."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def plot_seed_curves(
    seed_curves: Mapping[str, object],
    title: str | None = None,
    ax=None,
    legend: bool = True,
    labels: Mapping[str, str] | None = None,
):
    """Best agreement (max over time) vs number of seeds averaged, semilog-x (Figs. 3, 7-9).

    ``seed_curves``: {method: metrics.SeedCurve}; ``labels`` as in ``plot_agreement``. Returns
    the figure.
    """
    fig, ax, own = _figure_axes(ax, (5.5, 5.5))
    for m in method_order(list(seed_curves)):
        c = seed_curves[m]
        style = method_style(m)
        ax.errorbar(
            c.ks,
            np.asarray(c.best),
            yerr=np.nan_to_num(np.asarray(c.sem)),
            marker="o",
            capsize=3,
            label=(labels or {}).get(m, style.get("label", m)),
            color=style.get("color"),
            linestyle=style.get("linestyle", "-"),
        )
    ax.set_xscale("log")
    ks = sorted({int(k) for c in seed_curves.values() for k in c.ks})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("number of seeds averaged")
    ax.set_ylabel("best cosine similarity")
    return _finish(fig, ax, title, legend, own)


def plot_sorted_scores(
    curves: Mapping[str, object], title: str | None = None, ax=None, legend: bool = True
):
    """Sorted attribution scores (Fig. 10): {label: (n_left_out,) L2-normalised curve}.

    Registered method names get their colour; other labels (further training at a time)
    are drawn in black/grey with solid/dashed lines.
    """
    fig, ax, own = _figure_axes(ax, (6, 4.8))
    others = 0
    for label, curve in curves.items():
        y = np.asarray(torch.as_tensor(curve).double())
        if label in METHODS:
            st = method_style(label)
            ax.plot(np.arange(1, len(y) + 1), y, label=st["label"], color=st["color"])
        else:
            ax.plot(
                np.arange(1, len(y) + 1),
                y,
                label=label,
                color=("k", "0.45", "0.7")[others % 3],
                linestyle=("-", "--", ":")[others % 3],
            )
            others += 1
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.set_xlabel("rank")
    ax.set_ylabel("sorted attribution score")
    return _finish(fig, ax, title, legend, own)


def plot_scatter(x, y, xlabel: str, ylabel: str, title: str | None = None, ax=None):
    """Scatter of two score matrices (flattened) with the y = x line; returns the figure."""
    fig, ax, own = _figure_axes(ax, (5, 5))
    xs = np.asarray(torch.as_tensor(x).double()).ravel()
    ys = np.asarray(torch.as_tensor(y).double()).ravel()
    ax.scatter(xs, ys, s=8, alpha=0.5, color="C0")
    lo, hi = float(min(xs.min(), ys.min())), float(max(xs.max(), ys.max()))
    ax.plot([lo, hi], [lo, hi], color="0.3", linewidth=1, linestyle="--", label="y = x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left")
    if title:
        ax.set_title(title)
    if not own:
        fig.tight_layout()
    return fig


def plot_trajectories(
    times,
    gold,
    predictions: Mapping[str, object],
    labels: Sequence[str],
    time_unit: str = "step",
    title: str | None = None,
    clip: Sequence[str] = (),
):
    """One panel per training instance: the gold standard tau_i(t) and predictions over time.

    ``gold``: (n_evals, n_panels); ``predictions``: {method: (n_evals, n_panels) or (n_panels,)
    for time-independent scores, drawn as horizontal lines}; ``labels``: panel titles.
    Times > 0 get a log axis from the first time (else symlog). Methods in ``clip`` (e.g. Grad-Dot's
    linear extrapolation) do not set the y-range: the axes are scaled to the gold standard and
    the other predictions, and a clipped curve leaves the panel.
    """
    n = len(labels)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
    t = np.asarray(torch.as_tensor(times).double())
    g = np.asarray(torch.as_tensor(gold).double())
    for j, ax in enumerate(axes[0]):
        ax.plot(t, g[:, j], color="k", linewidth=2.5, alpha=0.6, label="further training")
        kept = [g[:, j]] + [
            np.asarray(torch.as_tensor(p).double())[..., j].ravel()
            for m, p in predictions.items()
            if m not in clip
        ]
        lo, hi = float(min(k.min() for k in kept)), float(max(k.max() for k in kept))
        for m, pred in predictions.items():
            p = np.asarray(torch.as_tensor(pred).double())
            st = method_style(m)
            if p.ndim == 1:
                ax.axhline(p[j], color=st.get("color"), linestyle=":", label=st.get("label", m))
            else:
                ax.plot(
                    t,
                    p[:, j],
                    color=st.get("color"),
                    linestyle=st.get("linestyle", "-"),
                    label=st.get("label", m) + (" (leaves the axes)" if m in clip else ""),
                )
        ax.set_title(labels[j])
        ax.set_xlabel(time_label(time_unit))
        if t.min() > 0:
            ax.set_xscale("log")
            ax.set_xlim(t.min(), t.max())
        else:
            ax.set_xscale("symlog", linthresh=1.0)
        if clip:
            pad = 0.08 * (hi - lo or abs(hi) or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
    axes[0][0].set_ylabel("tau_i(t): change of test loss")
    handles, names = axes[0][-1].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=len(names),
        fontsize="small",
        bbox_to_anchor=(0.5, 0.0),
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


def plot_image_table(
    query_images,
    query_titles: Sequence[str],
    rows: Sequence[Sequence[tuple[object, str]]],
    title: str | None = None,
    mean=None,
    std=None,
):
    """Table 2 for images: one row per query: the query image, then its most helpful and most
    harmful training images, each titled (e.g. with tau and each method's rank).

    ``query_images``: (n_q, C, H, W); ``rows``: per query a list of (image (C, H, W), title).
    ``mean``/``std`` (per channel) undo the normalisation for display.
    """
    n_q = len(query_titles)
    n_c = 1 + max(len(r) for r in rows)
    n_lines = max(
        [t.count("\n") + 1 for r in rows for _, t in r] + [t.count("\n") + 1 for t in query_titles]
    )
    fig, axes = plt.subplots(
        n_q,
        n_c,
        figsize=(1.9 * n_c, n_q * (1.9 + 0.13 * n_lines)),
        squeeze=False,
        layout="constrained",
    )

    def show(ax, img, text):
        x = torch.as_tensor(img).double()
        if mean is not None and std is not None:
            x = x * torch.as_tensor(std).double().view(-1, 1, 1) + torch.as_tensor(
                mean
            ).double().view(-1, 1, 1)
        x = x.clamp(0, 1) if mean is not None else (x - x.min()) / (x.max() - x.min() + 1e-12)
        arr = x.permute(1, 2, 0).numpy()
        ax.imshow(
            arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray" if arr.shape[-1] == 1 else None
        )
        ax.set_title(text, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])

    for i in range(n_q):
        show(axes[i][0], query_images[i], query_titles[i])
        for j in range(1, n_c):
            if j - 1 < len(rows[i]):
                show(axes[i][j], *rows[i][j - 1])
            else:
                axes[i][j].set_visible(False)
    if title:
        fig.suptitle(title)
    return fig
