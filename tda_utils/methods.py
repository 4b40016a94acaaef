"""Attribution methods registry.

Public: ``attribute``, ``register_method``, ``METHODS``, ``AttributionScores``, ``PeakMemory``,
``train_query_grads``.

Every method returns ``AttributionScores`` whose ``values`` have shape (n_query, n_train_indices)
(query-major) and estimate tau_i = f(theta without i) - f(theta): positive = helpful. The sign is
fixed here; notebooks never negate. Influence-type methods include the 1/n_train factor;
first-order methods (Grad-Dot, Grad-Cos) are reported unscaled (their scale eta t / n is unknown
and irrelevant to cosine and Spearman agreement).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .config import check_choice, check_indices
from .data import Splits
from .grads import dataset_tensors, iter_per_sample_grads, per_sample_grads

METHODS: dict[str, Callable[..., tuple[torch.Tensor, dict]]] = {}


@dataclasses.dataclass
class AttributionScores:
    """``values``: (n_query, n_train_indices). ``config``: the options the method ran with.
    ``diagnostics``: method-specific (iterations, residuals, lambda0, ...)."""

    method: str
    values: torch.Tensor
    train_indices: tuple[int, ...]
    query_indices: tuple[int, ...]
    config: dict[str, Any]
    diagnostics: dict[str, Any]
    wall_time: float
    peak_memory_mb: float


def register_method(name: str) -> Callable:
    """Decorator: register ``fn(model, splits, train_indices, query_indices, **options)`` returning
    ``(values (n_query, n_train), diagnostics dict)``."""

    def deco(fn):
        METHODS[name] = fn
        return fn

    return deco


class PeakMemory:
    """Context manager: peak increase of the process's resident memory (MB), sampled every 2 ms."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak_mb = interval, 0.0

    def __enter__(self) -> "PeakMemory":
        import psutil

        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20


def attribute(method: str, model: nn.Module, splits: Splits, train_indices: Sequence[int] | None = None,
              query_indices: Sequence[int] | None = None, **options: Any) -> AttributionScores:
    """Run attribution ``method`` (see ``METHODS``) for test ``query_indices`` x ``train_indices``.

    Defaults: all training instances, all test instances. ``options`` go to the method.
    """
    check_choice("method", method, sorted(METHODS))
    train_idx = check_indices("train_indices", range(splits.n_train) if train_indices is None else train_indices,
                              splits.n_train)
    query_idx = check_indices("query_indices", range(splits.n_test) if query_indices is None else query_indices,
                              splits.n_test)
    was = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with PeakMemory() as mem:
            values, diag = METHODS[method](model, splits, list(train_idx), list(query_idx), **options)
    finally:
        model.train(was)
    wall = time.perf_counter() - start
    values = values.detach()
    if values.shape != (len(query_idx), len(train_idx)):
        raise RuntimeError(f"method {method} returned shape {tuple(values.shape)}, expected "
                           f"{(len(query_idx), len(train_idx))}")
    return AttributionScores(method=method, values=values, train_indices=train_idx, query_indices=query_idx,
                             config=dict(options), diagnostics=diag, wall_time=wall,
                             peak_memory_mb=mem.peak_mb)


def train_query_grads(model: nn.Module, splits: Splits, train_indices, query_indices,
                      memory_budget_mb: float = 1024.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample gradients (n_train_indices, d) and (n_query, d) at the model's parameters."""
    g_train = per_sample_grads(model, splits.train, train_indices, splits.task, memory_budget_mb=memory_budget_mb)
    g_query = per_sample_grads(model, splits.test, query_indices, splits.task, memory_budget_mb=memory_budget_mb)
    return g_train, g_query


def _dot_scores(model, splits, train_indices, query_indices, normalize: bool, memory_budget_mb: float):
    g_query = per_sample_grads(model, splits.test, query_indices, splits.task, memory_budget_mb=memory_budget_mb)
    if normalize:
        g_query = g_query / g_query.norm(dim=1, keepdim=True).clamp_min(1e-30)
    inputs, target = dataset_tensors(splits.train, train_indices)
    cols = []
    for _, g in iter_per_sample_grads(model, inputs, target, splits.task, memory_budget_mb=memory_budget_mb):
        if normalize:
            g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
        cols.append(g_query @ g.T)
    return torch.cat(cols, dim=1)


@register_method("grad_dot")
def grad_dot(model, splits, train_indices, query_indices, memory_budget_mb: float = 1024.0):
    """Grad-Dot: g_query . g_i (first order in further-training time; + = helpful)."""
    return _dot_scores(model, splits, train_indices, query_indices, False, memory_budget_mb), {}


@register_method("grad_cos")
def grad_cos(model, splits, train_indices, query_indices, memory_budget_mb: float = 1024.0):
    """Grad-Cos: g_query . g_i / (|g_query| |g_i|)."""
    return _dot_scores(model, splits, train_indices, query_indices, True, memory_budget_mb), {}
