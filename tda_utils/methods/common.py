"""Shared machinery of the attribution methods.

Public (for method modules): ``Context``, ``prepare``, ``BaseOptions``, ``DampedOptions``,
``check_number``, ``check_int``, ``resolve_damping``, ``inverse_scores``, ``scores_vs_train``,
``spectral_scores``, ``jacobian_gnh``, ``check_explicit_size``, and the memory-model constants.

A ``Context`` holds the model (possibly a cast copy, eval mode) and the data on its device and
dtype. Every influence-type method has the same skeleton, ``inverse_scores``: per chunk of
queries, the query gradients G_q (Q, d) are transformed into X (Q, d) (e.g. X ~ (H + lambda I)^{-1}
G_q), then dotted with the training gradients and divided by n = ``splits.n_train``.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..config import check_choice, check_positive
from ..data.registry import Splits
from ..linalg.grads import (
    activation_numel,
    dataset_tensors,
    iter_per_sample_grads,
    trainable_params,
)
from ..linalg.hessian import (
    HESSIANS,
    JacobianGNH,
    Spectrum,
    grad_stats,
    math_sdpa,
    sqrt_gnh_jacobian,
)

DTYPES = ("float32", "float64")
HVP_MODES = ("auto", "jacobian", "autodiff")
#: the default memory budget of every method (MB); results never depend on it
DEFAULT_BUDGET_MB = 1024.0
#: memory model of one vmapped HVP vector: this many copies of the d parameters and of the
#: activations of each sample in the batch (forward-over-reverse keeps primal and tangent of both)
HVP_PARAM_COPIES, HVP_ACTIVATION_COPIES = 6, 6
#: the GNH Jacobian factor M (n k, d) is built in chunks of this many d-vectors per output
JACOBIAN_COPIES_PER_OUTPUT = 4
#: explicit eigendecompositions are the default up to this many parameters (if_explicit, if_time)
EIGH_MAX_PARAMS = 4000
#: spectral_scores: entries of one (rows of w) x Q x r intermediate (2**27 float64 = 1 GiB)
SPECTRAL_CHUNK_ENTRIES = 2**27
#: the custom per-sample loss of the running ``attribute`` call (None: the built-in loss)
_LOSS_FN: contextvars.ContextVar = contextvars.ContextVar("fimo_loss_fn", default=None)


@contextlib.contextmanager
def custom_loss(loss_fn) -> Iterator[None]:
    """Within the block, ``prepare`` builds contexts with ``loss_fn`` (``attribute`` sets it)."""
    token = _LOSS_FN.set(loss_fn)
    try:
        yield
    finally:
        _LOSS_FN.reset(token)


def check_number(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else ValueError naming ``name``.

    ``config.check_positive`` (the project's vocabulary), plus finiteness; 0-d tensors allowed.
    """
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    value = check_positive(name, value, allow_zero=allow_zero)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    return float(value)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (0 or 1), else ValueError naming ``name``."""
    return int(check_positive(name, value, integer=True, allow_zero=minimum == 0))


@dataclasses.dataclass(frozen=True)
class BaseOptions:
    """Options every method takes.

    Attributes:
        dtype: None computes in the model's dtype; "float32" / "float64" run on a cast copy.
        memory_budget_mb: chunk sizes are chosen to fit it; results do not depend on it.
    """

    dtype: str | None = None
    memory_budget_mb: float = DEFAULT_BUDGET_MB

    def __post_init__(self) -> None:
        if self.dtype is not None:
            check_choice("dtype", self.dtype, DTYPES)
        check_number("memory_budget_mb", self.memory_budget_mb)


@dataclasses.dataclass(frozen=True)
class DampedOptions(BaseOptions):
    """Options of a damped method: ``damping`` (absolute) or ``damping_multiple`` x lambda0.

    Giving ``damping`` switches the multiple off (``damping_multiple`` becomes None). Subclasses
    set ``DAMPING_LIST`` (a list of values is allowed; the first one gives ``values``) and
    ``DAMPING_ZERO`` (0 allowed).
    """

    DAMPING_LIST: ClassVar[bool] = False
    DAMPING_ZERO: ClassVar[bool] = False

    damping: Any = None
    damping_multiple: Any = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.damping is not None:
            object.__setattr__(self, "damping_multiple", None)
        elif self.damping_multiple is None:
            raise ValueError(
                "give damping (absolute) or damping_multiple (x lambda0); both are None"
            )
        self.damping_values()  # validates

    def damping_values(self) -> tuple[str, list[float]]:
        """("absolute" | "multiple", the validated values as given)."""
        mode, given, name = (
            ("absolute", self.damping, "damping")
            if self.damping is not None
            else ("multiple", self.damping_multiple, "damping_multiple")
        )
        is_seq = isinstance(given, (list, tuple, range)) or (
            isinstance(given, (np.ndarray, torch.Tensor)) and given.ndim == 1
        )
        values = list(given) if is_seq else [given]
        if len(values) > 1 and not self.DAMPING_LIST:
            raise ValueError(
                f"{name} must be a single number for this method (got {len(values)} values)"
            )
        if not values:
            raise ValueError(f"{name} is empty")
        return mode, [check_number(name, v, self.DAMPING_ZERO) for v in values]


def resolve_damping(
    opts: DampedOptions, lambda0: Callable[[], float]
) -> tuple[list[tuple[float, float]], float | None, str]:
    """[(value as given, absolute damping)], lambda0 (None in absolute mode), mode.

    ``lambda0()`` is called only for a multiple: the method's reference scale (the mean squared
    per-sample gradient entry for the IF family; TRAK's mean squared feature entry).
    """
    mode, values = opts.damping_values()
    if mode == "absolute":
        return [(v, v) for v in values], None, mode
    lam0 = lambda0()
    return [(v, v * lam0) for v in values], lam0, mode


@dataclasses.dataclass
class Context:
    """A model (possibly a cast copy, eval mode) with its data on its device and dtype."""

    model: nn.Module
    task: str
    n: int
    d: int
    k: int
    dtype: torch.dtype
    device: torch.device
    tr_inputs: tuple[torch.Tensor, ...]
    tr_target: torch.Tensor
    te_inputs: tuple[torch.Tensor, ...]
    te_target: torch.Tensor
    budget_mb: float
    #: None (the built-in per-task loss) or a custom per-sample loss (``models.resolve_loss``)
    loss_fn: Callable | None = None

    @property
    def elem(self) -> int:
        """Bytes per entry of the compute dtype."""
        return torch.empty((), dtype=self.dtype).element_size()

    @property
    def budget_bytes(self) -> float:
        """The memory budget in bytes."""
        return self.budget_mb * 2**20

    def rows(self, split: str, indices) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """(inputs, target) of rows ``indices`` of ``split`` ("train" | "test")."""
        inputs, target = self._split(split)
        idx = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        return tuple(x[idx] for x in inputs), target[idx]

    def _split(self, split: str):
        return (
            (self.tr_inputs, self.tr_target)
            if split == "train"
            else (self.te_inputs, self.te_target)
        )

    def grad_chunks(self, split: str, indices=None) -> Iterator[tuple[slice, torch.Tensor]]:
        """Per-sample loss gradients (chunk, d) of ``split`` rows ``indices`` (None: all)."""
        inputs, target = self._split(split) if indices is None else self.rows(split, indices)
        yield from iter_per_sample_grads(
            self.model,
            inputs,
            target,
            self.task,
            memory_budget_mb=self.budget_mb / 2,
            loss_fn=self.loss_fn,
        )

    def grads(self, split: str, indices=None) -> torch.Tensor:
        """Per-sample loss gradients (len(indices), d)."""
        return torch.cat([g for _, g in self.grad_chunks(split, indices)], dim=0)

    def vec_chunk(self, copies: int, minimum: int = 1) -> int:
        """How many d-vectors fit ``copies`` times in the budget."""
        return max(minimum, int(self.budget_bytes // (copies * self.d * self.elem)))

    def hvp_vec_chunk(self, batch_size: int) -> int:
        """Vectors per vmapped HVP on a batch of ``batch_size`` samples within half the budget."""
        acts = activation_numel(self.model, tuple(x[:1] for x in self.tr_inputs))
        per_vec = self.elem * (
            HVP_PARAM_COPIES * self.d + HVP_ACTIVATION_COPIES * acts * batch_size
        )
        return max(1, int(0.5 * self.budget_bytes // per_vec))

    def lambda0(self) -> float:
        """The mean squared per-sample training-gradient entry, sum_j ||g_j||^2 / (n d)."""
        return grad_stats(
            self.model,
            self.tr_inputs,
            self.tr_target,
            self.task,
            self.budget_mb / 2,
            loss_fn=self.loss_fn,
        )["lambda0"]


def prepare(model: nn.Module, splits: Splits, opts: BaseOptions) -> Context:
    """The ``Context`` of ``model`` on ``splits`` in ``opts.dtype`` (a cast copy if needed).

    Its ``loss_fn`` is the custom loss of the running ``attribute`` call (``custom_loss``), if any.
    """
    params = trainable_params(model)
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    ref = next(iter(params.values()))
    if opts.dtype is not None and ref.dtype != getattr(torch, opts.dtype):
        model = copy.deepcopy(model).to(getattr(torch, opts.dtype))
        model.eval()
    params = trainable_params(model)
    ref = next(iter(params.values()))
    dev = ref.device

    def cast(t):
        t = t.to(dev)
        return t.to(ref.dtype) if t.is_floating_point() else t

    tr_in, tr_t = dataset_tensors(splits.train)
    te_in, te_t = dataset_tensors(splits.test)
    return Context(
        model=model,
        task=splits.task,
        n=splits.n_train,
        d=sum(p.numel() for p in params.values()),
        k=splits.n_outputs,
        dtype=ref.dtype,
        device=dev,
        tr_inputs=tuple(cast(x) for x in tr_in),
        tr_target=cast(tr_t),
        te_inputs=tuple(cast(x) for x in te_in),
        te_target=cast(te_t),
        budget_mb=float(opts.memory_budget_mb),
        loss_fn=_LOSS_FN.get(),
    )


def scores_vs_train(ctx: Context, X: torch.Tensor, train_indices) -> torch.Tensor:
    """X (Q, d) against the training gradients of ``train_indices``: X G_train^T, (Q, T)."""
    return torch.cat([X @ g.T for _, g in ctx.grad_chunks("train", train_indices)], dim=1)


def inverse_scores(
    ctx: Context,
    train_indices,
    query_indices,
    copies: int,
    transform: Callable[[torch.Tensor], tuple[torch.Tensor, dict]],
) -> tuple[torch.Tensor, list[dict]]:
    """The influence skeleton: (1/n) transform(G_q) G_train^T, (Q, T), and each chunk's info.

    Queries go in chunks of ``ctx.vec_chunk(copies)`` (``copies``: d-vectors per query that the
    transform keeps); ``transform(G_q (chunk, d))`` returns (X (chunk, d), info dict).
    """
    qchunk = ctx.vec_chunk(copies)
    vals, infos = [], []
    for s in range(0, len(query_indices), qchunk):
        X, info = transform(ctx.grads("test", query_indices[s : s + qchunk]))
        vals.append(scores_vs_train(ctx, X, train_indices) / ctx.n)
        infos.append(info)
    return torch.cat(vals, dim=0), infos


def spectral_scores(
    Gq: torch.Tensor,
    Gt: torch.Tensor,
    spec: Spectrum,
    weight: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """g_q^T w(H) g_t for a spectral function w, (..., Q, T).

    ``weight(evals)`` maps eigenvalues (r,) to weights (..., r) (extra leading dims allowed, e.g.
    one row per time); the complement of the eigenvectors gets ``weight(complement)``.
    """
    Gq, Gt = Gq.to(torch.float64), Gt.to(torch.float64)
    Aq, At = spec.project(Gq), spec.project(Gt)
    w = weight(spec.evals.to(torch.float64))  # (..., r)
    lead = w.shape[:-1]
    w2 = w.reshape(-1, w.shape[-1])
    step = max(1, int(SPECTRAL_CHUNK_ENTRIES // max(1, Aq.numel())))  # rows of w per matmul
    out = torch.cat(
        [(Aq[None] * w2[e : e + step, None, :]) @ At.T for e in range(0, w2.shape[0], step)]
    )
    out = out.reshape(*lead, Aq.shape[0], At.shape[0])
    if spec.complement is not None:
        wc = weight(torch.tensor([spec.complement], dtype=torch.float64, device=Gq.device))[..., 0]
        rest = Gq @ Gt.T - Aq @ At.T
        out = out + wc[..., None, None] * rest
    return out


def check_hessian(hessian: str) -> str:
    """``hessian`` if it is one of ``hessian.HESSIANS`` ("exact", "gnh")."""
    return check_choice("hessian", hessian, HESSIANS)


def jacobian_gnh(ctx: Context, hessian: str, hvp_mode: str) -> JacobianGNH | None:
    """The precomputed-Jacobian GNH when ``hvp_mode`` asks for it (or "auto" and it fits half the
    memory budget), else None (products by jvp/vjp or jvp-of-grad).
    """
    if ctx.loss_fn is not None and hessian == "gnh":
        raise ValueError(
            "loss_fn (a custom loss) needs hessian='exact': the Gauss-Newton Hessian "
            "assumes the built-in MSE / cross-entropy loss"
        )
    if hvp_mode == "autodiff":
        return None
    if hessian != "gnh":
        if hvp_mode == "jacobian":
            raise ValueError(
                "hvp_mode='jacobian' needs hessian='gnh' (the exact Hessian has no such factor); "
                "use hvp_mode='autodiff' or 'auto'"
            )
        return None
    fits = ctx.n * ctx.k * ctx.d * ctx.elem <= ctx.budget_bytes / 2
    if hvp_mode == "auto" and not fits:
        return None
    with math_sdpa():
        M = sqrt_gnh_jacobian(
            ctx.model,
            ctx.tr_inputs,
            ctx.tr_target,
            ctx.task,
            chunk=ctx.vec_chunk(JACOBIAN_COPIES_PER_OUTPUT * ctx.k),
        )
    return JacobianGNH(M, ctx.n)


def check_explicit_size(method: str, d: int, max_params: int, alternatives: str) -> None:
    """Refuse a model with more than ``max_params`` parameters for an explicit-Hessian method."""
    if d > max_params:
        raise ValueError(
            f"{method} forms the Hessian explicitly and refuses a model with {d:,} trainable "
            f"parameters (max_params={max_params:,}). Use a scalable method instead: "
            f"{alternatives}, or raise max_params."
        )
