"""Model registry.

Public: ``build_model``, ``register_model``, ``MODELS``, ``per_sample_loss``, ``query_loss``,
``resolve_loss``,
``loss_key``, ``LossFn``.

A custom per-sample loss (``loss_fn``, accepted by ``train_model``, ``further_train`` and some
``attribute`` methods) is a callable ``(output (..., k), target (...)) -> loss (...)`` that works
under ``vmap`` and with leading stacked dimensions; ``resolve_loss`` turns (task, loss_fn) into
the one loss callable every caller uses.

``build_model(name, splits, seed)`` calls ``torch.manual_seed(seed)`` and then creates the layers
in order, so the initial parameters match the authors' code bit for bit (design.md §6).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..cache import MODEL_BUILDERS
from ..config import check_choice, check_positive
from ..data.registry import Splits

#: {name: builder}; the same dict as ``cache.MODEL_BUILDERS``, so cache keys fill in defaults
MODELS: dict[str, Callable[..., nn.Module]] = MODEL_BUILDERS


def register_model(name: str) -> Callable:
    """Decorator: register ``fn(splits, **options) -> nn.Module`` under ``name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = fn
        return fn

    return deco


def build_model(name: str, splits: Splits, seed: int = 0, **options: Any) -> nn.Module:
    """Build model ``name`` for ``splits`` after ``torch.manual_seed(seed)``.

    The returned module carries ``model.fimo_spec = {"name", "seed", "options"}``.
    """
    check_choice("model", name, sorted(MODELS))
    torch.manual_seed(seed)
    model = MODELS[name](splits, **options)
    model.fimo_spec = {"name": name, "seed": seed, "options": dict(options)}
    return model


@register_model("mlp")
def mlp(splits: Splits, hidden: int = 128, depth: int = 2) -> nn.Module:
    """The paper's tabular MLP: input -> hidden -> hidden -> output with ReLU (``depth`` hidden
    layers). Concrete: 8 -> 128 -> 128 -> 1, 17,793 parameters.
    """
    check_positive("hidden", hidden, integer=True)
    check_positive("depth", depth, integer=True)
    layers: list[nn.Module] = []
    width = splits.n_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, splits.n_outputs))
    return nn.Sequential(*layers)


@register_model("linear")
def linear(splits: Splits) -> nn.Module:
    """A linear model (one ``nn.Linear`` in an ``nn.Sequential``): linear or logistic regression,
    the convex case where every quantity of the unified view is exact.
    """
    return nn.Sequential(nn.Linear(splits.n_features, splits.n_outputs))


def per_sample_loss(output: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Per-sample loss, shape (..., ) from output (..., k) and target.

    Regression: squared error averaged over output dims (``nn.MSELoss`` with mean reduction over a
    batch of scalar targets is the batch mean of this). Classification: cross-entropy.
    Works under ``vmap`` and on stacked runs with leading dimensions.
    """
    if task == "regression":
        return ((output - target) ** 2).mean(-1)
    logp = torch.log_softmax(output, dim=-1)
    return -logp.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


#: a per-sample loss: (output (..., k), target (...)) -> loss (...)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def query_loss(output: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """Per-query loss in float64 from model outputs of any dtype, shape (...,).

    The outputs are cast to float64 first, so a confident query's cross-entropy is not rounded to
    0 (in float32, log(1 + 1e-8) is exactly 0 and its tau would vanish). Classification uses
    ``log1p(sum_{j != y} exp(z_j - z_y))`` while the target logit is the largest (accurate down to
    exp(-745)), else ``logsumexp(z - z_y)``; regression is ``per_sample_loss`` in float64.
    """
    output = output.double()
    if task == "regression":
        return per_sample_loss(output, target.double(), task)
    d = output - output.gather(-1, target.long().unsqueeze(-1))  # z_j - z_y, 0 at the target
    others = d.scatter(-1, target.long().unsqueeze(-1), float("-inf"))
    small = torch.log1p(others.clamp(max=0).exp().sum(-1))
    return torch.where(others.amax(-1) > 0, torch.logsumexp(d, dim=-1), small)


def resolve_loss(task: str, loss_fn: LossFn | None = None) -> LossFn:
    """The per-sample loss ``(output (..., k), target (...)) -> (...)`` to train and attribute.

    ``loss_fn=None``: the built-in loss of ``task`` (``per_sample_loss``); else ``loss_fn`` itself,
    which must be callable, work under ``vmap`` and broadcast over leading dimensions.
    """
    if loss_fn is None:
        return lambda output, target: per_sample_loss(output, target, task)
    if not callable(loss_fn):
        raise ValueError(
            f"loss_fn must be None (the built-in per-task loss) or a callable "
            f"(output, target) -> per-sample loss, got {type(loss_fn).__name__}"
        )
    return loss_fn


def loss_key(loss_fn: LossFn | None) -> dict[str, str] | None:
    """What identifies a custom loss in cache keys (None for the built-in loss).

    Returns {"loss_fn": qualified name, "code": hash of its source, defaults and closure values}.

    Raises:
        ValueError: the source of ``loss_fn`` is unavailable (e.g. defined in an interactive
            shell or a ``functools.partial``): pass ``cache_dir=None`` to run without a cache.
    """
    if loss_fn is None:
        return None
    resolve_loss("regression", loss_fn)  # validates
    qualname = getattr(loss_fn, "__qualname__", repr(loss_fn))
    name = f"{getattr(loss_fn, '__module__', '?')}.{qualname}"
    try:
        source = inspect.getsource(loss_fn)
    except (OSError, TypeError):
        raise ValueError(
            f"loss_fn {name} cannot enter a cache key: its source code is "
            "unavailable (inspect.getsource failed); define it in a file or notebook "
            "cell, or pass cache_dir=None to run without a cache"
        ) from None
    cells = [c.cell_contents for c in (getattr(loss_fn, "__closure__", None) or ())]
    defaults = (getattr(loss_fn, "__defaults__", None), getattr(loss_fn, "__kwdefaults__", None))
    extra = repr((defaults, cells))
    return {"loss_fn": name, "code": hashlib.sha256((source + extra).encode()).hexdigest()[:16]}
