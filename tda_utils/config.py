"""Frozen, validated configuration dataclasses.

Public: ``TrainConfig``, ``FurtherTrainingConfig``, ``check_choice``, ``check_positive``,
``check_indices``, ``to_dict``, ``stable_hash``.

Every invalid value raises ``ValueError`` naming the parameter and the allowed values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

OPTIMIZERS = ("sgd", "adam", "adamw")
LEAVE_OUT_MODES = ("permutation", "every_batch")
ENGINES = ("vectorized", "sequential")
DTYPES = ("float32", "float64")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; else raise a ValueError naming both."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")
    return value


def check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> Any:
    """Return ``value`` if it is a positive (or non-negative) number; else raise ValueError."""
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}={value!r} must be {kind}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be {bound}")
    return value


def check_indices(name: str, indices: Iterable[int], n: int, allow_empty: bool = False) -> tuple[int, ...]:
    """Validate a list of indices into a set of size ``n``: integers in [0, n), no duplicates."""
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    idx = tuple(int(i) for i in np.asarray(list(indices)).ravel())
    if not idx and not allow_empty:
        raise ValueError(f"{name} is empty; give at least one index in [0, {n})")
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise ValueError(f"{name} has indices out of range {bad[:5]}; allowed range is [0, {n})")
    if len(set(idx)) != len(idx):
        dup = sorted({i for i in idx if idx.count(i) > 1})
        raise ValueError(f"{name} has duplicated indices {dup[:5]}; each index may appear once")
    return idx


def to_dict(cfg: Any) -> dict:
    """A JSON-compatible dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (range, tuple, set)):
        return list(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def stable_hash(*parts: Any, length: int = 16) -> str:
    """A short sha256 hex digest of JSON-able objects, tensors and arrays (order matters)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(part, np.ndarray):
            h.update(str((part.dtype, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        elif dataclasses.is_dataclass(part):
            h.update(json.dumps(to_dict(part), sort_keys=True).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=_json_default).encode())
    return h.hexdigest()[:length]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the final model is trained (the paper's recipe for Concrete is the default).

    Batch order: seed ``seed`` drives ``torch.utils.data.RandomSampler`` (one permutation per
    epoch); batches are consecutive chunks of ``batch_size``. Loss: mean MSE / cross-entropy.
    """

    optimizer: str = "sgd"
    lr: float = 0.3
    epochs: int = 1000
    batch_size: int = 128
    seed: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = None
    select_best: bool = False  # keep the epoch with the best test accuracy (text recipe)

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)


@dataclasses.dataclass(frozen=True)
class FurtherTrainingConfig:
    """The gold standard: further training from the final model, with and without each left-out.

    ``seeds``: one full run and ``len(left_out)`` leave-one-out runs per seed, paired on the
    batch order of that seed. ``left_out``: indices into the training set.
    ``leave_out``: ``"permutation"`` (the seed's permutation with i deleted) or ``"every_batch"``
    (the full run's batches, loss ``mean batch loss - loss_i / n_train`` at every step).
    Evaluation: after every ``eval_every`` epochs, or at the optimizer steps ``eval_steps``
    (0 = before any step) when given. ``engine``: ``"vectorized"`` (all runs of a chunk of seeds
    trained together) or ``"sequential"`` (plain reference loop).
    """

    optimizer: str = "sgd"
    lr: float = 3e-2
    epochs: int = 100
    batch_size: int = 128
    seeds: tuple[int, ...] = tuple(range(10))
    left_out: tuple[int, ...] = ()
    leave_out: str = "permutation"
    eval_every: int = 1
    eval_steps: tuple[int, ...] | None = None
    engine: str = "vectorized"
    weight_decay: float = 0.0
    grad_clip: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    dtype: str = "float32"
    memory_budget_mb: float = 2048.0
    max_runs_per_chunk: int = 128

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("leave_out", self.leave_out, LEAVE_OUT_MODES)
        check_choice("engine", self.engine, ENGINES)
        check_choice("dtype", self.dtype, DTYPES)
        check_positive("lr", self.lr)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)
        check_positive("eval_every", self.eval_every, integer=True)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("memory_budget_mb", self.memory_budget_mb)
        check_positive("max_runs_per_chunk", self.max_runs_per_chunk, integer=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        seeds = tuple(int(s) for s in self.seeds)
        if not seeds:
            raise ValueError("seeds is empty; give at least one seed, e.g. seeds=range(10)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds has duplicates {seeds}; each seed may appear once")
        set_("seeds", seeds)
        set_("left_out", tuple(int(i) for i in self.left_out))
        if len(set(self.left_out)) != len(self.left_out):
            raise ValueError("left_out has duplicated indices; each index may appear once")
        if self.eval_steps is not None:
            steps = tuple(int(s) for s in self.eval_steps)
            if not steps or any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
                raise ValueError(f"eval_steps={steps} must be non-empty, >= 0, strictly increasing")
            set_("eval_steps", steps)
        set_("betas", tuple(float(b) for b in self.betas))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)
