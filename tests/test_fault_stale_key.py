"""Fault class: stale keys. A cached result is returned only for the same code, model and
config: keys include ``SCHEMA_VERSION`` and the model's class, structure and code; a config that
only spells a default differently is the same entry. Old entries stay on disk (nothing lost)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tda_utils as tu
from tda_utils import cache as cache_mod

from .conftest import make_splits, tiny_model

# The numbers the engines give on a fixed float64 problem, recorded for SCHEMA_VERSION below.
# THE RULE: when a change to an engine, a method or training alters cached numbers, this test
# fails; then bump cache.SCHEMA_VERSION (so old cache entries are never returned for the new
# code) and record the new numbers here under the new version.
RECORDED_FOR_SCHEMA = 4
RECORDED = {  # (optimizer, lr): (sum loss_full, sum loss_loo, sum |tau| at the last evaluation)
    ("sgd", 0.05): (1.937317124765622, 5.756700650991439, 0.03837584890241902),
    ("adam", 0.01): (1.6222445360199451, 4.757540968295981, 0.15875287232977173),
}
FIRST_WEIGHTS = [0.320191199183728, 0.333523873175614, -0.485492590004341]


@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
def test_schema_version_rule_numbers_unchanged(engine):
    assert cache_mod.SCHEMA_VERSION == RECORDED_FOR_SCHEMA, (
        "SCHEMA_VERSION was bumped: record the engines' new numbers in RECORDED"
    )
    splits = make_splits("regression")
    model = tiny_model(splits)
    w = model.state_dict()["0.weight"].flatten()[:3].tolist()
    assert w == pytest.approx(FIRST_WEIGHTS, rel=1e-12, abs=1e-14), (
        "train_model changed its numbers: bump SCHEMA_VERSION"
    )
    for (opt, lr), want in RECORDED.items():
        cfg = tu.FurtherTrainingConfig(
            optimizer=opt,
            lr=lr,
            epochs=2,
            batch_size=8,
            seeds=[0, 1],
            left_out=[0, 4, 9],
            dtype="float64",
            engine=engine,
        )
        r = tu.further_train(model, splits, cfg, cache_dir=None, progress=False)
        got = (
            float(r.loss_full.sum()),
            float(r.loss_loo.sum()),
            float(r.attribution()[-1].abs().sum()),
        )
        assert got == pytest.approx(want, rel=1e-10), (
            f"further_train ({engine}, {opt}) changed its numbers: "
            "bump SCHEMA_VERSION and record them"
        )


def test_schema_version_is_part_of_every_key(tmp_path, monkeypatch):
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(cache_mod, "SCHEMA_VERSION", cache_mod.SCHEMA_VERSION + 1)
    bumped = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert bumped.from_cache == 0  # new code never sees the old entry ...
    assert len(list((tmp_path / "further_training").iterdir())) == 2  # ... which is still on disk
    monkeypatch.undo()
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1


def _copy_weights(dst: nn.Module, src: nn.Module) -> nn.Module:
    dst.load_state_dict(src.state_dict())
    return dst.double()


def test_relu_and_tanh_models_with_equal_parameters_do_not_share_entries(tmp_path):
    splits = make_splits("regression")
    relu = tiny_model(splits, hidden=8)
    tanh = _copy_weights(
        nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1)), relu
    )
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    a = tu.further_train(relu, splits, cfg, cache_dir=tmp_path, progress=False)
    b = tu.further_train(tanh, splits, cfg, cache_dir=tmp_path, progress=False)
    assert b.from_cache == 0 and not torch.equal(a.loss_full, b.loss_full)
    fresh = tu.further_train(tanh, splits, cfg, cache_dir=None, progress=False)
    assert torch.equal(b.loss_loo, fresh.loss_loo)
    assert tu.further_train(relu, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1
    # the final-model cache too: same initial parameters, other activation -> another entry
    tcfg = tu.TrainConfig(lr=0.1, epochs=2, batch_size=8)
    init = tu.build_model("mlp", splits, hidden=4).double()
    tu.train_model(init, splits, tcfg, cache_dir=tmp_path, progress=False)
    init = tu.build_model("mlp", splits, hidden=4).double()
    other = _copy_weights(
        nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1)), init
    )
    tu.train_model(other, splits, tcfg, cache_dir=tmp_path, progress=False)
    assert len(list((tmp_path / "models").iterdir())) == 2


def test_custom_forward_code_is_part_of_the_key():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return 2 * self.lin(x)

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 1)

        def forward(self, x):
            return self.lin(x)

    a, b = cache_mod.model_fingerprint(Scaled()), cache_mod.model_fingerprint(Plain())
    assert a["code"] != b["code"] and a["class"] != b["class"]


def test_spelling_a_default_is_the_same_entry(tmp_path):
    splits = make_splits("regression")
    cfg = tu.TrainConfig(lr=0.1, epochs=2, batch_size=8)
    implicit = tu.build_model("mlp", splits).double()
    tu.train_model(implicit, splits, cfg, cache_dir=tmp_path, progress=False)
    explicit = tu.build_model(
        "mlp", splits, hidden=128, depth=2
    ).double()  # the defaults, spelled out
    tu.train_model(
        explicit, splits, cfg, cache_dir=tmp_path, progress=False
    )  # no "another config" error
    assert len(list((tmp_path / "models").iterdir())) == 1
    ft = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    tu.further_train(implicit, splits, ft, cache_dir=tmp_path, progress=False)
    assert (
        tu.further_train(explicit, splits, ft, cache_dir=tmp_path, progress=False).from_cache == 1
    )
    # a genuinely different stored config under the same key still raises
    cache_mod.Cache(tmp_path, "other", "x", {"model": {"name": "mlp", "options": {}}})
    cache_mod.Cache(tmp_path, "other", "x", {"model": {"name": "mlp", "options": {"hidden": 128}}})
    with pytest.raises(RuntimeError, match="another config"):
        cache_mod.Cache(
            tmp_path, "other", "x", {"model": {"name": "mlp", "options": {"hidden": 64}}}
        )
