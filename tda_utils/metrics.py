"""Agreement of attribution scores with the further-training gold standard.

Public: ``Curve``, ``agreement``, ``cosine_rows``, ``spearman_rows``, ``rank_rows``.

``agreement(tau, scores)``: tau (n_evals, n_query, n_left_out) against scores (n_query,
n_left_out) or (n_evals, n_query, n_left_out); one value per (eval time, query) across the
left-out instances; mean and SEM (std / sqrt(count), ddof=1) over queries. A constant vector
(zero norm, or no rank variation) gives NaN, which is left out of the mean and counted in
``n_nan``.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from .config import check_choice

METRICS = ("cosine", "spearman")


@dataclasses.dataclass
class Curve:
    """Agreement over time. ``mean``, ``sem``, ``n_nan``: (n_evals,); ``values``: (n_evals, n_query)."""

    mean: torch.Tensor
    sem: torch.Tensor
    values: torch.Tensor
    n_nan: torch.Tensor
    metric: str

    def at(self, j: int) -> tuple[float, float]:
        """(mean, sem) at evaluation index ``j`` (negative counts from the end)."""
        return float(self.mean[j]), float(self.sem[j])


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis; NaN where either vector is all zeros."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(-1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), cos, torch.full_like(cos, float("nan")))


def rank_rows(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) along the last axis, float64."""
    x = x.double()
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64).expand_as(x)
    # group ties: new group starts where the sorted value changes
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[..., 1:] = sorted_x[..., 1:] != sorted_x[..., :-1]
    group = new.long().cumsum(-1) - 1
    sums = torch.zeros_like(sorted_x).scatter_add_(-1, group, pos)
    counts = torch.zeros_like(sorted_x).scatter_add_(-1, group, torch.ones_like(pos))
    avg = sums.gather(-1, group) / counts.gather(-1, group)
    return torch.empty_like(avg).scatter_(-1, order, avg)


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation along the last axis (Pearson of average ranks); NaN for constants."""
    a, b = torch.broadcast_tensors(a, b)
    ra, rb = rank_rows(a), rank_rows(b)
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    return cosine_rows(ra, rb)


def agreement(tau: torch.Tensor, scores: torch.Tensor, metric: str = "cosine") -> Curve:
    """Agreement of ``scores`` with ``tau`` per (eval, query); mean and SEM over queries."""
    check_choice("metric", metric, METRICS)
    tau = torch.as_tensor(tau)
    scores = torch.as_tensor(scores)
    if tau.ndim != 3:
        raise ValueError(f"tau must have shape (n_evals, n_query, n_left_out), got {tuple(tau.shape)}")
    if scores.shape[-2:] != tau.shape[-2:]:
        raise ValueError(f"scores shape {tuple(scores.shape)} does not match tau's (n_query, n_left_out) "
                         f"= {tuple(tau.shape[-2:])}; scores must be query-major")
    fn = cosine_rows if metric == "cosine" else spearman_rows
    vals = fn(tau, scores)  # (E, Q)
    ok = ~torch.isnan(vals)
    cnt = ok.sum(-1)
    filled = torch.where(ok, vals, torch.zeros_like(vals))
    mean = filled.sum(-1) / cnt.clamp(min=1)
    var = (torch.where(ok, vals - mean[:, None], torch.zeros_like(vals)) ** 2).sum(-1) / (cnt - 1).clamp(min=1)
    sem = var.sqrt() / cnt.clamp(min=1).double().sqrt()
    nan = torch.full_like(mean, float("nan"))
    mean = torch.where(cnt > 0, mean, nan)
    sem = torch.where(cnt > 1, sem, nan)
    return Curve(mean=mean, sem=sem, values=vals, n_nan=(~ok).sum(-1), metric=metric)
