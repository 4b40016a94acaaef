"""The final model: train it (the paper's recipes), evaluate it, or bring your own.

Modules: ``shipped`` (``final_model``: the shipped final model when its recipe and data match,
else trained anew, or your checkpoint; ``ship`` writes one), ``training`` (``train_model`` with
its cache, ``evaluate``, the batch order shared with further training, ``fit_linear_exact``),
``your_model`` (notebook 06: your CSV or tensors, your
checkpoint or Hugging Face folder, external scores).

May import: the core, ``data/``, ``models/`` and ``linalg/``. Must not import ``gold/``,
``methods/`` or anything above them.
"""

from . import shipped, training, your_model  # noqa: F401
from .shipped import describe, final_model
from .training import DivergenceError, evaluate, train_model

__all__ = ["DivergenceError", "describe", "evaluate", "final_model", "train_model"]
