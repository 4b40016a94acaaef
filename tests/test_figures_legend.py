"""Single-panel figures keep their legend off the curves: below the axes, inside the figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from tda_utils.analysis.metrics import Curve, SeedCurve
from tda_utils.figures import plotting
from tda_utils.methods import METHODS

T = torch.arange(1, 11).double()


def curves(n: int = 8) -> dict[str, Curve]:
    out = {}
    for i, m in enumerate(list(METHODS)[:n]):
        mean = 0.9 * torch.exp(-T / (2 + i)) + 0.05 * i  # curves across the whole axes
        out[m] = Curve(
            mean, torch.full_like(mean, 0.02), torch.zeros(10, 3), torch.zeros(10), "cosine"
        )
    return out


def seed_curves() -> dict[str, SeedCurve]:
    return {
        m: SeedCurve(
            [1, 2, 5],
            torch.tensor([0.2, 0.3, 0.4]) + 0.05 * i,
            torch.full((3,), 0.01),
            [0] * 3,
            [5, 2, 1],
        )
        for i, m in enumerate(list(METHODS)[:6])
    }


def sorted_curves() -> dict[str, torch.Tensor]:
    return {
        "grad_dot": torch.linspace(1, -1, 30),
        "grad_cos": torch.linspace(0.5, -0.5, 30),
        "further training, epoch 1": torch.linspace(0.8, -0.2, 30),
        "further training, epoch 10": torch.linspace(0.3, -0.9, 30),
    }


FIGURES = {
    "agreement": lambda: plotting.plot_agreement(
        curves(),
        T,
        title="Fig. 2: tiny, SGD\na second title line",
        labels={"lissa_h": "LiSSA-H (depth 100)"},
    ),
    "seeds": lambda: plotting.plot_seed_curves(seed_curves(), title="Fig. 7: tiny"),
    "sorted": lambda: plotting.plot_sorted_scores(sorted_curves(), title="Fig. 10: tiny"),
}


def the_legend(fig):
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends
    assert len(legends) == 1, f"{len(legends)} legends"
    return legends[0]


@pytest.mark.parametrize("name", FIGURES)
def test_legend_is_outside_the_axes_and_inside_the_figure(name, tmp_path):
    fig = FIGURES[name]()
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = the_legend(fig)
    box, data = legend.get_window_extent(), ax.get_window_extent()
    assert not box.overlaps(data), f"legend {box} covers the data area {data}"
    assert box.y1 <= data.y0  # below the plot
    full = fig.bbox  # nothing clipped, even without bbox_inches="tight"
    assert full.x0 <= box.x0 and box.x1 <= full.x1 and full.y0 <= box.y0 and box.y1 <= full.y1
    assert [t.get_text() for t in legend.get_texts()] == ax.get_legend_handles_labels()[1]
    assert len(legend.get_texts()) > 1
    png, _ = plotting.save_figure(fig, name, tmp_path)
    assert png.stat().st_size > 0
    plt.close(fig)


def test_the_check_sees_a_legend_on_the_curves():
    """The overlap test can fail: the old placement (``loc="best"`` in the axes) covers data."""
    fig, ax = plt.subplots(figsize=(6, 4.8))
    plotting.plot_agreement(curves(), T, ax=ax)  # an ``ax`` given: the legend stays in the axes
    fig.canvas.draw()
    legend = the_legend(fig)
    assert legend is ax.get_legend()
    assert legend.get_window_extent().overlaps(ax.get_window_extent())
    plt.close(fig)


def test_legend_below_again_replaces_it_and_keeps_the_size():
    """Notebook 06 restyles curves and calls ``legend_below`` again: one legend, same size."""
    fig = plotting.plot_agreement(curves(4), T)
    size = tuple(fig.get_size_inches())
    ax = fig.axes[0]
    ax.get_lines()[0].set(color="k", linestyle="-.")
    ax.legend()  # a stray in-axes legend is removed too
    plotting.legend_below(fig, ax)
    assert len(fig.legends) == 1 and ax.get_legend() is None
    assert tuple(fig.get_size_inches()) == pytest.approx(size)
    assert fig.legends[0].get_lines()[0].get_linestyle() == "-."
    fig.canvas.draw()
    assert not fig.legends[0].get_window_extent().overlaps(ax.get_window_extent())
    plt.close(fig)


def test_a_figure_without_a_legend_gets_none():
    fig = plotting.plot_agreement(curves(3), T, legend=False)
    assert not fig.legends and fig.axes[0].get_legend() is None
    assert plotting.legend_below(plt.figure(), plt.gca()) is None
    plt.close("all")
