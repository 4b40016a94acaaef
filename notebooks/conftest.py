"""nbval runs of the notebooks (``make test``: ``pytest tests notebooks --nbval-lax``).

* Their outputs go to a temporary folder, removed at the end of the session: ``FIMO_OUTPUT_DIR``
  (the default ``reports/``, ``figures/`` and ``results/``, see ``tda_utils.cache.output_root``)
  and ``FIMO_RESULTS_DIR`` point into it from ``pytest_configure`` on; the notebook kernels are
  subprocesses and inherit them. (Run together with ``tests``, the unit tests see them too.)
* Every cell is guarded: a cell that writes into the repository's ``reports/``, ``figures/``,
  ``results/`` or ``README.md`` fails, naming the paths (``tests/guard.py``).
* The kernels run on CurveZMQ-encrypted sockets (``tda_utils.run.kernels``), as the runner's do.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest


def _load_guard():
    path = Path(__file__).resolve().parent.parent / "tests" / "guard.py"
    spec = importlib.util.spec_from_file_location("_fimo_test_guard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


guard = _load_guard()
_saved: dict[str, object] = {}


def pytest_configure(config):
    """Point the outputs at a fresh temporary folder; start nbval's kernels encrypted."""
    tmp = Path(tempfile.mkdtemp(prefix="fimo-nbval-"))
    _saved["tmp"] = tmp
    for name, value in (("FIMO_OUTPUT_DIR", tmp), ("FIMO_RESULTS_DIR", tmp / "results")):
        _saved[name] = os.environ.get(name)
        os.environ[name] = str(value)
    try:
        import nbval.kernel
    except ImportError:
        return
    from tda_utils.run.kernels import transport_encryption

    start = _saved["start_new_kernel"] = nbval.kernel.start_new_kernel

    def start_new_kernel(*args, **kwargs):
        kwargs.setdefault("transport_encryption", transport_encryption())
        return start(*args, **kwargs)

    nbval.kernel.start_new_kernel = start_new_kernel


def pytest_unconfigure(config):
    """Undo ``pytest_configure`` and remove the temporary folder."""
    if "start_new_kernel" in _saved:
        import nbval.kernel

        nbval.kernel.start_new_kernel = _saved.pop("start_new_kernel")
    for name in ("FIMO_OUTPUT_DIR", "FIMO_RESULTS_DIR"):
        if name in _saved:
            value = _saved.pop(name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    tmp = _saved.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail a cell that wrote into the repository's outputs, naming the paths."""
    before = guard.snapshot()
    try:
        result = yield
    except BaseException:  # the cell failed anyway: keep its error, add what it wrote
        problem = guard.check(before, what=f"nbval {item.nodeid}")
        if problem:
            item.add_report_section("call", "repository outputs", problem)
        raise
    problem = guard.check(before, what=f"nbval {item.nodeid}")
    if problem:
        pytest.fail(problem, pytrace=False)
    return result
