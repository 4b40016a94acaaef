"""Agreement of attribution scores with the further-training gold standard.

Public: ``Curve``, ``SeedCurve``, ``agreement``, ``seed_group_agreement``, ``sorted_scores``,
``cosine_rows``, ``spearman_rows``, ``rank_rows``, ``nan_mean_sem``, ``nan_argmax``,
``curve_from_values``, ``seed_curve_from`` (the last steps, shared with ``panels``).

``agreement(tau, scores)``: tau (n_evals, n_query, n_left_out) against scores (n_query,
n_left_out) or (n_evals, n_query, n_left_out); one value per (eval time, query) across the
left-out instances; mean and SEM (std / sqrt(count), ddof=1) over queries. A constant vector
(zero norm, or no rank variation) gives NaN, which is left out of the mean and counted in
``n_nan`` and ``n_dropped``; with ``nan_as_zero=True`` (the authors' convention) it counts as 0
and nothing is dropped.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..config import check_choice

METRICS = ("cosine", "spearman")


@dataclasses.dataclass
class Curve:
    """Agreement over time: ``mean``, ``sem``, ``n_nan``, ``n_dropped`` (n_evals,), ``values``
    (n_evals, Q).

    ``n_nan``: queries whose value is undefined (a constant tau or score row); ``n_dropped``:
    queries left out of ``mean`` and ``sem`` (``n_nan``, or 0 under ``nan_as_zero``).
    """

    mean: torch.Tensor
    sem: torch.Tensor
    values: torch.Tensor
    n_nan: torch.Tensor
    metric: str
    n_dropped: torch.Tensor | None = None

    def __post_init__(self) -> None:
        """Default ``n_dropped`` to ``n_nan``."""
        if self.n_dropped is None:
            self.n_dropped = self.n_nan


def nan_argmax(x: torch.Tensor) -> int:
    """Index of the largest entry of a 1-D tensor, NaN entries ignored (0 if all are NaN)."""
    return int(torch.nan_to_num(x.double(), nan=-math.inf).argmax())


def nan_mean_sem(vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and SEM (std with ddof=1 over sqrt(count)) along the last axis, NaNs left out.

    Returns (mean, sem, count); mean is NaN without values, sem NaN with fewer than two.
    """
    ok = ~torch.isnan(vals)
    cnt = ok.sum(-1)
    filled = torch.where(ok, vals, torch.zeros_like(vals))
    mean = filled.sum(-1) / cnt.clamp(min=1)
    var = (torch.where(ok, vals - mean[..., None], torch.zeros_like(vals)) ** 2).sum(-1) / (
        cnt - 1
    ).clamp(min=1)
    sem = var.sqrt() / cnt.clamp(min=1).double().sqrt()
    nan = torch.full_like(mean, float("nan"))
    return torch.where(cnt > 0, mean, nan), torch.where(cnt > 1, sem, nan), cnt


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis; NaN where either vector is all zeros."""
    a, b = torch.broadcast_tensors(a.double(), b.double())
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(-1) / (na * nb)
    return torch.where((na > 0) & (nb > 0), cos, torch.full_like(cos, float("nan")))


def rank_rows(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties share their mean rank) along the last axis, float64, on
    ``x``'s device.
    """
    x = x.double()
    order = x.argsort(dim=-1, stable=True)
    sorted_x = x.gather(-1, order)
    n = x.shape[-1]
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(x)
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


def agreement(
    tau: torch.Tensor, scores: torch.Tensor, metric: str = "cosine", nan_as_zero: bool = False
) -> Curve:
    """Agreement of ``scores`` with ``tau`` per (eval, query); mean and SEM over queries.

    External scores (another library's) are compared the same way once they follow the suite's
    convention: query-major ``(n_query, n_left_out)`` in the gold standard's query and left-out
    order, and positive = helpful (removing the instance raises the query's loss); transpose a
    ``(n_train, n_query)`` matrix and flip a harmful-positive sign first
    (``your_model.to_query_major``).

    Args:
        tau: gold standard, (n_evals, n_query, n_left_out).
        scores: method scores, (n_query, n_left_out) or (n_evals, n_query, n_left_out).
        metric: "cosine" or "spearman", computed across the left-out instances.
        nan_as_zero: how a query with an undefined value is treated (its tau or score row is all
            zero for cosine, or has no rank variation for Spearman). False (default): it is left
            out of the mean and SEM and counted in ``Curve.n_dropped``. True: it counts as 0, the
            authors' convention (``F.cosine_similarity`` of a zero vector is 0).

    Returns:
        A ``Curve``; ``n_nan`` counts the undefined queries either way.
    """
    check_choice("metric", metric, METRICS)
    if not isinstance(nan_as_zero, bool):
        raise ValueError(f"nan_as_zero must be True or False, got {nan_as_zero!r}")
    tau = torch.as_tensor(tau)
    scores = torch.as_tensor(scores)
    if tau.ndim != 3:
        raise ValueError(
            f"tau must have shape (n_evals, n_query, n_left_out), got {tuple(tau.shape)}"
        )
    if scores.shape[-2:] != tau.shape[-2:]:
        raise ValueError(
            f"scores shape {tuple(scores.shape)} does not match tau's (n_query, n_left_out) "
            f"= {tuple(tau.shape[-2:])}; scores must be query-major"
        )
    fn = cosine_rows if metric == "cosine" else spearman_rows
    return curve_from_values(fn(tau, scores), metric, nan_as_zero)


def curve_from_values(vals: torch.Tensor, metric: str, nan_as_zero: bool = False) -> Curve:
    """The ``Curve`` of per-(eval, query) agreement values ``vals`` (n_evals, n_query)."""
    n_nan = torch.isnan(vals).sum(-1)
    if nan_as_zero:
        vals = torch.nan_to_num(vals, nan=0.0)
    mean, sem, cnt = nan_mean_sem(vals)
    return Curve(
        mean=mean, sem=sem, values=vals, n_nan=n_nan, metric=metric, n_dropped=vals.shape[-1] - cnt
    )


@dataclasses.dataclass
class SeedCurve:
    """Best agreement (max over time) vs the number of seeds averaged (Figs. 3, 7, 8, 9).

    ``ks``: seeds per group; ``best``, ``sem``: (len(ks),); ``best_time_index``: argmax over time;
    ``n_groups``: floor(n_seeds / k) non-overlapping groups of consecutive seeds.
    """

    ks: list[int]
    best: torch.Tensor
    sem: torch.Tensor
    best_time_index: list[int]
    n_groups: list[int]


def seed_group_agreement(
    per_seed: torch.Tensor,
    scores: torch.Tensor,
    ks=(1, 2, 5, 10, 20, 50, 100),
    metric: str = "cosine",
) -> SeedCurve:
    """The paper's seed-averaging analysis.

    ``per_seed``: (n_evals, n_seeds, n_query, n_left_out), e.g. ``FurtherTrainingResult.per_seed``;
    ``scores``: (n_query, n_left_out) or (n_evals, n_query, n_left_out). For each k (clipped to
    the seeds available) the seeds are averaged in floor(n_seeds / k) non-overlapping blocks of k
    (as ``avg_pool1d(kernel_size=k)``); agreement is computed per (time, query, group); the value
    is the max over time of the mean over (query, group), its SEM the std at that time over
    (query, group) divided by sqrt(n_query * n_groups). NaNs (constant vectors) are left out.
    """
    check_choice("metric", metric, METRICS)
    n_seeds = per_seed.shape[1]
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= n_seeds})
    if not ks:
        raise ValueError(f"ks has no value between 1 and n_seeds={n_seeds}")
    fn = cosine_rows if metric == "cosine" else spearman_rows
    means, sems = [], []
    for k in ks:
        g = n_seeds // k
        tau = (
            per_seed[:, : g * k].reshape(per_seed.shape[0], g, k, *per_seed.shape[2:]).mean(2)
        )  # (E, G, Q, L)
        s = scores if scores.ndim == 2 else scores[:, None]
        vals = fn(tau, s)  # (E, G, Q)
        mean_t, sem_t, _ = nan_mean_sem(vals.reshape(vals.shape[0], -1))  # over (group, query)
        means.append(mean_t)
        sems.append(sem_t)
    return seed_curve_from(ks, means, sems, [n_seeds // k for k in ks])


def seed_curve_from(ks, means, sems, groups) -> SeedCurve:
    """The ``SeedCurve`` from each k's mean and SEM over (group, query) per eval, (n_evals,)."""
    best, sem, arg = [], [], []
    for mean_t, sem_t in zip(means, sems):
        j = nan_argmax(mean_t)
        best.append(torch.nan_to_num(mean_t[j], nan=0.0))
        sem.append(sem_t[j])
        arg.append(j)
    return SeedCurve(
        ks=list(ks),
        best=torch.stack(best),
        sem=torch.stack(sem).double(),
        best_time_index=arg,
        n_groups=list(groups),
    )


def sorted_scores(values: torch.Tensor) -> torch.Tensor:
    """Fig. 10: each query's scores sorted ascending, averaged over queries, L2-normalised.

    ``values``: (n_query, n_left_out) -> (n_left_out,).
    """
    curve = values.double().sort(dim=-1).values.mean(0)
    norm = curve.norm()
    return curve / norm if norm > 0 else curve
