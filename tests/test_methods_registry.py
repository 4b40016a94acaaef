"""The method registry: options with visible defaults, and a toy method added with one module
(this file's ``ToyOptions`` + ``toy``) and one registry entry, seen by every consumer."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import pytest
import torch

import tda_utils as tu
from tda_utils import methods
from tda_utils.figures import paper
from tda_utils.analysis import pipeline

from .conftest import make_splits, tiny_model


@dataclasses.dataclass(frozen=True)
class ToyOptions(methods.BaseOptions):
    """Grad-Dot times ``factor``."""

    factor: float = 2.0

    def __post_init__(self) -> None:
        methods.common.check_number("factor", self.factor)
        super().__post_init__()


def toy(model, splits, train_indices, query_indices, opts: ToyOptions):
    """``factor`` x Grad-Dot, (Q, T)."""
    ctx = methods.common.prepare(model, splits, opts)
    return opts.factor * ctx.grads("test", query_indices) @ ctx.grads("train", train_indices).T, {}


TOY = methods.MethodSpec("toy", toy, ToyOptions, "Toy", "tab:olive", "first_order", linestyle="-.")


@pytest.fixture
def registered_toy():
    methods.register_method(TOY)
    yield TOY
    del methods.METHODS["toy"]


def test_options_show_their_real_defaults():
    assert methods.method_options("cg")["damping_multiple"] == 100
    assert methods.method_options("trak")["damping_multiple"] == 0.01
    assert methods.method_options("if_explicit")["dtype"] == "float64"
    assert methods.method_options("lissa_h")["hessian"] == "exact"
    with pytest.raises(ValueError, match="method='nope'"):
        methods.method_options("nope")
    opts = methods.make_options("cg", {"damping": 0.5})
    assert (
        opts.damping == 0.5 and opts.damping_multiple is None
    )  # an absolute damping switches the multiple off
    with pytest.raises(ValueError, match="not both"):
        methods.make_options("cg", {"damping": 0.5, "damping_multiple": 10})
    with pytest.raises(ValueError, match="family='second'"):
        methods.MethodSpec("x", toy, ToyOptions, "X", "k", "second")


def test_families_and_damping_kinds_come_from_the_registry():
    assert methods.methods_in_family("first_order") == ("grad_dot", "grad_cos")
    assert methods.methods_in_family("unified") == ("if_time",)
    damped = [m for m, s in tu.METHODS.items() if s.damping == "lambda0"]
    assert damped == ["cg", "lissa", "lissa_h", "ekfac", "if_time", "if_explicit"]
    assert "if_explicit" not in methods.scalable_methods()


def test_a_toy_method_is_seen_by_attribute_figures_and_tables(registered_toy, tmp_path):
    splits = make_splits("regression", n_train=24)
    model = tiny_model(splits, train_epochs=5)
    left_out = list(range(0, 24, 3))
    s = tu.attribute("toy", model, splits, left_out, None, factor=3.0)
    gd = tu.attribute("grad_dot", model, splits, left_out, None)
    torch.testing.assert_close(s.values, 3.0 * gd.values)
    assert methods.method_options("toy")["factor"] == 2.0
    with pytest.raises(ValueError, match="factor"):
        tu.attribute("toy", model, splits, factor=-1.0)
    # the pipeline runs it in registry order (after the built-in methods) without damping
    scores = pipeline.run_methods(
        ["toy", "grad_dot"], model, splits, left_out, list(range(splits.n_test)), progress=False
    )
    assert list(scores) == ["grad_dot", "toy"] and scores["toy"].config == {}
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=3, batch_size=8, seeds=range(2), left_out=left_out, dtype="float64"
    )
    gold = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    fig, curves = paper.agreement_figure("fig2", gold, scores, "tiny", tmp_path)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["Toy"].get_color() == "tab:olive" and lines["Toy"].get_linestyle() == "-."
    table = pipeline.summary_table(curves, gold.times, scores)
    assert list(table.index) == ["Grad-Dot", "Toy"]
    torch.testing.assert_close(torch.tensor(table.loc["Toy", "first"]), curves["toy"].mean[0])
    record = pipeline.collect_results(
        "01_tabular_regression",
        "tiny",
        "smoke",
        gold,
        scores,
        {},
        seed_ks=(1, 2),
        results_dir=tmp_path,
    )
    summary = paper.cross_dataset_summary({record.name: record})
    assert list(summary["method"]) == ["Grad-Dot", "Toy"]
    plt.close("all")
