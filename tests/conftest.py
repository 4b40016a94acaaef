"""Shared fixtures: tiny float64 problems with exact answers."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import TensorDataset

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import tda_utils as tu  # noqa: E402
from tda_utils.data.registry import Splits  # noqa: E402

from . import guard  # noqa: E402


# Every device-dependent test is parametrized over DEVICES: its body always runs on the CPU (so a
# broken body fails in CI), and again on CUDA where there is one (marked ``gpu``, skipped without).
# A "cpu vs device" test compares the device run with a CPU float64 reference run, so the "cpu"
# case checks something real too (e.g. float32 on the device against the float64 reference).
HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"),
        ],
    ),
]


def make_splits(
    task: str = "regression",
    n_train: int = 23,
    n_test: int = 5,
    d: int = 3,
    seed: int = 0,
    dtype=torch.float64,
    n_classes: int = 3,
) -> Splits:
    """A tiny synthetic problem (inputs (n, d); targets (n, 1) or labels (n,))."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, d, generator=g, dtype=dtype)
    if task == "regression":
        w = torch.randn(d, 1, generator=g, dtype=dtype)
        y = torch.tanh(x @ w) + 0.1 * torch.randn(n_train + n_test, 1, generator=g, dtype=dtype)
        meta = {}
    else:
        w = torch.randn(d, n_classes, generator=g, dtype=dtype)
        y = (
            x @ w + 0.5 * torch.randn(n_train + n_test, n_classes, generator=g, dtype=dtype)
        ).argmax(1)
        meta = {"n_classes": n_classes}
    meta["default_left_out"] = list(range(0, n_train, 2))
    return Splits(
        "tiny",
        TensorDataset(x[:n_train], y[:n_train]),
        TensorDataset(x[n_train:], y[n_train:]),
        task,
        meta,
    )


def tiny_model(
    splits: Splits,
    hidden: int = 8,
    seed: int = 0,
    dtype=torch.float64,
    train_epochs: int = 30,
    lr: float = 0.1,
):
    """A small trained MLP (float64) for ``splits``."""
    model = tu.build_model("mlp", splits, seed=seed, hidden=hidden).to(dtype)
    cfg = tu.TrainConfig(lr=lr, epochs=train_epochs, batch_size=8, seed=seed)
    return tu.train_model(model, splits, cfg, cache_dir=None, progress=False)


def further_train_uncached(model, splits: Splits, **cfg):
    """``tu.further_train`` with ``FurtherTrainingConfig(**cfg)``, no cache and no progress bar."""
    return tu.further_train(
        model, splits, tu.FurtherTrainingConfig(**cfg), cache_dir=None, progress=False
    )


@pytest.fixture
def reg_splits() -> Splits:
    return make_splits("regression")


@pytest.fixture
def cls_splits() -> Splits:
    return make_splits("classification")


# --- make test leaves the repository alone ----------------------------------------------------
# Every test writes under tmp_path: the guard (tests/guard.py) snapshots the repository's
# reports/, figures/, results/ and README.md (+ its figure) before each test and fails the test
# naming every path it added, removed or modified (in its setup or call: the test FAILS; in a
# fixture's teardown, or a test that failed anyway: an error at teardown). nbval cells are
# guarded by notebooks/conftest.py, which also points the notebooks' outputs at a temporary folder.
@pytest.fixture(autouse=True)
def _repository_outputs_untouched(request):
    request.node._fimo_outputs = guard.snapshot()
    yield
    problem = guard.check(request.node._fimo_outputs, what="this test")
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield  # a test that failed keeps its own failure; the fixture's teardown checks it
    before = getattr(item, "_fimo_outputs", None)
    if before is not None:
        item._fimo_outputs = guard.snapshot()  # the teardown compares with this
        changes = guard.compare(before, item._fimo_outputs)
        if changes:
            pytest.fail(guard.describe(changes), pytrace=False)
    return result


# Notebook 05 rewrites README.md and docs/results_fig2_cpu.png only when the runner asks
# (`--update-readme`, i.e. `make readme`). This check snapshots the
# working tree's tracked changes and the guard's outputs when the session starts and fails the
# session (exit status 1, naming the files) if anything changed a tracked file or an output
# (also what no single test is blamed for: a module- or session-scoped fixture, collection).
_REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _tracked_state() -> str | None:
    """``git status`` of tracked files plus the full diff against HEAD; None outside a checkout."""
    import subprocess

    try:
        status = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        diff = subprocess.run(
            ["git", "-C", str(_REPO), "diff", "--binary", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return status + "\n" + diff


def pytest_sessionstart(session):
    session.config._fimo_tracked = _tracked_state()
    session.config._fimo_outputs = guard.snapshot()


def pytest_sessionfinish(session, exitstatus):
    outputs = getattr(session.config, "_fimo_outputs", None)
    problem = guard.check(outputs, what="the test session") if outputs is not None else None
    if problem:
        print(f"\nFAILED: {problem}")
        session.exitstatus = 1
    before = getattr(session.config, "_fimo_tracked", None)
    after = _tracked_state()
    if before is None or after is None or before == after:
        return
    import subprocess

    changed = subprocess.run(
        ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        "\nFAILED: the test session changed tracked files (make test must leave git status "
        f"clean):\n{changed}"
    )
    session.exitstatus = 1
