"""Data: every dataset the suite attributes over, as a registry of loaders that return ``Splits``.

Modules: ``registry`` (``Splits``, ``DATASETS``, ``load_dataset``, ``register_dataset``, shared
split helpers, the paper's published left-out sets), ``tabular`` (the package-shipped tabular
stand-ins), ``tabular_files`` (the paper's original tabular files: Energy, HELOC, Folktables),
``image`` and ``image_cifar`` (MNIST, Fashion-MNIST, CIFAR-10), ``text`` (SST-2, finefood,
tokenizers). Importing this package registers every loader.

May import: the core (``config``, ``devices``, ``cache``). Must not import any other folder.
"""

from . import image, image_cifar, registry, tabular, tabular_files, text  # noqa: F401 (registers)
from .image import balanced_subsample, load_fashion_mnist, load_mnist, read_idx
from .image_cifar import load_cifar10, read_cifar_batches
from .registry import (
    DATASETS,
    Splits,
    check_finite,
    load_dataset,
    register_dataset,
    regression_splits,
    standardize,
)
from .tabular import (
    classification_splits,
    load_cps1988,
    load_credit,
    load_diabetes,
    seeded_left_out,
)
from .tabular_files import load_energy, load_folktables, load_heloc, read_energy_table
from .text import load_finefood, load_sst2, load_tokenizer, tokenize

__all__ = [
    "DATASETS", "Splits", "balanced_subsample", "check_finite", "classification_splits",
    "load_cifar10", "load_cps1988", "load_credit", "load_dataset", "load_diabetes",
    "load_energy", "load_fashion_mnist", "load_finefood", "load_folktables", "load_heloc",
    "load_mnist", "load_sst2", "load_tokenizer", "read_cifar_batches", "read_energy_table",
    "read_idx", "register_dataset", "regression_splits", "seeded_left_out", "standardize",
    "tokenize",
]
