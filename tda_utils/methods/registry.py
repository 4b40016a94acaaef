"""The one registry of attribution methods, and ``attribute``.

Public: ``MethodSpec``, ``METHODS``, ``register_method``, ``method_options``, ``make_options``,
``attribute``, ``AttributionScores``, ``PeakMemory``, ``method_order``, ``method_style``,
``methods_in_family``, ``scalable_methods``, ``FAMILIES``, ``DAMPING_KINDS``.

Everything the rest of the suite knows about a method comes from its ``MethodSpec``: the paper's
order (registration order), label, colour and line style (figures and tables), family (which
curves the cross-dataset summary compares), damping kind (which methods ``run_methods`` hands
``damping_multiple``) and options dataclass (defaults, validation, ``method_options``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..config import check_choice, check_indices
from ..data.registry import Splits
from ..devices import resolve_device, to_cpu
from ..models.registry import resolve_loss
from .common import custom_loss

#: first_order: gradient similarities; influence: (approximate) inverse-Hessian influence;
#: unified: influence at a further-training time t
FAMILIES = ("first_order", "influence", "unified")
#: none: undamped; lambda0: ``damping_multiple`` x the mean squared per-sample gradient entry
#: (the paper's protocol, shared by the IF family); features: the method damps its own features
DAMPING_KINDS = ("none", "lambda0", "features")
#: methods that accept a custom ``loss_fn`` (per-sample gradients and exact / autodiff Hessians
#: only; the others assume the built-in loss's output Hessian or outputs)
CUSTOM_LOSS_METHODS = (
    "grad_dot",
    "grad_cos",
    "datainf",
    "cg",
    "lissa",
    "lissa_h",
    "if_explicit",
    "if_time",
)

#: a method: fn(model, splits, train_indices (list), query_indices (list), options) ->
#: (values (n_query, n_train_indices), diagnostics dict)
MethodFn = Callable[..., tuple[torch.Tensor, dict]]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """Everything about one method.

    Attributes:
        name: the key given to ``attribute``.
        function: fn(model, splits, train_indices, query_indices, options) -> (values, diag).
        options: a frozen dataclass of the method's options with their defaults; its
            ``__post_init__`` validates them.
        label: the name in figures and tables.
        color: matplotlib colour of its curves.
        family: one of ``FAMILIES``.
        damping: one of ``DAMPING_KINDS``.
        linestyle: matplotlib line style of its curves.
        scalable: False for methods that form the Hessian explicitly (small models only).
    """

    name: str
    function: MethodFn
    options: type
    label: str
    color: str
    family: str
    damping: str = "none"
    linestyle: str = "-"
    scalable: bool = True

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)
        check_choice("damping", self.damping, DAMPING_KINDS)
        if not (dataclasses.is_dataclass(self.options) and isinstance(self.options, type)):
            raise ValueError(
                f"options of method {self.name!r} must be a dataclass type, got {self.options!r}"
            )


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to ``METHODS`` (replacing a method of the same name); returns it."""
    if not isinstance(spec, MethodSpec):
        raise ValueError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    METHODS[spec.name] = spec
    return spec


def _spec(method: str) -> MethodSpec:
    check_choice("method", method, sorted(METHODS))
    return METHODS[method]


def method_options(method: str) -> dict[str, Any]:
    """{option: default} of a registered method (``method_options("cg")["damping_multiple"]``)."""
    return {f.name: f.default for f in dataclasses.fields(_spec(method).options)}


def make_options(method: str, options: dict[str, Any]):
    """The validated options dataclass of ``method`` from keyword ``options``.

    Raises:
        ValueError: an unknown option (naming the allowed ones), both ``damping`` and
            ``damping_multiple`` given, or an invalid value (naming the parameter).
    """
    spec = _spec(method)
    allowed = method_options(method)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; allowed options: "
            f"{', '.join(allowed)}"
        )
    if options.get("damping") is not None and options.get("damping_multiple") is not None:
        raise ValueError("give either damping (absolute) or damping_multiple (x lambda0), not both")
    return spec.options(**options)


def method_order(methods: Sequence[str]) -> list[str]:
    """``methods`` in the paper's (registration) order, unknown names last in their given order."""
    known = [m for m in METHODS if m in methods]
    return known + [m for m in methods if m not in METHODS]


def method_style(method: str) -> dict[str, str]:
    """{"label", "color", "linestyle"} of a registered method; {"label": method} otherwise."""
    spec = METHODS.get(method)
    if spec is None:
        return {"label": method}
    return {"label": spec.label, "color": spec.color, "linestyle": spec.linestyle}


#: the paper's LiSSA / LiSSA-H recursion depth (T = 5000, one repeat)
PAPER_LISSA_DEPTH = 5000


def method_label(method: str, score: AttributionScores | None = None) -> str:
    """The label of ``method`` in figures and tables, naming what differs from the paper.

    A LiSSA-style method (one whose scores' ``diagnostics`` or ``config`` hold a ``depth``) run
    at a depth other than the paper's (``PAPER_LISSA_DEPTH``) is labelled e.g.
    "LiSSA-H (depth 100)": truncated LiSSA is an early-stopped influence function, not the
    paper's. Without ``score`` (or without a depth) the registered label.
    """
    label = method_style(method)["label"]
    if score is None:
        return label
    depth = score.diagnostics.get("depth", score.config.get("depth"))
    if depth is not None and int(depth) != PAPER_LISSA_DEPTH:
        label += f" (depth {int(depth)})"
    return label


def methods_in_family(family: str) -> tuple[str, ...]:
    """Registered methods of ``family`` (one of ``FAMILIES``), in the paper's order."""
    check_choice("family", family, FAMILIES)
    return tuple(m for m, s in METHODS.items() if s.family == family)


def hessian_methods() -> tuple[str, ...]:
    """Influence-family methods built on the (damped) Hessian with damping in units of lambda0
    (CG, LiSSA, LiSSA-H, EK-FAC, explicit IF): the paper's "influence functions" in its findings;
    DataInf and TRAK, which only approximate the Hessian's inverse, are left out.
    """
    return tuple(m for m in methods_in_family("influence") if METHODS[m].damping == "lambda0")


def scalable_methods() -> tuple[str, ...]:
    """Registered influence-family methods that never form the Hessian explicitly."""
    return tuple(m for m, s in METHODS.items() if s.scalable and s.family == "influence")


@dataclasses.dataclass
class AttributionScores:
    """The result of ``attribute``.

    Attributes:
        method: the method's name.
        values: (n_query, n_train_indices), + = helpful.
        train_indices, query_indices: the scored instances.
        config: the options as given to ``attribute``.
        diagnostics: method-specific (iterations, residuals, lambda0, damping, ...);
            time-resolved methods (``if_time``) put their (n_evals, n_query, n_train) tensor in
            ``diagnostics["values_by_time"]`` (``values`` is then the last time's matrix).
        wall_time: seconds.
        peak_memory_mb: peak rise of the process's resident memory.
    """

    method: str
    values: torch.Tensor
    train_indices: tuple[int, ...]
    query_indices: tuple[int, ...]
    config: dict[str, Any]
    diagnostics: dict[str, Any]
    wall_time: float
    peak_memory_mb: float


#: PeakMemory samples the resident memory this often (seconds)
MEMORY_SAMPLE_INTERVAL = 0.002


class PeakMemory:
    """Context manager: peak increase of the process's resident memory (MB), sampled in a thread."""

    def __init__(self, interval: float = MEMORY_SAMPLE_INTERVAL) -> None:
        self.interval, self.peak_mb = interval, 0.0

    def __enter__(self) -> PeakMemory:
        import psutil

        self._proc = psutil.Process()
        self._base = self._proc.memory_info().rss
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mb = (self._peak - self._base) / 2**20


def check_loss_fn(method: str, opts: Any, loss_fn: Callable | None) -> None:
    """Refuse a custom ``loss_fn`` where ``method`` (with ``opts``) assumes the built-in loss."""
    if loss_fn is None:
        return
    resolve_loss("regression", loss_fn)  # validates that it is callable
    hessian = getattr(opts, "hessian", "exact")
    if method not in CUSTOM_LOSS_METHODS or hessian != "exact":
        why = f"hessian={hessian!r}" if method in CUSTOM_LOSS_METHODS else f"method {method!r}"
        raise ValueError(
            f"loss_fn (a custom loss) is not supported with {why}: its math assumes the built-in "
            f"MSE / cross-entropy loss. loss_fn is accepted by {', '.join(CUSTOM_LOSS_METHODS)} "
            "with hessian='exact' where the method has that option (not ekfac, trak or any "
            "Gauss-Newton route)"
        )


def attribute(
    method: str,
    model: nn.Module,
    splits: Splits,
    train_indices: Sequence[int] | None = None,
    query_indices: Sequence[int] | None = None,
    device: str = "auto",
    loss_fn: Callable | None = None,
    **options: Any,
) -> AttributionScores:
    """Score test ``query_indices`` x ``train_indices`` with a registered ``method``.

    Args:
        method: a key of ``METHODS``.
        model: the final model (left unchanged; evaluated in eval mode).
        splits: its data.
        train_indices: default all training instances.
        query_indices: default all test instances.
        device: where to compute: "auto" (CUDA when available), "cpu", "cuda", "cuda:N"
            (``devices.resolve_device``); the model is moved there and back, scores are on the CPU.
        loss_fn: None (the built-in per-task loss) or a custom per-sample loss
            ``(output (..., k), target (...)) -> (...)`` (``models.resolve_loss``) for the training
            and query gradients and the Hessian; only the methods of ``CUSTOM_LOSS_METHODS``
            with ``hessian="exact"`` (where they have that option) accept it.
        **options: the method's options (``method_options(method)``).

    Returns:
        ``AttributionScores`` with ``values`` (n_query, n_train_indices), + = helpful.

    Raises:
        ValueError: an unknown method or option, or an invalid value.
    """
    opts = make_options(method, options)
    check_loss_fn(method, opts, loss_fn)
    train_idx = check_indices(
        "train_indices",
        range(splits.n_train) if train_indices is None else train_indices,
        splits.n_train,
    )
    query_idx = check_indices(
        "query_indices",
        range(splits.n_test) if query_indices is None else query_indices,
        splits.n_test,
    )
    dev = resolve_device(device)
    was, home = model.training, next(model.parameters()).device
    model.to(dev).eval()
    start = time.perf_counter()
    try:
        with PeakMemory() as mem:
            with custom_loss(loss_fn):
                values, diag = METHODS[method].function(
                    model, splits, list(train_idx), list(query_idx), opts
                )
    finally:
        model.to(home).train(was)
    diag = to_cpu(diag)
    wall = time.perf_counter() - start
    values = values.detach().cpu()
    if values.shape != (len(query_idx), len(train_idx)):
        raise RuntimeError(
            f"method {method} returned shape {tuple(values.shape)}, expected "
            f"{(len(query_idx), len(train_idx))}"
        )
    return AttributionScores(
        method=method,
        values=values,
        train_indices=train_idx,
        query_indices=query_idx,
        config=dict(options),
        diagnostics=diag,
        wall_time=wall,
        peak_memory_mb=mem.peak_mb,
    )
