"""Portable CPU math: the runner starts its notebook kernels with MKL, oneDNN and ATen pinned to
their AVX2 kernels (so a CPU with wider vector instructions gives the same numbers), the
settings a process started with are part of every cache key (Ray workers get them:
tests/test_gold_ray.py), and the variable names really switch the libraries' kernels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import tda_utils as tu
from tda_utils import devices
from tda_utils.run import reproduce
from tda_utils.devices import PORTABLE_CPU_MATH, cpu_math_settings, portable_cpu_math

from .conftest import make_splits, tiny_model

avx2 = pytest.mark.skipif(not portable_cpu_math(), reason="needs an x86 CPU with AVX2")


@pytest.fixture
def runner(monkeypatch):
    """reproduce.main with a fake ``run`` that records the variables the kernels would start
    with; returns (main, records)."""
    for name in PORTABLE_CPU_MATH:
        monkeypatch.delenv(name, raising=False)
    seen: list[dict] = []

    def fake_run(runs, profile, **kw):
        seen.append({k: os.environ.get(k) for k in PORTABLE_CPU_MATH})
        return []

    monkeypatch.setattr(reproduce, "run", fake_run)
    monkeypatch.setattr(reproduce, "build_gallery", lambda profile, rows: "index.html")

    def main(*extra):
        assert reproduce.main(["--profile", "smoke", "--only", "05_paper_figures", *extra]) == 0
        return seen[-1]

    return main, monkeypatch


def test_settings_string():
    assert cpu_math_settings({}) == ""
    assert cpu_math_settings({"MKL_CBWR": "AVX2", "OTHER": "x"}) == "MKL_CBWR=AVX2"
    assert cpu_math_settings(dict(PORTABLE_CPU_MATH)) == (
        "ATEN_CPU_CAPABILITY=avx2,MKL_CBWR=AVX2,ONEDNN_MAX_CPU_ISA=AVX2"
    )


@avx2
def test_kernels_start_pinned_unless_native_or_set_by_the_user(runner, capsys):
    main, monkeypatch = runner
    assert main() == PORTABLE_CPU_MATH
    assert "CPU math kernels: ATEN_CPU_CAPABILITY=avx2,MKL_CBWR=AVX2" in capsys.readouterr().out
    assert not any(k in os.environ for k in PORTABLE_CPU_MATH)  # this process: as it was
    assert main("--native-math") == dict.fromkeys(PORTABLE_CPU_MATH)
    assert "CPU math kernels: native (this CPU)" in capsys.readouterr().out
    monkeypatch.setenv("MKL_CBWR", "AVX512")  # the user's own choice wins, and is kept
    assert main() == {**PORTABLE_CPU_MATH, "MKL_CBWR": "AVX512"}
    assert os.environ["MKL_CBWR"] == "AVX512" and "ATEN_CPU_CAPABILITY" not in os.environ


def test_nothing_pinned_on_a_cpu_without_avx2(runner):
    main, monkeypatch = runner
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: False)
    assert portable_cpu_math() == {}
    assert main() == dict.fromkeys(PORTABLE_CPU_MATH)


def test_start_settings_are_part_of_the_cache_key(tmp_path, monkeypatch):
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05, epochs=1, batch_size=8, seeds=[0], left_out=[0, 4], dtype="float64"
    )
    monkeypatch.setattr(devices, "AT_START", dict.fromkeys(PORTABLE_CPU_MATH))
    native = tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False)
    assert native.from_cache == 0
    # a process started with the pinned kernels (this one only pretends: the keys are tested)
    monkeypatch.setattr(devices, "AT_START", dict(PORTABLE_CPU_MATH))
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 0
    entries = sorted((tmp_path / "further_training").iterdir())
    assert len(entries) == 2
    stamps = {json.loads((e / "config.json").read_text()).get("cpu_math") for e in entries}
    assert stamps == {None, cpu_math_settings(PORTABLE_CPU_MATH)}
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1
    monkeypatch.setattr(devices, "AT_START", dict.fromkeys(PORTABLE_CPU_MATH))
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1
    # a variable set in os.environ after the start (as the runner does for its kernels) does
    # not change this process's kernels, nor its key: still the native entry
    for name, value in PORTABLE_CPU_MATH.items():
        monkeypatch.setenv(name, value)
    assert tu.further_train(model, splits, cfg, cache_dir=tmp_path, progress=False).from_cache == 1
    assert len(list((tmp_path / "further_training").iterdir())) == 2


@avx2
def test_the_variables_switch_the_kernels():
    """In a fresh process started with PORTABLE_CPU_MATH, ATen reports AVX2 and the verbose logs
    of MKL and oneDNN report their AVX2 kernels (a misspelt variable would be silently ignored)."""
    code = (
        "import torch; a = torch.randn(64, 64); torch.mm(a, a); "
        "torch.nn.Conv2d(3, 8, 3)(torch.randn(2, 3, 16, 16)); "
        "print('capability', torch.backends.cpu.get_cpu_capability())"
    )
    env = {**os.environ, **PORTABLE_CPU_MATH, "MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "capability AVX2" in out
    if "MKL_VERBOSE" in out:  # PyTorch built with MKL (the x86 wheels)
        assert "CNR:AVX2" in out
    if "onednn_verbose" in out:  # the convolution ran in oneDNN
        assert "isa:Intel AVX2" in out
