"""Tables a reader can compare: every score column on its own power-of-ten scale.

Public: ``readable_scores``, ``column_scale``.

Attribution scores and tau of a well-fitted model are often of order 1e-6, so a table rounded
to four fixed decimals reads ``0.0`` / ``-0.0`` everywhere. ``readable_scores`` divides each
score column by a power of ten chosen from the column's largest magnitude, names that power in
the column's header (``tau (x1e-6)``) and rounds every value to a few significant digits, so the
numbers in a column keep their order of magnitude relative to one another. Pure: the table
given is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

#: largest magnitudes in [10**SCALE_FREE[0], 10**(SCALE_FREE[1] + 1)) are shown unscaled
SCALE_FREE = (-2, 3)


def column_scale(values, free: tuple[int, int] = SCALE_FREE) -> int:
    """The power of ten a float column is divided by: 0 when its largest finite magnitude is 0,
    absent (all NaN / inf) or of order 10**free[0] .. 10**free[1] (e.g. 0.01 .. 9999); else
    floor(log10(largest magnitude)), so that the largest value reads between 1 and 10.
    """
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0 or float(a.max()) == 0.0:
        return 0
    e = math.floor(math.log10(float(a.max())))
    return 0 if free[0] <= e <= free[1] else e


def _round_significant(x: np.ndarray, digits: int, max_decimals: int) -> np.ndarray:
    """Each finite value rounded to ``digits`` significant digits, but to no more than
    ``max_decimals`` decimals (what is smaller reads as 0); -0.0 becomes 0.0; NaN/inf kept.
    """
    out = x.astype(float).copy()
    for i, v in enumerate(out):
        if np.isfinite(v) and v != 0.0:
            decimals = digits - 1 - math.floor(math.log10(abs(v)))
            out[i] = round(float(v), min(decimals, max_decimals)) + 0.0
    return out


def _is_score_column(s: pd.Series) -> bool:
    """A float column that is not integer-valued (times such as 25.0, counts stored as float)."""
    if not pd.api.types.is_float_dtype(s.dtype):
        return False
    x = s.to_numpy(dtype=float)
    finite = x[np.isfinite(x)]
    return finite.size > 0 and not bool(np.all(finite == np.round(finite)))


def readable_scores(
    df: pd.DataFrame, digits: int = 3, columns: Iterable[str] | None = None
) -> pd.DataFrame:
    """A copy of ``df`` in which every score column is legible and comparable.

    Score columns (``columns``, or by default every float column whose values are not all whole
    numbers) are divided by ``10**column_scale(column)``; a scaled column's header gets the scale
    (``"tau"`` -> ``"tau (x1e-6)"``); every value is then rounded to ``digits`` significant
    digits (values below ``10**-(digits + 3)`` of the scaled column read 0). Integer, boolean,
    text and whole-number float columns (ranks, indices, evaluation times), all-zero and all-NaN
    columns are left as they are; NaN and inf entries stay NaN and inf.

    Example: ``tau = [3.12e-6, -4.5e-8]`` becomes ``tau (x1e-6) = [3.12, -0.045]``, where
    ``.round(4)`` gave ``[0.0, -0.0]``.

    Args:
        df: the table (e.g. ``top_instances``, ``summary_table``, ``cost_table``).
        digits: significant digits kept (>= 1).
        columns: the columns to treat as scores (None: every non-integer float column).

    Returns:
        A new DataFrame, same index and column order, scaled columns renamed.
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 1:
        raise ValueError(f"digits={digits!r} must be an integer >= 1")
    if columns is None:
        chosen = [c for c in df.columns if _is_score_column(df[c])]
    else:
        chosen = list(columns)
        missing = [c for c in chosen if c not in df.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the table: {list(df.columns)}")
    out = df.copy()
    names = {}
    for c in chosen:
        x = pd.to_numeric(out[c], errors="raise").to_numpy(dtype=float)
        e = column_scale(x)
        out[c] = _round_significant(x / 10.0**e, digits, digits + 3)
        if e:
            names[c] = f"{c} (x1e{e})"
    return out.rename(columns=names)
