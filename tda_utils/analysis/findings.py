"""The "reproduced?" table: whether each run shows each of the paper's findings.

Public: ``PAPER_PANELS``, ``FINDINGS``, ``reproduced_table`` (also available as
``paper.reproduced_table``).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..methods import hessian_methods, method_style
from .metrics import Curve
from .records import RunResults


#: the paper's panel order, with the datasets of this suite that fill each slot (first found wins)
PAPER_PANELS: dict[str, tuple[str, ...]] = {
    "a": ("concrete",),
    "b": ("energy", "diabetes"),
    "c": ("heloc", "credit"),
    "d": ("folktables", "cps1988"),
    "e": ("cifar10", "mnist", "fashion_mnist"),
    "f": ("sst2", "finefood"),
}
#: the paper's findings checked by ``reproduced_table``
FINDINGS = (
    "first-order methods agree best early",
    "influence functions agree better late",
    "more seeds raise agreement",
    "without the mean subtraction agreement is lower early",
)


def _finite(x) -> float | None:
    v = float(x)
    return None if v != v else v


def _best_influence(curves: Mapping[str, Curve], index: int, labels: Mapping[str, str]):
    """(label, value) of the Hessian-based curve highest at evaluation ``index``, or None."""
    vals = [
        (labels.get(m, method_style(m)["label"]), _finite(curves[m].mean[index]))
        for m in hessian_methods()
        if m in curves
    ]
    vals = [(lab, v) for lab, v in vals if v is not None]
    return max(vals, key=lambda x: x[1]) if vals else None


def _verdict(finding: str, r: RunResults) -> tuple[str, str]:
    """(evidence, "yes" / "no" / "not run") of one finding on one run."""
    fig2 = r.agreement.get("fig2", {})
    gd = fig2.get("grad_dot")
    if finding in FINDINGS[:2]:
        index, when = (0, "first") if finding == FINDINGS[0] else (-1, "last")
        inf = _best_influence(fig2, index, r.labels)
        first_order = None if gd is None else _finite(gd.mean[index])
        if inf is None or first_order is None:
            return "no Grad-Dot and Hessian-based influence Fig. 2 curves", "not run"
        evidence = f"Grad-Dot {when} {first_order:.3f} vs {inf[0]} {when} {inf[1]:.3f}"
        ok = first_order >= inf[1] if index == 0 else inf[1] > first_order
        return evidence, "yes" if ok else "no"
    if finding == FINDINGS[2]:
        sc = r.seeds.get("fig7", {}).get("grad_dot")
        if sc is None or len(sc.ks) < 2:
            return "no Grad-Dot Fig. 7 seed curve with two or more k", "not run"
        lo, hi = _finite(sc.best[0]), _finite(sc.best[-1])
        if lo is None or hi is None:
            return "Grad-Dot Fig. 7 seed curve undefined", "not run"
        evidence = f"Grad-Dot best k={sc.ks[-1]} {hi:.3f} vs k={sc.ks[0]} {lo:.3f}"
        return evidence, "yes" if hi > lo else "no"
    full = r.agreement.get("fig5", {}).get("grad_dot")
    a = None if full is None else _finite(full.mean[0])
    b = None if gd is None else _finite(gd.mean[0])
    if a is None or b is None:
        return "no Grad-Dot Fig. 5 and Fig. 2 curves", "not run"
    evidence = f"Grad-Dot first {a:.3f} (Fig. 5) vs {b:.3f} (Fig. 2)"
    return evidence, "yes" if a < b else "no"


def reproduced_table(runs: Mapping[str, RunResults]) -> pd.DataFrame:
    """Whether each run reproduces each of the paper's findings (``FINDINGS``).

    One row per (run, finding): ``run``, ``panel`` (the paper's Fig. 2 panel letter of the
    run's dataset, "-" if none), ``finding``, ``evidence`` (the two numbers compared, from this
    run's results) and ``reproduced``: "yes", "no", or "not run" when the run lacks the curves.
    The checks: Grad-Dot's first Fig. 2 cosine >= every Hessian-based influence method's first;
    the best Hessian-based influence method's last > Grad-Dot's last; Grad-Dot's Fig. 7 best
    agreement at the largest k > at k = 1; Grad-Dot's first Fig. 5 cosine (no mean subtraction)
    < its first Fig. 2 cosine.

    Args:
        runs: {run name: RunResults} (``records.load_results``).

    Returns:
        A DataFrame with the columns above (empty, with those columns, for no runs).
    """
    cols = ["run", "panel", "finding", "evidence", "reproduced"]
    rows = []
    for run, r in runs.items():
        panel = next((k for k, ds in PAPER_PANELS.items() if r.dataset in ds), "-")
        for finding in FINDINGS:
            evidence, verdict = _verdict(finding, r)
            rows.append(dict(zip(cols, (run, panel, finding, evidence, verdict))))
    return pd.DataFrame(rows, columns=cols)
