"""First-order methods: Grad-Dot and Grad-Cos.

Public: ``FirstOrderOptions``, ``grad_dot``, ``grad_cos``.

Scores are reported unscaled: t small steps of size eta give tau_i ~ (eta t / n) g_q . g_i, and
that factor is irrelevant to cosine and Spearman agreement.
"""
from __future__ import annotations

import dataclasses

import torch

from .common import BaseOptions, Context, prepare

#: gradient norms are clamped below at this value before normalising (Grad-Cos)
NORM_FLOOR = 1e-30


@dataclasses.dataclass(frozen=True)
class FirstOrderOptions(BaseOptions):
    """Grad-Dot / Grad-Cos take only the common options (``dtype``, ``memory_budget_mb``)."""


def _dot_scores(ctx: Context, train_indices, query_indices, normalize: bool) -> torch.Tensor:
    g_query = ctx.grads("test", query_indices)
    if normalize:
        g_query = g_query / g_query.norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)
    cols = []
    for _, g in ctx.grad_chunks("train", train_indices):
        if normalize:
            g = g / g.norm(dim=1, keepdim=True).clamp_min(NORM_FLOOR)
        cols.append(g_query @ g.T)
    return torch.cat(cols, dim=1)


def grad_dot(model, splits, train_indices, query_indices, opts: FirstOrderOptions):
    """Grad-Dot: g_query . g_i, (Q, T), + = helpful, unscaled (first order in further training)."""
    ctx = prepare(model, splits, opts)
    return _dot_scores(ctx, train_indices, query_indices, False), {}


def grad_cos(model, splits, train_indices, query_indices, opts: FirstOrderOptions):
    """Grad-Cos: g_query . g_i / (|g_query| |g_i|), (Q, T), + = helpful."""
    ctx = prepare(model, splits, opts)
    return _dot_scores(ctx, train_indices, query_indices, True), {}
