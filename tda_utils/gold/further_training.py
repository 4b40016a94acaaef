"""The gold standard: further training of the final model with and without each left-out instance.

Public: ``further_train``, ``FurtherTrainingResult``, ``run_orders``, ``eval_schedule``.

For every seed s, one full run and one run per left-out instance i start from the same
parameters (the final model by default) with a fresh optimizer, and are paired on the batch order
of seed s (``training.epoch_orders``):

* ``leave_out="permutation"``: run i uses the seed's permutation with i deleted; its batches are
  consecutive chunks of that shorter order (batches before i's position are the full run's, later
  ones shift by one).
* ``leave_out="every_batch"``: run i uses the full run's batches and at every step minimises
  ``mean batch loss - loss_i / n_train``.

Time is counted in batch *slots*: slot b of epoch e is the full run's b-th batch. A leave-one-out
run whose order is one shorter can have an empty last slot (when n_train % batch_size == 1); it
then makes no update in that slot. Losses are recorded after every ``eval_every`` epochs, or after
the slots in ``eval_steps`` (0 = before any update).

Two engines give the same numbers: ``sequential`` (a plain loop over runs with torch.optim) and
``vectorized`` (all runs of a chunk of seeds trained together with ``torch.func.vmap`` over stacked
parameters, optimizers written on the stack; chunked to ``memory_budget_mb``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..cache import Cache, default_results_dir, model_fingerprint
from ..config import FurtherTrainingConfig, check_indices, stable_hash, to_dict
from ..data.registry import Splits
from ..devices import resolve_device
from ..linalg.grads import frozen_state, trainable_params
from ..models.registry import loss_key, resolve_loss
from .engines import (  # noqa: F401  (run_orders and the constants are re-exported)
    GPU_MAX_RUNS,
    QUERY_CHUNK,
    _Sequential,
    _Vectorized,
    run_orders,
)


# ----------------------------------------------------------------------------------------------
# Result
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FurtherTrainingResult:
    """Test losses after further training.

    ``loss_full``: (n_evals, n_seeds, n_query); ``loss_loo``: (n_evals, n_seeds, n_left_out,
    n_query); ``times``: (n_evals,) in ``time_unit`` ("epoch" or "step").
    """

    loss_full: torch.Tensor
    loss_loo: torch.Tensor
    times: torch.Tensor
    time_unit: str
    seeds: tuple[int, ...]
    left_out: tuple[int, ...]
    query_indices: tuple[int, ...]
    config: FurtherTrainingConfig
    wall_time: float = 0.0
    from_cache: int = 0
    #: where the runs computed ("cpu", "cuda:0"); the tensors are on the CPU. The analysis
    #: (``analysis.panels``) computes there by default. Not part of equality.
    device: str = dataclasses.field(default="cpu", compare=False)

    def _seed_rows(self, seeds: int | Iterable[int] | None) -> list[int]:
        if seeds is None:
            return list(range(len(self.seeds)))
        if isinstance(seeds, (int, np.integer)):
            if not 1 <= seeds <= len(self.seeds):
                raise ValueError(
                    f"seeds={seeds} must be between 1 and {len(self.seeds)} (seeds run)"
                )
            return list(range(int(seeds)))
        rows = []
        for s in seeds:
            if int(s) not in self.seeds:
                raise ValueError(f"seed {s} was not run; available seeds: {list(self.seeds)}")
            rows.append(self.seeds.index(int(s)))
        if not rows:
            raise ValueError("seeds is empty")
        return rows

    def per_seed(self, subtract_mean: bool = True, seeds=None) -> torch.Tensor:
        """Paired differences per seed, (n_evals, n_seeds, n_query, n_left_out).

        ``loss_loo - loss_full`` (the full-data run of the same seed subtracted), minus its mean
        over the left-out instances when ``subtract_mean``. Positive = the instance is helpful.
        """
        rows = self._seed_rows(seeds)
        diff = (self.loss_loo[:, rows] - self.loss_full[:, rows, None, :]).transpose(2, 3)
        if subtract_mean:
            diff = diff - diff.mean(dim=-1, keepdim=True)
        return diff

    def attribution(self, subtract_mean: bool = True, seeds=None) -> torch.Tensor:
        """tau, (n_evals, n_query, n_left_out): the seed average of ``per_seed``.

        ``seeds``: None (all), an int k (the first k seeds) or an iterable of seed values.
        """
        return self.per_seed(subtract_mean, seeds).mean(dim=1)

    def attribution_sem(self, subtract_mean: bool = True, seeds=None) -> torch.Tensor:
        """Standard error over seeds of ``attribution``, (n_evals, n_query, n_left_out)."""
        d = self.per_seed(subtract_mean, seeds)
        if d.shape[1] < 2:
            return torch.full_like(d[:, 0], float("nan"))
        return d.std(dim=1) / math.sqrt(d.shape[1])


# ----------------------------------------------------------------------------------------------
# Orders and schedule
# ----------------------------------------------------------------------------------------------
def eval_schedule(
    cfg: FurtherTrainingConfig, n_train: int
) -> tuple[list[tuple[int, int]], torch.Tensor, str]:
    """Evaluation points as (epoch, slot-after) pairs, their times, and the time unit.

    Epoch mode: after the last slot of every ``eval_every``-th epoch; times are epochs.
    Step mode: after global slot k (k = 0: before training); times are steps.
    """
    n_slots = math.ceil(n_train / cfg.batch_size)
    if cfg.eval_steps is None:
        epochs = [e for e in range(1, cfg.epochs + 1) if e % cfg.eval_every == 0]
        if not epochs:
            raise ValueError(
                f"eval_every={cfg.eval_every} exceeds epochs={cfg.epochs}: nothing is evaluated"
            )
        return (
            [(e - 1, n_slots) for e in epochs],
            torch.tensor(epochs, dtype=torch.float64),
            "epoch",
        )
    total = n_slots * cfg.epochs
    if cfg.eval_steps[-1] > total:
        raise ValueError(
            f"eval_steps reaches {cfg.eval_steps[-1]} but epochs={cfg.epochs} x "
            f"{n_slots} steps per epoch gives only {total} steps"
        )
    points = [
        ((k - 1) // n_slots, (k - 1) % n_slots + 1) if k > 0 else (0, 0) for k in cfg.eval_steps
    ]
    return points, torch.tensor(cfg.eval_steps, dtype=torch.float64), "step"


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------
def further_train(
    final: nn.Module,
    splits: Splits,
    cfg: FurtherTrainingConfig,
    query_indices: Sequence[int] | None = None,
    init: dict[str, torch.Tensor] | None = None,
    cache_dir=...,
    progress: bool = True,
    device="auto",
    executor="local",
    loss_fn=None,
) -> FurtherTrainingResult:
    """Run the gold standard; see the module docstring for the semantics.

    ``query_indices``: test instances whose loss is recorded (default: all). ``init``: starting
    parameters (default: the final model's). Per-seed results are cached atomically under
    ``<cache_dir>/further_training/<key>/seed_<s>.pt`` (``cache_dir=None`` disables caching), so
    an interrupted run resumes where it stopped.

    ``device``: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    (``devices.resolve_device``);
    results and caches are CPU tensors. ``executor``: "local" (this process), "ray" (chunks of
    seeds as Ray tasks, ``executors.RayExecutor``) or an executor object; every executor writes
    the same per-seed cache, so a run resumes with any of them.

    ``loss_fn``: None (the built-in per-task loss) or a custom per-sample training loss
    ``(output (..., k), target (...)) -> (...)`` (``models.resolve_loss``; it must work under
    ``vmap`` with leading run dimensions); it enters the cache key (``models.loss_key``). The
    recorded query losses are then ``loss_fn`` too (in the runs' dtype, stored as float64).
    """
    from .executors import get_executor  # late import: executors imports this module

    if not isinstance(cfg, FurtherTrainingConfig):
        raise ValueError(f"cfg must be a FurtherTrainingConfig, got {type(cfg).__name__}")
    n = splits.n_train
    left_out = check_indices("left_out", cfg.left_out, n)
    queries = check_indices(
        "query_indices",
        range(splits.n_test) if query_indices is None else query_indices,
        splits.n_test,
    )
    dtype = cfg.torch_dtype
    model = copy.deepcopy(final).to(dtype).eval()
    if init is not None:
        with torch.no_grad():
            named = dict(model.named_parameters())
            for k, v in init.items():
                if k not in named:
                    raise ValueError(f"init has unknown parameter {k!r}")
                named[k].copy_(v)
    data = splits.to(dtype)
    points, times, unit = eval_schedule(cfg, n)

    params0 = trainable_params(model)
    key_cfg = {**to_dict(cfg), "seeds": None, "memory_budget_mb": None, "max_runs_per_chunk": None}
    fingerprint = model_fingerprint(final)
    root = default_results_dir() if cache_dir is ... else cache_dir
    resolve_loss(splits.task, loss_fn)  # validates
    custom = {} if loss_fn is None or root is None else {"loss": loss_key(loss_fn)}
    key = stable_hash(
        key_cfg,
        splits.name,
        splits.task,
        list(queries),
        fingerprint,
        *params0.values(),
        *frozen_state(model).values(),
        *data.train.tensors,
        *data.test.tensors,
        *custom.values(),
    )
    cache = Cache(
        root,
        "further_training",
        key,
        {
            "config": key_cfg,
            "dataset": splits.name,
            "query_indices": list(queries),
            "model_fingerprint": fingerprint,
            "model": getattr(final, "fimo_spec", None),
            **custom,
        },
    )
    start = time.perf_counter()
    results: dict[int, dict] = {}
    todo = []
    check = _seed_item_check(len(points), len(left_out), len(queries))
    for s in cfg.seeds:
        hit = cache.load(f"seed_{s}", check=check)
        if hit is not None:
            results[s] = hit
        else:
            todo.append(s)
    from_cache = len(results)

    engine = _Vectorized if cfg.engine == "vectorized" else _Sequential
    runner = get_executor(executor)
    args = (model, data, cfg, left_out, queries, points, loss_fn)
    for s, res in runner.run(engine, args, device, todo, progress):
        cache.save(f"seed_{s}", res)
        results[s] = res

    full = torch.stack([results[s]["loss_full"] for s in cfg.seeds], dim=1)
    loo = torch.stack([results[s]["loss_loo"] for s in cfg.seeds], dim=1)
    return FurtherTrainingResult(
        loss_full=full,
        loss_loo=loo,
        times=times,
        time_unit=unit,
        seeds=cfg.seeds,
        left_out=left_out,
        query_indices=queries,
        config=cfg,
        wall_time=time.perf_counter() - start,
        from_cache=from_cache,
        device=_ran_on(device),
    )


def _ran_on(device) -> str:
    """The device the runs used, as recorded on the result (a Ray worker's may not exist here)."""
    try:
        return str(resolve_device(device))
    except ValueError:
        return str(device)


def _seed_item_check(n_evals: int, n_left_out: int, n_query: int):
    """A ``Cache.load`` check of one seed's item: finite float tensors of the expected shapes."""
    shapes = {"loss_full": (n_evals, n_query), "loss_loo": (n_evals, n_left_out, n_query)}

    def check(obj) -> None:
        for name, shape in shapes.items():
            t = obj[name]
            ok = isinstance(t, torch.Tensor) and t.is_floating_point()
            if not ok or tuple(t.shape) != shape:
                raise ValueError(f"{name} is not a float tensor of shape {shape}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} holds non-finite values")

    return check
