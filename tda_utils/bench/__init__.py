"""The benchmark: score any attribution method (a plug-in) against further training.

``python -m tda_utils.bench --method MODULE:FUNCTION [--profile smoke]`` (``__main__.py``)
scores each plug-in on every run of a ``reproduce.yaml`` profile that has a gold standard
(notebooks 01-04), next to the built-in methods that run computed, and writes
``reports/<profile>/bench/leaderboard.csv``, ``leaderboard.md`` and ``leaderboard.png`` / ``.pdf``.

Modules: ``inputs`` (what a notebook run saves for the benchmark: final model, data, gold
standard, built-in scores; ``save_run_inputs`` / ``load_run_inputs``), ``plugin`` (the plug-in
contract: load by name, call, check), ``leaderboard`` (rows, CSV / Markdown, figures),
``suite`` (``benchmark``: plan the runs, compute missing inputs through the runner, score),
``limits`` (time and memory bounds on one plug-in call).
Library adapters (dattri, kronfluence) live in ``adapters/`` as ordinary plug-ins.

May import: every folder, ``run/`` included (it runs notebooks through the runner for missing
inputs). Nothing imports ``bench/`` except the package's top (``tu.bench``, for the notebooks).
"""

from . import inputs, leaderboard, limits, plugin, suite  # noqa: F401
from .suite import BenchResult, BenchWarning, benchmark
from .inputs import RunInputs, inputs_path, load_run_inputs, save_run_inputs
from .leaderboard import curves_figure, leaderboard_figure, write_leaderboard
from .limits import LimitExceeded, Limits
from .plugin import NotApplicable, Plugin, PluginError, load_plugin, run_plugin

__all__ = [
    "BenchResult",
    "BenchWarning",
    "LimitExceeded",
    "Limits",
    "NotApplicable",
    "Plugin",
    "PluginError",
    "RunInputs",
    "benchmark",
    "curves_figure",
    "inputs_path",
    "leaderboard_figure",
    "load_plugin",
    "load_run_inputs",
    "run_plugin",
    "save_run_inputs",
    "write_leaderboard",
]
