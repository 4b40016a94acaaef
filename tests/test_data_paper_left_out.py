"""The paper's own left-out sets, shipped as package data: the defaults of heloc, folktables and
the GLUE sst2 train file when the loader reproduces the paper's split size, else a warning and
the seeded draw."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from tda_utils.data import registry as data
from tda_utils.data import tabular_files
from tda_utils.data import text as data_text
from tda_utils.data.registry import Splits, load_dataset

SHARED = Path(
    os.environ.get("FIMO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
PUBLISHED = SHARED / "paper_left_out"
COUNTS = {"heloc": 100, "folktables": 100, "sst2_glue": 50}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_shipped_sets(name):
    idx = data.published_left_out(name)
    assert len(idx) == COUNTS[name] and idx == sorted(set(idx))
    assert 0 <= idx[0] and idx[-1] < data.PUBLISHED_LEFT_OUT[name]


@pytest.mark.skipif(not PUBLISHED.is_dir(), reason=f"{PUBLISHED} is absent")
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_shipped_sets_equal_the_published_files(name):
    published = [int(v) for v in (PUBLISHED / f"{name}.txt").read_text().split()]
    assert data.published_left_out(name) == published


def test_sst2_set_is_the_authors_draw():
    assert data.published_left_out("sst2_glue") == data_text.paper_left_out(67349)


def test_unknown_name():
    with pytest.raises(
        ValueError, match=r"name='mnist' is not valid; allowed values: 'folktables'"
    ):
        data.published_left_out("mnist")


def _fake_splits(name: str, n_train: int) -> Splits:
    x = torch.zeros(n_train, 1)
    y = torch.zeros(n_train, dtype=torch.long)
    return Splits(
        name, TensorDataset(x, y), TensorDataset(x[:2], y[:2]), "classification", {"n_classes": 2}
    )


def test_use_published_left_out_rule():
    fallback = {"default_left_out": [1, 2], "default_left_out_rule": "seeded"}
    s = data.use_published_left_out(
        _fake_splits("sst2", 67349), "sst2_glue", fallback, n_left_out=50
    )
    assert (
        s.meta["default_left_out"]
        == s.meta["paper_left_out"]
        == data.published_left_out("sst2_glue")
    )
    s = data.use_published_left_out(
        _fake_splits("sst2", 67349), "sst2_glue", fallback, n_left_out=10
    )
    assert s.meta["default_left_out"] == data.published_left_out("sst2_glue")[:10]
    with pytest.warns(UserWarning, match=r"n_left_out=80 exceeds the 50 published indices"):
        s = data.use_published_left_out(
            _fake_splits("sst2", 67349), "sst2_glue", fallback, n_left_out=80
        )
    assert s.meta["default_left_out"] == [1, 2] and s.meta["paper_left_out"] is None
    with pytest.warns(
        UserWarning,
        match=r"the training split has 500 rows, not the paper's 67349\); using a "
        r"seeded draw instead: seeded",
    ):
        s = data.use_published_left_out(_fake_splits("sst2", 500), "sst2_glue", fallback)
    assert s.meta["default_left_out"] == [1, 2]


def test_heloc_with_the_papers_split_size_uses_the_papers_set(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 100, size=(10459, 23))
    x[rng.choice(10459, 588, replace=False)] = -9  # rows without credit record, dropped: 9,871 left
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(23)])
    df.insert(0, "RiskPerformance", np.where(rng.random(10459) < 0.5, "Bad", "Good"))
    df.to_csv(tmp_path / "heloc.csv", index=False)
    s = load_dataset("heloc", path=tmp_path / "heloc.csv")
    assert (s.n_train, s.n_test) == (8883, 988)
    assert (
        s.meta["default_left_out"] == data.published_left_out("heloc") == s.meta["paper_left_out"]
    )
    assert "authors' published indices" in s.meta["default_left_out_rule"]


def test_folktables_with_the_papers_split_size_uses_the_papers_set(tmp_path):
    pytest.importorskip("folktables")
    n, rng = 40114, np.random.default_rng(1)
    df = pd.DataFrame(
        {
            "RT": "P",
            "SERIALNO": [f"2018GQ{i:07d}" for i in range(n)],
            "PWGTP": rng.integers(1, 60, n),
            "AGEP": rng.integers(17, 90, n),
            "COW": rng.integers(1, 9, n).astype(float),
            "SCHL": rng.integers(1, 25, n).astype(float),
            "MAR": rng.integers(1, 6, n),
            "OCCP": rng.choice([10, 440, 2310], n).astype(float),
            "POBP": rng.choice([25, 36], n),
            "RELP": rng.integers(0, 18, n),
            "WKHP": rng.integers(1, 80, n).astype(float),
            "SEX": rng.integers(1, 3, n),
            "RAC1P": rng.integers(1, 10, n),
            "PINCP": rng.integers(200, 150000, n).astype(float),
        }
    )
    d = tmp_path / "2018" / "1-Year"
    d.mkdir(parents=True)
    df.to_csv(d / tabular_files.ACS_STATE_FILE, index=False)
    s = load_dataset("folktables", root_dir=tmp_path)
    assert (s.n_train, s.n_test) == (30085, 10029)
    assert (
        s.meta["default_left_out"]
        == data.published_left_out("folktables")
        == s.meta["paper_left_out"]
    )


def test_sst2_file_of_another_size_warns_and_draws(tmp_path):
    rows = "".join(f"phrase number {i}\t{i % 2}\n" for i in range(40))
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + rows)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "".join(rows.splitlines(True)[:8]))
    with pytest.warns(
        UserWarning,
        match=r"dataset 'sst2': the paper's left-out set \(sst2_glue.txt\) does not "
        r"apply \(the training split has 40 rows, not the paper's 67349\)",
    ):
        s = load_dataset("sst2", path=tmp_path, max_length=8)
    assert (
        s.meta["default_left_out"] == data_text.paper_left_out(40)
        and s.meta["paper_left_out"] is None
    )


@pytest.mark.skipif(not (SHARED / "sst2").is_dir(), reason="../shared/data/sst2 is absent")
def test_real_sentence_level_sst2_is_not_the_glue_split():
    with pytest.warns(UserWarning, match=r"6920 rows, not the paper's 67349"):
        s = load_dataset("sst2", path=SHARED / "sst2", n_test=50, max_length=16)
    assert s.meta["paper_left_out"] is None
