"""Frozen, validated configuration dataclasses.

Public: ``TrainConfig``, ``FurtherTrainingConfig``, ``check_choice``, ``check_positive``,
``check_indices``, ``check_int``, ``check_int_list``, ``check_fraction``, ``to_dict``,
``stable_hash``.

Every invalid value raises ``ValueError`` naming the parameter and the allowed values: numbers
must be finite (no NaN or inf), integers must be integers (``numpy``/``torch`` integer scalars
are accepted, ``1.7`` or ``True`` are not) and lists of seeds or indices must be lists (a bare
``seeds=5`` is refused with a hint to write ``range(5)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
        raise ValueError(
            f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}"
        )
    return value


def _is_int(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool
    return isinstance(value, (int, np.integer))


def check_int(name: str, value: Any) -> int:
    """``value`` as a Python int; ValueError (naming ``name``) unless it is an integer."""
    if not _is_int(value):
        raise ValueError(
            f"{name}={value!r} must be an integer (fractional, boolean or non-numeric "
            "values are not accepted)"
        )
    return int(value)


def check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> Any:
    """``value`` if it is a finite positive (or non-negative) number; else raise ValueError."""
    ok_type = (
        _is_int(value)
        if integer
        else (
            isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
        )
    )
    if not ok_type:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}={value!r} must be {kind}")
    if not integer and not math.isfinite(float(value)):
        raise ValueError(f"{name}={value!r} must be a finite number (not NaN or inf)")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be {bound}")
    return value


def check_fraction(name: str, value: Any, upper_open: bool = True) -> float:
    """A finite number in [0, 1) (or [0, 1] with ``upper_open=False``); else ValueError."""
    check_positive(name, value, allow_zero=True)
    if value > 1 or (upper_open and value == 1):
        raise ValueError(f"{name}={value!r} must be in [0, 1{')' if upper_open else ']'}")
    return float(value)


def check_int_list(name: str, values: Any) -> tuple[int, ...]:
    """A sequence of integers (list, tuple, range, 1-d array or tensor) as a tuple of ints.

    A bare number is refused (``seeds=5``: write ``range(5)`` or ``[5]``), and so is any
    fractional or non-numeric entry, naming it.
    """
    if _is_int(values):
        raise ValueError(
            f"{name}={values!r} must be a list of integers, not a single number; e.g. "
            f"{name}=range({values}) for {values} of them, or {name}=[{values}]"
        )
    if isinstance(values, (str, bytes, dict, float, np.floating)):
        raise ValueError(f"{name}={values!r} must be a list of integers, e.g. {name}=[0, 1, 2]")
    if isinstance(values, (torch.Tensor, np.ndarray)):
        if values.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {tuple(values.shape)}")
        values = list(values)
    try:
        items = list(values)
    except TypeError:
        raise ValueError(f"{name}={values!r} must be a list of integers") from None
    bad = [v for v in items if not _is_int(v)]
    if bad:
        raise ValueError(
            f"{name} must hold integers; {bad[:5]!r} are not (fractional values are not truncated)"
        )
    return tuple(int(v) for v in items)


def check_indices(
    name: str, indices: Iterable[int], n: int, allow_empty: bool = False
) -> tuple[int, ...]:
    """Validate a list of indices into a set of size ``n``: integers in [0, n), no duplicates."""
    idx = check_int_list(name, indices)
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
        object.__setattr__(self, "seed", check_int("seed", self.seed))
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        check_choice("select_best", self.select_best, (True, False))


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
    ``memory_budget_mb`` and ``max_runs_per_chunk`` bound the runs the vectorized engine stacks
    (they do not change the numbers). ``max_runs_per_chunk=None`` (automatic): 34 for the MLP
    fast path on a CPU (its stacked matmuls stay in cache), 128 for other models on a CPU, and
    ``engines.GPU_MAX_RUNS`` on a GPU, where the default ``memory_budget_mb`` becomes half the
    free GPU memory.
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
    max_runs_per_chunk: int | None = None

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
        if self.max_runs_per_chunk is not None:
            check_positive("max_runs_per_chunk", self.max_runs_per_chunk, integer=True)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)
        _check_betas_eps(self.betas, self.eps)
        seeds = check_int_list("seeds", self.seeds)
        if not seeds:
            raise ValueError("seeds is empty; give at least one seed, e.g. seeds=range(10)")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds has duplicates {seeds}; each seed may appear once")
        set_("seeds", seeds)
        set_("left_out", check_int_list("left_out", self.left_out))
        if len(set(self.left_out)) != len(self.left_out):
            raise ValueError("left_out has duplicated indices; each index may appear once")
        if self.eval_steps is not None:
            steps = check_int_list("eval_steps", self.eval_steps)
            if not steps or any(s < 0 for s in steps) or list(steps) != sorted(set(steps)):
                raise ValueError(f"eval_steps={steps} must be non-empty, >= 0, strictly increasing")
            set_("eval_steps", steps)
        set_("betas", tuple(float(b) for b in self.betas))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The ``torch.dtype`` named by ``dtype``."""
        return getattr(torch, self.dtype)


def _check_betas_eps(betas: Any, eps: Any) -> None:
    """Adam's constants: two betas in [0, 1) and eps > 0 (all finite)."""
    try:
        b = list(betas)
    except TypeError:
        raise ValueError(
            f"betas={betas!r} must be two numbers in [0, 1), e.g. (0.9, 0.999)"
        ) from None
    if len(b) != 2:
        raise ValueError(f"betas={betas!r} must be two numbers in [0, 1), e.g. (0.9, 0.999)")
    check_fraction("betas[0]", b[0])
    check_fraction("betas[1]", b[1])
    check_positive("eps", eps)
