"""Linear algebra of a loss landscape, shared by the final model, the gold standard and methods.

Modules: ``grads`` (parameter flattening, per-sample gradients in chunks), ``hessian`` (HVPs,
explicit Hessians, Gauss-Newton spectra, Lanczos), ``solvers`` (batched CG, LiSSA), ``kfac``
(EK-FAC factors and eigen-corrections).

May import: the core, ``data/`` and ``models/`` (the losses). Must not import ``final/``,
``gold/``, ``methods/`` or anything above them.
"""

from . import grads, hessian, kfac, solvers  # noqa: F401
from .grads import dataset_tensors, flatten, n_params, per_sample_grads, trainable_params, unflatten
from .hessian import explicit_hessian

__all__ = [
    "dataset_tensors", "explicit_hessian", "flatten", "n_params", "per_sample_grads",
    "trainable_params", "unflatten",
]
