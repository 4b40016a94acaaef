"""Analysis: how well attribution scores agree with the gold standard, and the results record.

Modules: ``metrics`` (cosine / Spearman agreement over time and over seeds, sorted scores),
``pipeline`` (what a notebook sequences: load and select, run methods, panels, tables,
``collect_results``), ``panels`` (the panels computed once per gold standard and scores, on the
device it ran on, in chunks of evaluations), ``records`` (``RunResults``, the plain-data record
05 reads), ``findings`` (the paper's panels and the "reproduced?" verdicts), ``tables``
(``readable_scores``: score columns on their own power-of-ten scale, legible at any magnitude).

May import: the core, ``data/``, ``models/``, ``gold/`` (its result type) and ``methods/``. Must
not import ``figures/`` or ``run/``.
"""

from . import findings, metrics, panels, pipeline, records, tables  # noqa: F401
from .metrics import Curve, SeedCurve, agreement
from .records import RunResults, load_results

__all__ = ["Curve", "RunResults", "SeedCurve", "agreement", "load_results"]
