"""The gold standard's panels, computed once per gold standard and scores, where it ran.

Public: ``tau``, ``agreement_curves``, ``seed_curves``, ``memo_for``, ``clear_memo``,
``analysis_device``, ``chunk_evals``, ``score_key``, ``reference``, ``is_reference``,
``BUDGET_MB``, ``SMALL_MB``.

A notebook draws every panel in a figure cell and ``collect_results`` builds the same panels
again; both go through ``pipeline.agreement_panel`` / ``seed_panel`` / ``sorted_panel`` /
``top_instances``, which read a memo of the ``FurtherTrainingResult``:

* tau per (subtract_mean, seeds): (n_evals, n_query, n_left_out), a CPU tensor (read-only);
* a ``Curve`` per (metric, subtract_mean, seeds, one method's scores);
* a ``SeedCurve`` per (metric, subtract_mean, ks, one method's scores).

A method's scores are keyed by their content (``score_key``: a BLAKE2 digest of the values'
bytes, shape and dtype), so a different scores dict never hits a stale entry while the same scores
in another dict (``applicable`` filters one) do. The memo is a side table keyed by the result's
``id`` and dropped with the result (``weakref.finalize``): it is no field of the result, so it is
in no pickle, cache file, ``repr`` or equality. It is cleared when ``loss_full``, ``loss_loo`` or
``times`` are replaced or changed in place (tensor identity and version counter).

Device: ``device=None`` computes where the gold standard ran (``FurtherTrainingResult.device``)
when that device exists here, else on the CPU; an explicit ``device`` is honoured
(``devices.resolve_device``). Every result is a CPU tensor.

Memory: the per-seed differences (n_evals, n_seeds, n_query, n_left_out) are built in chunks of
evaluations (``chunk_evals``) whose working set (about ``WORKING_COPIES`` chunk-size tensors) fits
``memory_budget_mb`` (default ``BUDGET_MB`` on the CPU, half the free memory on CUDA) and never
exceeds one full-size copy of the per-seed tensor (or ``SMALL_MB``, for a small one). Every
quantity is computed per evaluation except the argmax over time, which runs on the gathered
(n_evals,) means, so chunking does not change any number.

Numbers: on the CPU they equal the reference path (``gold.attribution`` / ``gold.per_seed`` with
``metrics.agreement`` / ``seed_group_agreement``) bit for bit: the same operations on the same
values, shared between methods (tau, a seed group's mean and norms are computed once, not once
per method). On CUDA they agree to float64 rounding. ``with reference():`` makes the pipeline's
panel functions take the reference path (tests, ``benchmarks/analysis.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..config import check_choice
from ..devices import resolve_device
from ..gold.further_training import FurtherTrainingResult
from .metrics import METRICS, curve_from_values, nan_mean_sem, rank_rows, seed_curve_from

#: default memory budget of the analysis on the CPU (MB)
BUDGET_MB = 2048
#: below this working set (MB) a per-seed tensor smaller than it is not split (fewer small ops)
SMALL_MB = 64
#: tensors of one chunk's size held at once (moved losses, differences, centred differences, a
#: product), by metric: Spearman's ranks need an argsort, a gather and scatters besides
WORKING_COPIES = {"cosine": 4, "spearman": 8}

_MEMOS: dict[int, PanelMemo] = {}
_KEYS = WeakIdKeyDictionary()  # {score tensor: (its version, score_key)}
_REFERENCE = [False]


@contextlib.contextmanager
def reference():
    """Within this block the pipeline's panel functions take the reference path (no memo)."""
    before = _REFERENCE[0]
    _REFERENCE[0] = True
    try:
        yield
    finally:
        _REFERENCE[0] = before


def is_reference() -> bool:
    """Whether ``reference()`` is active."""
    return _REFERENCE[0]


class PanelMemo:
    """The memo of one ``FurtherTrainingResult``: ``entries`` {key: value}, ``hits``, ``misses``."""

    def __init__(self, gold: FurtherTrainingResult) -> None:
        self.reset(gold)

    @staticmethod
    def _state(gold: FurtherTrainingResult) -> list:
        return [(t, t._version) for t in (gold.loss_full, gold.loss_loo, gold.times)]

    def reset(self, gold: FurtherTrainingResult) -> None:
        """Forget every entry and record the tensors they were computed from."""
        self.state = self._state(gold)
        self.entries: dict = {}
        self.hits = 0
        self.misses = 0

    def current(self, gold: FurtherTrainingResult) -> bool:
        """Whether the gold standard's tensors are still the ones the entries come from."""
        now = self._state(gold)
        return all(a is b and v == w for (a, v), (b, w) in zip(self.state, now))

    def lookup(self, key):
        """The entry under ``key`` or None, counting hits and misses."""
        hit = self.entries.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit


def memo_for(gold: FurtherTrainingResult) -> PanelMemo:
    """The memo of ``gold`` (created on first use, reset when its tensors changed)."""
    if not isinstance(gold, FurtherTrainingResult):
        raise ValueError(f"gold must be a FurtherTrainingResult, got {type(gold).__name__}")
    key = id(gold)
    memo = _MEMOS.get(key)
    if memo is None:
        memo = _MEMOS[key] = PanelMemo(gold)
        weakref.finalize(gold, _MEMOS.pop, key, None)
    elif not memo.current(gold):
        memo.reset(gold)
    return memo


def clear_memo(gold: FurtherTrainingResult | None = None) -> None:
    """Forget the panels of ``gold`` (of every gold standard when None)."""
    memos = list(_MEMOS.values()) if gold is None else [memo_for(gold)]
    for memo in memos:
        memo.entries.clear()


def score_key(values: torch.Tensor) -> tuple:
    """A content key of a score tensor: (shape, dtype, BLAKE2b digest of its bytes); remembered
    per tensor object and version counter, so an unchanged tensor is hashed once.
    """
    values = torch.as_tensor(values)
    known = _KEYS.get(values)
    if known is not None and known[0] == values._version:
        return known[1]
    t = values.detach().to("cpu").contiguous()
    h = hashlib.blake2b(digest_size=16)
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    key = (tuple(t.shape), str(t.dtype), h.hexdigest())
    _KEYS[values] = (values._version, key)
    return key


def analysis_device(gold: FurtherTrainingResult, device=None) -> torch.device:
    """``device`` resolved, or (None) the gold standard's recorded device when it exists here."""
    if device is not None:
        return resolve_device(device)
    try:
        return resolve_device(getattr(gold, "device", "cpu") or "cpu")
    except ValueError:
        return torch.device("cpu")


def chunk_evals(
    n_evals: int, per_eval_bytes: int, device, memory_budget_mb=None, copies: int = 4
) -> int:
    """Evaluations per chunk: ``copies`` tensors of ``per_eval_bytes`` per evaluation fit the
    budget (``memory_budget_mb``; default ``BUDGET_MB`` on the CPU, half the free CUDA memory),
    and the working set never exceeds one full-size copy (``n_evals * per_eval_bytes``), or
    ``SMALL_MB`` when that is larger.
    """
    device = torch.device(device)
    if memory_budget_mb is not None:
        if not memory_budget_mb > 0:
            raise ValueError(f"memory_budget_mb={memory_budget_mb} must be > 0")
        budget = memory_budget_mb * 2**20
    elif device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
    else:
        budget = BUDGET_MB * 2**20
    budget = min(budget, max(n_evals * per_eval_bytes, SMALL_MB * 2**20))
    return int(max(1, min(n_evals, budget // (copies * max(1, per_eval_bytes)))))


def _diff_chunks(gold, rows, subtract_mean, device, budget, copies):
    """(t0, t1, per-seed differences of evaluations t0:t1) on ``device``, as ``per_seed``."""
    n_evals, n_seeds, n_left_out, n_query = gold.loss_loo.shape
    per_eval = len(rows) * n_left_out * n_query * gold.loss_loo.element_size()
    step = chunk_evals(n_evals, per_eval, device, budget, copies)
    every = list(rows) == list(range(n_seeds))
    for t0 in range(0, n_evals, step):
        t1 = min(n_evals, t0 + step)
        loo, full = gold.loss_loo[t0:t1], gold.loss_full[t0:t1]
        if not every:
            loo, full = loo[:, list(rows)], full[:, list(rows)]
        loo, full = loo.to(device), full.to(device)
        diff = (loo - full[:, :, None, :]).transpose(2, 3)
        del loo, full
        if subtract_mean:
            diff = diff - diff.mean(dim=-1, keepdim=True)
        yield t0, t1, diff


def tau(gold, subtract_mean=True, seeds=None, device=None, memory_budget_mb=None):
    """``gold.attribution(subtract_mean, seeds)``, memoized: (n_evals, n_query, n_left_out), a
    CPU tensor shared with later calls (do not change it in place).
    """
    rows = tuple(gold._seed_rows(seeds))
    memo = memo_for(gold)
    key = ("tau", bool(subtract_mean), rows)
    hit = memo.lookup(key)
    if hit is None:
        dev = analysis_device(gold, device)
        chunks = _diff_chunks(gold, rows, subtract_mean, dev, memory_budget_mb, 3)
        hit = memo.entries[key] = torch.cat([d.mean(dim=1).cpu() for _, _, d in chunks])
    return hit


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """``metrics.rank_rows`` on ``x``'s device."""
    return rank_rows(x)


def _prepare(x: torch.Tensor, metric: str):
    """(rows to compare, their norms): x itself for cosine, its centred ranks for Spearman."""
    if metric == "spearman":
        r = _ranks(x)
        x = r - r.mean(-1, keepdim=True)
    x = x.double()
    return x, x.norm(dim=-1)


def _agree(a, b) -> torch.Tensor:
    """``metrics.cosine_rows`` of two prepared operands (broadcast), NaN for a zero norm."""
    (x, nx), (y, ny) = a, b
    cos = (x * y).sum(-1) / (nx * ny)
    return torch.where((nx > 0) & (ny > 0), cos, torch.full_like(cos, float("nan")))


def _check_scores(values: Mapping[str, torch.Tensor], n_evals: int, shape) -> None:
    for m, v in values.items():
        ok = v.ndim == 2 or (v.ndim == 3 and v.shape[0] == n_evals)
        if tuple(v.shape[-2:]) != tuple(shape) or not ok:
            raise ValueError(
                f"scores of {m!r} have shape {tuple(v.shape)}, which does not match tau's "
                f"(n_query, n_left_out) = {tuple(shape)} (or (n_evals={n_evals}, ...)); "
                "scores must be query-major"
            )


def _pending(memo, keys):
    out = {}
    for m, key in keys.items():
        hit = memo.lookup(key)
        if hit is None:
            out[m] = key
    return out


def agreement_curves(
    gold: FurtherTrainingResult,
    values: Mapping[str, torch.Tensor],
    subtract_mean: bool = True,
    metric: str = "cosine",
    seeds=None,
    device=None,
    memory_budget_mb=None,
) -> dict:
    """{method: Curve} of each score tensor in ``values`` ((n_query, n_left_out) or
    (n_evals, n_query, n_left_out)) against tau: ``metrics.agreement``, memoized per method.
    """
    rows = tuple(gold._seed_rows(seeds))
    if not values:  # as the reference: nothing to compare, no other check
        return {}
    check_choice("metric", metric, METRICS)
    values = {m: torch.as_tensor(v) for m, v in values.items()}
    n_evals, n_query = gold.loss_full.shape[0], gold.loss_full.shape[2]
    _check_scores(values, n_evals, (n_query, gold.loss_loo.shape[2]))
    memo = memo_for(gold)
    keys = {
        m: ("agree", metric, bool(subtract_mean), rows, score_key(v)) for m, v in values.items()
    }
    todo = _pending(memo, keys)
    if todo:
        t = tau(gold, subtract_mean, seeds, device, memory_budget_mb)
        dev = analysis_device(gold, device)
        fixed = {m: _prepare(values[m].to(dev), metric) for m in todo if values[m].ndim == 2}
        per_eval = t[0].numel() * 8
        step = chunk_evals(n_evals, per_eval, dev, memory_budget_mb, WORKING_COPIES[metric])
        parts: dict[str, list] = {m: [] for m in todo}
        for t0 in range(0, n_evals, step):
            a = _prepare(t[t0 : t0 + step].to(dev), metric)
            for m in todo:
                b = fixed.get(m) or _prepare(values[m][t0 : t0 + step].to(dev), metric)
                parts[m].append(_agree(a, b).cpu())
        for m, key in todo.items():
            memo.entries[key] = curve_from_values(torch.cat(parts[m]), metric)
    return {m: dataclasses.replace(memo.entries[keys[m]]) for m in values}


def seed_curves(
    gold: FurtherTrainingResult,
    values: Mapping[str, torch.Tensor],
    subtract_mean: bool = True,
    ks: Sequence[int] = (1, 2, 5, 10, 20, 50, 100),
    metric: str = "cosine",
    device=None,
    memory_budget_mb=None,
) -> dict:
    """{method: SeedCurve}: ``metrics.seed_group_agreement`` of ``gold.per_seed(subtract_mean)``
    with each score tensor in ``values``, memoized per method; one pass over the per-seed
    differences serves every method and every k.
    """
    if not values:  # as the reference: nothing to compare, no other check
        return {}
    check_choice("metric", metric, METRICS)
    n_seeds = len(gold.seeds)
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= n_seeds})
    if not ks:
        raise ValueError(f"ks has no value between 1 and n_seeds={n_seeds}")
    values = {m: torch.as_tensor(v) for m, v in values.items()}
    n_evals, n_query = gold.loss_full.shape[0], gold.loss_full.shape[2]
    _check_scores(values, n_evals, (n_query, gold.loss_loo.shape[2]))
    memo = memo_for(gold)
    keys = {
        m: ("seed", metric, bool(subtract_mean), tuple(ks), score_key(v))
        for m, v in values.items()
    }
    todo = _pending(memo, keys)
    if todo:
        _seed_pass(gold, values, todo, memo, subtract_mean, ks, metric, device, memory_budget_mb)
    return {m: dataclasses.replace(memo.entries[keys[m]]) for m in values}


def _seed_pass(gold, values, todo, memo, subtract_mean, ks, metric, device, budget) -> None:
    """One pass over the per-seed differences filling the SeedCurves of ``todo``'s methods."""
    n_seeds = len(gold.seeds)
    rows = tuple(range(n_seeds))
    dev = analysis_device(gold, device)
    fixed = {m: _prepare(values[m].to(dev), metric) for m in todo if values[m].ndim == 2}
    means = {(m, k): [] for m in todo for k in ks}
    sems = {(m, k): [] for m in todo for k in ks}
    taus = []
    for t0, t1, d in _diff_chunks(gold, rows, subtract_mean, dev, budget, WORKING_COPIES[metric]):
        taus.append(d.mean(dim=1).cpu())
        moving = {
            m: _prepare(values[m][t0:t1, None].to(dev), metric) for m in todo if m not in fixed
        }
        for k in ks:
            g = n_seeds // k
            # (for k = 1 too: the mean's contiguous layout sets the order of the sums below)
            group = d[:, : g * k].reshape(d.shape[0], g, k, *d.shape[2:]).mean(2)
            a = _prepare(group, metric)
            for m in todo:
                vals = _agree(a, fixed.get(m) or moving[m])  # (E, G, Q)
                mean_t, sem_t, _ = nan_mean_sem(vals.reshape(vals.shape[0], -1))
                means[m, k].append(mean_t.cpu())
                sems[m, k].append(sem_t.cpu())
            del group, a
    memo.entries.setdefault(("tau", bool(subtract_mean), rows), torch.cat(taus))
    groups = [n_seeds // k for k in ks]
    for m, key in todo.items():
        memo.entries[key] = seed_curve_from(
            ks,
            [torch.cat(means[m, k]) for k in ks],
            [torch.cat(sems[m, k]) for k in ks],
            groups,
        )
