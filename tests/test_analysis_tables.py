"""``readable_scores``: score columns on their own power-of-ten scale, legible at any magnitude."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tda_utils.analysis import pipeline
from tda_utils.analysis.tables import column_scale, readable_scores


def table2_like() -> pd.DataFrame:
    """A Table 2 of a well-fitted model: tau and Grad-Dot of order 1e-6 and 1e-3."""
    return pd.DataFrame(
        {
            "query": [7, 7, 7, 7],
            "kind": ["helpful", "helpful", "harmful", "harmful"],
            "train_index": [11, 42, 5, 9],
            "time": [25.0, 25.0, 25.0, 25.0],
            "tau": [3.14159e-6, 1.23456e-6, -4.5678e-8, -2.71828e-6],
            "grad_dot_score": [1.23456e-3, 5.0e-4, -3.0e-5, -8.1234e-4],
            "grad_dot_rank": [1, 4, 30, 50],
        }
    )


def test_tiny_scores_keep_three_significant_digits():
    df = table2_like()
    assert (df.round(4)["tau"].abs() == 0).all()  # the old format: every tau reads 0.0 / -0.0
    out = readable_scores(df)
    assert "tau (x1e-6)" in out.columns and "tau" not in out.columns
    assert out["tau (x1e-6)"].tolist() == pytest.approx([3.14, 1.23, -0.0457, -2.72], abs=1e-12)
    assert "grad_dot_score (x1e-3)" in out.columns
    assert out["grad_dot_score (x1e-3)"].tolist() == pytest.approx(
        [1.23, 0.5, -0.03, -0.812], abs=1e-12
    )
    assert pipeline.readable_scores is readable_scores  # the notebooks' name for it


def test_each_column_gets_its_own_scale():
    df = pd.DataFrame(
        {
            "small": [2.5e-9, -1.0e-9],
            "large": [123456.0, -7890.5],
            "plain": [0.51234, -0.0012345],
            "hundreds": [412.345, 3.5],
        }
    )
    out = readable_scores(df)
    assert list(out.columns) == ["small (x1e-9)", "large (x1e5)", "plain", "hundreds"]
    assert out["small (x1e-9)"].tolist() == pytest.approx([2.5, -1.0])
    assert out["large (x1e5)"].tolist() == pytest.approx([1.23, -0.0789])
    assert out["plain"].tolist() == pytest.approx([0.512, -0.00123], abs=1e-15)
    assert out["hundreds"].tolist() == pytest.approx([412.0, 3.5])
    assert [column_scale(df[c]) for c in df] == [-9, 5, 0, 0]


def test_values_far_below_the_column_read_zero_not_scientific():
    out = readable_scores(pd.DataFrame({"s": [1.0e-6, 1.234e-13, -1.0e-16]}))
    values = out["s (x1e-6)"].tolist()
    assert values == [1.0, 0.0, 0.0]
    assert not any(np.signbit(values))  # no "-0.0"
    assert "e-" not in out.to_string(header=False)  # pandas keeps fixed notation


def test_nan_entries_and_all_nan_columns():
    df = pd.DataFrame({"tau": [4.0e-5, np.nan, -1.234e-5], "empty": [np.nan] * 3})
    out = readable_scores(df)
    assert list(out.columns) == ["tau (x1e-5)", "empty"]
    got = out["tau (x1e-5)"].to_numpy()
    assert got[0] == pytest.approx(4.0) and np.isnan(got[1]) and got[2] == pytest.approx(-1.23)
    assert out["empty"].isna().all()


def test_all_zero_column_keeps_its_name_and_zeros():
    df = pd.DataFrame({"tau": [0.0, -0.0, 0.0], "score": [1.0e-7, 0.0, 2.0e-7]})
    out = readable_scores(df, columns=["tau", "score"])
    assert list(out.columns) == ["tau", "score (x1e-7)"]
    assert out["tau"].tolist() == [0.0, 0.0, 0.0]
    assert out["score (x1e-7)"].tolist() == pytest.approx([1.0, 0.0, 2.0])


def test_integer_text_and_whole_number_columns_are_untouched():
    df = table2_like().assign(flag=[True, False, True, False], big=[10**9, 1, 2, 3])
    out = readable_scores(df)
    for c in ("query", "kind", "train_index", "time", "grad_dot_rank", "flag", "big"):
        pd.testing.assert_series_equal(out[c], df[c])
    assert df["tau"].iloc[0] == 3.14159e-6  # the input is not changed
    assert list(out.index) == list(df.index)


def test_digits_and_bad_arguments():
    df = pd.DataFrame({"tau": [3.14159e-6]})
    assert readable_scores(df, digits=2)["tau (x1e-6)"].iloc[0] == pytest.approx(3.1)
    assert readable_scores(df, digits=5)["tau (x1e-6)"].iloc[0] == pytest.approx(3.1416)
    with pytest.raises(ValueError, match="digits"):
        readable_scores(df, digits=0)
    with pytest.raises(ValueError, match="not in the table"):
        readable_scores(df, columns=["cg_score"])
