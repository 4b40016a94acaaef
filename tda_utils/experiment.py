"""Glue that keeps the notebooks thin: paths, left-out selection, running methods, tables.

Public: ``output_paths``, ``select_left_out``, ``select_queries``, ``run_methods``,
``agreement_curves``, ``summary_table``, ``HESSIAN_METHODS``.
"""
from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import default_results_dir, repo_root
from .config import check_indices
from .data import Splits
from .further_training import FurtherTrainingResult
from .methods import METHODS, AttributionScores, attribute
from .metrics import Curve, agreement
from .plotting import METHOD_STYLE, method_order

#: methods whose damping is given as ``damping_multiple`` x lambda0
HESSIAN_METHODS = ("if_explicit", "cg", "lissa", "lissa_h", "ekfac", "trak", "if_time")


def output_paths(profile: str = "cpu", figures_dir: str | None = None, results_dir: str | None = None):
    """Where a notebook writes: ``figures`` (default ``<repo>/figures/<profile>``) and ``results``
    (the cache; default ``<repo>/results`` or ``$FIMO_RESULTS_DIR``)."""
    figures = Path(figures_dir) if figures_dir else repo_root() / "figures" / profile
    results = Path(results_dir) if results_dir else default_results_dir()
    figures.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(figures=figures, results=results)


def load_data(dataset: str, data_path: str | None = None, seed: int = 0, **options: Any) -> Splits:
    """``load_dataset`` with the notebooks' ``data_path`` passed to the loader's own file or
    folder parameter (``path``, ``root_dir`` or ``root``)."""
    import inspect

    from .data import DATASETS, load_dataset

    if data_path is not None and dataset in DATASETS:
        accepted = inspect.signature(DATASETS[dataset]).parameters
        name = next((p for p in ("path", "root_dir", "root") if p in accepted), None)
        if name is None:
            raise ValueError(f"data_path is given but dataset {dataset!r} reads no local files; set data_path=None")
        options[name] = data_path
    return load_dataset(dataset, seed=seed, **options)


def select_left_out(splits: Splits, left_out: Sequence[int] | None = None, n_left_out: int | None = None) -> list[int]:
    """The left-out training instances: ``left_out`` if given, else the dataset's default
    (``splits.meta["default_left_out"]``), truncated to the first ``n_left_out``."""
    chosen = list(splits.meta["default_left_out"]) if left_out is None else list(left_out)
    if n_left_out is not None:
        if n_left_out < 2:
            raise ValueError(f"n_left_out={n_left_out} must be >= 2 (agreement is across left-out instances)")
        chosen = chosen[:n_left_out]
    return list(check_indices("left_out", chosen, splits.n_train))


def select_queries(splits: Splits, query_indices: Sequence[int] | None = None, n_queries: int | None = None) -> list[int]:
    """Test instances scored: ``query_indices`` if given, else the first ``n_queries`` (all if None)."""
    chosen = list(range(splits.n_test)) if query_indices is None else list(query_indices)
    if n_queries is not None:
        chosen = chosen[:n_queries]
    return list(check_indices("query_indices", chosen, splits.n_test))


def run_methods(methods: Sequence[str], model, splits: Splits, train_indices, query_indices,
                damping_multiple: float = 100.0, method_options: Mapping[str, Mapping[str, Any]] | None = None,
                gold: FurtherTrainingResult | None = None, progress: bool = True) -> dict[str, AttributionScores]:
    """Run each method in ``methods`` (paper order) on the same train x query pairs.

    Hessian-based methods get ``damping_multiple``; ``method_options[m]`` overrides per method.
    ``if_time`` is evaluated at the gold standard's times (converted to optimizer steps) with its
    learning rate.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods has unknown names {unknown}; allowed: {sorted(METHODS)}")
    method_options = dict(method_options or {})
    out: dict[str, AttributionScores] = {}
    for m in tqdm(method_order(list(methods)), desc="attribution methods", disable=not progress):
        opts: dict[str, Any] = {}
        if m in HESSIAN_METHODS:
            opts["damping_multiple"] = damping_multiple
        if m == "if_time":
            if gold is None:
                raise ValueError("if_time needs the gold standard (gold=...) for its times and learning rate")
            opts.update(times=gold_steps(gold, splits), lr=gold.config.lr)
        opts.update(method_options.get(m, {}))
        out[m] = attribute(m, model, splits, train_indices=train_indices, query_indices=query_indices, **opts)
    return out


def gold_steps(gold: FurtherTrainingResult, splits: Splits) -> torch.Tensor:
    """The gold standard's evaluation times in optimizer steps, (n_evals,)."""
    if gold.time_unit == "step":
        return gold.times.clone()
    per_epoch = -(-splits.n_train // gold.config.batch_size)
    return gold.times * per_epoch


def method_values(score: AttributionScores) -> torch.Tensor:
    """Scores to compare with tau: (n_query, n_train) or, for time-resolved methods
    (``diagnostics["values_by_time"]``), (n_evals, n_query, n_train)."""
    return score.diagnostics.get("values_by_time", score.values)


def agreement_curves(tau: torch.Tensor, scores: Mapping[str, AttributionScores], metric: str = "cosine") -> dict[str, Curve]:
    """{method: Curve} of every method's agreement with ``tau`` (n_evals, n_query, n_left_out)."""
    return {m: agreement(tau, method_values(s), metric) for m, s in scores.items()}


def summary_table(curves: Mapping[str, Curve], times, scores: Mapping[str, AttributionScores] | None = None) -> pd.DataFrame:
    """Per method: agreement (mean +- SEM) at the first evaluation, at its best and at the last,
    the time of the best, and the method's wall time."""
    t = torch.as_tensor(times).double()
    rows = []
    for m in method_order(list(curves)):
        c = curves[m]
        best = int(torch.nan_to_num(c.mean, nan=-2.0).argmax())
        row = {
            "method": METHOD_STYLE.get(m, {}).get("label", m),
            "first": float(c.mean[0]), "first_sem": float(c.sem[0]),
            "best": float(c.mean[best]), "best_time": float(t[best]),
            "last": float(c.mean[-1]), "last_sem": float(c.sem[-1]),
            "nan_queries_max": int(c.n_nan.max()),
        }
        if scores is not None and m in scores:
            row["wall_time_s"] = round(scores[m].wall_time, 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")
