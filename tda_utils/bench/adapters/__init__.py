"""Library adapters: other libraries' attribution methods as plug-ins scored against the suite's
gold standard (further training).

A plug-in is ``f(model, splits, train_indices, query_indices, **options) -> torch.Tensor`` of
shape ``(len(query_indices), len(train_indices))``: query-major, positive = helpful (removing the
training instance raises the query's loss), any scale (these report float64 on the CPU, the
influence functions on the suite's IF scale, (1/n_train) x). ``model`` is the final model (never
modified), ``splits`` a ``tu.Splits``; queries index ``splits.test``, training indices
``splits.train``. Options are keyword arguments with defaults (``device``: "cpu" by default;
damping as in the suite, ``damping_multiple`` x lambda0); see each function's docstring.

``ADAPTERS`` maps a name to each plug-in: dattri 0.3.0 (``dattri_methods``; DataInf and EK-FAC
in ``dattri_curvature``, TracIn and TRAK in ``dattri_gradients``) and kronfluence 1.0.1
(``kronfluence_methods``). The libraries are
imported when a plug-in runs, not here; a missing one raises ImportError naming the version to
install. Only the public ``tda_utils`` API (``import tda_utils as tu``) is used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .dattri_curvature import dattri_datainf, dattri_ekfac
from .dattri_methods import (
    dattri_if_arnoldi,
    dattri_if_cg,
    dattri_if_explicit,
    dattri_if_lissa,
)
from .dattri_gradients import dattri_tracin, dattri_trak
from .kronfluence_methods import (
    kronfluence_diagonal,
    kronfluence_ekfac,
    kronfluence_identity,
    kronfluence_kfac,
    kronfluence_scores,
)

#: name -> plug-in f(model, splits, train_indices, query_indices, **options) -> (Q, T) tensor
ADAPTERS: dict[str, Callable[..., torch.Tensor]] = {
    "dattri_if_explicit": dattri_if_explicit,
    "dattri_if_cg": dattri_if_cg,
    "dattri_if_lissa": dattri_if_lissa,
    "dattri_if_arnoldi": dattri_if_arnoldi,
    "dattri_datainf": dattri_datainf,
    "dattri_ekfac": dattri_ekfac,
    "dattri_tracin": dattri_tracin,
    "dattri_trak": dattri_trak,
    "kronfluence_ekfac": kronfluence_ekfac,
    "kronfluence_kfac": kronfluence_kfac,
    "kronfluence_diagonal": kronfluence_diagonal,
    "kronfluence_identity": kronfluence_identity,
}

__all__ = [
    "ADAPTERS",
    "dattri_datainf",
    "dattri_ekfac",
    "dattri_if_arnoldi",
    "dattri_if_cg",
    "dattri_if_explicit",
    "dattri_if_lissa",
    "dattri_tracin",
    "dattri_trak",
    "kronfluence_diagonal",
    "kronfluence_ekfac",
    "kronfluence_identity",
    "kronfluence_kfac",
    "kronfluence_scores",
]
