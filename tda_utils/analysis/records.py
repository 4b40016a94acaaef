"""The results record of one notebook run, stored as plain data for ``05_paper_figures``.

Public: ``RunResults``, ``load_results``, ``AGREEMENT_FIGURES``, ``SEED_FIGURES``.

Stored with ``torch.save`` as dicts, lists, numbers, strings and tensors only, read back with
``torch.load(weights_only=True)``, under ``<results>/panels/<profile>/<notebook>__<dataset>.pt``.
``pipeline.collect_results`` fills and saves one.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..cache import atomic_save, default_results_dir
from .metrics import Curve, SeedCurve

#: the record's figures by kind: agreement over time, seed curves, sorted scores
AGREEMENT_FIGURES = ("fig2", "fig6", "fig5", "fig4", "fig11")
SEED_FIGURES = ("fig7", "fig9", "fig8")


@dataclasses.dataclass
class RunResults:
    """Everything ``05_paper_figures`` needs from one notebook run.

    Attributes:
        notebook, dataset, profile: which run.
        time_unit: "epoch" | "step" of the SGD gold standard.
        times: {figure id: (n_evals,) evaluation times} of each agreement figure.
        agreement: {figure id: {method: Curve}} (fig2 cosine, fig6 Spearman, fig5 without the
            mean subtraction, fig4 Adam, fig11 re-training).
        seeds: {figure id: {method: SeedCurve}} (fig7, fig9 without the mean subtraction,
            fig8 Adam).
        sorted_scores: Fig. 10's {label: (n_left_out,)} curves.
        wall_time: {method: seconds}.
        final_eval: the final model's test metrics.
        labels: {method: its figure and table label} (``methods.registry.method_label``, e.g.
            "LiSSA-H (depth 100)"); missing methods use the registered label.
        final_model: where the final model came from (``final.describe``: "final model:
            shipped, trained on ..." or "final model: trained here; ...").
    """

    notebook: str
    dataset: str
    profile: str
    time_unit: str
    times: dict[str, torch.Tensor]
    agreement: dict[str, dict[str, Curve]]
    seeds: dict[str, dict[str, SeedCurve]]
    sorted_scores: dict[str, torch.Tensor]
    wall_time: dict[str, float]
    final_eval: dict[str, float]
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    final_model: str = ""

    @property
    def name(self) -> str:
        """``<notebook>__<dataset>``."""
        return f"{self.notebook}__{self.dataset}"

    def to_data(self) -> dict[str, Any]:
        """The record as plain data (dicts, lists, numbers, strings, tensors)."""
        out = dataclasses.asdict(self)  # Curve / SeedCurve become dicts
        out["final_eval"] = {k: float(v) for k, v in self.final_eval.items()}
        return out

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> RunResults:
        """The record from ``to_data``'s plain data."""
        d = dict(data)
        d["agreement"] = {
            f: {m: Curve(**c) for m, c in cs.items()} for f, cs in d["agreement"].items()
        }
        d["seeds"] = {f: {m: SeedCurve(**c) for m, c in cs.items()} for f, cs in d["seeds"].items()}
        return cls(**d)

    def path(self, results_dir=None) -> Path:
        """Where ``save`` writes: ``<results>/panels/<profile>/<notebook>__<dataset>.pt``."""
        return (
            Path(results_dir or default_results_dir()) / "panels" / self.profile / f"{self.name}.pt"
        )

    def save(self, results_dir=None) -> Path:
        """Store the record as plain data (atomic); returns the path."""
        path = self.path(results_dir)
        atomic_save(self.to_data(), path)
        return path


def load_results(profile: str, results_dir=None) -> dict[str, RunResults]:
    """Every stored ``RunResults`` of ``profile``: {"<notebook>__<dataset>": record}.

    A file that is not a record of this version (e.g. written by an older suite) is skipped with
    a warning naming it; rerunning its notebook replaces it.
    """
    folder = Path(results_dir or default_results_dir()) / "panels" / profile
    runs = {}
    for p in sorted(folder.glob("*.pt")) if folder.exists() else []:
        try:
            runs[p.stem] = RunResults.from_data(torch.load(p, weights_only=True))
        except (pickle.UnpicklingError, RuntimeError, TypeError, KeyError) as err:
            warnings.warn(
                f"skipping {p}: not a results record of this version ({err}); rerun its notebook",
                stacklevel=2,
            )
    return runs
