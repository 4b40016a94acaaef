"""Paper-style figures.

Public: ``set_style``, ``plot_agreement``, ``save_figure``, ``time_label``, ...

One style for every figure: each method's label, colour and line style and the paper's method
order come from the method registry (``methods.method_style``, ``methods.method_order``);
seaborn theme; curves are means over test instances with +-SEM bands.
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


def _finish(fig, ax, title: str | None, legend: bool):
    """Title, legend and tight layout; returns the figure."""
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    return fig


def _figure_axes(ax, figsize: tuple[float, float]):
    """(figure, axes): a new figure of ``figsize`` if ``ax`` is None, else ``ax`` and its figure."""
    if ax is None:
        return plt.subplots(figsize=figsize)
    return ax.figure, ax


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
    fig, ax = _figure_axes(ax, (6, 4.8))
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
    return _finish(fig, ax, title, legend)


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
    fig, ax = _figure_axes(ax, (5.5, 5.5))
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
    return _finish(fig, ax, title, legend)


def plot_sorted_scores(
    curves: Mapping[str, object], title: str | None = None, ax=None, legend: bool = True
):
    """Sorted attribution scores (Fig. 10): {label: (n_left_out,) L2-normalised curve}.

    Registered method names get their colour; other labels (further training at a time)
    are drawn in black/grey with solid/dashed lines.
    """
    fig, ax = _figure_axes(ax, (6, 4.8))
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
    return _finish(fig, ax, title, legend)


def plot_scatter(x, y, xlabel: str, ylabel: str, title: str | None = None, ax=None):
    """Scatter of two score matrices (flattened) with the y = x line; returns the figure."""
    fig, ax = _figure_axes(ax, (5, 5))
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
