"""dattri 0.3.0 attribution methods as suite plug-ins.

Public: ``dattri_if_explicit``, ``dattri_if_cg``, ``dattri_if_lissa``, ``dattri_if_arnoldi``
(here), ``dattri_datainf``, ``dattri_ekfac`` (``dattri_curvature``), ``dattri_tracin``,
``dattri_trak`` (``dattri_gradients``).

Every function is a plug-in ``f(model, splits, train_indices, query_indices, **options)`` that
returns a float64 CPU tensor of shape ``(len(query_indices), len(train_indices))``, query-major,
positive = helpful (removing the training instance raises the query's loss). dattri returns
``(n_train, n_query)`` matrices; its influence functions compute g_train^T (H + lambda I)^{-1}
g_query with the gradients of the *loss* and H the Hessian of the *mean* training loss, which is
positive = helpful already (checked numerically against ``tu.attribute("if_explicit")``: equal to
n_train x the suite's score, same sign), so the adapters transpose and keep the sign. The
influence-function adapters divide by ``splits.n_train`` to report on the suite's IF scale,
(1/n) g_q^T (H + lambda I)^{-1} g_i, the first-order change of the query's loss when the
instance is removed.

Common options: ``device`` ("cpu" default, "cuda", "cuda:N", "auto"); ``dtype`` (None: the
model's; "float32" / "float64": a cast copy, inputs cast too); ``layers`` (names of trainable
parameters, as in ``model.named_parameters()``, that dattri differentiates; None: all);
``damping`` (absolute) or ``damping_multiple`` x lambda0, lambda0 = sum_j ||g_j||^2 / (n d) the
suite's damping unit (mean squared per-sample training-gradient entry over every trainable
parameter and the full training set), default multiple 100 as in the suite.

The model is never modified: dattri works on a deep copy (it loads checkpoints into, and hooks,
the module it is given). The library runs with torch's global RNG seeded (by the ``seed``
option, or 0), so results are repeatable, and the caller's RNG state is restored afterwards
(dattri's random draws and even iterating a DataLoader consume it). dattri is imported inside the
functions. Its progress bars (tqdm, transient) go to stderr; set ``TQDM_DISABLE=1`` before
importing tqdm to silence them. dattri allocates some tensors with torch's default dtype, so the
adapters set it to the compute dtype for the duration of the call (process-wide; do not run
adapters concurrently in threads).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn

import tda_utils as tu

from ._shared import (
    NonFiniteScores,
    check_choice,
    check_int,
    check_layers,
    grad_batch_size,
    vectors_per_hvp,
    check_number,
    default_dtype,
    max_grad_norm,
    one_batch,
    resolve_damping,
    resolve_device,
    resolve_dtype,
    seeded,
    to_suite,
    working_copy,
)
from ._shared import (
    check_indices as _check_indices,
)

HVP_MODES = ("rev-rev", "rev-fwd")
#: dattri's TRAK / TracIn projector: the CPU projector's maximal batch (unused on CPU)
PROJ_MAX_BATCH = 32
#: the most parameters dattri_if_explicit forms its Hessian for (torch.func.hessian over the whole
#: training set; on Concrete's 824 rows, peak memory 2.6 GB at 1,377 parameters, 6.0 GB at 2,833);
#: more raises tu.bench.NotApplicable
EXPLICIT_MAX_PARAMS = 2048


@dataclasses.dataclass
class _Setup:
    """A working copy of the model with its data, indices, device and dtype."""

    model: nn.Module
    splits: tu.Splits
    train: list[int]
    query: list[int]
    device: torch.device
    dtype: torch.dtype

    @property
    def n(self) -> int:
        return self.splits.n_train

    def n_params(self, names: Sequence[str] | None = None) -> int:
        """Trainable parameters (those named in ``names``; None: all)."""
        return sum(
            p.numel()
            for name, p in self.model.named_parameters()
            if p.requires_grad and (names is None or name in names)
        )

    def batches(self, dataset, indices: Sequence[int], cap: int | None = None):
        """Rows ``indices`` of ``dataset`` in batches of ``grad_batch_size`` rows (at most
        ``cap``).
        """
        size = grad_batch_size(self.n_params(), self.dtype.itemsize, len(indices))
        return one_batch(dataset, indices, min(size, cap or size))


def _setup(model, splits, train_indices, query_indices, dtype, device, hooks=False) -> _Setup:
    dev = resolve_device(device)
    train = _check_indices("train_indices", train_indices, splits.n_train)
    query = _check_indices("query_indices", query_indices, splits.n_test)
    dt = resolve_dtype(dtype, model)
    return _Setup(working_copy(model, dt, dev, hooks), splits.to(dt), train, query, dev, dt)


def _import_dattri():
    try:
        import dattri.algorithm as algorithm
        from dattri.task import AttributionTask
    except ImportError as exc:  # pragma: no cover - dattri is a pinned dependency
        raise ImportError(
            "the dattri adapters need dattri==0.3.0 (pinned in pyproject.toml): "
            "pip install dattri==0.3.0"
        ) from exc
    return algorithm, AttributionTask


def _loss(s: _Setup) -> Callable:
    """``tu.your_model.dattri_loss`` (mean loss of a batch) with floating data cast to the compute
    dtype (dattri's LiSSA casts its batches to float32; labels cast back in the loss).
    """
    base = tu.your_model.dattri_loss(s.model, s.splits.task)

    def loss(params, data):
        return base(params, tuple(t.to(s.dtype) if t.is_floating_point() else t for t in data))

    return loss


def _task(s: _Setup, loss: Callable | None = None):
    _, AttributionTask = _import_dattri()
    return AttributionTask(
        loss_func=loss or _loss(s), model=s.model, checkpoints=s.model.state_dict()
    )


def _inner_product(
    s: _Setup, attributor, seed: int = 0, autograd: bool = False, queries: int | None = None
) -> torch.Tensor:
    """Run dattri's ``cache`` (full training set, one batch) and ``attribute`` (one batch of the
    training indices, one of the queries), on the suite's IF scale (divided by n_train), with
    torch's RNG seeded by ``seed`` (the caller's RNG state is restored).

    Runs under ``torch.no_grad()`` unless ``autograd`` (EK-FAC's hooks need it): dattri's
    ``torch.func`` transforms still differentiate inside, but the outer autograd graph is not
    recorded. With it, dattri 0.3.0's LiSSA and Arnoldi keep every iteration's graph alive (on
    Concrete's MLP, LiSSA grew by ~36 MB per step: 40 steps took 3.0 GB and 18.7 s, 160 steps
    7.2 GB; under no_grad the same scores to the bit, 40 steps in 1.5 GB and 5.5 s).
    ``queries``: at most this many queries per batch (the solvers that vmap an HVP over a
    batch's queries; ``vectors_per_hvp``).
    """
    with default_dtype(s.dtype), seeded(seed, s.device), torch.set_grad_enabled(autograd):
        attributor.cache(one_batch(s.splits.train, range(s.n)))
        raw = attributor.attribute(
            s.batches(s.splits.train, s.train), s.batches(s.splits.test, s.query, queries)
        )
    return to_suite(raw, len(s.query), len(s.train), "train_query", 1.0 / s.n)


def dattri_if_explicit(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    max_params: int = EXPLICIT_MAX_PARAMS,
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorExplicit``: the influence function with the explicit Hessian.

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) g_q^T (H + lambda I)^{-1} g_i, positive =
        helpful, the suite's IF scale (equal to ``tu.attribute("if_explicit", hessian="exact")``
        on the same parameters and damping). H: the exact Hessian of the mean training loss over
        the full training set (one batch) w.r.t. ``layers``; g: loss gradients.

    Options: ``damping`` / ``damping_multiple`` (lambda = multiple x lambda0, default 100),
    ``layers``, ``dtype``, ``device`` (see the module docstring). Forms the (d, d) Hessian with
    ``torch.func.hessian`` over the whole training set, whose memory grows far faster than d^2
    (on Concrete's 824 rows: 2.6 GB at 1,377 parameters, 6.0 GB at 2,833; 17,793 went past
    21 GB): with more than
    ``max_params`` parameters (in ``layers``) it raises ``tu.bench.NotApplicable`` (the
    leaderboard row says "not applicable"); the suite's own ``if_explicit`` handles such models.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    lam = resolve_damping(damping, damping_multiple, s.model, s.splits)
    names = check_layers(s.model, layers)
    d = s.n_params(names)
    limit = check_int("max_params", max_params)
    if d > limit:
        raise tu.bench.NotApplicable(
            f"dattri's explicit Hessian over {d:,} parameters (max_params={limit:,}); pass "
            "layers=[...] (--option 'layers=[...]') or a larger max_params if memory allows"
        )
    algorithm, _ = _import_dattri()
    attributor = algorithm.IFAttributorExplicit(
        task=_task(s),
        layer_name=names,
        device=str(s.device),
        regularization=lam,
    )
    return _inner_product(s, attributor)


def dattri_if_cg(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    max_iter: int = 50,
    mode: str = "rev-rev",
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorCG``: the influence function by conjugate gradient on HVPs.

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) g_i^T x_q with (H + lambda I) x_q = g_q
        solved by ``max_iter`` CG steps from x_0 = g_q, positive = helpful, IF scale. H: the exact
        Hessian of the mean training loss (full training set, one batch).

    Options: ``max_iter`` (dattri 0.3.0 runs exactly this many steps: it ignores its ``tol``);
    ``mode``: "rev-rev" or "rev-fwd" (HVP autodiff); ``damping`` / ``damping_multiple``,
    ``layers``, ``dtype``, ``device`` (module docstring). Raises ValueError when the scores are
    not finite (a CG step divided by a vanished residual: lower ``max_iter``).
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    lam = resolve_damping(damping, damping_multiple, s.model, s.splits)
    algorithm, _ = _import_dattri()
    attributor = algorithm.IFAttributorCG(
        task=_task(s),
        layer_name=check_layers(s.model, layers),
        device=str(s.device),
        max_iter=check_int("max_iter", max_iter),
        mode=check_choice("mode", mode, HVP_MODES),
        regularization=lam,
    )
    queries = vectors_per_hvp(s.model, s.splits.train, s.n)  # each CG step: a full-data HVP
    return _inner_product(s, attributor, queries=queries)


def dattri_if_lissa(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    depth: int = 1000,
    scale: float | str = "auto",
    batch_size: int = 32,
    repeat: int = 1,
    seed: int = 0,
    divergence_factor: float = 1e3,
    mode: str = "rev-rev",
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorLiSSA``: the influence function by the LiSSA recursion.

    dattri iterates h <- v + (1 - damping') h - H_B h / scale and returns h / scale, which
    estimates (H + damping' x scale I)^{-1} v; the adapter passes damping' = lambda / scale so
    that it estimates (H + lambda I)^{-1} g_q as the suite's ``lissa_h`` does (exact Hessian of
    the mean loss of ``batch_size`` training instances per step, drawn by dattri).

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) g_i^T est_q, positive = helpful, IF scale.

    Options: ``depth`` (recursion steps; the paper used 5000), ``scale`` (a number, or "auto":
    the smallest value of the suite's ``tu.methods.LISSA_SCALE_GRID`` whose run does not
    diverge), ``batch_size``, ``repeat`` (estimates averaged), ``seed`` (torch's RNG for the
    batch draws, restored afterwards), ``divergence_factor`` (a run counts as diverged when a
    score is non-finite or exceeds factor x (depth + 1) |g_q| |g_i| / scale, a bound every
    contracting run obeys), ``mode`` ("rev-rev" | "rev-fwd"), ``damping`` /
    ``damping_multiple``, ``layers``, ``dtype``, ``device`` (module docstring).

    Raises:
        ValueError: every scale diverged (or the given one did): use a larger scale or damping.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    lam = resolve_damping(damping, damping_multiple, s.model, s.splits)
    if isinstance(scale, str):
        check_choice("scale", scale, ("auto",))
        scales = [float(x) for x in tu.methods.LISSA_SCALE_GRID]
    else:
        scales = [check_number("scale", scale)]
    depth, batch_size = check_int("depth", depth), check_int("batch_size", batch_size)
    repeat, seed = check_int("repeat", repeat), check_int("seed", seed, minimum=0)
    factor = check_number("divergence_factor", divergence_factor)
    layer_name = check_layers(s.model, layers)
    mode = check_choice("mode", mode, HVP_MODES)
    norms = {
        split: max_grad_norm(s.model, getattr(s.splits, split), idx, s.splits.task)
        for split, idx in (("train", s.train), ("test", s.query))
    }
    queries = vectors_per_hvp(s.model, s.splits.train, min(batch_size, s.n))
    algorithm, _ = _import_dattri()
    for sc in scales:
        attributor = algorithm.IFAttributorLiSSA(
            task=_task(s),
            layer_name=layer_name,
            device=str(s.device),
            batch_size=min(batch_size, s.n),
            num_repeat=repeat,
            recursion_depth=depth,
            damping=lam / sc,
            scaling=sc,
            mode=mode,
        )
        try:
            values = _inner_product(s, attributor, seed, queries=queries)
        except NonFiniteScores:
            continue
        bound = factor * (depth + 1) * norms["train"] * norms["test"] / sc / s.n
        if float(values.abs().max()) <= bound:
            return values
    raise ValueError(
        f"dattri LiSSA diverged for scale(s) {scales} (damping {lam:.3g}); use a larger scale "
        "or a larger damping"
    )


def dattri_if_arnoldi(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    proj_dim: int = 100,
    max_iter: int = 200,
    tol: float = 1e-7,
    norm_constant: float = 1.0,
    seed: int = 0,
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorArnoldi`` (Schioppa et al. 2022): the influence function
    restricted to the top-``proj_dim`` eigenspace of H + lambda I from ``max_iter`` Arnoldi steps.

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) sum_k (g_q . u_k)(g_i . u_k) / (e_k + lambda)
        over the kept eigenpairs (e_k, u_k) of the exact Hessian H of the mean training loss,
        positive = helpful, IF scale. Directions outside the kept eigenspace are dropped (unlike
        a damped inverse, which weights them 1 / lambda).

    Options: ``proj_dim`` (eigenpairs kept; dattri lowers it, with a warning, to the number of
    positive ones), ``max_iter`` (Arnoldi steps, >= ``proj_dim``), ``tol``, ``norm_constant``,
    ``seed`` (dattri seeds torch's global RNG with it; the adapter restores the caller's RNG
    state), ``damping`` / ``damping_multiple``, ``layers``, ``dtype``, ``device``.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    lam = resolve_damping(damping, damping_multiple, s.model, s.splits)
    proj_dim, max_iter = check_int("proj_dim", proj_dim), check_int("max_iter", max_iter)
    if max_iter < proj_dim:
        raise ValueError(f"max_iter={max_iter} must be >= proj_dim={proj_dim}")
    algorithm, _ = _import_dattri()
    attributor = algorithm.IFAttributorArnoldi(
        task=_task(s),
        layer_name=check_layers(s.model, layers),
        device=str(s.device),
        proj_dim=proj_dim,
        max_iter=max_iter,
        norm_constant=check_number("norm_constant", norm_constant),
        tol=check_number("tol", tol),
        regularization=lam,
        seed=check_int("seed", seed, minimum=0),
    )
    return _inner_product(s, attributor, seed)
