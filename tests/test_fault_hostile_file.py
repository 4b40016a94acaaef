"""Fault class: hostile files. A cache item or data file whose pickle would run code is refused
with a clear error and never executed; nothing already computed is lost."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import tda_utils as tu
from tda_utils import cache as cache_mod
from tda_utils.data import image_cifar

from .conftest import make_splits, tiny_model


class _Payload:
    """Unpickling this calls os.system, which would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_cache_item_is_refused_and_never_run(tmp_path):
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0, 1], left_out=[0, 4], dtype="float64"
    )
    first = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    (entry,) = (tmp_path / "further_training").iterdir()
    marker = tmp_path / "pwned"
    torch.save({"loss_full": _Payload(marker), "loss_loo": torch.zeros(1)}, entry / "seed_1.pt")
    with pytest.raises(
        cache_mod.UnsafeCacheItemError, match=rf"{entry / 'seed_1.pt'} holds pickled objects"
    ):
        tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert not marker.exists()  # never executed
    assert (entry / "seed_1.pt").exists()  # left in place for the user to inspect
    # nothing computed is lost: seed 0 still loads
    seed0 = torch.load(entry / "seed_0.pt", weights_only=True)
    assert torch.equal(seed0["loss_loo"], first.loss_loo[:, 0])
    (entry / "seed_1.pt").unlink()
    again = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert again.from_cache == 1 and torch.equal(again.loss_loo, first.loss_loo)
    assert not marker.exists()


def test_plain_pickle_payload_is_never_run(tmp_path):
    c = cache_mod.Cache(tmp_path, "kind", "key", {"a": 1})
    c.save("good", torch.ones(3))
    marker = tmp_path / "pwned"
    with open(c.path("evil"), "wb") as f:
        pickle.dump(_Payload(marker), f)
    try:
        c.load("evil")
    except cache_mod.UnsafeCacheItemError:
        pass
    assert not marker.exists()
    assert torch.equal(c.load("good"), torch.ones(3))


def test_hostile_cifar_batch_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f)
    with pytest.raises(
        ValueError, match=rf"cannot read {folder / 'data_batch_1'}.*refused to load global"
    ):
        image_cifar.read_cifar_batches(folder, ["data_batch_1"])
    assert not marker.exists()
    # a genuine batch (numpy arrays, bytes keys, as the CIFAR files hold) still reads
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump(
            {b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 5]},
            f,
            protocol=2,
        )
    x, y = image_cifar.read_cifar_batches(folder, ["data_batch_2"])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 5]
