"""Fault class: bad numbers. Non-finite or out-of-range constants, fractional seeds and indices,
NaN / inf in a dataset and a diverging run each stop with an error naming the culprit; nothing
already computed is lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import tda_utils as tu
from tda_utils.data.registry import Splits, regression_splits
from tda_utils.final.training import DivergenceError

from .conftest import make_splits, tiny_model

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: tu.TrainConfig(lr=NAN), r"lr=nan must be a finite number"),
        (lambda: tu.TrainConfig(lr=INF), r"lr=inf must be a finite number"),
        (lambda: tu.FurtherTrainingConfig(lr=NAN), r"lr=nan must be a finite number"),
        (lambda: tu.FurtherTrainingConfig(lr=INF), r"lr=inf must be a finite number"),
        (
            lambda: tu.FurtherTrainingConfig(weight_decay=NAN),
            r"weight_decay=nan must be a finite number",
        ),
        (lambda: tu.TrainConfig(weight_decay=-INF), r"weight_decay=-inf must be a finite number"),
        (lambda: tu.FurtherTrainingConfig(grad_clip=NAN), r"grad_clip=nan must be a finite number"),
        (lambda: tu.FurtherTrainingConfig(betas=(2, -1)), r"betas\[0\]=2 must be in \[0, 1\)"),
        (lambda: tu.FurtherTrainingConfig(betas=(0.9, -1)), r"betas\[1\]=-1 must be >= 0"),
        (lambda: tu.FurtherTrainingConfig(betas=(0.9, 1.0)), r"betas\[1\]=1.0 must be in \[0, 1\)"),
        (lambda: tu.FurtherTrainingConfig(betas=(0.9,)), r"betas=\(0.9,\) must be two numbers"),
        (lambda: tu.FurtherTrainingConfig(eps=-1), r"eps=-1 must be > 0"),
        (lambda: tu.FurtherTrainingConfig(eps=0), r"eps=0 must be > 0"),
        (
            lambda: tu.FurtherTrainingConfig(memory_budget_mb=NAN),
            r"memory_budget_mb=nan must be a finite",
        ),
        (
            lambda: tu.FurtherTrainingConfig(seeds=5),
            r"seeds=5 must be a list of integers, not a single number; "
            r"e.g. seeds=range\(5\)",
        ),
        (
            lambda: tu.FurtherTrainingConfig(seeds=[1.7]),
            r"seeds must hold integers; \[1.7\] are not",
        ),
        (
            lambda: tu.FurtherTrainingConfig(seeds=[0, 1.0]),
            r"seeds must hold integers; \[1.0\] are not",
        ),
        (lambda: tu.FurtherTrainingConfig(seeds="012"), r"seeds='012' must be a list of integers"),
        (
            lambda: tu.FurtherTrainingConfig(left_out=[1.9]),
            r"left_out must hold integers; \[1.9\] are not",
        ),
        (
            lambda: tu.FurtherTrainingConfig(left_out=[True, 2]),
            r"left_out must hold integers; \[True\]",
        ),
        (lambda: tu.FurtherTrainingConfig(eval_steps=[0, 2.5]), r"eval_steps must hold integers"),
        (lambda: tu.TrainConfig(seed=1.5), r"seed=1.5 must be an integer"),
    ],
)
def test_bad_constants_are_refused_naming_the_parameter(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_integer_types_and_ranges_are_accepted():
    cfg = tu.FurtherTrainingConfig(
        seeds=range(3), left_out=np.array([4, 1], dtype=np.int32), eval_steps=torch.tensor([0, 2])
    )
    assert cfg.seeds == (0, 1, 2) and cfg.left_out == (4, 1) and cfg.eval_steps == (0, 2)
    assert all(type(v) is int for v in cfg.seeds + cfg.left_out + cfg.eval_steps)
    assert tu.FurtherTrainingConfig(seeds=[np.int64(3), torch.tensor(5)]).seeds == (3, 5)
    assert tu.TrainConfig(seed=np.int16(2)).seed == 2


def test_fractional_query_indices_are_refused():
    splits = make_splits()
    model = tiny_model(splits, train_epochs=1)
    cfg = tu.FurtherTrainingConfig(epochs=1, seeds=[0], left_out=[0, 1], dtype="float64")
    with pytest.raises(ValueError, match=r"query_indices must hold integers; \[0.5\]"):
        tu.further_train(model, splits, cfg, query_indices=[0.5, 1], cache_dir=None, progress=False)


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_data_names_dataset_and_column(value):
    x = torch.randn(6, 3, dtype=torch.float64)
    x[4, 2] = value
    y = torch.randn(6, 1, dtype=torch.float64)
    with pytest.raises(
        ValueError,
        match=r"dataset 'toy' has 1 non-finite values .* train split, input tensor 0, "
        r"columns \['c'\] \(rows \[4\]\)",
    ):
        Splits(
            "toy",
            TensorDataset(x, y),
            TensorDataset(x[:2], y[:2]),
            "regression",
            {"features": ["a", "b", "c"], "target": "y"},
        )
    y_bad = y.clone()
    y_bad[1, 0] = value
    with pytest.raises(ValueError, match=r"test split, target, columns \['y'\]"):
        Splits(
            "toy",
            TensorDataset(x[:2], y[:2]),
            TensorDataset(x[:2], y_bad[:2]),
            "regression",
            {"target": "y"},
        )
    table = np.ones((20, 3))
    table[7, 1] = value
    with pytest.raises(
        ValueError, match=r"dataset 'tbl' has 1 non-finite values .* columns \['b'\] \(rows \[7\]\)"
    ):
        regression_splits("tbl", table, {"features": ["a", "b"], "target": "t"})


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_diverging_further_training_names_run_epoch_and_step(tmp_path, engine):
    splits = make_splits("regression")
    model = tiny_model(splits)
    ok = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    kept = tu.further_train(model, splits, ok, cache_dir=tmp_path, progress=False)
    bad = tu.FurtherTrainingConfig(
        lr=1e6, epochs=3, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float32", engine=engine
    )
    with pytest.raises(
        DivergenceError,
        match=r"further training the full-data run \(seed 0, dataset 'tiny'\) "
        r"diverged: .* at epoch 1, step \d \(1-based, within the epoch\); "
        r"try a smaller learning rate than lr=1e\+06 \(e.g. lr=100000\)",
    ):
        tu.further_train(model, splits, bad, cache_dir=tmp_path, progress=False)
    assert (
        tu.further_train(model, splits, ok, cache_dir=tmp_path, progress=False).from_cache == 1
    )  # nothing lost
    assert torch.equal(
        kept.loss_loo,
        tu.further_train(model, splits, ok, cache_dir=tmp_path, progress=False).loss_loo,
    )


def test_diverging_final_training_names_dataset_epoch_step():
    splits = make_splits("regression")
    model = tu.build_model("mlp", splits, hidden=8).double()
    cfg = tu.TrainConfig(lr=1e8, epochs=5, batch_size=8, seed=3)
    with pytest.raises(
        DivergenceError,
        match=r"training the final model on dataset 'tiny' \(seed 3\) diverged: "
        r".* at epoch \d, step \d .*lr=1e\+08",
    ):
        tu.train_model(model, splits, cfg, cache_dir=None, progress=False)
