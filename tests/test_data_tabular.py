"""Tabular loaders (tda_utils.data.tabular): fixtures written to tmp_path, the offline
package-backed datasets, and the real UCI Energy file from ../shared/data when it is present."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import train_test_split

import tda_utils.data.tabular as dt
import tda_utils.data.tabular_files as dtf
from tda_utils.data.registry import load_dataset

SHARED_DATA = Path(
    os.environ.get("FIMO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
REAL_ENERGY = SHARED_DATA / "energy" / "energy_y1.txt"

META_KEYS = {
    "source",
    "version",
    "rows",
    "rows_dropped",
    "n_train",
    "n_test",
    "features",
    "default_left_out",
    "paper_dataset",
    "substitute_for",
}


def assert_standardised(x: torch.Tensor, atol: float = 1e-4) -> None:
    x = x.double()
    assert torch.allclose(x.mean(0), torch.zeros(x.shape[1], dtype=x.dtype), atol=atol)
    ones = torch.ones(x.shape[1], dtype=x.dtype)
    assert torch.allclose(x.std(0, unbiased=False), ones, atol=atol)


def assert_splits_equal(a, b) -> None:
    for ta, tb in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(ta, tb)


def check_left_out(splits, n: int = 100) -> None:
    left = splits.meta["default_left_out"]
    assert len(left) == min(n, splits.n_train) and len(set(left)) == len(left)
    assert all(0 <= i < splits.n_train for i in left)


# ----------------------------------------------------------------------------- energy fixtures


def energy_table(n: int = 768) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    cols = {f"X{i}": np.round(rng.uniform(0, 800, n), 2) for i in range(1, 9)}
    cols["Y1"] = np.round(rng.uniform(5, 45, n), 2)
    cols["Y2"] = np.round(rng.uniform(10, 50, n), 2)
    return pd.DataFrame(cols)


def expected_regression(table: np.ndarray):
    tr, te = train_test_split(np.asarray(table, dtype=np.float64), test_size=0.1, random_state=0)
    mean, std = tr.mean(0), tr.std(0)
    return (tr - mean) / std, (te - mean) / std


@pytest.fixture(scope="module")
def energy_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("energy")
    df = energy_table()
    df.to_excel(d / "ENB2012_data.xlsx", index=False)
    df.to_csv(d / "ENB2012_data.csv", index=False)
    rows = df[[f"X{i}" for i in range(1, 9)] + ["Y1"]].itertuples(index=False)
    lines = ["\t".join(f"{v:.2f}" for v in row) for row in rows]
    # headerless, tab-separated, 9 columns, a trailing blank line
    (d / "energy_y1.txt").write_text("\n".join(lines) + "\n\n")
    return d, df


@pytest.mark.parametrize("name", ["ENB2012_data.xlsx", "ENB2012_data.csv", "energy_y1.txt"])
def test_energy_layouts(energy_files, name):
    d, df = energy_files
    s = load_dataset("energy", path=d / name)
    assert (s.n_train, s.n_test, s.n_features) == (691, 77, 8)
    assert s.train.tensors[1].shape == (691, 1) and s.train.tensors[0].dtype == torch.float32
    tr, te = expected_regression(df[[f"X{i}" for i in range(1, 9)] + ["Y1"]].to_numpy())
    assert np.allclose(s.train.tensors[0].numpy(), tr[:, :-1], atol=1e-5)
    assert np.allclose(s.test.tensors[1].numpy(), te[:, -1:], atol=1e-5)
    assert_standardised(torch.cat(s.train.tensors, 1))
    paper = list(range(0, 700, 7))[:-1] + [690]
    assert s.meta["default_left_out"] == paper
    assert s.meta["rows"] == 768 and s.meta["rows_dropped"] == 0
    assert META_KEYS <= set(s.meta) and s.meta["substitute_for"] is None


def test_energy_all_layouts_agree(energy_files):
    d, _ = energy_files
    a, b, c = (
        load_dataset("energy", path=d / n)
        for n in ("ENB2012_data.xlsx", "ENB2012_data.csv", "energy_y1.txt")
    )
    assert_splits_equal(a, b)
    assert_splits_equal(a, c)


def test_energy_small_table_falls_back_to_seeded_left_out(tmp_path):
    energy_table(60).to_csv(tmp_path / "small.csv", sep=";", index=False)
    with pytest.raises(
        ValueError, match=r"small.csv' has 60 data rows, the published file has 768"
    ):
        load_dataset("energy", path=tmp_path / "small.csv")
    with pytest.warns(UserWarning, match="too few for the paper's left-out set"):
        s = load_dataset("energy", path=tmp_path / "small.csv", expected_rows=None)
    assert (s.n_train, s.n_test) == (54, 6)
    check_left_out(s)
    assert s.meta["left_out_seed"] == 0


def test_energy_errors(tmp_path):
    for path in (None, tmp_path / "nope.xlsx"):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset("energy", path=path)
        msg = str(err.value)
        assert "path=" in msg and "data_path" in msg and "242" in msg and "Energy efficiency" in msg
    energy_table(20).rename(columns={"Y1": "heat"}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="Y1"):
        load_dataset("energy", path=tmp_path / "bad.csv")
    (tmp_path / "cols.txt").write_text("1 2 3 4\n5 6 7 8\n")
    with pytest.raises(ValueError, match="9 .*10"):
        load_dataset("energy", path=tmp_path / "cols.txt")


@pytest.mark.skipif(not REAL_ENERGY.is_file(), reason=f"no real UCI Energy file at {REAL_ENERGY}")
def test_energy_real_file():
    s = load_dataset("energy", path=REAL_ENERGY)
    assert (s.n_train, s.n_test, s.n_features) == (691, 77, 8)
    assert s.meta["rows"] == 768 and s.meta["rows_dropped"] == 0
    left = s.meta["default_left_out"]
    assert left == list(range(0, 693, 7)) + [690]
    assert len(left) == 100 and all(0 <= i < s.n_train for i in left)
    assert_standardised(torch.cat(s.train.tensors, 1))
    raw = np.loadtxt(REAL_ENERGY)
    _, te = expected_regression(raw)
    assert np.allclose(s.test.tensors[0].numpy(), te[:, :-1], atol=1e-5)


# ----------------------------------------------------------------------------- heloc fixture

HELOC_FEATURES = [
    "ExternalRiskEstimate",
    "MSinceOldestTradeOpen",
    "NumSatisfactoryTrades",
    "MSinceMostRecentDelq",
]


@pytest.fixture()
def heloc_csv(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    x = rng.integers(0, 100, size=(n, len(HELOC_FEATURES))).astype(np.int64)
    special = rng.random(x.shape) < 0.15
    x[special] = rng.choice([-7, -8, -9], size=special.sum())
    all_missing = [3, 17, 18, 40, 59]
    x[all_missing] = -9
    df = pd.DataFrame(x, columns=HELOC_FEATURES)
    df.insert(0, "RiskPerformance", np.where(rng.random(n) < 0.5, "Bad", "Good"))
    path = tmp_path / "heloc_dataset_v1.csv"
    df.to_csv(path, index=False)
    return path, df, all_missing


def test_heloc_fixture(heloc_csv):
    path, df, all_missing = heloc_csv
    with pytest.warns(
        UserWarning, match=r"heloc.txt\) does not apply .*49 rows, not the paper's 8883"
    ):
        s = load_dataset("heloc", path=path, expected_rows=None)
    kept = df.drop(index=all_missing).reset_index(drop=True)
    assert s.meta["rows"] == 60 and s.meta["rows_dropped"] == len(all_missing)
    assert (s.n_train, s.n_test, s.n_features) == (49, 6, 4)
    assert s.meta["label_mapping"] == {"Bad": 1, "Good": 0} and s.meta["n_classes"] == 2
    tr_idx, te_idx = train_test_split(np.arange(len(kept)), test_size=0.1, random_state=0)
    y = (kept["RiskPerformance"] == "Bad").to_numpy().astype(np.int64)
    assert torch.equal(s.train.tensors[1], torch.tensor(y[tr_idx]))
    assert s.train.tensors[1].dtype == torch.int64
    x_tr = s.train.tensors[0]
    assert_standardised(x_tr)
    # special values were imputed with the training mean, i.e. are exactly 0 once standardised
    raw_tr = kept[HELOC_FEATURES].to_numpy()[tr_idx]
    is_special = np.isin(raw_tr, [-7, -8, -9])
    assert is_special.any()
    assert np.allclose(x_tr.numpy()[is_special], 0.0, atol=1e-6)
    # the non-special values are standardised with the training statistics
    clean = np.where(is_special, np.nan, raw_tr.astype(float))
    mean = np.nanmean(clean, 0)
    filled = np.where(is_special, mean, clean)
    std = filled.std(0)
    assert np.allclose(x_tr.numpy(), (filled - mean) / std, atol=1e-5)
    raw_te = kept[HELOC_FEATURES].to_numpy()[te_idx].astype(float)
    te_exp = (np.where(np.isin(raw_te, [-7, -8, -9]), mean, raw_te) - mean) / std
    assert np.allclose(s.test.tensors[0].numpy(), te_exp, atol=1e-5)
    check_left_out(s)
    assert META_KEYS <= set(s.meta) and s.meta["paper_left_out"] is None
    with pytest.raises(ValueError, match=r"has 60 data rows, the published file has 10459"):
        load_dataset("heloc", path=path)


def test_heloc_options_and_errors(heloc_csv, tmp_path):
    path, _, _ = heloc_csv
    bad = load_dataset("heloc", path=path, expected_rows=None)
    good = load_dataset("heloc", path=path, positive_label="Good", expected_rows=None)
    assert torch.equal(good.train.tensors[1], 1 - bad.train.tensors[1])
    with pytest.raises(ValueError, match="positive_label"):
        load_dataset("heloc", path=path, positive_label="bad")
    for p in (None, tmp_path / "missing.csv"):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset("heloc", path=p)
        msg = str(err.value)
        assert "path=" in msg and "data_path" in msg and "heloc_dataset_v1.csv" in msg
        assert "FICO" in msg and "Kaggle" in msg
    pd.DataFrame({"a": [1, 2], "b": [3, 4]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ValueError, match="RiskPerformance"):
        load_dataset("heloc", path=tmp_path / "other.csv", expected_rows=None)


# ----------------------------------------------------------------------------- folktables fixture


def acs_frame(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    df = pd.DataFrame(
        {
            "RT": "P",
            "SERIALNO": [f"2018GQ{i:07d}" for i in range(n)],
            "PWGTP": rng.integers(0, 60, n),
            "AGEP": rng.integers(10, 90, n),
            "COW": rng.integers(1, 9, n).astype(float),
            "SCHL": rng.integers(1, 25, n).astype(float),
            "MAR": rng.integers(1, 6, n),
            "OCCP": rng.choice([10, 440, 2310, 9920], n).astype(float),
            "POBP": rng.choice([25, 36, 303], n),
            "RELP": rng.integers(0, 18, n),
            "WKHP": rng.integers(1, 80, n).astype(float),
            "SEX": rng.integers(1, 3, n),
            "RAC1P": rng.integers(1, 10, n),
            "PINCP": rng.integers(-5000, 150000, n).astype(float),
        }
    )
    df.loc[rng.random(n) < 0.1, "WKHP"] = np.nan  # non-workers: blank in the Census files
    return df


def acs_expected(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.AGEP > 16) & (df.PINCP > 100) & (df.WKHP > 0) & (df.PWGTP >= 1)]


@pytest.fixture()
def acs_root(tmp_path):
    pytest.importorskip("folktables")
    df = acs_frame()
    d = tmp_path / "acs" / "2018" / "1-Year"
    d.mkdir(parents=True)
    df.to_csv(d / "psam_p25.csv", index=False)
    return tmp_path / "acs", df


def test_folktables_fixture(acs_root):
    root, df = acs_root
    with pytest.warns(UserWarning, match=r"folktables.txt\) does not apply"):
        s = load_dataset("folktables", root_dir=root)
    kept = acs_expected(df).reset_index(drop=True)
    assert s.meta["rows"] == len(df) and s.meta["rows_dropped"] == len(df) - len(kept)
    n_test = int(np.ceil(0.25 * len(kept)))
    assert (s.n_train, s.n_test) == (len(kept) - n_test, n_test)
    tr_idx, _ = train_test_split(np.arange(len(kept)), test_size=0.25, random_state=0)
    y = (kept["PINCP"] > 50000).to_numpy().astype(np.int64)
    assert torch.equal(s.train.tensors[1], torch.tensor(y[tr_idx]))
    names = s.meta["features"]
    assert names[:2] == ["AGEP", "WKHP"]
    x = s.train.tensors[0]
    assert_standardised(x[:, :2])
    categorical = [c for c in dtf.ACS_FEATURES if c not in dtf.ACS_NUMERIC]
    n_onehot = sum(kept.iloc[tr_idx][c].nunique() for c in categorical)
    assert s.n_features == 2 + n_onehot == len(names)
    for col in ("COW", "SCHL", "OCCP", "RAC1P"):  # each one-hot block: exactly one 1 per row
        block = [i for i, nm in enumerate(names) if nm.startswith(col + "=")]
        assert torch.equal(x[:, block].sum(1), torch.ones(len(x)))
        assert set(x[:, block].unique().tolist()) <= {0.0, 1.0}
    assert "OCCP=2310" in names
    check_left_out(s)
    assert META_KEYS <= set(s.meta) and s.meta["substitute_for"] is None
    s_all = load_dataset("folktables", root_dir=root, one_hot_fit="all")
    assert s_all.n_features >= s.n_features and s_all.meta["one_hot_fit"] == "all"


def test_folktables_reads_zip(acs_root, tmp_path):
    root, _ = acs_root
    zroot = tmp_path / "zipped"
    d = zroot / "2018" / "1-Year"
    d.mkdir(parents=True)
    with zipfile.ZipFile(d / "csv_pma.zip", "w") as zf:
        zf.write(root / "2018" / "1-Year" / "psam_p25.csv", arcname="psam_p25.csv")
    assert_splits_equal(
        load_dataset("folktables", root_dir=zroot), load_dataset("folktables", root_dir=root)
    )


def test_folktables_errors(tmp_path):
    pytest.importorskip("folktables")
    for root in (None, tmp_path / "empty"):
        with pytest.raises(FileNotFoundError) as err:
            load_dataset("folktables", root_dir=root)
        msg = str(err.value)
        assert "root_dir" in msg and "download=True" in msg and "psam_p25.csv" in msg
        assert "csv_pma.zip" in msg and "2018" in msg
    assert not (tmp_path / "empty").exists()  # nothing created when the data is missing
    with pytest.raises(ValueError, match="one_hot_fit"):
        load_dataset("folktables", root_dir=tmp_path, one_hot_fit="test")


def test_folktables_missing_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "folktables", None)
    with pytest.raises(ImportError, match="pip install folktables"):
        load_dataset("folktables", root_dir=tmp_path)


# ----------------------------------------------------------------------------- shared helper


def test_classification_splits_helper():
    df = pd.DataFrame(
        {
            "num": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0],
            "cat": ["a", "b", "a", "b", "a", "b", "a", "b", "a", "zz"],
        }
    )
    labels = np.arange(10) % 2
    s = dt.classification_splits(
        "toy", df, labels, ["num"], ["cat"], {}, n_classes=2, test_size=0.3
    )
    tr_idx, te_idx = train_test_split(np.arange(10), test_size=0.3, random_state=0)
    assert (s.n_train, s.n_test) == (7, 3)
    train_cats = sorted(set(df["cat"].iloc[tr_idx]))
    assert s.meta["categories"]["cat"] == train_cats
    assert s.meta["features"] == ["num"] + [f"cat={c}" for c in train_cats]
    assert_standardised(s.train.tensors[0][:, :1])
    x_te = s.test.tensors[0]
    for row, i in zip(x_te, te_idx, strict=True):  # an unseen category encodes as all zeros
        assert row[1:].sum() == (0 if df["cat"].iloc[i] not in train_cats else 1)
    assert sum(s.meta["imputation"]["n_imputed"].values()) == 1
    with pytest.raises(ValueError, match="one_hot_fit"):
        dt.classification_splits("toy", df, labels, ["num"], ["cat"], {}, 2, one_hot_fit="both")
    with pytest.raises(ValueError, match="nope"):
        dt.classification_splits("toy", df, labels, ["nope"], [], {}, 2)


def test_seeded_left_out():
    left = dt.seeded_left_out(397)
    assert left == sorted(np.random.default_rng(0).choice(397, 100, replace=False).tolist())
    assert dt.seeded_left_out(30) == list(range(30))


# ----------------------------------------------------------------------------- offline loaders


def test_diabetes():
    s = load_dataset("diabetes")
    assert (s.n_train, s.n_test, s.n_features) == (397, 45, 10) and s.task == "regression"
    assert s.train.tensors[1].shape == (397, 1) and s.train.tensors[0].dtype == torch.float32
    assert_standardised(torch.cat(s.train.tensors, 1))
    assert META_KEYS <= set(s.meta) and s.meta["substitute_for"] == "energy"
    assert s.meta["default_left_out"] == dt.seeded_left_out(397) and s.meta["left_out_seed"] == 0
    check_left_out(s)
    assert_splits_equal(s, load_dataset("diabetes"))


def test_credit():
    s = load_dataset("credit")
    assert (s.n_train, s.n_test) == (3635, 404) and s.task == "classification"
    assert s.meta["rows"] == 4454 and s.meta["rows_dropped"] == 415
    assert s.n_features == 26 == len(s.meta["features"])
    assert s.train.tensors[1].dtype == torch.int64 and s.n_outputs == 2
    assert s.meta["label_mapping"] == {"good": 0, "bad": 1}
    assert 0.2 < s.train.tensors[1].float().mean() < 0.35  # about a quarter are "bad"
    assert_standardised(s.train.tensors[0][:, : len(s.meta["numeric_features"])])
    assert META_KEYS | {"n_classes", "label", "label_mapping"} <= set(s.meta)
    assert s.meta["substitute_for"] == "heloc"
    check_left_out(s)
    assert_splits_equal(s, load_dataset("credit"))


def test_cps1988():
    s = load_dataset("cps1988")
    assert (s.n_train, s.n_test, s.n_features) == (3000, 1000, 12)
    assert 0.4 < s.train.tensors[1].float().mean() < 0.6  # median split
    assert_standardised(s.train.tensors[0][:, :2])
    assert "wage" not in s.meta["features"] and s.meta["substitute_for"] == "folktables"
    assert META_KEYS | {"n_classes", "label", "label_mapping"} <= set(s.meta)
    check_left_out(s)
    assert_splits_equal(s, load_dataset("cps1988"))
    other = load_dataset("cps1988", seed=1, n_samples=400)
    assert (other.n_train, other.n_test) == (300, 100) and other.meta["subsample_seed"] == 1
    for bad in (0, -3, 2.5, 10**6):
        with pytest.raises(ValueError, match="n_samples"):
            load_dataset("cps1988", n_samples=bad)
