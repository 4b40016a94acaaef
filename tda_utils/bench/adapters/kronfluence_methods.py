"""kronfluence 1.0.1 influence functions as suite plug-ins.

Public: ``kronfluence_scores`` (any strategy), ``kronfluence_ekfac``, ``kronfluence_kfac``,
``kronfluence_diagonal``, ``kronfluence_identity``, ``STRATEGIES``, ``FISHERS``.

Each plug-in ``f(model, splits, train_indices, query_indices, **options)`` returns a float64 CPU
tensor of shape ``(len(query_indices), len(train_indices))``, query-major, positive = helpful.
kronfluence's pairwise score is g_m^T (F + lambda I)^{-1} g_i with g_m the gradient of the
measurement (here: the query's loss) and g_i the gradient of the training loss of instance i
(both of the per-sample loss: the task's losses are sums over the batch), F the per-layer
(block-diagonal) approximation of the Fisher averaged over the training set. That is positive
= helpful already (checked numerically: with ``strategy="identity"`` it equals the suite's
``grad_dot``), so the adapters keep the sign and divide by ``splits.n_train`` to report on the
suite's IF scale, (1/n) g_q^T (F + lambda I)^{-1} g_i.

Fisher (``fisher``): "true" (default) fits the factors with labels sampled from the model (one
draw per training instance and pass, ``fisher_samples`` passes): classification draws from the
softmax, regression from N(prediction, k/2 I) for k outputs, whose expected squared
output-gradient of the suite's loss mean((out - y)^2) is its Gauss-Newton factor 2/k, so F
estimates the Gauss-Newton matrix the suite's ``ekfac`` uses (the suite takes that expectation
exactly; kronfluence samples it, hence close but not equal scores). "empirical" uses the
training labels (deterministic, the empirical Fisher).

The model is never modified: kronfluence wraps the layers of, and freezes, a deep copy. Its
factors and scores are written to a temporary directory that is removed afterwards; its progress
bars are disabled and its logger set to WARNING; the objects alive when it starts are excluded
from its many ``gc.collect()`` calls (``gc.freeze`` for the duration of the call). Supported
modules: ``nn.Linear`` and ``nn.Conv2d``; other parameters are ignored (their gradient entries do
not enter the scores).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Subset

import tda_utils as tu

from ._shared import (
    check_choice,
    check_indices,
    check_int,
    lambda0,
    check_number,
    resolve_device,
    resolve_dtype,
    seeded,
    to_suite,
    working_copy,
)

STRATEGIES = ("ekfac", "kfac", "diagonal", "identity")
FISHERS = ("true", "empirical")
#: the kronfluence version these adapters were written and tested against
KRONFLUENCE_VERSION = "1.0.1"
_INSTALL = (
    f"pip install kronfluence=={KRONFLUENCE_VERSION} accelerate==1.16.0 einconv==0.1.0 "
    "einops==0.8.2 opt_einsum==3.4.0 (the versions pinned in pyproject.toml)"
)


def _import_kronfluence() -> dict[str, Any]:
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
        from kronfluence.utils.dataset import DataLoaderKwargs
        from kronfluence.utils.state import State
    except ImportError as exc:
        raise ImportError(f"the kronfluence adapters need kronfluence: {_INSTALL}") from exc
    return {
        "Analyzer": Analyzer,
        "prepare_model": prepare_model,
        "FactorArguments": FactorArguments,
        "ScoreArguments": ScoreArguments,
        "Task": Task,
        "DataLoaderKwargs": DataLoaderKwargs,
        "State": State,
    }


def per_sample_loss(output: torch.Tensor, target: torch.Tensor, task: str) -> torch.Tensor:
    """The suite's per-sample training loss from outputs (B, k): mean((out - y)^2) over the k
    outputs (regression) or the cross-entropy (classification); shape (B,).
    """
    if task == "regression":
        return ((output - target.to(output.dtype)) ** 2).mean(-1)
    return nn.functional.cross_entropy(output, target.long(), reduction="none")


def _make_task(Task: type, task: str, n_outputs: int, modules: list[str] | None):
    """A kronfluence ``Task`` for the suite's loss; the measurement is the query's loss."""

    class SuiteLossTask(Task):
        def compute_train_loss(self, batch, model, sample=False):
            *inputs, target = batch
            out = model(*inputs)
            if sample:
                with torch.no_grad():
                    logits = out.detach()
                    if task == "classification":
                        target = torch.distributions.Categorical(logits=logits).sample()
                    else:
                        target = logits + math.sqrt(n_outputs / 2) * torch.randn_like(logits)
            return per_sample_loss(out, target, task).sum()

        def compute_measurement(self, batch, model):
            *inputs, target = batch
            return per_sample_loss(model(*inputs), target, task).sum()

        def get_influence_tracked_modules(self):
            return modules

    return SuiteLossTask()


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Within the block, the objects alive at its start are frozen (``gc.freeze``) and unfrozen
    afterwards: kronfluence calls ``gc.collect()`` between its phases (10 times a run), which in
    a process holding the suite's imports costs ~0.5 s each and dominated the run time on small
    models. Nothing is done when the caller has frozen objects already (``gc.get_freeze_count``).
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _state_device(State: type, dev: torch.device) -> torch.device:
    """Put kronfluence's process-wide ``State`` on ``dev``'s kind (re-initialised if another call
    left it on the other kind; never in a distributed run).
    """
    state = State(cpu=dev.type == "cpu")
    if state.device.type != dev.type:
        if state.use_distributed:
            raise ValueError(
                f"device={str(dev)!r}: kronfluence runs distributed on {state.device}; "
                "use that device"
            )
        State._reset_state()
        state = State(cpu=dev.type == "cpu")
    return state.device


def kronfluence_scores(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    strategy: str = "ekfac",
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    fisher: str = "true",
    fisher_samples: int = 1,
    seed: int = 0,
    modules: Sequence[str] | None = None,
    batch_size: int = 512,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: kronfluence pairwise influence scores (Grosse et al. 2023), any ``strategy``.

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) g_q^T (F + lambda I)^{-1} g_i, positive =
        helpful, the suite's IF scale; F per ``strategy``: "ekfac" (eigenvalue-corrected
        Kronecker factors, like the suite's ``ekfac``), "kfac", "diagonal" (the Fisher's
        diagonal) or "identity" (F + lambda I replaced by I: (1/n) g_q . g_i, the suite's
        ``grad_dot`` / n).

    Options:
        strategy: one of ``STRATEGIES``.
        damping: lambda, absolute; else ``damping_multiple`` x lambda0 (the suite's unit, default
            multiple 100 as in the suite). Unused by "identity".
        fisher: "true" (sampled labels: the Gauss-Newton matrix in expectation) or "empirical".
        fisher_samples: passes over the training set when fitting a true Fisher (one label
            draw per instance and pass; more passes, less sampling noise).
        seed: seeds torch's RNG for the label draws (the caller's RNG state is restored).
        modules: names of ``nn.Linear`` / ``nn.Conv2d`` modules to track (None: all those with
            trainable parameters; a frozen trunk's layers are left out).
        batch_size: instances per batch when fitting factors and computing gradients.
        dtype: None (the model's) or "float32" / "float64" (a cast copy); factors, gradients
            and scores are computed in float64 either way.
        device: "cpu" (default), "cuda" or "auto" (kronfluence picks the CUDA device itself).

    Raises:
        ImportError: kronfluence is not installed (the message names the pinned versions).
        ValueError: an invalid option (naming it and the allowed values).
    """
    strategy = check_choice("strategy", strategy, STRATEGIES)
    fisher = check_choice("fisher", fisher, FISHERS)
    fisher_samples = check_int("fisher_samples", fisher_samples)
    seed, batch_size = check_int("seed", seed, minimum=0), check_int("batch_size", batch_size)
    if isinstance(device, str) and device.startswith("cuda:"):
        raise ValueError(
            f"device={device!r}: kronfluence chooses the CUDA device itself; "
            "allowed values: 'cpu', 'cuda', 'auto'"
        )
    dev = resolve_device(device)
    train = check_indices("train_indices", train_indices, splits.n_train)
    query = check_indices("query_indices", query_indices, splits.n_test)
    dt = resolve_dtype(dtype, model)
    kf = _import_kronfluence()
    dev = _state_device(kf["State"], dev)
    work = working_copy(model, dt, dev, hooks=True)
    data = splits.to(dt)
    supported = [  # the trainable ones: a frozen trunk's layers have no gradient to track
        n
        for n, m in work.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
        and any(p.requires_grad for p in m.parameters(recurse=False))
    ]
    every = [n for n, m in work.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if modules is None and supported and len(supported) < len(every):
        modules = supported
    elif modules is not None:
        modules = [modules] if isinstance(modules, str) else list(modules)
        unknown = [m for m in modules if m not in supported]
        if unknown or not modules:
            raise ValueError(
                f"modules={modules!r}: {unknown or 'empty'} are not trainable nn.Linear / "
                f"nn.Conv2d modules; allowed: {supported}"
            )
    elif not supported:
        raise ValueError(
            "kronfluence needs a model with trainable nn.Linear or nn.Conv2d modules"
        )
    if strategy == "identity":
        lam = 0.0
    elif damping is not None:
        lam = check_number("damping", damping)
    else:
        if damping_multiple is None:
            raise ValueError("give damping (absolute) or damping_multiple (x lambda0)")
        lam = check_number("damping_multiple", damping_multiple) * lambda0(work, data)

    f64 = torch.float64
    task = _make_task(kf["Task"], data.task, data.n_outputs, modules)
    factor_args = kf["FactorArguments"](
        strategy=strategy,
        use_empirical_fisher=fisher == "empirical",
        covariance_max_examples=None,
        lambda_max_examples=None,
        activation_covariance_dtype=f64,
        gradient_covariance_dtype=f64,
        per_sample_gradient_dtype=f64,
        lambda_dtype=f64,
        eigendecomposition_dtype=f64,
    )
    score_args = kf["ScoreArguments"](
        damping_factor=lam,
        per_sample_gradient_dtype=f64,
        precondition_dtype=f64,
        score_dtype=f64,
    )
    passes = fisher_samples if fisher == "true" else 1
    fit_data = ConcatDataset([data.train] * passes) if passes > 1 else data.train
    with (
        tempfile.TemporaryDirectory(prefix="fimo-kronfluence-") as tmp,
        seeded(seed, dev),
        _frozen_heap(),
    ):
        wrapped = kf["prepare_model"](work, task)
        analyzer = kf["Analyzer"](
            analysis_name="fimo",
            model=wrapped,
            task=task,
            cpu=dev.type == "cpu",
            log_level=logging.WARNING,
            disable_tqdm=True,
            output_dir=tmp,
        )
        analyzer.set_dataloader_kwargs(kf["DataLoaderKwargs"](num_workers=0))
        analyzer.fit_all_factors(
            factors_name="factors",
            dataset=fit_data,
            per_device_batch_size=min(batch_size, len(fit_data)),
            factor_args=factor_args,
            overwrite_output_dir=True,
        )
        analyzer.compute_pairwise_scores(
            scores_name="scores",
            factors_name="factors",
            query_dataset=Subset(data.test, query),
            train_dataset=Subset(data.train, train),
            per_device_query_batch_size=min(batch_size, len(query)),
            per_device_train_batch_size=min(batch_size, len(train)),
            score_args=score_args,
            overwrite_output_dir=True,
        )
        raw = analyzer.load_pairwise_scores(scores_name="scores")["all_modules"]
    return to_suite(raw, len(query), len(train), "query_train", 1.0 / splits.n_train)


def kronfluence_ekfac(model, splits, train_indices, query_indices, **options) -> torch.Tensor:
    """Plug-in: kronfluence EK-FAC: ``kronfluence_scores`` with ``strategy="ekfac"`` (same options).

    Returns float64 ``(n_query, n_train_indices)``, positive = helpful, IF scale (1/n); with the
    default true Fisher it estimates the suite's ``ekfac`` (same damping), up to the sampling
    of the labels.
    """
    return kronfluence_scores(
        model, splits, train_indices, query_indices, strategy="ekfac", **options
    )


def kronfluence_kfac(model, splits, train_indices, query_indices, **options) -> torch.Tensor:
    """Plug-in: kronfluence K-FAC (no eigenvalue correction), ``strategy="kfac"``.

    Returns float64 ``(n_query, n_train_indices)``, positive = helpful, IF scale (1/n).
    """
    return kronfluence_scores(
        model, splits, train_indices, query_indices, strategy="kfac", **options
    )


def kronfluence_diagonal(model, splits, train_indices, query_indices, **options) -> torch.Tensor:
    """Plug-in: kronfluence with the Fisher's diagonal: ``kronfluence_scores(strategy="diagonal")``.

    Returns float64 ``(n_query, n_train_indices)``, positive = helpful, IF scale (1/n).
    """
    return kronfluence_scores(
        model, splits, train_indices, query_indices, strategy="diagonal", **options
    )


def kronfluence_identity(model, splits, train_indices, query_indices, **options) -> torch.Tensor:
    """Plug-in: kronfluence without preconditioning: ``kronfluence_scores(strategy="identity")``.

    Returns float64 ``(n_query, n_train_indices)``: (1/n) g_q . g_i over the tracked modules'
    parameters (the suite's ``grad_dot`` / n when every parameter is tracked), positive =
    helpful. The damping options are accepted and unused.
    """
    return kronfluence_scores(
        model, splits, train_indices, query_indices, strategy="identity", **options
    )
