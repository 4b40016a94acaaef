"""Figures: pure matplotlib plotting and the paper's figures, tables and README section.

Modules: ``plotting`` (styles from the method registry, ``save_figure`` as PNG and PDF),
``paper`` (per-dataset figures, multi-panel compositions, the cross-dataset summary).

May import: the core, ``analysis/``, ``methods/`` (styles), ``gold/`` and ``data/`` (types).
Must not import ``run/``.
"""

from . import paper, plotting  # noqa: F401

__all__ = ["paper", "plotting"]
