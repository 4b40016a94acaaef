"""The gold standard on Ray: a local 2-CPU Ray gives the local run's numbers bit for bit, shares
its per-seed cache (resume across executors), and reports failing seeds without losing the rest."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import tda_utils as tu
from tda_utils.gold import executors
from tda_utils.gold import further_training as ft_mod

from .conftest import make_splits, tiny_model

ray = pytest.importorskip("ray")


class FailingVectorized(ft_mod._Vectorized):
    """The vectorized engine, except that seed 2 always fails (imported by the Ray workers)."""

    def run(self, seeds, progress):
        if 2 in seeds:
            raise RuntimeError("injected failure for seed 2")
        yield from super().run(seeds, progress)


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray for the module (starting Ray is the slow part)."""
    if ray.is_initialized():
        ray.shutdown()
    executors.RayExecutor(num_cpus=2)._connect()
    yield
    ray.shutdown()


def _problem():
    splits = make_splits("regression", n_train=21, n_test=4, d=3)
    final = tiny_model(splits, hidden=6, train_epochs=5)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=3, batch_size=5, seeds=range(4), left_out=[0, 7, 20], dtype="float64"
    )
    return splits, final, cfg


@pytest.mark.slow
def test_ray_matches_local_bit_for_bit_and_resumes_from_a_local_cache(local_ray, tmp_path):
    splits, final, cfg = _problem()
    local = tu.further_train(final, splits, cfg, cache_dir=None, progress=False, device="cpu")
    # a local run that "died" after seeds 0 and 1, resumed on Ray (one seed per task, 2 workers)
    first = tu.FurtherTrainingConfig(**{**cfg.__dict__, "seeds": (0, 1)})
    tu.further_train(final, splits, first, cache_dir=tmp_path, progress=False, device="cpu")
    on_ray = tu.further_train(
        final,
        splits,
        cfg,
        cache_dir=tmp_path,
        progress=False,
        device="cpu",
        executor=executors.RayExecutor(seeds_per_task=1),
    )
    assert on_ray.from_cache == 2
    assert torch.equal(on_ray.loss_full, local.loss_full)
    assert torch.equal(on_ray.loss_loo, local.loss_loo)
    assert on_ray.loss_loo.device.type == "cpu"
    cached = sorted(p.name for p in tmp_path.glob("further_training/*/seed_*.pt"))
    assert cached == [f"seed_{s}.pt" for s in range(4)]
    # and the seeds Ray computed are read back by a local run
    again = tu.further_train(final, splits, cfg, cache_dir=tmp_path, progress=False, device="cpu")
    assert again.from_cache == 4 and torch.equal(again.loss_loo, local.loss_loo)
    assert ray.is_initialized()  # an existing Ray is used, not shut down


@pytest.mark.slow
def test_failed_ray_task_is_retried_then_reported_and_other_seeds_cached(
    local_ray, tmp_path, monkeypatch
):
    splits, final, cfg = _problem()
    monkeypatch.setattr(ft_mod, "_Vectorized", FailingVectorized)
    with pytest.raises(RuntimeError, match=r"seeds \[2\] failed after 1 retries") as err:
        tu.further_train(
            final,
            splits,
            cfg,
            cache_dir=tmp_path,
            progress=False,
            device="cpu",
            executor=executors.RayExecutor(seeds_per_task=1, max_retries=1),
        )
    assert "injected failure for seed 2" in str(err.value)
    cached = sorted(p.name for p in tmp_path.glob("further_training/*/seed_*.pt"))
    assert cached == ["seed_0.pt", "seed_1.pt", "seed_3.pt"]


class _FakeRay(types.ModuleType):
    """Records what the executor asks of Ray (no cluster needed)."""

    def __init__(self):
        super().__init__("ray")
        self.calls, self.up = [], False

    def is_initialized(self):
        return self.up

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        self.up = True

    def shutdown(self):
        self.calls.append(("shutdown", {}))
        self.up = False


def test_ray_address_is_used_and_only_a_ray_started_here_is_shut_down(monkeypatch):
    fake = _FakeRay()
    at_exit = []
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(executors.atexit, "register", at_exit.append)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert executors.RayExecutor()._connect() is True
    assert at_exit == [fake.shutdown]  # kept for this process's later calls, shut down at exit
    init = fake.calls[0][1]
    assert init["address"] == "10.0.0.1:6379" and init["runtime_env"]["py_modules"][0].endswith(
        "tda_utils"
    )
    assert executors.RayExecutor()._connect() is False  # already connected: not ours to shut down
    assert len(at_exit) == 1
    fake.up = False
    monkeypatch.delenv("RAY_ADDRESS")
    executors.RayExecutor(num_cpus=3)._connect()
    kwargs = fake.calls[-1][1]
    assert kwargs["num_cpus"] == 3 and "address" not in kwargs


def test_executor_and_task_device_validation(monkeypatch):
    with pytest.raises(ValueError, match="executor='dask'.*'local', 'ray'"):
        executors.get_executor("dask")
    with pytest.raises(ValueError, match="seeds_per_task"):
        executors.RayExecutor(seeds_per_task=0)
    fake = _FakeRay()
    fake.cluster_resources = lambda: {"CPU": 8.0, "GPU": 2.0}
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert executors.RayExecutor.task_device("auto") == "cuda"
    assert executors.RayExecutor.task_device("cuda:1") == "cuda"
    assert executors.RayExecutor.task_device("cpu") == "cpu"
    fake.cluster_resources = lambda: {"CPU": 8.0}
    assert executors.RayExecutor.task_device("auto") == "cpu"
    with pytest.raises(ValueError, match="device='tpu'"):
        executors.RayExecutor.task_device("tpu")
