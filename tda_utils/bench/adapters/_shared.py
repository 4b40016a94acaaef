"""Plumbing shared by the library adapters: option checks, devices, dtypes, damping, loaders.

Only the public ``tda_utils`` API is used (``import tda_utils as tu``). Nothing here imports
dattri or kronfluence.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset, default_collate

import tda_utils as tu
import tda_utils.final.your_model  # noqa: F401  (tu.your_model)

DTYPES = ("float32", "float64")
#: memory budget (MB) of the chunked per-sample gradient pass that computes lambda0
LAMBDA0_BUDGET_MB = 512.0


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else ValueError naming ``name`` and the choices."""
    try:
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
    except TypeError:  # unhashable or incomparable value
        pass
    raise ValueError(
        f"{name}={value!r} is not valid; allowed values: {', '.join(repr(a) for a in allowed)}"
    )


def check_number(name: str, value: Any, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``), else ValueError naming it."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ValueError(f"{name}={value!r} must be a number")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value!r} must be a finite number {bound}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_indices(name: str, indices: Any, n: int) -> list[int]:
    """``indices`` (a sequence, range, array or 1-d tensor of ints) as a non-empty list of ints in
    ``[0, n)``, else ValueError naming ``name``.
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence of ints, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise ValueError(f"{name} holds {bad[:5].tolist()} outside [0, {n})")
    return [int(i) for i in arr]


def resolve_device(device: Any) -> torch.device:
    """The device of ``device``: "auto" (CUDA when available), "cpu", "cuda", "cuda:N" or a
    ``torch.device``; ValueError naming ``device`` otherwise.
    """
    allowed = "'auto', 'cpu', 'cuda', 'cuda:N'"
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} is not valid; allowed values: {allowed}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device={device!r} is not valid; allowed values: {allowed}") from None
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return dev
    raise ValueError(f"device={device!r} is not valid; allowed values: {allowed}")


def resolve_dtype(dtype: str | None, model: nn.Module) -> torch.dtype:
    """None: the dtype of the model's trainable parameters; "float32" / "float64" otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    if dtype is None:
        return params[0].dtype
    return getattr(torch, check_choice("dtype", dtype, DTYPES))


def working_copy(
    model: nn.Module, dtype: torch.dtype, device: torch.device, hooks: bool = False
) -> nn.Module:
    """A deep copy of ``model`` in eval mode on ``device`` in ``dtype`` (the libraries mutate the
    modules they are given: they load checkpoints into them, wrap layers or freeze parameters).

    ``hooks``: the library hooks ``nn.Linear`` modules (EK-FAC's factors), so every Linear must be
    called as a module: a ``tu.BertClassifier`` copy runs its last block in full
    (``last_block = "full"``, the same function) instead of the [CLS]-only shortcut, which uses
    the key and value weights directly.
    """
    work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    if hooks and getattr(work, "last_block", "full") != "full":
        work.last_block = "full"
    return work


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Within the block, ``torch.get_default_dtype()`` is ``dtype`` (restored afterwards).

    dattri allocates its score matrices and random start vectors with the default dtype; this
    keeps float64 runs in float64. The default dtype is process-wide: do not run adapters
    concurrently in threads that rely on a different default.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Within the block, torch's global RNG (and the CUDA one on ``device``) is seeded with
    ``seed``; the caller's RNG state is restored afterwards.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def lambda0(model: nn.Module, splits: tu.Splits) -> float:
    """The suite's damping unit: sum_j ||g_j||^2 / (n d), the mean squared per-sample training
    gradient entry over the full training set and every trainable parameter (``g_j`` from
    ``tu.grads``), computed on ``model``'s device and dtype.
    """
    ref = next(p for p in model.parameters() if p.requires_grad)
    inputs, target = tu.grads.dataset_tensors(splits.train)
    inputs = tuple(x.to(ref.device) for x in inputs)
    target = target.to(ref.device)
    total, n, d = 0.0, len(target), 0
    for _, g in tu.grads.iter_per_sample_grads(
        model, inputs, target, splits.task, memory_budget_mb=LAMBDA0_BUDGET_MB
    ):
        total += float((g.double() ** 2).sum())
        d = g.shape[1]
    return total / (n * d)


def max_grad_norm(model: nn.Module, dataset, indices: Sequence[int], task: str) -> float:
    """The largest per-sample loss-gradient norm (all trainable parameters) over rows
    ``indices`` of ``dataset``, computed on ``model``'s device.
    """
    ref = next(p for p in model.parameters() if p.requires_grad)
    inputs, target = tu.grads.dataset_tensors(dataset, list(indices))
    inputs = tuple(x.to(ref.device) for x in inputs)
    best = 0.0
    for _, g in tu.grads.iter_per_sample_grads(
        model, inputs, target.to(ref.device), task, memory_budget_mb=LAMBDA0_BUDGET_MB
    ):
        best = max(best, float(g.double().norm(dim=1).max()))
    return best


def resolve_damping(
    damping: Any, damping_multiple: Any, model: nn.Module, splits: tu.Splits
) -> float:
    """``damping`` (absolute) when given, else ``damping_multiple`` x ``lambda0``."""
    if damping is not None:
        return check_number("damping", damping)
    if damping_multiple is None:
        raise ValueError("give damping (absolute) or damping_multiple (x lambda0); both are None")
    return check_number("damping_multiple", damping_multiple) * lambda0(model, splits)


#: memory budget (MB) of one batch of per-sample gradients handed to a library
GRAD_BATCH_BUDGET_MB = 256.0


def grad_batch_size(n_params: int, itemsize: int, n_rows: int) -> int:
    """Rows per batch so that one batch of per-sample gradients (rows x ``n_params`` x
    ``itemsize`` bytes) stays within ``GRAD_BATCH_BUDGET_MB``: all ``n_rows`` in one batch for
    the tabular MLPs (17-20k parameters), 37 per batch for the 1.8M-parameter text head (float32).
    """
    per_row = max(1, n_params * itemsize)
    return max(1, min(n_rows, int(GRAD_BATCH_BUDGET_MB * 2**20 // per_row)))


#: memory budget (MB) of one Hessian-vector-product call that a library vmaps over several
#: vectors (dattri's CG and LiSSA vmap theirs over the queries of a batch)
HVP_BUDGET_MB = 2048.0
#: bytes of activations an HVP keeps per input row, as a multiple of the forward pass's outputs
#: (forward, its backward, and the backward of that)
HVP_ACTIVATION_FACTOR = 3


def activation_bytes(model: nn.Module, dataset) -> int:
    """Bytes that the forward pass of one row of ``dataset`` (the mean over its first two rows)
    saves for its backward pass (autograd's saved tensors, each storage counted once: module
    outputs and the intermediates of functional code alike): the unit of an HVP's memory per row.
    """
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:  # the weights are saved once per model, not per row
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    rows = min(2, len(dataset))
    ref = next(p for p in model.parameters() if p.requires_grad)
    *inputs, _ = first_rows(dataset, rows)
    inputs = [x.to(ref.device, ref.dtype) if x.is_floating_point() else x.to(ref.device)
              for x in inputs]
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*inputs)
    return max(1, (sum(seen.values()) + out.numel() * out.element_size()) // rows)


def vectors_per_hvp(model: nn.Module, dataset, rows_per_hvp: int) -> int:
    """How many vectors one vmapped HVP over ``rows_per_hvp`` rows of ``dataset`` may take
    within ``HVP_BUDGET_MB`` (at least 1): on the cpu profile's MNIST CNN and the full training
    set (4,000 images) 1, on the tabular MLPs all queries.
    """
    per_vector = HVP_ACTIVATION_FACTOR * activation_bytes(model, dataset) * rows_per_hvp
    return max(1, int(HVP_BUDGET_MB * 2**20 // per_vector))


def first_rows(dataset, k: int) -> tuple[torch.Tensor, ...]:
    """The first ``k`` rows of ``dataset`` collated into one batch (``(inputs..., target)``)
    without a DataLoader, whose iterator would draw from torch's global RNG.
    """
    return tuple(default_collate([dataset[i] for i in range(k)]))


def one_batch(dataset, indices: Sequence[int], batch_size: int | None = None) -> DataLoader:
    """An unshuffled DataLoader yielding rows ``indices`` of ``dataset`` in order, in batches of
    ``batch_size`` (None: one batch).
    """
    indices = list(indices)
    return DataLoader(Subset(dataset, indices), batch_size=batch_size or len(indices),
                      shuffle=False)


def check_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str] | None:
    """``layers`` (names of trainable parameters, as in ``model.named_parameters()``) in the
    model's order, or None (every trainable parameter).
    """
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    unknown = [n for n in layers if n not in trainable]
    if unknown or not layers:
        raise ValueError(
            f"layers={list(layers)!r}: {unknown or 'empty'} are not trainable parameter names; "
            f"allowed: {trainable}"
        )
    return [n for n in trainable if n in set(layers)]


class NonFiniteScores(ValueError):
    """A library returned NaN or inf scores (a diverged or broken-down solver)."""


def to_suite(raw: Any, n_query: int, n_train: int, layout: str, scale: float) -> torch.Tensor:
    """A library's score matrix in the suite's convention: float64 CPU ``(n_query, n_train)``,
    positive = helpful (``tu.your_model.to_query_major``), multiplied by ``scale``;
    ``NonFiniteScores`` (a ValueError) when it holds NaN or inf.
    """
    values = tu.your_model.to_query_major(raw, n_query, n_train, layout, sign=1) * scale
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteScores(
            f"the library returned {int((~torch.isfinite(values)).sum())} non-finite scores "
            "(NaN or inf); increase the damping or check the solver's options"
        )
    return values
