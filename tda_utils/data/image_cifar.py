"""CIFAR-10 from its python batches: ``cifar10`` (registered in ``data.DATASETS``).

Public: ``load_cifar10``, ``read_cifar_batches``. Only numpy arrays and plain data are
unpickled from the batch files (a hostile pickle is refused, never run); every read error names
the path. The shared image helpers (normalisation, subsampling, splits) live in ``data/image.py``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np

from .registry import Splits, register_dataset
from .image import (
    CIFAR10_DIRS,
    CIFAR_FOLDER,
    CIFAR_TEST_FILES,
    CIFAR_TRAIN_FILES,
    _make_splits,
    balanced_subsample,
)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 (python batches)
# ----------------------------------------------------------------------------------------------
def read_cifar_batches(
    folder: str | os.PathLike, files: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python batches (pickled dicts with "data" (n, 3072) uint8 and "labels").

    ``folder``: the ``cifar-10-batches-py`` directory. Returns images (n, 3, 32, 32) uint8 and
    labels (n,) int64, concatenated in the order of ``files``. No checksum is verified.
    """
    xs, ys = [], []
    for path in (Path(folder) / name for name in files):
        entry = _safe_unpickle(path)
        try:
            entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
            xs.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(entry["labels"], dtype=np.int64))
        except (AttributeError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path} is not a CIFAR-10 python batch ({err!r})") from err
        if len(xs[-1]) != len(ys[-1]):  # a batch cut short
            raise ValueError(f"{path}: {len(xs[-1])} images but {len(ys[-1])} labels")
    return np.concatenate(xs), np.concatenate(ys)


class _PlainUnpickler(pickle.Unpickler):
    """Only plain data and numpy arrays (what CIFAR batches hold); other globals are refused."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")} | {
        (f"numpy{c}.multiarray", n) for c in (".core", "._core") for n in ("_reconstruct", "scalar")
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to load global {module}.{name} (only numpy arrays and plain data are allowed)"
        )


def _safe_unpickle(path: Path):  # read errors name the path; hostile pickles never run
    try:
        with open(path, "rb") as f:
            return _PlainUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as err:
        raise ValueError(
            f"cannot read {path} ({type(err).__name__}: {err}); is it an intact "
            "CIFAR-10 python batch?"
        ) from err


def _read_cifar_meta(folder: Path) -> list[str]:
    names = _safe_unpickle(folder / "batches.meta")["label_names"]
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _find_cifar_root(root: str | os.PathLike | None, download: bool) -> Path:
    """The folder that contains ``cifar-10-batches-py`` (``root`` may also be that folder)."""
    help_ = (
        "Get the data by downloading and unpacking "
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (it unpacks to "
        f"{CIFAR_FOLDER}/), then pass root=<folder holding {CIFAR_FOLDER}> to "
        "load_dataset('cifar10', root=...) (notebook parameter data_path); with internet "
        "access, download=True fetches it into root."
    )
    needed = CIFAR_TRAIN_FILES + CIFAR_TEST_FILES + ("batches.meta",)

    def parent_of_batches(p: Path) -> Path | None:
        for cand in (p / CIFAR_FOLDER, p):
            if cand.name == CIFAR_FOLDER and all((cand / f).is_file() for f in needed):
                return cand.parent
        return None

    if root is not None:
        path = Path(root).expanduser()
        if path.name == CIFAR_FOLDER:
            path = path.parent
        if download:
            return path
        found = parent_of_batches(path)
        if found is not None:
            return found
        batches = path / CIFAR_FOLDER
        what = (
            "does not exist"
            if not path.is_dir()
            else f"has no complete {CIFAR_FOLDER}/ (missing: "
            f"{', '.join(f for f in needed if not (batches / f).is_file())})"
        )
        raise FileNotFoundError(f"CIFAR-10: root={str(root)!r} {what}. {help_}")
    if download:
        raise ValueError("download=True needs root=<folder to download CIFAR-10 into>")
    for p in CIFAR10_DIRS:
        found = parent_of_batches(Path(p).expanduser())
        if found is not None:
            return found
    raise FileNotFoundError(
        f"CIFAR-10 python batches ({CIFAR_FOLDER}/) not found in any of "
        f"{', '.join(CIFAR10_DIRS)} (root=None). {help_}"
    )


@register_dataset("cifar10")
def load_cifar10(
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
    n_train: int | None = None,
    n_test: int | None = None,
    normalize: str = "train",
    n_left_out: int = 100,
    left_out_seed: int = 0,
) -> Splits:
    """CIFAR-10 from the python batches directory, as (n, 3, 32, 32); official 50,000 / 10,000.

    ``root``: the folder holding ``cifar-10-batches-py`` (or that folder itself); None searches
    ``CIFAR10_DIRS``. ``download=True`` lets torchvision fetch the archive into ``root`` (internet
    needed). ``verify=True`` (default) reads through ``torchvision.datasets.CIFAR10``, which checks
    the md5 of every batch file; ``verify=False`` reads the same pickles with
    ``read_cifar_batches`` and checks nothing (for re-packed or test copies). ``n_train`` /
    ``n_test``: class-balanced subsample drawn with ``seed`` (test: ``seed + 1``); None = all.
    """
    if download and not verify:
        raise ValueError("download=True requires verify=True (torchvision checks the download)")
    base = _find_cifar_root(root, download)
    folder = base / CIFAR_FOLDER
    if verify:
        from torchvision.datasets import CIFAR10

        try:
            parts = {
                split: CIFAR10(str(base), train=split == "train", download=download)
                for split in ("train", "test")
            }
        except RuntimeError as err:
            raise RuntimeError(
                f"CIFAR-10 in {folder}: torchvision's md5 check failed ({err}). "
                "These are not the official batch files: re-download them, or pass "
                "verify=False to read them without checksums."
            ) from err
        x_tr = parts["train"].data.transpose(0, 3, 1, 2)  # torchvision stores (n, H, W, C)
        y_tr = np.asarray(parts["train"].targets, dtype=np.int64)
        x_te = parts["test"].data.transpose(0, 3, 1, 2)
        y_te = np.asarray(parts["test"].targets, dtype=np.int64)
        classes = list(parts["train"].classes)
        reader = (
            f"torchvision.datasets.CIFAR10 (torchvision {version('torchvision')}, md5 verified)"
        )
    else:
        x_tr, y_tr = read_cifar_batches(folder, CIFAR_TRAIN_FILES)
        x_te, y_te = read_cifar_batches(folder, CIFAR_TEST_FILES)
        classes = _read_cifar_meta(folder)
        reader = "tda_utils.data.image_cifar.read_cifar_batches (no checksum verified)"
    sub_tr = balanced_subsample(y_tr, n_train, seed, "n_train")
    sub_te = balanced_subsample(y_te, n_test, seed + 1, "n_test")
    meta = {
        "source": f"CIFAR-10 python batches in {folder}",
        "version": "cifar-10-python (Krizhevsky 2009)",
        "reader": reader,
        "rows": {"train": int(len(y_tr)), "test": int(len(y_te))},
        "split": "official data_batch_1..5 / test_batch",
        "subsample": {
            "n_train": n_train,
            "n_test": n_test,
            "seed": seed,
            "rule": "balanced_subsample(labels, n, seed) (test: seed + 1); None = all",
        },
        "class_names": classes,
        "substitute_for": None,
    }
    return _make_splits(
        "cifar10",
        x_tr[sub_tr],
        y_tr[sub_tr],
        x_te[sub_te],
        y_te[sub_te],
        normalize,
        "cifar10",
        n_left_out,
        left_out_seed,
        meta,
    )
