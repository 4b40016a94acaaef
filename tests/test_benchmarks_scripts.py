"""The further-training benchmark script runs end to end (tiny sizes) and its step profile finds
exactly the Concrete MLP's three 128 x 128 x 128 matmuls per step."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import tda_utils as tu
from tda_utils.cache import repo_root

SCRIPT = repo_root() / "benchmarks" / "further_training.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_further_training", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_breakdown_counts_the_three_large_matmuls():
    splits = tu.load_dataset("concrete")
    final = tu.build_model("mlp", splits)  # 8 -> 128 -> 128 -> 1
    large_us, other_us, flops = _module().step_breakdown(final, runs=3, steps=4)
    # forward of layer 2, the error for layer 1, the fused update of layer 2: 2 x 128^3 each
    assert flops == 3 * 2 * 128**3
    assert large_us > 0 and other_us > 0


def test_benchmark_script_runs_and_reports():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--seeds", "1", "--epochs", "1",
         "--plain-runs", "1", "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=repo_root(),
    ).stdout
    assert out.startswith("device: cpu")
    assert re.search(r"^\s+vectorized\s+\d+\.\d+\s+\d+%", out, re.M)
    assert re.search(r"^\s+plain loop\s+\d+\.\d+\s+\d+%", out, re.M)
    step = re.search(r"large matmuls ([\d.]+) us .*other operations ([\d.]+) us.*reach (\d+)%", out)
    assert step and float(step[1]) > 0 and float(step[2]) > 0 and 0 < int(step[3]) <= 100
    assert "paper Concrete gold standard" in out


def test_analysis_benchmark_runs_and_matches_the_reference():
    script = repo_root() / "benchmarks" / "analysis.py"
    out = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--cpu-shape", "6,3,5,4",
         "--large", "4,4,5,6", "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=repo_root(),
    ).stdout
    assert out.startswith("device: cpu")
    rows = re.findall(r"memo \(cpu\)\s+([\d.]+) s.*reference \(cpu\)\s+([\d.]+) s.*"
                      r"max \|diff\| (\S+)$", out, re.M)
    assert len(rows) == 2 and all(float(diff) == 0.0 for *_, diff in rows)
