"""Shipped final models (tda_utils.final.shipped): used only when the recipe and the data match,
trained anew (saying why) otherwise, a damaged file is an error naming it, a checkpoint path
loads; the files shipped in the package are intact and match the cpu profile's recipes."""

from __future__ import annotations

import json

import pytest
import torch

import tda_utils as tu
from tda_utils.final import shipped
from tda_utils.run import costing

from .conftest import make_splits


def _cfg(epochs=3):
    return tu.TrainConfig(optimizer="sgd", lr=0.05, epochs=epochs, batch_size=8, seed=0)


def _initial(splits):
    return tu.build_model("mlp", splits, seed=0, hidden=8).to(torch.float64)


@pytest.fixture
def splits():
    return make_splits(n_train=24, n_test=6, d=3, seed=0)


@pytest.fixture
def shipped_dir(tmp_path, splits):
    """A shipped model of ``splits`` trained with ``_cfg()`` in tmp_path/shipped."""
    out = tmp_path / "shipped"
    model = _initial(splits)
    tu.final_model(model, splits, _cfg(), source="train", cache_dir=None, ship_to=out,
                   progress=False)
    return out


def test_a_matching_shipped_model_is_used_without_training(splits, shipped_dir, monkeypatch):
    trained = tu.train_model(_initial(splits), splits, _cfg(), cache_dir=None, progress=False)
    monkeypatch.setattr(shipped, "train_model", lambda *a, **k: pytest.fail("trained anew"))
    model = tu.final_model(_initial(splits), splits, _cfg(), shipped_dir=shipped_dir)
    assert model.fimo_final["source"] == "shipped"
    assert tu.final.describe(model).startswith("final model: shipped, trained on ")
    for (k, a), b in zip(trained.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    record = json.loads((shipped_dir / f"{splits.name}.json").read_text())
    assert record["test_metrics"] == pytest.approx(tu.evaluate(model, splits, device="cpu"))
    assert set(record["trained_on"]) >= {"cpu", "device", "torch", "threads"}


def test_a_recipe_or_data_mismatch_trains_anew_and_says_why(splits, shipped_dir):
    model = tu.final_model(_initial(splits), splits, _cfg(epochs=4), cache_dir=None,
                           progress=False, shipped_dir=shipped_dir)
    assert model.fimo_final["source"] == "trained"
    assert "train.epochs: shipped 3, this run 4" in model.fimo_final["detail"]
    other = make_splits(n_train=24, n_test=6, d=3, seed=1)  # same name, other values
    model = tu.final_model(_initial(other), other, _cfg(), cache_dir=None, progress=False,
                           shipped_dir=shipped_dir)
    assert model.fimo_final["source"] == "trained"
    assert "the data differ" in model.fimo_final["detail"]
    model = tu.final_model(_initial(splits), splits, _cfg(), cache_dir=None, progress=False,
                           shipped_dir=shipped_dir / "nowhere")
    assert "none is shipped" in tu.final.describe(model)


def test_a_damaged_shipped_file_is_an_error_naming_it(splits, shipped_dir):
    path = shipped_dir / f"{splits.name}.pt"
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(shipped.ShippedModelError, match=str(path)):
        tu.final_model(_initial(splits), splits, _cfg(), shipped_dir=shipped_dir)


def test_a_checkpoint_path_loads_and_bad_sources_are_refused(splits, tmp_path):
    trained = tu.train_model(_initial(splits), splits, _cfg(), cache_dir=None, progress=False)
    ckpt = tmp_path / "final.pt"
    torch.save({"state_dict": trained.state_dict()}, ckpt)
    model = tu.final_model(_initial(splits), splits, _cfg(), source=str(ckpt))
    assert model.fimo_final["source"] == "checkpoint"
    assert all(torch.equal(a, b) for a, b in
               zip(trained.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match=r"final_model must be one of \('shipped', 'train'\)"):
        tu.final_model(_initial(splits), splits, _cfg(), source="trained")
    with pytest.raises(ValueError, match="ship_to needs final_model='train'"):
        tu.final_model(_initial(splits), splits, _cfg(), ship_to=tmp_path)


CPU_RUNS = {  # notebook, dataset -> the cpu profile's overrides of the notebook's defaults
    ("01_tabular_regression", "concrete"): {},
    ("02_tabular_classification", "credit"): {},
}


def test_the_package_ships_intact_final_models():
    records = sorted(shipped.SHIPPED_DIR.glob("*.json"))
    names = {p.stem for p in records}
    assert {"concrete", "diabetes", "credit", "cps1988", "mnist", "finefood", "energy"} <= names
    for path in records:
        record = json.loads(path.read_text())
        pt = shipped.SHIPPED_DIR / record["file"]
        assert shipped._sha256(pt) == record["sha256"], pt
        state = torch.load(pt, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        assert record["recipe"]["dataset"] == path.stem


@pytest.mark.parametrize("notebook, dataset", sorted(CPU_RUNS))
def test_the_cpu_profile_finds_its_shipped_final_model(notebook, dataset, monkeypatch):
    """The recipe a notebook builds at its defaults matches the shipped record (no training)."""
    p = {**costing.notebook_defaults(notebook), **CPU_RUNS[(notebook, dataset)]}
    splits = tu.pipeline.load_data(dataset)
    model = tu.build_model(p["model_name"], splits, seed=p["model_seed"])
    cfg = tu.TrainConfig(optimizer=p["train_optimizer"], lr=p["train_lr"],
                         epochs=p["train_epochs"], batch_size=p["batch_size"],
                         seed=p["model_seed"])
    monkeypatch.setattr(shipped, "train_model", lambda *a, **k: pytest.fail("trained anew"))
    final = tu.final_model(model, splits, cfg)
    assert final.fimo_final["source"] == "shipped"
    record = final.fimo_final["record"]
    assert tu.evaluate(final, splits, device="cpu") == pytest.approx(record["test_metrics"])
