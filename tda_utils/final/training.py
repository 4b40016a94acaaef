"""Training the final model and evaluating it.

Public: ``epoch_orders``, ``batch_slices``, ``make_optimizer``, ``train_model``, ``evaluate``,
``model_key``, ``fit_linear_exact``, ``DivergenceError``,
``divergence_message``.

Batch order: seed s makes ``torch.Generator().manual_seed(s)`` and each epoch's
order is what ``torch.utils.data.RandomSampler(train, generator=g)`` yields for that epoch (torch's
sampler draws a second, discarded permutation per epoch; we iterate the sampler itself).
Batches are consecutive chunks of that order.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ..cache import Cache, default_results_dir, model_fingerprint
from ..config import TrainConfig, check_choice, stable_hash, to_dict
from ..data.registry import Splits
from ..devices import resolve_device, to_cpu
from ..linalg.grads import dataset_tensors
from ..models.registry import loss_key, per_sample_loss, resolve_loss


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or gradient (NaN or inf)."""


def divergence_message(run: str, epoch: int, step: int, lr: float) -> str:
    """The error text of a diverged run: which run, where, and what to try."""
    return (
        f"{run} diverged: non-finite loss or gradient (NaN or inf) at epoch {epoch}, "
        f"step {step} (1-based, within the epoch); try a smaller learning rate than "
        f"lr={lr:g} (e.g. lr={lr / 10:g}) or grad_clip, and check the data for extreme values"
    )


def epoch_orders(n: int, seed: int, epochs: int) -> Iterator[torch.Tensor]:
    """Yield ``epochs`` permutations of range(n) (int64) from a RandomSampler seeded by seed."""
    g = torch.Generator().manual_seed(int(seed))
    for _ in range(epochs):
        # a full pass of RandomSampler (no replacement, n samples) is randperm(n) followed by
        # randperm(n)[:0] (drawn and dropped): the same stream without the Python list
        perm = torch.randperm(n, generator=g)
        torch.randperm(n, generator=g)
        yield perm


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of size ``batch_size`` covering range(n) (the last may be smaller)."""
    return [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def make_optimizer(
    name: str,
    params,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """A fresh torch optimizer: ``sgd`` (no momentum), ``adam`` or ``adamw``."""
    check_choice("optimizer", name, ("sgd", "adam", "adamw"))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module, splits: Splits, split: str = "test", device="auto"
) -> dict[str, float]:
    """Mean loss (and accuracy for classification) on ``split`` ("train" | "test").

    Computed on ``device`` (``devices.resolve_device``); the model is left where it was.
    """
    check_choice("split", split, ("train", "test"))
    dev = resolve_device(device)
    ds = splits.train if split == "train" else splits.test
    inputs, target = dataset_tensors(ds)
    inputs, target = tuple(x.to(dev) for x in inputs), target.to(dev)
    was, home = model.training, _model_device(model)
    model.to(dev).eval()
    out = torch.cat([model(*(x[sl] for x in inputs)) for sl in batch_slices(len(target), 1024)])
    model.to(home).train(was)
    res = {"loss": per_sample_loss(out, target, splits.task).mean().item()}
    if splits.task == "classification":
        res["accuracy"] = (out.argmax(-1) == target).double().mean().item()
    return res


def model_key(model: nn.Module, splits: Splits, *extra) -> str:
    """A hash of the model's class, structure and code (``cache.model_fingerprint``), its
    parameters and buffers, the data and ``extra``.
    """
    state = [t for _, t in sorted(model.state_dict().items())]
    return stable_hash(
        model_fingerprint(model), *state, *splits.train.tensors, *splits.test.tensors, *extra
    )


def _state_checker(model: nn.Module):
    """A ``Cache.load`` check: the item is {"state_dict", "history", "seconds"} with the model's
    parameter names and shapes.
    """
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def check(obj) -> None:
        got = {k: tuple(v.shape) for k, v in obj["state_dict"].items()}
        if got != shapes:
            raise ValueError("the stored state_dict does not match the model's parameters")
        floats = [v for v in obj["state_dict"].values() if v.is_floating_point()]
        if not all(torch.isfinite(v).all() for v in floats):
            raise ValueError("the stored state_dict holds non-finite values")
        dict(obj["history"]), float(obj["seconds"])

    return check


def train_model(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    cache_dir=...,
    progress: bool = True,
    device="auto",
    loss_fn=None,
) -> nn.Module:
    """Train ``model`` (in place) on ``splits.train`` with ``cfg``; return it in eval mode.

    Mean loss per batch, batch order of ``epoch_orders(n, cfg.seed, ...)``. The trained state is
    cached under ``<cache_dir>/models/<key>`` where key hashes the initial parameters, the data
    and the config (``cache_dir=None`` disables caching). ``model.fimo_history`` holds per-epoch
    training loss (and test accuracy when ``select_best``) and ``model.fimo_train_seconds``.
    Trained on ``device`` (``devices.resolve_device``: "auto", "cpu", "cuda", "cuda:N"); the
    model is returned where it was given and the cache holds CPU tensors.
    ``loss_fn``: None (the built-in per-task loss) or a custom per-sample loss
    ``(output (B, k), target (B, ...)) -> (B,)`` (``models.resolve_loss``); a custom loss enters
    the cache key (``models.loss_key``).
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    dev = resolve_device(device)
    loss_of = resolve_loss(splits.task, loss_fn)
    root = default_results_dir() if cache_dir is ... else cache_dir
    custom = {} if loss_fn is None or root is None else {"loss": loss_key(loss_fn)}
    key = model_key(model, splits, cfg, *custom.values())
    cache = Cache(
        root,
        "models",
        key,
        {
            "train": to_dict(cfg),
            "model": getattr(model, "fimo_spec", None),
            "model_fingerprint": model_fingerprint(model),
            "dataset": splits.name,
            **custom,
        },
    )
    hit = cache.load("final", check=_state_checker(model))
    if hit is not None:
        model.load_state_dict(hit["state_dict"])
        model.fimo_history, model.fimo_train_seconds = hit["history"], hit["seconds"]
        model.eval()
        return model

    start = time.perf_counter()
    inputs, target = dataset_tensors(splits.train)
    inputs, target = tuple(x.to(dev) for x in inputs), target.to(dev)
    home = _model_device(model)
    model.to(dev)
    n = target.shape[0]
    opt = make_optimizer(
        cfg.optimizer, [p for p in model.parameters() if p.requires_grad], cfg.lr, cfg.weight_decay
    )
    history: dict[str, list] = {"train_loss": [], "test_accuracy": []}
    best = (-1.0, None, -1)
    model.train()
    for epoch, perm in enumerate(
        tqdm(
            epoch_orders(n, cfg.seed, cfg.epochs),
            total=cfg.epochs,
            desc="train final model",
            disable=not progress,
        )
    ):
        total = torch.zeros((), dtype=torch.float64, device=dev)
        perm = perm.to(dev)
        for step, sl in enumerate(batch_slices(n, cfg.batch_size), start=1):
            idx = perm[sl]
            loss = loss_of(model(*(x[idx] for x in inputs)), target[idx]).mean()
            if not math.isfinite(loss.item()):
                raise DivergenceError(
                    divergence_message(
                        f"training the final model on dataset {splits.name!r} (seed {cfg.seed})",
                        epoch + 1,
                        step,
                        cfg.lr,
                    )
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.detach().double() * len(idx)
        history["train_loss"].append(total.item() / n)
        if cfg.select_best:
            acc = evaluate(model, splits, device=dev)["accuracy"]
            history["test_accuracy"].append(acc)
            if acc > best[0]:
                best = (acc, copy.deepcopy(model.state_dict()), epoch)
            model.train()
    if cfg.select_best:
        model.load_state_dict(best[1])
        history["best_epoch"] = best[2]
    model.to(home).eval()
    seconds = time.perf_counter() - start
    model.fimo_history, model.fimo_train_seconds = history, seconds
    cache.save(
        "final", {"state_dict": to_cpu(model.state_dict()), "history": history, "seconds": seconds}
    )
    return model


@torch.no_grad()
def fit_linear_exact(model: nn.Module, splits: Splits, weight_decay: float = 0.0) -> nn.Module:
    """Set a ``linear`` regression model to the exact minimiser of its training objective.

    Objective (what SGD with ``weight_decay`` minimises): mean over samples of the per-sample
    MSE (averaged over outputs) + (weight_decay / 2) ||theta||^2, theta = (W, b), all entries
    penalised. Solved in float64 from the normal equations
    (2 / (n k) A^T A + weight_decay I) theta = 2 / (n k) A^T Y with A = [X, 1], k outputs.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if splits.task != "regression" or len(layers) != 1 or layers[0].bias is None:
        raise ValueError(
            "fit_linear_exact needs a regression task and a model with one nn.Linear layer "
            "with bias "
            "(build_model('linear', splits))"
        )
    lin = layers[0]
    x, y = splits.train.tensors[0].double(), splits.train.tensors[-1].double()
    n, k = y.shape[0], y.shape[1]
    a = torch.cat([x.reshape(n, -1), torch.ones(n, 1, dtype=torch.float64)], dim=1)
    lhs = 2.0 / (n * k) * a.T @ a + weight_decay * torch.eye(a.shape[1], dtype=torch.float64)
    theta = torch.linalg.solve(lhs, 2.0 / (n * k) * a.T @ y)  # (d + 1, k)
    lin.weight.copy_(theta[:-1].T.to(lin.weight.dtype))
    lin.bias.copy_(theta[-1].to(lin.bias.dtype))
    return model.eval()
