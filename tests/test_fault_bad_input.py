"""Bad input: a ValueError naming the parameter and the allowed values."""

from __future__ import annotations

import pytest

import tda_utils as tu
from tda_utils.run import reproduce

from .conftest import further_train_uncached, make_splits, tiny_model


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: tu.load_dataset("mnist_typo"),
            r"dataset='mnist_typo' is not valid; allowed values: .*'concrete'",
        ),
        (
            lambda: tu.build_model("transformer9", make_splits()),
            r"model='transformer9' is not valid; allowed values: .*'mlp'",
        ),
        (
            lambda: tu.TrainConfig(optimizer="rmsprop"),
            r"optimizer='rmsprop' is not valid; allowed values: 'sgd', 'adam', 'adamw'",
        ),
        (
            lambda: tu.FurtherTrainingConfig(leave_out="shuffle"),
            r"leave_out='shuffle' is not valid; allowed values: 'permutation', 'every_batch'",
        ),
        (
            lambda: tu.FurtherTrainingConfig(engine="gpu"),
            r"engine='gpu' is not valid; allowed values: 'vectorized', 'sequential'",
        ),
        (lambda: tu.FurtherTrainingConfig(optimizer="lbfgs"), r"optimizer='lbfgs' is not valid"),
        (lambda: tu.TrainConfig(lr=0), r"lr=0 must be > 0"),
        (lambda: tu.TrainConfig(lr=-1e-3), r"lr=-0.001 must be > 0"),
        (lambda: tu.FurtherTrainingConfig(lr=-1.0), r"lr=-1.0 must be > 0"),
        (lambda: tu.TrainConfig(batch_size=0), r"batch_size=0 must be > 0"),
        (lambda: tu.FurtherTrainingConfig(batch_size=-3), r"batch_size=-3 must be > 0"),
        (lambda: tu.TrainConfig(epochs=0), r"epochs=0 must be > 0"),
        (lambda: tu.FurtherTrainingConfig(epochs=-1), r"epochs=-1 must be > 0"),
        (lambda: tu.FurtherTrainingConfig(epochs=2.5), r"epochs=2.5 must be an integer"),
        (lambda: tu.FurtherTrainingConfig(seeds=[]), r"seeds is empty"),
        (lambda: tu.FurtherTrainingConfig(seeds=[1, 1]), r"seeds has duplicates"),
        (lambda: tu.FurtherTrainingConfig(left_out=[3, 3]), r"left_out has duplicated indices"),
        (lambda: tu.FurtherTrainingConfig(eval_steps=[5, 2]), r"eval_steps=.* strictly increasing"),
        (lambda: tu.FurtherTrainingConfig(lr=float("nan")), r"lr=nan must be a finite number"),
        (lambda: tu.FurtherTrainingConfig(seeds=5), r"seeds=5 must be a list of integers"),
        (lambda: tu.FurtherTrainingConfig(left_out=[1.9]), r"left_out must hold integers; \[1.9\]"),
    ],
)
def test_config_and_registry_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_index_errors_in_further_training_and_methods():
    splits = make_splits()
    model = tiny_model(splits, train_epochs=1)
    cfg = tu.FurtherTrainingConfig(epochs=1, seeds=[0], left_out=[0, 99], dtype="float64")
    with pytest.raises(
        ValueError, match=r"left_out has indices out of range \[99\]; allowed range is \[0, 23\)"
    ):
        tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
    cfg = tu.FurtherTrainingConfig(epochs=1, seeds=[0], left_out=[0, 1], dtype="float64")
    with pytest.raises(ValueError, match=r"query_indices has duplicated indices \[2\]"):
        tu.further_train(model, splits, cfg, query_indices=[2, 2], cache_dir=None, progress=False)
    with pytest.raises(ValueError, match=r"query_indices has indices out of range \[-1\]"):
        tu.further_train(model, splits, cfg, query_indices=[-1], cache_dir=None, progress=False)
    with pytest.raises(
        ValueError, match=r"method='gradient' is not valid; allowed values: .*'grad_dot'"
    ):
        tu.attribute("gradient", model, splits)
    with pytest.raises(ValueError, match=r"train_indices has indices out of range \[23\]"):
        tu.attribute("grad_dot", model, splits, train_indices=[0, 23])
    with pytest.raises(ValueError, match=r"train_indices has duplicated indices \[1\]"):
        tu.attribute("grad_dot", model, splits, train_indices=[1, 1])
    with pytest.raises(ValueError, match=r"eval_steps reaches 99"):
        further_train_uncached(model, splits, epochs=1, seeds=[0], left_out=[0], eval_steps=[99])


def test_runner_rejects_unknown_profile_notebook_dataset():
    manifest = reproduce.load_manifest()
    with pytest.raises(
        ValueError, match=r"profile='fast' is not valid; allowed values: cpu, local, paper, smoke"
    ):
        reproduce.plan(manifest, "fast")
    with pytest.raises(
        ValueError,
        match=r"notebook '07_audio' is not in profile 'cpu'; "
        r"allowed values: 00_unified_view_tutorial, 01_tabular_regression",
    ):
        reproduce.plan(manifest, "cpu", ["07_audio"])
    with pytest.raises(
        ValueError,
        match=r"dataset 'iris' is not run by 01_tabular_regression "
        r".*allowed values: concrete, diabetes",
    ):
        reproduce.plan(manifest, "cpu", ["01_tabular_regression:iris"])
    assert reproduce.main(["--profile", "fast"]) == 2
    assert reproduce.main(["--set", "n_seed=3", "--list"]) == 2
