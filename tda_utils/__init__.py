"""fimo-tda: final-model-only training data attribution, the thin module behind the notebooks.

Public API: ``load_dataset``, ``build_model``, ``train_model``, ``evaluate``, ``TrainConfig``,
``FurtherTrainingConfig``, ``further_train``, ``attribute``, ``agreement``; the notebooks' glue
is ``tu.pipeline`` (load, select, run methods, tables, results record) and ``tu.paper`` (the
paper's figures, summary and README section). The folders follow the data flow (see
ARCHITECTURE.md): ``data/`` -> ``models/`` -> ``linalg/`` -> ``final/`` -> ``gold/`` ->
``methods/`` -> ``analysis/`` -> ``figures/`` -> ``run/`` -> ``bench/``, on top of the core modules
``config``, ``devices`` and ``cache``.

The flat module paths of earlier versions (``tda_utils.further_training``, ``tda_utils.grads``,
...) still import: each is the module in its folder (``LEGACY_MODULES``).
"""

import importlib
import sys

# noqa: F401 below: the folders and the modules the notebooks use as ``tu.<module>``
from . import analysis, cache, data, figures, final, gold, linalg, methods, models  # noqa: F401
from .analysis import findings, metrics, pipeline, records, tables  # noqa: F401
from .config import FurtherTrainingConfig, TrainConfig
from .data import DATASETS, Splits, load_dataset
from .figures import paper, plotting  # noqa: F401
from .final import evaluate, final_model, train_model, training, your_model  # noqa: F401
from .gold import FurtherTrainingResult, further_train
from .linalg import grads, hessian, solvers  # noqa: F401
from .methods import METHODS, AttributionScores, attribute
from .analysis.metrics import Curve, agreement
from .models import MODELS, build_model
from . import bench  # noqa: F401,E402  (tu.bench: the benchmark; it imports run/, so it comes last)

#: {old flat module: its module now}; importing ``tda_utils.<old>`` gives the new module
LEGACY_MODULES = {
    "data_tabular": "data.tabular", "data_tabular_files": "data.tabular_files",
    "data_image": "data.image", "data_image_cifar": "data.image_cifar", "data_text": "data.text",
    "models_image": "models.image", "models_text": "models.text",
    "grads": "linalg.grads", "hessian": "linalg.hessian", "solvers": "linalg.solvers",
    "ekfac": "linalg.kfac", "training": "final.training", "your_model": "final.your_model",
    "further_training": "gold.further_training", "engines": "gold.engines",
    "stacked": "gold.stacked", "executors": "gold.executors", "metrics": "analysis.metrics",
    "records": "analysis.records", "reproduced": "analysis.findings",
    "pipeline": "analysis.pipeline", "plotting": "figures.plotting", "paper": "figures.paper",
    "costing": "run.costing",
}
for _old, _new in LEGACY_MODULES.items():  # tu.<old> and ``import tda_utils.<old>``
    globals()[_old] = sys.modules.setdefault(
        f"{__name__}.{_old}", importlib.import_module(f".{_new}", __name__)
    )
del _old, _new


__all__ = [
    "AttributionScores",
    "Curve",
    "DATASETS",
    "FurtherTrainingConfig",
    "FurtherTrainingResult",
    "METHODS",
    "MODELS",
    "Splits",
    "TrainConfig",
    "agreement",
    "attribute",
    "build_model",
    "evaluate",
    "final_model",
    "further_train",
    "load_dataset",
    "train_model",
]
__version__ = "0.1.0"
