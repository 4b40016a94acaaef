"""Fault class: concurrency. Several processes share one results folder and create the same
cache entries at once: every process finishes, results are equal, nothing computed is lost."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import torch

from tda_utils import cache as cache_mod

REPO = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {repo!r})
    import tda_utils as tu
    from tests.conftest import make_splits, tiny_model
    splits = make_splits("regression")
    model = tiny_model(splits)
    cfg = tu.FurtherTrainingConfig(lr=0.05, epochs=2, batch_size=8, seeds=[0, 1, 2], left_out=[0, 4, 7],
                                   dtype="float64", max_runs_per_chunk=4)
    res = tu.further_train(model, splits, cfg, cache_dir={root!r}, progress=False)
    torch.save({{"full": res.loss_full, "loo": res.loss_loo}}, {out!r})
""")

STRESS = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {repo!r})
    from tda_utils.cache import Cache
    open({ready!r}, "w").close()
    while not os.path.exists({go!r}):
        time.sleep(0.0005)
    end = time.time() + 2.0
    while time.time() < end:
        i = int(time.time() * 200)  # both processes create the same entry at the same moment
        c = Cache({root!r}, "stress", f"key{{i}}", {{"i": i}})
        c.save("item", torch.full((3,), float(i)))
        assert torch.equal(c.load("item"), torch.full((3,), float(i)))
""")


def _spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_processes_on_one_entry_finish_with_equal_results(tmp_path):
    root = tmp_path / "results"
    outs = [tmp_path / f"out{k}.pt" for k in range(2)]
    procs = [_spawn(WORKER.format(repo=str(REPO), root=str(root), out=str(o))) for o in outs]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    a, b = (torch.load(o, weights_only=True) for o in outs)
    assert torch.equal(a["full"], b["full"]) and torch.equal(a["loo"], b["loo"])
    (entry,) = (root / "further_training").iterdir()
    names = sorted(p.name for p in entry.iterdir())
    assert names == ["config.json", "seed_0.pt", "seed_1.pt", "seed_2.pt"]  # no temporary file left
    json.loads((entry / "config.json").read_text())  # intact
    # nothing computed is lost: every seed loads from the shared cache afterwards
    for s in range(3):
        item = torch.load(entry / f"seed_{s}.pt", weights_only=True)
        assert torch.equal(item["loss_loo"], a["loo"][:, s])


def test_concurrent_entry_creation_never_fails(tmp_path):
    go, root = tmp_path / "go", tmp_path / "r"
    ready = [tmp_path / f"ready{k}" for k in range(2)]
    procs = [_spawn(STRESS.format(repo=str(REPO), root=str(root), ready=str(r), go=str(go))) for r in ready]
    deadline = time.time() + 300
    while not all(r.exists() for r in ready) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    dirs = list((root / "stress").iterdir())
    assert len(dirs) > 100
    for d in dirs:
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "item.pt"]
        i = json.loads((d / "config.json").read_text())["i"]
        c = cache_mod.Cache(root, "stress", f"key{i}", {"i": i})
        assert c.dir == d and torch.equal(c.load("item"), torch.full((3,), float(i)))


def test_two_writers_of_one_config_both_succeed(tmp_path, monkeypatch):
    """The race deterministically: both writers have written their temporary config file before
    either moves it into place (a shared temporary name made the second move fail)."""
    barrier = threading.Barrier(2, timeout=30)
    real_replace = os.replace

    def replace_together(src, dst):
        if str(dst).endswith("config.json"):
            barrier.wait()
        return real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", replace_together)
    errors: list[BaseException] = []

    def create():
        try:
            cache_mod.Cache(tmp_path, "kind", "key", {"a": 1}).save("x", torch.ones(2))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
    c = cache_mod.Cache(tmp_path, "kind", "key", {"a": 1})
    assert torch.equal(c.load("x"), torch.ones(2))
    assert sorted(p.name for p in c.dir.iterdir()) == ["config.json", "x.pt"]
