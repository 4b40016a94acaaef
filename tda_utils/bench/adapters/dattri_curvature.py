"""dattri 0.3.0's layer-wise curvature approximations as suite plug-ins: DataInf and EK-FAC.
Shapes, sign and scale as in ``dattri_methods`` (query-major, positive = helpful, the suite's IF
scale); the shared set-up (working copy, dtype, device, loss, the inner product) is that module's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import tda_utils as tu

from ._shared import check_number, first_rows, resolve_damping
from .dattri_methods import _import_dattri, _inner_product, _setup, _Setup, _task

#: the most memory (GiB) dattri_datainf's per-sample gradients of the whole training set may take
#: (n_train x parameters x itemsize; the cpu profile's text head: 6.6 GiB); more raises
#: tu.bench.NotApplicable
DATAINF_MAX_GB = 4.0


def dattri_datainf(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    c: float = 10.0,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorDataInf`` (Kwon et al. 2024).

    Per layer l (dattri groups the parameters by module: a Linear's weight and bias together),
    v_hat_l = (1/n) sum_j [v_l - (v_l . g_jl) / (lambda + |g_jl|^2) g_jl] / lambda with v = g_q,
    the Sherman-Morrison approximation of (G_l + lambda I)^{-1} v_l (G_l the layer's empirical
    Fisher over the full training set).

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) sum_l v_hat_l . g_il, positive = helpful, IF
        scale. The suite's ``datainf`` differs in two ways: one lambda per parameter tensor and
        weights and biases as separate blocks.

    Options: ``damping`` (lambda, absolute) or ``c`` (lambda = lambda0 / c, the suite's default
    c = 10 applied to the mean squared gradient entry of all parameters: dattri takes one lambda
    for every layer), ``dtype``, ``device``. dattri 0.3.0 splits the gradients into layers over
    all trainable parameters, so this adapter has no ``layers`` option. It holds every training
    instance's gradient at once: over ``DATAINF_MAX_GB`` it raises ``tu.bench.NotApplicable``.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device)
    held = s.n * s.n_params() * s.dtype.itemsize
    if held > DATAINF_MAX_GB * 2**30:
        raise tu.bench.NotApplicable(
            f"dattri's DataInf holds the per-sample gradients of all {s.n:,} training instances "
            f"at once: {s.n:,} x {s.n_params():,} parameters = {held / 2**30:.1f} GiB, over "
            f"max_gb={DATAINF_MAX_GB:g} (tda_utils.bench.adapters.dattri_curvature.DATAINF_MAX_GB)"
        )
    if damping is None:
        lam = resolve_damping(None, 1.0 / check_number("c", c), s.model, s.splits)
    else:
        lam = check_number("damping", damping)
    algorithm, _ = _import_dattri()
    attributor = algorithm.IFAttributorDataInf(
        task=_task(s), layer_name=None, device=str(s.device), regularization=lam
    )
    return _inner_product(s, attributor)


def _linear_input_ndims(s: _Setup, names: Sequence[str]) -> dict[str, int]:
    """{module name: ndim of its input} of the ``nn.Linear`` modules ``names``, from one forward
    pass on the first training row (modules the pass does not reach are left out).
    """
    ndims: dict[str, int] = {}
    modules = dict(s.model.named_modules())

    def record(name: str):
        def hook(_module, args, _out) -> None:  # returns None: the output is unchanged
            ndims.setdefault(name, args[0].ndim)

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in names]
    try:
        *inputs, _ = first_rows(s.splits.train, 1)
        with torch.no_grad():
            s.model(*(x.to(s.device) for x in inputs))
    finally:
        for h in handles:
            h.remove()
    return ndims


def dattri_ekfac(
    model: nn.Module,
    splits: tu.Splits,
    train_indices: Sequence[int],
    query_indices: Sequence[int],
    *,
    damping: float | None = None,
    damping_multiple: float | None = 100.0,
    modules: Sequence[str] | None = None,
    dtype: str | None = None,
    device: str = "cpu",
) -> torch.Tensor:
    """Plug-in: dattri's ``IFAttributorEKFAC``, EK-FAC influence (George et al. 2018).

    dattri fits the Kronecker factors and the eigenvalue correction with the *empirical* Fisher
    (the training labels, one pass over the full training set as one batch); the suite's
    ``ekfac`` uses the Gauss-Newton matrix (the expected Fisher), so the two differ.

    Returns:
        float64 ``(n_query, n_train_indices)``: (1/n) g_q^T (F_ekfac + lambda I)^{-1} g_i over
        the parameters of ``modules``, positive = helpful, IF scale.

    Options: ``modules`` (names of ``nn.Linear`` modules, as in ``model.named_modules()``;
    None: every ``nn.Linear``), ``damping`` / ``damping_multiple``, ``dtype``, ``device``.

    Two issues of dattri 0.3.0's EK-FAC, found by checking it against kronfluence's
    empirical-Fisher EK-FAC, are scored as shipped (not corrected here): (1) it rotates a
    gradient G as q_s G q_a^T with the matrices of ``torch.linalg.eigh``, whose *columns* are
    the eigenvectors (the eigenbasis needs q_s^T G q_a); (2) for a layer with a bias it appends
    the flattened bias to the flattened weight and reshapes to (out, in + 1), which scrambles the
    entries instead of making the bias the last column. On a bias-free MLP with the rotation
    transposed, dattri equals kronfluence's empirical EK-FAC to 1e-15; as shipped the cosine
    between them is ~0.4-0.85 at damping 0.1-1 x lambda0 (0.998 at the default 100 x, where the
    damping dominates). The scores stay a positive-definite quadratic form, so the sign holds.
    """
    s = _setup(model, splits, train_indices, query_indices, dtype, device, hooks=True)
    lam = resolve_damping(damping, damping_multiple, s.model, s.splits)
    linear = [n for n, m in s.model.named_modules() if isinstance(m, nn.Linear)]
    if modules is not None:
        modules = [modules] if isinstance(modules, str) else list(modules)
        unknown = [m for m in modules if m not in linear]
        if unknown or not modules:
            raise ValueError(
                f"modules={modules!r}: {unknown or 'empty'} are not nn.Linear modules; "
                f"allowed: {linear}"
            )
    elif not linear:
        raise ValueError("dattri_ekfac needs a model with nn.Linear modules")
    sequence = [n for n, ndim in _linear_input_ndims(s, modules or linear).items() if ndim != 2]
    if sequence:
        flat = [n for n in (modules or linear) if n not in sequence]
        raise tu.bench.NotApplicable(
            "dattri 0.3.0's EK-FAC takes only nn.Linear inputs of shape (batch, features); "
            f"{len(sequence)} of this model's modules see (batch, tokens, features) inputs "
            f"({', '.join(sequence[:3])}{', ...' if len(sequence) > 3 else ''})"
            + (f"; modules={flat} (--option \"modules={flat}\") restricts it to those that "
               "qualify" if flat else "")
        )
    algorithm, _ = _import_dattri()
    attributor = algorithm.IFAttributorEKFAC(
        task=_task(s), module_name=modules, device=str(s.device), damping=lam
    )
    return _inner_product(s, attributor, autograd=True)
