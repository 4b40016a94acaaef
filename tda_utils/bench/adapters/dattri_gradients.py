"""dattri 0.3.0's gradient-based plug-ins without a Hessian: TracIn (at the final checkpoint) and
TRAK. Shapes, sign and scale as in ``dattri_methods`` (query-major, positive = helpful); the shared
set-up (working copy, dtype, device, loss) is that module's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

import tda_utils as tu

from ._shared import (
    check_choice,
    check_int,
    check_layers,
    check_number,
    default_dtype,
    grad_batch_size,
    seeded,
    to_suite,
)
from .dattri_methods import PROJ_MAX_BATCH, _import_dattri, _loss, _setup, _Setup, _task

def _projector(s: _Setup, proj_dim: int | None, d: int, seed: int) -> dict[str, Any]:
    """Options of dattri's projector: identity when ``proj_dim`` is None or >= d, else Gaussian."""
    identity = proj_dim is None or proj_dim >= d
    return {
        "proj_dim": d if identity else proj_dim,
        "proj_max_batch_size": PROJ_MAX_BATCH,
        "proj_seed": seed,
        "proj_type": "identity" if identity else "normal",
        "device": str(s.device),
    }


def _batch_size(s: _Setup, batch_size: int | None) -> int:
    """``batch_size`` checked, or (None) the rows whose per-sample gradients fit the budget
    (``grad_batch_size``: every row of a tabular run, 37 of the text head's).
    """
    if batch_size is not None:
        return check_int("batch_size", batch_size)
    return grad_batch_size(s.n_params(), s.dtype.itemsize, max(s.n, len(s.query)))


def _per_sample_loss(s: _Setup) -> Callable:
    """The loss of one instance without its batch dimension (dattri's TracIn calls it through
    ``vmap`` over the rows): each tensor gets a batch dimension of 1 back.
    """
    base = _loss(s)

    def loss(params, data):
        return base(params, tuple(t.unsqueeze(0) for t in data))

    return loss


def dattri_tracin(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    lr: float = 1.0,
    normalized: bool = False,
    proj_dim: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``TracInAttributor`` at the final checkpoint only (one checkpoint).

    Returns:
        float64 ``(n_query, n_train_indices)``: lr x g_q . g_i (with ``normalized``: lr x the
        cosine, Grad-Cos), positive = helpful, unscaled like the suite's ``grad_dot`` (which it
        equals for lr = 1 without projection).

    Options: ``lr`` (the checkpoint's weight), ``normalized``, ``proj_dim`` (None or >= the
    number of parameters: exact gradients; else dattri's Gaussian random projection to that
    dimension, seeded by ``seed``), ``batch_size`` (gradients per batch; None: as many as fit
    the adapters' memory budget), ``layers``, ``dtype``,
    ``device`` (module docstring).
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    layer_name = check_layers(s.model, layers)
    if proj_dim is not None:
        check_int("proj_dim", proj_dim)
    seed = check_int("seed", seed, minimum=0)
    batch_size = _batch_size(s, batch_size)
    normalized = check_choice("normalized", normalized, (False, True))
    algorithm, _ = _import_dattri()
    attributor = algorithm.TracInAttributor(
        task=_task(s, _per_sample_loss(s)),
        weight_list=torch.tensor([check_number("lr", lr)], dtype=s.dtype),
        normalized_grad=normalized,
        projector_kwargs=None,  # set below: dattri 0.3.0 would update its module-level defaults
        layer_name=layer_name,
        device=str(s.device),
    )
    attributor.projector_kwargs = _projector(s, proj_dim, s.n_params(layer_name), seed)
    train = torch.utils.data.Subset(s.splits.train, s.train)
    test = torch.utils.data.Subset(s.splits.test, s.query)
    with default_dtype(s.dtype), seeded(seed, s.device), torch.no_grad():
        raw = attributor.attribute(
            torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=False),
            torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False),
        )
    return to_suite(raw, len(s.query), len(s.train), "train_query", 1.0)


def _trak_functions(s: _Setup) -> tuple[Callable, Callable]:
    """TRAK's per-sample output f(params, (inputs..., target)), the suite's: the margin
    log p_y - log(1 - p_y) (classification) or the prediction (regression, one output); and
    the probability of the label (0 for regression, so that dattri's Q = 1 - p is 1).
    """
    from torch.func import functional_call

    task = s.splits.task

    def forward(params, data):
        *inputs, target = data
        out = functional_call(s.model, params, tuple(x.unsqueeze(0) for x in inputs)).squeeze(0)
        return out, target

    def output(params, data):
        out, y = forward(params, data)
        if task == "regression":
            return out.reshape(-1)[0]
        mask = torch.arange(out.shape[-1], device=out.device) == y
        rest = torch.where(mask, torch.full_like(out, -torch.inf), out).logsumexp(-1)
        return (out * mask).sum() - rest

    def probability(params, data):
        out, y = forward(params, data)
        if task == "regression":
            return torch.zeros((), dtype=out.dtype, device=out.device)
        mask = torch.arange(out.shape[-1], device=out.device) == y
        return (torch.softmax(out, dim=-1) * mask).sum()

    return output, probability


def dattri_trak(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    proj_dim: int | None = 2048,
    damping: float | None = None,
    damping_multiple: float | None = 0.01,
    seed: int = 0,
    batch_size: int | None = None,
    layers: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``TRAKAttributor``, single-model TRAK (Park et al. 2023).

    Features phi_j = P^T grad f_j / sqrt(d) with f the suite's TRAK output (the margin
    log p_y - log(1 - p_y) for classification, the prediction for regression) and P dattri's
    Gaussian projection (or none); score = phi_q^T (Phi^T Phi + r I)^{-1} phi_i x (1 - p_i)
    (no reweighting for regression), Phi over the full training set.

    Returns:
        float64 ``(n_query, n_train_indices)``, positive = helpful as in the suite's ``trak``
        (classification: the estimated decrease of the query's margin when i is removed;
        regression: the change of the query's prediction, whose sign is not tied to
        helpfulness), on the suite's scale: without projection it equals
        ``tu.attribute("trak", projection="none")`` at the same ``damping_multiple``.

    Options: ``proj_dim`` (None or >= the number of parameters: no projection; else dattri's
    Gaussian projection seeded by ``seed``), ``damping`` (dattri's absolute regularization r)
    or ``damping_multiple`` (r = multiple x |Phi|_F^2 / p, the suite's 0.01 x TRAK's own lambda0
    in dattri's units, with |Phi|_F^2 from the unprojected gradients, which the projection
    preserves in expectation), ``batch_size`` (None: from the memory budget, as TracIn),
    ``layers``, ``dtype``, ``device``.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    if s.splits.task == "regression" and s.splits.n_outputs != 1:
        raise ValueError(
            f"dattri_trak needs a single regression output; this model has {s.splits.n_outputs}"
        )
    layer_name = check_layers(s.model, layers)
    if proj_dim is not None:
        check_int("proj_dim", proj_dim)
    seed = check_int("seed", seed, minimum=0)
    batch_size = _batch_size(s, batch_size)
    algorithm, AttributionTask = _import_dattri()
    output, probability = _trak_functions(s)
    task = AttributionTask(loss_func=output, model=s.model, checkpoints=s.model.state_dict())
    d_layers = s.n_params(layer_name)
    projector = _projector(s, proj_dim, d_layers, seed)
    loader = torch.utils.data.DataLoader(s.splits.train, batch_size=batch_size, shuffle=False)
    if damping is not None:
        reg = check_number("damping", damping)
    else:
        multiple = check_number("damping_multiple", damping_multiple)
        params, _ = task.get_param(0, layer_name=layer_name)
        grad_fn = task.get_grad_loss_func(in_dims=(None, 0), layer_name=layer_name, ckpt_idx=0)
        sq = 0.0
        with seeded(seed, s.device), torch.no_grad():  # iterating a DataLoader draws from the RNG
            for batch in loader:
                g = grad_fn(params, tuple(t.to(s.device) for t in batch)).detach()
                sq += float((g.double() ** 2).sum())
        d_all = s.n_params(None)
        reg = multiple * sq / (d_all * projector["proj_dim"])
    attributor = algorithm.TRAKAttributor(
        task=task,
        correct_probability_func=probability,
        projector_kwargs=None,  # set below: dattri 0.3.0 would update its module-level defaults
        layer_name=layer_name,
        device=str(s.device),
        regularization=reg,
    )
    attributor.projector_kwargs = projector
    test = torch.utils.data.Subset(s.splits.test, s.query)
    with default_dtype(s.dtype), seeded(seed, s.device), torch.no_grad():
        attributor.cache(loader)
        raw = attributor.attribute(
            torch.utils.data.DataLoader(test, batch_size=batch_size, shuffle=False)
        )
    return to_suite(raw[s.train], len(s.query), len(s.train), "train_query", 1.0)
