"""Fault class: truncated or unreadable data files. Loaders check the row and column counts
they document and name the path in every read error; the files are never modified."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tda_utils.data import image as data_image
from tda_utils.data.registry import load_dataset

SHARED_DATA = Path(
    os.environ.get("FIMO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
REAL_ENERGY = SHARED_DATA / "energy" / "energy_y1.txt"


def energy_lines(n: int = 768) -> list[str]:
    rng = np.random.default_rng(5)
    rows = np.round(rng.uniform(1, 800, size=(n, 9)), 2)
    return ["\t".join(f"{v:.2f}" for v in row) for row in rows]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_energy_cut_short_between_rows(tmp_path):
    p = tmp_path / "energy_y1.txt"
    p.write_text("\n".join(energy_lines()[:436]) + "\n")
    before = digest(p)
    with pytest.raises(
        ValueError, match=rf"path='{p}' has 436 data rows, the published file has 768"
    ):
        load_dataset("energy", path=p)
    assert digest(p) == before


def test_energy_cut_short_mid_row(tmp_path):
    text = "\n".join(energy_lines()) + "\n"
    p = tmp_path / "energy_y1.txt"
    p.write_text(text[: len(text) // 2 + 7])
    with pytest.raises(
        ValueError,
        match=rf"path='{p}': data row \d+ has a missing, non-numeric or non-finite "
        r"value in column \w+ .*a file cut short",
    ):
        load_dataset("energy", path=p, expected_rows=None)


def test_energy_full_file_with_trailing_blank_line_loads(tmp_path):
    p = tmp_path / "energy_y1.txt"
    p.write_text("\n".join(energy_lines()) + "\n\n")
    s = load_dataset("energy", path=p)
    assert (s.n_train, s.n_test, s.n_features) == (691, 77, 8)


@pytest.mark.skipif(not REAL_ENERGY.is_file(), reason=f"no real UCI Energy file at {REAL_ENERGY}")
def test_real_energy_file_and_its_truncation(tmp_path):
    s = load_dataset("energy", path=REAL_ENERGY)
    assert s.meta["rows"] == 768 and s.n_train == 691
    cut = tmp_path / "cut.txt"
    cut.write_bytes(REAL_ENERGY.read_bytes()[: REAL_ENERGY.stat().st_size * 4 // 7])
    with pytest.raises(ValueError, match=r"cut.txt"):
        load_dataset("energy", path=cut)


@pytest.mark.parametrize(
    "name, content",
    [
        ("ENB2012_data.xlsx", b"this is not a spreadsheet" * 10),
        ("ENB2012_data.xlsx", b""),
        ("energy.txt", bytes(range(256)) * 8),
        ("energy.txt", b"\x00\x00\x00\x01\x02"),
        ("energy.csv", b""),
    ],
)
def test_energy_unreadable_files_name_the_path(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ValueError, match=rf"path='{p}'"):
        load_dataset("energy", path=p)
    assert p.read_bytes() == content


def test_energy_wrong_columns(tmp_path):
    p = tmp_path / "e.txt"
    p.write_text("\n".join("\t".join(line.split("\t")[:7]) for line in energy_lines()) + "\n")
    with pytest.raises(ValueError, match=rf"path='{p}': a headerless file needs 9 .* found 7"):
        load_dataset("energy", path=p)


def test_heloc_cut_short_mid_row(tmp_path):
    cols = ["RiskPerformance"] + [f"f{i}" for i in range(23)]
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.integers(0, 50, size=(30, 23)), columns=cols[1:])
    df.insert(0, "RiskPerformance", "Good")
    p = tmp_path / "heloc_dataset_v1.csv"
    text = df.to_csv(index=False)
    p.write_text(text[: len(text) - 20])
    with pytest.raises(
        ValueError, match=rf"dataset 'heloc': path='{p}', data row 30: column f\d+ is missing"
    ):
        load_dataset("heloc", path=p, expected_rows=None)
    p.write_bytes(b"\xff\xfe\x00garbage" * 50)
    with pytest.raises(ValueError, match=rf"path='{p}'"):
        load_dataset("heloc", path=p)


def test_truncated_idx_file_names_the_path(tmp_path):
    raw = b"\x00\x00\x08\x01" + (100).to_bytes(4, "big") + bytes(100)
    gz = gzip.compress(raw)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(ValueError, match=rf"cannot read {p}"):
        data_image.read_idx(p)
    p.write_bytes(gzip.compress(raw[:60]))
    with pytest.raises(ValueError, match=rf"{p}: header announces shape \(100,\)"):
        data_image.read_idx(p)


def test_binary_sst2_file_names_the_path(tmp_path):
    (tmp_path / "train.tsv").write_bytes(b"\xff\xfe\x00\x01" * 100)
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\ngood\t1\n")
    with pytest.raises(ValueError, match=rf"cannot read {tmp_path / 'train.tsv'}"):
        load_dataset("sst2", path=tmp_path)
