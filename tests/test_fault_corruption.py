"""Fault class: corruption. An unreadable cache item gives a warning naming its path, is moved
aside (``.corrupt``) and recomputed, ending equal to a clean run; every intact item is kept."""
from __future__ import annotations

import json

import pytest
import torch

import tda_utils as tu
from tda_utils import cache as cache_mod

from .conftest import make_splits, tiny_model

KW = dict(lr=0.05, epochs=2, batch_size=8, seeds=[0, 1], left_out=[0, 4], dtype="float64")


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _empty(p):
    p.write_bytes(b"")


def _garbage(p):
    p.write_bytes(b"\x89not a torch file at all\x00" * 40)


def _wrong_shape(p):
    torch.save({"loss_full": torch.zeros(3, 3, dtype=torch.float64), "loss_loo": torch.zeros(2)}, p)


@pytest.fixture(scope="module")
def problem():
    splits = make_splits("regression")
    model = tiny_model(splits)
    clean = tu.further_train(model, splits, tu.FurtherTrainingConfig(**KW), cache_dir=None, progress=False)
    return splits, model, clean


@pytest.mark.parametrize("damage", [_truncate, _empty, _garbage, _wrong_shape])
def test_corrupt_seed_item_is_moved_aside_and_recomputed(tmp_path, problem, damage):
    splits, model, clean = problem
    cfg = tu.FurtherTrainingConfig(**KW)
    tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "further_training").iterdir()
    intact = (entry / "seed_0.pt").read_bytes()
    damage(entry / "seed_1.pt")
    with pytest.warns(cache_mod.CacheWarning, match=rf"cache item {entry / 'seed_1.pt'} is unreadable"):
        res = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert res.from_cache == 1  # seed 0 was kept and read, seed 1 recomputed
    assert torch.equal(res.loss_full, clean.loss_full) and torch.equal(res.loss_loo, clean.loss_loo)
    assert (entry / "seed_1.pt.corrupt").exists() and (entry / "seed_0.pt").read_bytes() == intact
    again = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert again.from_cache == 2 and torch.equal(again.loss_loo, clean.loss_loo)


@pytest.mark.parametrize("text", ['{"config": {"lr": 0.0', "", "\x00\xff garbage", "[1, 2]"])
def test_truncated_config_json_is_replaced_and_items_kept(tmp_path, problem, text):
    splits, model, clean = problem
    cfg = tu.FurtherTrainingConfig(**KW)
    tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "further_training").iterdir()
    good = json.loads((entry / "config.json").read_text())
    (entry / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.warns(cache_mod.CacheWarning, match=r"config.json is unreadable"):
        res = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert res.from_cache == 2  # nothing computed is lost
    assert torch.equal(res.loss_loo, clean.loss_loo)
    assert json.loads((entry / "config.json").read_text()) == good
    assert (entry / "config.json.corrupt").exists()


def test_corrupt_final_model_is_retrained(tmp_path):
    splits = make_splits("regression")
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8)
    a = tu.train_model(tu.build_model("mlp", splits, hidden=4).double(), splits, cfg, cache_dir=tmp_path,
                       progress=False)
    (entry,) = (tmp_path / "models").iterdir()
    for damage in (_truncate, _garbage):
        damage(entry / "final.pt")
        with pytest.warns(cache_mod.CacheWarning, match="final.pt is unreadable"):
            b = tu.train_model(tu.build_model("mlp", splits, hidden=4).double(), splits, cfg,
                               cache_dir=tmp_path, progress=False)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
    # a state_dict of another shape is refused too
    torch.save({"state_dict": {"0.weight": torch.zeros(1)}, "history": {}, "seconds": 0.0}, entry / "final.pt")
    with pytest.warns(cache_mod.CacheWarning, match="does not match the model's parameters"):
        tu.train_model(tu.build_model("mlp", splits, hidden=4).double(), splits, cfg, cache_dir=tmp_path,
                       progress=False)
    assert sorted(p.name for p in entry.iterdir()) == ["config.json", "final.pt", "final.pt.corrupt",
                                                       "final.pt.corrupt2", "final.pt.corrupt3"]
