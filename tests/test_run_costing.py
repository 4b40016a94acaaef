"""The `paper` profile covers every paper panel at the paper's scale, and `--dry-run` costs it."""

from __future__ import annotations

import math

import pytest

from tda_utils.run import costing
from tda_utils.run import reproduce

PANELS = {
    ("01_tabular_regression", "concrete"),
    ("01_tabular_regression", "energy"),
    ("02_tabular_classification", "heloc"),
    ("02_tabular_classification", "folktables"),
    ("03_image_classification", "cifar10"),
    ("04_text_classification", "sst2"),
}


def paper_runs():
    return reproduce.plan(reproduce.load_manifest(), "paper")


def test_paper_profile_has_every_panel_with_the_papers_protocol():
    runs = {(r.notebook, r.dataset): r.parameters for r in paper_runs()}
    assert PANELS <= set(runs)
    epochs = {
        "concrete": 500,
        "energy": 500,
        "heloc": 200,
        "folktables": 25,
        "cifar10": 1,
        "sst2": 1,
    }
    for (nb, ds), p in runs.items():
        if (nb, ds) not in PANELS:
            continue
        assert p["n_seeds"] == 100 and p["ft_epochs"] == epochs[ds], (ds, p)
        assert p["n_left_out"] == (50 if ds == "sst2" else 100)
        assert p["method_options"]["lissa"]["depth"] == 5000
        if nb.startswith(("01", "02")):
            assert p["adam_lr"] is not None and p["n_seeds_adam"] == 100
            assert p["method_options"]["lissa_h"]["depth"] == 5000
    assert runs[("01_tabular_regression", "energy")]["damping_multiple"] == 1000
    sst2 = runs[("04_text_classification", "sst2")]
    assert (
        sst2["eval_steps"] is None
        and sst2["eval_every_steps"] == 5
        and sst2["leave_out"] == "every_batch"
    )
    assert sst2["model_path"].endswith("bert-base-uncased") and sst2["ft_lr"] == 1e-6
    assert runs[("03_image_classification", "cifar10")]["model_name"] == "resnet9"


def test_counts_follow_the_papers_scale():
    runs = {(r.notebook, r.dataset): r for r in paper_runs()}
    r = runs[("01_tabular_regression", "concrete")]
    c = costing.run_cost(r.notebook, r.dataset, r.parameters)
    # SGD and Adam gold standards: 100 seeds x 101 runs x 500 epochs x 8 steps;
    # LOO re-training: 101 runs x 1000 epochs x 8 steps
    assert c.ft_runs == 2 * 100 * 101 + 101
    assert c.ft_steps == 2 * 100 * 101 * 500 * 8 + 101 * 1000 * 8
    assert c.train_steps == 1000 * 8
    r = runs[("04_text_classification", "sst2")]
    c = costing.run_cost(r.notebook, r.dataset, r.parameters)
    assert (
        c.ft_runs == 100 * 51 and c.ft_steps == 100 * 51 * 1053
    )  # one epoch = 1053 steps at batch 64
    assert c.samples == pytest.approx(
        5100 * (1053 * 64 + 211 * 100 / 3)
    )  # 211 evaluations of 100 queries
    r = runs[("02_tabular_classification", "folktables")]
    c = costing.run_cost(r.notebook, r.dataset, r.parameters)
    assert c.ft_steps == 2 * 100 * 101 * 25 * math.ceil(30085 / 128)


def test_every_paper_run_is_costed_without_data_files():
    costs = costing.estimate(paper_runs(), device="cpu", probe=False)
    table = costing.format_costs(costs, "cpu")
    for nb, ds in PANELS:
        assert f"{nb}__{ds}" in table
    assert all(c.ft_runs > 0 for c in costs if not c.name.startswith("05"))
    with pytest.raises(ValueError, match="dataset='nowhere'.*allowed values"):
        costing.run_cost("01_tabular_regression", "nowhere", {})


def test_dry_run_cli_probes_this_device(capsys):
    rc = reproduce.main(
        [
            "--profile",
            "paper",
            "--dry-run",
            "--only",
            "01_tabular_regression:concrete",
            "--set",
            "device=cpu",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    row = next(
        line for line in out.splitlines() if line.startswith("01_tabular_regression__concrete ")
    )
    assert "20,301" in row and "81,608,000" in row
    assert row.split()[-1] in ("s", "min", "h", "days") and float(row.split()[-2]) > 0
    assert "dry run on cpu" in out
    assert (
        reproduce.main(
            [
                "--profile",
                "paper",
                "--dry-run",
                "--only",
                "01_tabular_regression:concrete",
                "--set",
                "device=tpu",
            ]
        )
        == 2
    )
