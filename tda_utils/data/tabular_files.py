"""Loaders of the paper's original tabular datasets from local files: ``energy``, ``heloc``,
``folktables`` (registered with ``tda_utils.data.register_dataset``; see ``data/tabular.py`` for
the table of all tabular datasets and the shared preprocessing).

Public: ``load_energy``, ``load_heloc``, ``load_folktables``, ``read_energy_table``,
``ENERGY_ROWS``, ``HELOC_ROWS``.

Every read error names the path. Each loader checks the table against what it documents (Energy:
768 rows of 8 features + target Y1; HELOC: 10,459 rows of 23 features + label); a file with
another row count is refused unless ``expected_rows=None`` (then a warning says that the paper's
split and left-out set do not apply). HELOC and Folktables use the paper's own left-out sets
(``data.published_left_out``) when their training split has the paper's size.
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import check_choice, check_positive
from .registry import (
    Splits,
    package_version,
    register_dataset,
    regression_splits,
    use_published_left_out,
)
from .tabular import ONE_HOT_FITS, _seeded_left_out_meta, classification_splits

ENERGY_ROWS = 768
HELOC_ROWS = 10459
ENERGY_COLUMNS = [f"X{i}" for i in range(1, 9)] + ["Y1", "Y2"]
ENERGY_HELP = (
    'Get it from the UCI Machine Learning Repository, dataset 242 "Energy efficiency" '
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


def _read_error(dataset: str, path: Path, err: BaseException, help_text: str = "") -> ValueError:
    return ValueError(
        f"dataset {dataset!r}: cannot read path={str(path)!r} ({type(err).__name__}: "
        f"{str(err).strip()[:200]}); is it the right file, complete and not corrupt? "
        f"{help_text}".rstrip()
    )


def _sniff_text(path: Path) -> tuple[str, bool]:
    """Separator (regex or char) and whether the first non-blank line is a header."""
    with open(path, encoding="utf-8-sig") as f:
        first = next((line for line in f if line.strip()), "")
    if not first:
        raise ValueError(f"path={str(path)!r} is empty")
    if "\x00" in first:
        raise ValueError("binary content (NUL bytes), not a text table")
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
    A row with a missing or non-numeric value (a file cut short mid-row) raises ``ValueError``
    naming the path and the row. Returns the table and 0 (rows dropped, kept for callers).
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            df, has_header = pd.read_excel(path), True
        else:
            sep, has_header = _sniff_text(path)
            df = pd.read_csv(path, sep=sep, header=0 if has_header else None, engine="python")
    except (
        OSError,
        ValueError,
        UnicodeDecodeError,
        zipfile.BadZipFile,
        KeyError,
        EOFError,
        pd.errors.ParserError,
    ) as err:
        raise _read_error("energy", path, err, ENERGY_HELP) from err
    if has_header:
        df.columns = [str(c).strip().upper() for c in df.columns]
        missing = [c for c in ENERGY_COLUMNS[:9] if c not in df.columns]
        if missing:
            raise ValueError(
                f"path={str(path)!r}: columns {missing} not found (found "
                f"{list(df.columns)}); expected X1..X8, Y1[, Y2]"
            )
        df = df[[c for c in ENERGY_COLUMNS if c in df.columns]]
    else:
        df = df.dropna(axis=1, how="all")
        if df.shape[1] not in (9, 10):
            raise ValueError(
                f"path={str(path)!r}: a headerless file needs 9 (X1..X8, Y1) or 10 "
                f"(X1..X8, Y1, Y2) columns, found {df.shape[1]}"
            )
        df.columns = ENERGY_COLUMNS[: df.shape[1]]
    df = df.dropna(how="all").reset_index(drop=True)
    numeric = df.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy() | ~np.isfinite(numeric.to_numpy(dtype=np.float64))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"path={str(path)!r}: data row {row + 1} has a missing, non-numeric or "
            f"non-finite value in column {df.columns[col]} "
            f"({str(df.iat[row, col])!r}); "
            f"{int(bad.any(axis=1).sum())} such rows (a file cut short?)"
        )
    return numeric, 0


def _check_rows(dataset: str, path: Path, n: int, expected: int | None) -> None:
    if expected is None:
        return
    check_positive("expected_rows", expected, integer=True)
    if n != expected:
        raise ValueError(
            f"dataset {dataset!r}: path={str(path)!r} has {n} data rows, the "
            f"published file has {expected} (cut short or another file?); pass "
            "expected_rows=None to load it anyway (the paper's split and left-out "
            "set then do not apply)"
        )


@register_dataset("energy")
def load_energy(
    seed: int = 0, path: str | os.PathLike | None = None, expected_rows: int | None = ENERGY_ROWS
) -> Splits:
    """UCI Energy efficiency (ENB2012; 768 rows, 8 features, target Y1 = heating load).

    ``path``: the official ENB2012_data.xlsx, a .csv with columns X1..X8, Y1, Y2, or a headerless
    tab-separated 9-column file (X1..X8, Y1); see ``read_energy_table``. Y2 (cooling load) is
    dropped. ``expected_rows``: the row count the file must have (default 768; None accepts any,
    with a warning). Paper preprocessing: split first with ``train_test_split(test_size=0.1,
    random_state=0)`` (691 / 77), then standardise all columns, target included, with the
    training statistics. Default left-out: the paper's ``range(0, 700, 7)`` with the last index
    replaced by 690 (for a table with fewer than 691 training rows, 100 indices drawn with seed 0
    instead, with a warning; ``meta["default_left_out_rule"]`` says which). ``seed`` is unused.
    """
    p = _resolve_file(path, "energy", ENERGY_HELP)
    df, n_dropped = read_energy_table(p)
    _check_rows("energy", p, len(df), expected_rows)
    meta = {
        "source": "UCI Machine Learning Repository, dataset 242 'Energy efficiency' (ENB2012; "
        "Tsanas & Xifara 2012)",
        **_file_provenance(p),
        "rows": len(df) + n_dropped,
        "rows_dropped": n_dropped,
        "features": ENERGY_COLUMNS[:8],
        "target": "Y1 (heating load)",
        "dropped_columns": ["Y2"] if "Y2" in df.columns else [],
        "paper_dataset": "energy",
        "substitute_for": None,
    }
    splits = regression_splits("energy", df[ENERGY_COLUMNS[:9]].to_numpy(), meta)
    paper = list(range(0, 700, 7))
    paper[-1] = 690
    if max(paper) < splits.n_train:
        splits.meta.update(
            default_left_out=paper,
            default_left_out_rule="paper: range(0, 700, 7), last index -> 690",
        )
    else:
        fallback = _seeded_left_out_meta(splits.n_train)
        warnings.warn(
            f"dataset 'energy': path={str(p)!r} has {len(df)} rows, too few for the "
            f"paper's left-out set; using {fallback['default_left_out_rule']}",
            UserWarning,
            stacklevel=2,
        )
        splits.meta.update(fallback)
    return splits


@register_dataset("heloc")
def load_heloc(
    seed: int = 0,
    path: str | os.PathLike | None = None,
    positive_label: str = "Bad",
    expected_rows: int | None = HELOC_ROWS,
) -> Splits:
    """FICO HELOC (heloc_dataset_v1.csv: 10,459 rows, 23 features, label RiskPerformance).

    ``path``: the CSV. Rows whose features are all -9 (no credit record) are dropped (588 in the
    real file, leaving 9,871). Split first, in the published row order, with
    ``train_test_split(test_size=0.1, random_state=0)`` (8,883 / 988); the remaining special
    values -7, -8, -9 are set missing and imputed with the training split's column mean (of the
    non-special values), then every feature is standardised with training statistics
    (``classification_splits``). Label: ``positive_label`` (default "Bad") -> 1, the other -> 0.
    ``expected_rows``: the row count the file must have (default 10,459, with 23 features; None
    accepts any). Default left-out: the paper's own 100 indices (``data.published_left_out
    ("heloc")``) when the training split has the paper's 8,883 rows, else (with a warning) 100
    training indices drawn with ``np.random.default_rng(0)``. ``seed`` is unused.
    """
    check_choice("positive_label", positive_label, ("Bad", "Good"))
    p = _resolve_file(path, "heloc", HELOC_HELP)
    try:
        raw = pd.read_csv(p)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise _read_error("heloc", p, err, HELOC_HELP) from err
    raw.columns = [str(c).strip() for c in raw.columns]
    if HELOC_LABEL not in raw.columns:
        raise ValueError(
            f"path={str(p)!r}: label column {HELOC_LABEL!r} not found (found "
            f"{list(raw.columns)[:5]}...); is this heloc_dataset_v1.csv?"
        )
    values = raw[HELOC_LABEL].astype(str).str.strip()
    bad_labels = sorted(set(values) - {"Bad", "Good"})
    if bad_labels:
        raise ValueError(f"{HELOC_LABEL} has values {bad_labels[:5]}; expected 'Good' or 'Bad'")
    feats = raw.drop(columns=[HELOC_LABEL]).apply(pd.to_numeric, errors="coerce")
    bad = feats.isna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"dataset 'heloc': path={str(p)!r}, data row {row + 1}: column "
            f"{feats.columns[col]} is missing or non-numeric "
            f"({raw.iat[row, raw.columns.get_loc(feats.columns[col])]!r}); "
            f"{int(bad.any(axis=1).sum())} such rows (a file cut short?)"
        )
    _check_rows("heloc", p, len(raw), expected_rows)
    if expected_rows is not None and feats.shape[1] != 23:
        raise ValueError(
            f"dataset 'heloc': path={str(p)!r} has {feats.shape[1]} feature columns, "
            "heloc_dataset_v1.csv has 23 (+ RiskPerformance)"
        )
    keep = ~(feats == -9).all(axis=1).to_numpy()
    feats, values = feats[keep].reset_index(drop=True), values[keep].reset_index(drop=True)
    n_special = {str(v): int((feats == v).to_numpy().sum()) for v in HELOC_SPECIAL}
    feats = feats.mask(feats.isin(HELOC_SPECIAL)).astype(np.float64)
    mapping = {positive_label: 1, ("Good" if positive_label == "Bad" else "Bad"): 0}
    meta = {
        "source": "FICO xML Challenge, Home Equity Line of Credit (HELOC) dataset "
        "(heloc_dataset_v1.csv)",
        **_file_provenance(p),
        "rows": len(raw),
        "rows_dropped": int((~keep).sum()),
        "rows_dropped_reason": "all features equal -9 (no credit record)",
        "special_values": {
            "codes": list(HELOC_SPECIAL),
            "count_after_row_drop": n_special,
            "handling": "set missing, imputed with the training-split column mean "
            "of the non-special values, then standardised",
        },
        "label": HELOC_LABEL,
        "label_mapping": mapping,
        "paper_dataset": "heloc",
        "substitute_for": None,
        "default_left_out": None,  # set below
    }
    labels = values.map(mapping).to_numpy()
    splits = classification_splits(
        "heloc", feats, labels, list(feats.columns), [], meta, n_classes=2
    )
    return use_published_left_out(splits, "heloc", _seeded_left_out_meta(splits.n_train))


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
def load_folktables(
    seed: int = 0,
    root_dir: str | os.PathLike | None = None,
    download: bool = False,
    one_hot_fit: str = "train",
) -> Splits:
    """Folktables ACSIncome, ACS PUMS 2018 1-Year, Massachusetts (the paper: 30,085 / 10,029).

    Read through the ``folktables`` package from ``root_dir`` (the file
    ``root_dir/2018/1-Year/psam_p25.csv``; a ``csv_pma.zip`` there is extracted first);
    ``download=True`` lets folktables fetch it (internet needed). ACSIncome: folktables' adult
    filter (AGEP > 16, PINCP > 100, WKHP > 0, PWGTP >= 1), its 10 features, label PINCP > 50000.
    Split with ``train_test_split(test_size=0.25, random_state=0)``; all features except AGEP and
    WKHP are one-hot encoded (categories of the training split, or of the whole filtered table
    with ``one_hot_fit="all"``), AGEP and WKHP standardised with training statistics
    (``classification_splits``). Default left-out: the paper's own 100 indices
    (``data.published_left_out("folktables")``) when the training split has the paper's 30,085
    rows, else (with a warning) 100 training indices drawn with ``np.random.default_rng(0)``.
    Every read error names the file. ``seed`` unused.
    """
    check_choice("one_hot_fit", one_hot_fit, ONE_HOT_FITS)
    check_choice("download", download, (True, False))
    try:
        import folktables
    except ImportError as err:
        raise ImportError(
            "dataset 'folktables' needs the folktables package (pip install folktables==0.0.12); "
            "the offline stand-in is load_dataset('cps1988')"
        ) from err
    if root_dir is None:
        raise FileNotFoundError(
            f"dataset 'folktables' needs root_dir (got None). {_folktables_help(root_dir)}"
        )
    data_dir = _acs_data_dir(root_dir)
    csv_path, zip_path = data_dir / ACS_STATE_FILE, data_dir / ACS_STATE_ZIP
    if not csv_path.is_file() and zip_path.is_file():
        try:
            with zipfile.ZipFile(zip_path) as zf:
                if ACS_STATE_FILE not in zf.namelist():
                    raise ValueError(f"{zip_path} does not contain {ACS_STATE_FILE}")
                zf.extract(ACS_STATE_FILE, path=data_dir)
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise _read_error("folktables", zip_path, err) from err
    if not csv_path.is_file() and not download:
        raise FileNotFoundError(
            f"dataset 'folktables': no {ACS_STATE_FILE} in {data_dir} "
            f"(root_dir={str(root_dir)!r}). {_folktables_help(root_dir)}"
        )

    source = folktables.ACSDataSource(
        survey_year="2018",
        horizon="1-Year",
        survey="person",
        root_dir=str(Path(root_dir).expanduser()),
    )
    state = random.getstate()  # folktables reseeds the global `random` module
    try:
        raw = source.get_data(states=["MA"], download=download)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, KeyError) as err:
        raise _read_error("folktables", csv_path, err, _folktables_help(root_dir)) from err
    finally:
        random.setstate(state)
    problem = folktables.ACSIncome
    feats, target, _ = problem.df_to_pandas(raw)  # adult filter; NaN -> 0 as folktables does
    labels = target.iloc[:, 0].to_numpy().astype(np.int64)
    meta = {
        "source": "US Census ACS PUMS 2018 1-Year person survey, Massachusetts (psam_p25.csv), "
        "task ACSIncome of the folktables package (Ding et al. 2021)",
        "file": str(csv_path),
        "version": f"{package_version('folktables')}; {_file_provenance(csv_path)['version']}",
        "rows": len(raw),
        "rows_dropped": len(raw) - len(feats),
        "rows_dropped_reason": "ACSIncome adult filter: AGEP > 16, PINCP > 100, WKHP > 0, "
        "PWGTP >= 1",
        "label": "PINCP > 50000",
        "label_mapping": {"PINCP <= 50000": 0, "PINCP > 50000": 1},
        "paper_dataset": "folktables",
        "substitute_for": None,
        "default_left_out": None,  # set below
    }
    categorical = [c for c in ACS_FEATURES if c not in ACS_NUMERIC]
    splits = classification_splits(
        "folktables",
        feats[ACS_FEATURES],
        labels,
        ACS_NUMERIC,
        categorical,
        meta,
        n_classes=2,
        test_size=0.25,
        one_hot_fit=one_hot_fit,
    )
    return use_published_left_out(splits, "folktables", _seeded_left_out_meta(splits.n_train))
