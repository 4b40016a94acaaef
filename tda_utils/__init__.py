"""fimo-tda: final-model-only training data attribution, the thin module behind the notebooks.

Public API (design.md §5): ``load_dataset``, ``build_model``, ``train_model``, ``TrainConfig``,
``FurtherTrainingConfig``, ``further_train``, ``attribute``, ``agreement``, plus plotting helpers.
"""
from . import cache, data_image, data_tabular, data_text, experiment, grads, hessian, metrics, models_image, models_text, plotting, training  # noqa: F401  (tu.<module>)
from .config import FurtherTrainingConfig, TrainConfig
from .data import DATASETS, Splits, load_dataset
from .further_training import FurtherTrainingResult, further_train
from .methods import METHODS, AttributionScores, attribute
from .metrics import Curve, agreement
from .models import MODELS, build_model
from .training import evaluate, train_model

__all__ = [
    "AttributionScores", "Curve", "DATASETS", "FurtherTrainingConfig", "FurtherTrainingResult", "METHODS",
    "MODELS", "Splits", "TrainConfig", "agreement", "attribute", "build_model", "evaluate", "further_train",
    "load_dataset", "train_model",
]
__version__ = "0.1.0"
