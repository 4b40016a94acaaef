"""The final model: train it (the paper's recipes), evaluate it, or bring your own.

Modules: ``training`` (``train_model`` with its cache, ``evaluate``, the batch order shared with
further training, ``fit_linear_exact``), ``your_model`` (notebook 06: your CSV or tensors, your
checkpoint or Hugging Face folder, external scores).

May import: the core, ``data/``, ``models/`` and ``linalg/``. Must not import ``gold/``,
``methods/`` or anything above them.
"""

from . import training, your_model  # noqa: F401
from .training import DivergenceError, evaluate, train_model

__all__ = ["DivergenceError", "evaluate", "train_model"]
