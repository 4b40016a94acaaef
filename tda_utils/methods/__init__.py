"""Attribution methods: one registry, one module per family.

Public: ``attribute``, ``AttributionScores``, ``MethodSpec``, ``METHODS``, ``register_method``,
``method_options``, ``method_order``, ``method_style``, ``methods_in_family``, ``PeakMemory``, the
options dataclasses, and the method functions (``grad_dot``, ``grad_cos``, ``datainf``, ``cg``,
``lissa``, ``lissa_h``, ``ekfac``, ``trak``, ``if_time``, ``if_explicit``).

Every method returns scores of shape (n_query, n_train_indices) (query-major) estimating
tau_i = f(theta without i) - f(theta), the change of the query's test loss when training
instance i is left out: positive = helpful. The sign is fixed here; notebooks never negate.
Influence-type methods include the 1/n_train factor (n_train = ``splits.n_train``);
first-order methods are unscaled; TRAK estimates the change of the query's output.

Damping (the IF family, ``damping="lambda0"`` in the registry): ``damping_multiple`` x lambda0,
lambda0 = sum_j ||g_j||^2 / (n d) over the full training set (the paper's protocol; default
multiple 100, the paper's plotted value), or an absolute ``damping``; both are reported in
``diagnostics`` (``lambda0``, ``damping``). dtype: None computes in the model's dtype;
explicit factorisations are float64 always. Memory: chunks are sized to ``memory_budget_mb``;
results do not depend on it.

Adding a method: write a module with a frozen options dataclass (subclass ``BaseOptions`` or
``DampedOptions``) and a function ``fn(model, splits, train_indices, query_indices, options)``
returning ``(values, diagnostics)``, then add one ``MethodSpec`` to the table below (its
position is its place in the paper's order, figures and tables).

May import: the core, ``data/``, ``models/``, ``linalg/`` and ``final/``. Must not import
``gold/`` (a method sees only the final model and its training data), ``analysis/`` or above.
"""

from __future__ import annotations

from .common import BaseOptions, DampedOptions
from .datainf import DataInfOptions, datainf
from .ekfac import EkfacOptions, ekfac
from .first_order import FirstOrderOptions, grad_cos, grad_dot
from .influence import (
    LISSA_SCALE_GRID,
    MAX_EXPLICIT_PARAMS,
    CGOptions,
    ExplicitOptions,
    LissaHOptions,
    LissaOptions,
    cg,
    if_explicit,
    lissa,
    lissa_h,
)
from .registry import (
    DAMPING_KINDS,
    FAMILIES,
    METHODS,
    AttributionScores,
    MethodSpec,
    PeakMemory,
    attribute,
    make_options,
    method_options,
    method_order,
    method_style,
    hessian_methods,
    methods_in_family,
    register_method,
    scalable_methods,
)
from .trak import SKETCH_ABOVE, TrakLossOptions, TrakOptions, trak
from .unified import IfTimeOptions, gd_weight, if_time

# The registry, in the paper's order (Grad-Dot C0, Grad-Cos C1, DataInf C2, CG C3, LiSSA C4,
# LiSSA-H C5, EK-FAC C6, TRAK C7), then the unified view's prediction and explicit influence.
for _spec in (
    MethodSpec("grad_dot", grad_dot, FirstOrderOptions, "Grad-Dot", "C0", "first_order"),
    MethodSpec("grad_cos", grad_cos, FirstOrderOptions, "Grad-Cos", "C1", "first_order"),
    MethodSpec("datainf", datainf, DataInfOptions, "DataInf", "C2", "influence"),
    MethodSpec("cg", cg, CGOptions, "CG", "C3", "influence", damping="lambda0"),
    MethodSpec("lissa", lissa, LissaOptions, "LiSSA", "C4", "influence", damping="lambda0"),
    MethodSpec("lissa_h", lissa_h, LissaHOptions, "LiSSA-H", "C5", "influence", damping="lambda0"),
    MethodSpec("ekfac", ekfac, EkfacOptions, "EK-FAC", "C6", "influence", damping="lambda0"),
    MethodSpec("trak", trak, TrakOptions, "TRAK", "C7", "influence", damping="features"),
    MethodSpec(
        "trak_loss",
        trak,
        TrakLossOptions,
        "TRAK (loss)",
        "C7",
        "influence",
        damping="features",
        linestyle="--",
    ),
    MethodSpec(
        "if_time",
        if_time,
        IfTimeOptions,
        "unified view (IF at time t)",
        "C8",
        "unified",
        damping="lambda0",
        linestyle="--",
    ),
    MethodSpec(
        "if_explicit",
        if_explicit,
        ExplicitOptions,
        "IF (explicit Hessian)",
        "C9",
        "influence",
        damping="lambda0",
        linestyle=":",
        scalable=False,
    ),
):
    register_method(_spec)
del _spec

__all__ = [
    "AttributionScores",
    "BaseOptions",
    "CGOptions",
    "DAMPING_KINDS",
    "DampedOptions",
    "DataInfOptions",
    "EkfacOptions",
    "ExplicitOptions",
    "FAMILIES",
    "FirstOrderOptions",
    "IfTimeOptions",
    "LISSA_SCALE_GRID",
    "LissaHOptions",
    "LissaOptions",
    "MAX_EXPLICIT_PARAMS",
    "METHODS",
    "MethodSpec",
    "PeakMemory",
    "SKETCH_ABOVE",
    "TrakLossOptions",
    "TrakOptions",
    "attribute",
    "cg",
    "datainf",
    "ekfac",
    "gd_weight",
    "grad_cos",
    "grad_dot",
    "if_explicit",
    "if_time",
    "lissa",
    "lissa_h",
    "make_options",
    "method_options",
    "method_order",
    "method_style",
    "hessian_methods",
    "methods_in_family",
    "register_method",
    "scalable_methods",
    "trak",
]
