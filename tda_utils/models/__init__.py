"""Models: the final model's architectures (``MODELS``) and the losses every step shares.

Modules: ``registry`` (``MODELS``, ``build_model``, ``register_model``, the MLPs of the tabular
experiments, ``per_sample_loss`` / ``query_loss`` / ``resolve_loss``), ``image`` (the CNN and
ResNet-9), ``text`` (the BERT-style classifier, its frozen trunk and trainable head). Importing
this package registers every architecture.

May import: the core and ``data/``. Must not import ``linalg/``, ``final/``, ``gold/``,
``methods/`` or anything above them.
"""

from . import image, registry, text  # noqa: F401 (registers)
from .registry import (
    MODELS,
    LossFn,
    build_model,
    loss_key,
    per_sample_loss,
    query_loss,
    register_model,
    resolve_loss,
)

__all__ = [
    "MODELS", "LossFn", "build_model", "loss_key", "per_sample_loss", "query_loss",
    "register_model", "resolve_loss",
]
