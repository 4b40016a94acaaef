"""Running the suite: the papermill runner, its cost estimates and the HTML gallery.

Modules: ``reproduce`` (``python -m tda_utils.reproduce``: the profiles of ``reproduce.yaml``),
``costing`` (``--dry-run``), ``gallery`` (``python -m tda_utils.gallery``: reports and
``index.html``), ``kernels`` (the kernels' encrypted transport, for the runner and nbval),
``paper_scale`` (``python -m tda_utils.run.paper_scale``: ``docs/paper_scale/`` from the paper
profile's runs; not imported here, so that ``-m`` runs it as ``__main__`` cleanly). These
execute notebooks, which import the rest of the package in their kernels.

May import: every folder. Nothing imports ``run/`` except the two entry points at the top.
"""

from . import costing, gallery, kernels, reproduce  # noqa: F401

__all__ = ["costing", "gallery", "kernels", "reproduce"]
