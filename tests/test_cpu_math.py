"""Portable CPU math: the runner pins MKL, oneDNN and ATen to their AVX2 kernels (so a CPU with
wider vector instructions gives the same numbers), the pinned settings are part of every cache
key, Ray workers get them, and the variable names really switch the libraries' kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import tda_utils as tu
from tda_utils import reproduce
from tda_utils.devices import PORTABLE_CPU_MATH, cpu_math_settings, portable_cpu_math

from .conftest import make_splits, tiny_model


@pytest.fixture
def no_pinned_math(monkeypatch):
    for name in PORTABLE_CPU_MATH:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_settings_string():
    assert cpu_math_settings({}) == ""
    assert cpu_math_settings({"MKL_CBWR": "AVX2", "OTHER": "x"}) == "MKL_CBWR=AVX2"
    assert cpu_math_settings(dict(PORTABLE_CPU_MATH)) == (
        "ATEN_CPU_CAPABILITY=avx2,MKL_CBWR=AVX2,ONEDNN_MAX_CPU_ISA=AVX2"
    )


avx2 = pytest.mark.skipif(not portable_cpu_math(), reason="needs an x86 CPU with AVX2")


@avx2
def test_runner_pins_math_unless_native_or_set_by_the_user(no_pinned_math, capsys):
    assert reproduce.main(["--profile", "smoke", "--list"]) == 0
    assert {k: os.environ.get(k) for k in PORTABLE_CPU_MATH} == PORTABLE_CPU_MATH
    for name in PORTABLE_CPU_MATH:
        os.environ.pop(name)
    assert reproduce.main(["--profile", "smoke", "--list", "--native-math"]) == 0
    assert not any(k in os.environ for k in PORTABLE_CPU_MATH)
    no_pinned_math.setenv("MKL_CBWR", "AVX512")  # the user's own choice wins
    assert reproduce.main(["--profile", "smoke", "--list"]) == 0
    assert os.environ["MKL_CBWR"] == "AVX512" and os.environ["ATEN_CPU_CAPABILITY"] == "avx2"


def test_runner_pins_nothing_on_a_cpu_without_avx2(no_pinned_math, capsys):
    no_pinned_math.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    assert portable_cpu_math() == {}
    assert reproduce.main(["--profile", "smoke", "--list"]) == 0
    assert not any(k in os.environ for k in PORTABLE_CPU_MATH)


def test_pinned_math_is_part_of_the_cache_key(tmp_path, no_pinned_math):
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    native = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert native.from_cache == 0
    for name, value in PORTABLE_CPU_MATH.items():
        no_pinned_math.setenv(name, value)
    pinned = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert pinned.from_cache == 0  # another kernel set: never the native run's entry
    entries = sorted((tmp_path / "further_training").iterdir())
    assert len(entries) == 2
    stamps = {json.loads((e / "config.json").read_text()).get("cpu_math") for e in entries}
    assert stamps == {None, cpu_math_settings()}
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1
    for name in PORTABLE_CPU_MATH:
        no_pinned_math.delenv(name)
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1


def test_ray_workers_get_the_pinned_math(monkeypatch):
    from tda_utils import executors

    calls = []

    class FakeRay:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            calls.append(kw)

        @staticmethod
        def shutdown():
            pass

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.setattr(executors.atexit, "register", lambda f: None)
    for name, value in PORTABLE_CPU_MATH.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert executors.RayExecutor(num_cpus=2)._connect()
    assert executors.RayExecutor(address="ray://head:10001")._connect()
    local, cluster = (c["runtime_env"]["env_vars"] for c in calls)
    for env in (local, cluster):
        assert {k: env[k] for k in PORTABLE_CPU_MATH} == PORTABLE_CPU_MATH
    assert "PYTHONPATH" in local and cluster.keys() == PORTABLE_CPU_MATH.keys()


@avx2
def test_the_variables_switch_the_kernels():
    """In a fresh process with PORTABLE_CPU_MATH set, ATen reports AVX2 and MKL's verbose log
    reports its AVX2 reproducibility branch (a misspelt variable would be silently ignored)."""
    code = (
        "import torch; a = torch.randn(64, 64); torch.mm(a, a); "
        "print('capability', torch.backends.cpu.get_cpu_capability())"
    )
    env = {**os.environ, **PORTABLE_CPU_MATH, "MKL_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "capability AVX2" in out
    if "MKL_VERBOSE" in out:  # PyTorch built with MKL (the x86 wheels)
        assert "CNR:AVX2" in out
