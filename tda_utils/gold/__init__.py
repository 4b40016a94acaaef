"""The gold standard: further training of the final model with and without each left-out instance.

Modules: ``further_training`` (``further_train``, its cache and ``FurtherTrainingResult``),
``engines`` (the sequential reference loop and the vectorized engine), ``stacked`` (the stacked-MLP
fast path), ``executors`` (local and Ray).

May import: the core, ``data/``, ``models/``, ``linalg/`` and ``final/`` (the batch order). Must
not import ``methods/``, ``analysis/``, ``figures/`` or ``run/``.
"""

from . import engines, executors, further_training, stacked  # noqa: F401
from .further_training import FurtherTrainingResult, further_train

__all__ = ["FurtherTrainingResult", "further_train"]
