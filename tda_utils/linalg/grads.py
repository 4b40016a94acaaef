"""Per-sample gradients with ``torch.func``, parameter subsets, flatten/unflatten.

Public: ``trainable_params``, ``frozen_state``, ``flatten``, ``unflatten``, ``n_params``,
``param_offsets``,
``per_sample_grads``, ``iter_per_sample_grads``, ``chunk_size_for``, ``dataset_tensors``,
``activation_numel``.

Shapes: per-sample gradients are returned flattened, (n, d) with d = the number of trainable
parameters, in the order of ``model.named_parameters()``. Gradients are of the per-sample loss
(``models.per_sample_loss``), so the gradient of the mean training loss is their mean.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..models.registry import resolve_loss

warnings.filterwarnings("ignore", message=r".*torch\.func.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*forward-mode.*", category=FutureWarning)


def trainable_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{name: parameter}`` for parameters with ``requires_grad`` (detached)."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def frozen_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers and frozen parameters, passed unchanged to ``functional_call``."""
    state = {n: b.detach() for n, b in model.named_buffers()}
    state.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    return state


def param_offsets(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{name: (start, stop)} of each trainable parameter tensor in the flattened vector."""
    offsets, o = {}, 0
    for name, p in trainable_params(model).items():
        offsets[name] = (o, o + p.numel())
        o += p.numel()
    return offsets


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in trainable_params(model).values())


def flatten(tensors: dict[str, torch.Tensor], batch_dims: int = 0) -> torch.Tensor:
    """Concatenate a dict of tensors into one, keeping ``batch_dims`` leading dims."""
    return torch.cat([t.reshape(*t.shape[:batch_dims], -1) for t in tensors.values()], dim=-1)


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``flatten`` for a flat vector (..., d): a dict shaped like ``like``."""
    out, i = {}, 0
    lead = flat.shape[:-1]
    for name, t in like.items():
        out[name] = flat[..., i : i + t.numel()].reshape(*lead, *t.shape)
        i += t.numel()
    if i != flat.shape[-1]:
        raise ValueError(f"flat vector has {flat.shape[-1]} entries, parameters have {i}")
    return out


def dataset_tensors(dataset, indices: Sequence[int] | torch.Tensor | None = None):
    """(inputs tuple, target) of a TensorDataset, optionally restricted to ``indices``."""
    tensors = dataset.tensors
    if indices is not None:
        idx = torch.as_tensor(indices, dtype=torch.long)
        tensors = tuple(t[idx] for t in tensors)
    return tuple(tensors[:-1]), tensors[-1]


def chunk_size_for(
    d: int, memory_budget_mb: float, bytes_per_entry: int = 4, factor: int = 4
) -> int:
    """How many per-sample gradients of size ``d`` fit in ``memory_budget_mb`` (at least 1)."""
    return max(1, int(memory_budget_mb * 2**20 // (d * bytes_per_entry * factor)))


def _sample_loss_fn(model: nn.Module, task: str, loss_fn=None):
    state = frozen_state(model)
    loss = resolve_loss(task, loss_fn)

    def f(params, inputs, target):
        out = functional_call(model, {**params, **state}, tuple(x.unsqueeze(0) for x in inputs))
        return loss(out, target.unsqueeze(0)).squeeze(0)

    return f


def iter_per_sample_grads(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    chunk_size: int | None = None,
    memory_budget_mb: float = 1024.0,
    loss_fn=None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(slice, grads)`` with grads (chunk, d) of the per-sample loss, chunk by chunk.

    ``inputs``: tuple of tensors with leading dimension n; ``target``: (n, ...). ``loss_fn``:
    None (the built-in loss of ``task``) or a custom per-sample loss (``models.resolve_loss``).
    """
    params = trainable_params(model)
    d = sum(p.numel() for p in params.values())
    n = target.shape[0]
    elem = next(iter(params.values())).element_size()
    chunk = chunk_size or chunk_size_for(d, memory_budget_mb, elem)
    gfn = vmap(grad(_sample_loss_fn(model, task, loss_fn)), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            g = gfn(params, tuple(x[sl] for x in inputs), target[sl])
            yield sl, flatten(g, batch_dims=1)
    finally:
        model.train(was_training)


def per_sample_grads(
    model: nn.Module,
    dataset,
    indices: Sequence[int] | None = None,
    task: str | None = None,
    chunk_size: int | None = None,
    memory_budget_mb: float = 1024.0,
    loss_fn=None,
) -> torch.Tensor:
    """Per-sample loss gradients at the model's current parameters, shape (n, d).

    ``dataset``: a TensorDataset (inputs..., target) or a ``Splits``-like pair; ``task`` is
    required ("regression" | "classification"). The model is evaluated in eval mode.
    ``loss_fn``: None (the built-in loss) or a custom per-sample loss ``(output (..., k),
    target (...)) -> (...)`` (``models.resolve_loss``).
    """
    if task is None:
        raise ValueError("task is required: 'regression' or 'classification'")
    inputs, target = dataset_tensors(dataset, indices)
    parts = [
        g
        for _, g in iter_per_sample_grads(
            model, inputs, target, task, chunk_size, memory_budget_mb, loss_fn
        )
    ]
    return torch.cat(parts, dim=0)


def activation_numel(model: nn.Module, sample_inputs: tuple[torch.Tensor, ...]) -> int:
    """Number of activation entries of one sample's forward pass (sum over leaf-module outputs);
    used to size chunks to a memory budget.
    """
    total = [0]

    def hook(_m, _i, out):
        if isinstance(out, torch.Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(*sample_inputs)
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1)
