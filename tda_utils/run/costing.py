"""What a profile costs before it runs: ``python -m tda_utils.reproduce --profile paper --dry-run``.

Public: ``RunCost``, ``run_cost``, ``estimate``, ``format_costs``, ``notebook_defaults``, ``SIZES``.

For each (notebook, dataset) run of a profile: the number of further-training runs (gold
standard, Adam, leave-one-out re-training; each seed gives 1 full + n_left_out runs), their
optimizer steps, the final model's steps, and an estimated time on the current device. The
estimate multiplies the samples processed (runs x steps x batch, plus the evaluations'
forward passes at a third of a training step per sample) by the seconds per sample measured
by a short timed probe on synthetic data of the documented shape (``SIZES``, from the paper and
the loaders; no data file is read): the vectorized engine itself for MLPs, forward + backward +
SGD steps of the model for image models, and 6 x parameters x tokens at the measured matmul
rate for text models. Attribution methods are not included.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..cache import repo_root
from ..devices import resolve_device

# documented sizes: (n_train, n_test, input shape or features, n_outputs, task); text: max_length
SIZES: dict[str, tuple[int, int, tuple[int, ...], int, str]] = {
    "concrete": (927, 103, (8,), 1, "regression"),
    "energy": (691, 77, (8,), 1, "regression"),
    "diabetes": (397, 45, (10,), 1, "regression"),
    "heloc": (8883, 988, (23,), 2, "classification"),
    "credit": (3635, 404, (26,), 2, "classification"),
    "cps1988": (3000, 1000, (12,), 2, "classification"),
    "folktables": (30085, 10029, (791,), 2, "classification"),
    "mnist": (4000, 1000, (1, 28, 28), 10, "classification"),
    "fashion_mnist": (60000, 10000, (1, 28, 28), 10, "classification"),
    "cifar10": (50000, 10000, (3, 32, 32), 10, "classification"),
    "sst2": (67349, 872, (128,), 2, "classification"),
    "finefood": (1000, 200, (64,), 2, "classification"),
}
TEXT_PARAMS = {"bert": 108_893_186, "default": 22_713_216}  # bert-base (paper.md); all-MiniLM-L6-v2
NOTEBOOK_DATASET = {"00_unified_view_tutorial": "diabetes"}


@dataclasses.dataclass
class RunCost:
    """Cost of one run: further-training runs and steps (summed over runs), final-model steps,
    and the estimated seconds on ``device`` (None without a probe).
    """

    name: str
    ft_runs: int = 0
    ft_steps: int = 0
    train_steps: int = 0
    samples: float = 0.0  # run-samples processed by further training, evaluations included
    seconds: float | None = None
    detail: list[str] = dataclasses.field(default_factory=list)


def notebook_defaults(notebook: str, root: Path | None = None) -> dict[str, Any]:
    """The literal values of ``notebooks/<notebook>.ipynb``'s parameters cell."""
    nb = json.loads((Path(root or repo_root()) / "notebooks" / f"{notebook}.ipynb").read_text())
    out: dict[str, Any] = {}
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign):  # name = value
                    target, value = node.targets[0], node.value
                elif (
                    isinstance(node, ast.AnnAssign) and node.value is not None
                ):  # name: type = value
                    target, value = node.target, node.value
                else:
                    continue
                if isinstance(target, ast.Name):
                    try:
                        out[target.id] = ast.literal_eval(value)
                    except ValueError:
                        pass
    return out


def _sizes(dataset: str, p: dict) -> tuple[int, int, tuple[int, ...], int, str]:
    if dataset not in SIZES:
        raise ValueError(
            f"dataset={dataset!r} has no documented size; allowed values: {', '.join(SIZES)}"
        )
    n, m, shape, k, task = SIZES[dataset]
    opts = p.get("dataset_options") or {}
    n, m = opts.get("n_train") or n, opts.get("n_test") or m
    if dataset in ("sst2", "finefood") and opts.get("max_length"):
        shape = (int(opts["max_length"]),)
    return n, m, shape, k, task


def _job(
    cost: RunCost, label: str, runs: int, n: int, batch: int, steps: int, n_evals: int, queries: int
) -> None:
    """Add ``runs`` further-training runs of ``steps`` optimizer steps each."""
    cost.ft_runs += runs
    cost.ft_steps += runs * steps
    cost.samples += runs * (steps * min(batch, n) + n_evals * queries / 3)
    cost.detail.append(f"{label}: {runs} runs x {steps} steps")


def run_cost(notebook: str, dataset: str | None, params: dict, root: Path | None = None) -> RunCost:
    """Counts for one run (no timing): ``params`` override the notebook's defaults."""
    p = {**notebook_defaults(notebook, root), **params}
    dataset = dataset or p.get("dataset") or NOTEBOOK_DATASET.get(notebook)
    cost = RunCost(f"{notebook}__{dataset}" if dataset else notebook)
    if notebook.startswith("05") or dataset is None:
        return cost
    n, m, _, _, _ = _sizes(dataset, p)
    if notebook.startswith("00"):
        L = min(p["n_left_out"], n - 1)
        slots = math.ceil(n / p["sgd_batch_size"])
        _job(
            cost,
            "SGD gold",
            p["n_seeds"] * (1 + L),
            n,
            p["sgd_batch_size"],
            p["sgd_epochs"] * slots,
            p["sgd_epochs"],
            p["n_queries"],
        )
        _job(cost, "GD", 1 + L, n, n, max(p["gd_steps"]), len(p["gd_steps"]), p["n_queries"])
        cn, cm = SIZES[p.get("mlp_dataset", "concrete")][:2]
        _job(
            cost,
            "MLP gold",
            p["mlp_seeds"] * 101,
            cn,
            128,
            p["mlp_epochs"] * math.ceil(cn / 128),
            p["mlp_epochs"],
            cm,
        )
        cost.train_steps = p["mlp_train_epochs"] * math.ceil(cn / 128)
        return cost
    B = p["batch_size"]
    slots = math.ceil(n / B)
    L = min(p["n_left_out"], n - 1)
    Q = m if p.get("n_queries") is None else min(p["n_queries"], m)
    steps = p.get("eval_steps")
    if steps is None and notebook.startswith("04"):
        every = p.get("eval_every_steps", 5)
        n_evals = len({b for b in range(1, slots * p["ft_epochs"]) if b % every == 0} | {0})
        ft_steps = slots * p["ft_epochs"]
    elif steps is None:
        n_evals = p["ft_epochs"] // p.get("eval_every", 1)
        ft_steps = slots * p["ft_epochs"]
    else:
        n_evals, ft_steps = len(steps), slots * ((max(steps) - 1) // slots + 1)
    _job(cost, "gold", p["n_seeds"] * (1 + L), n, B, ft_steps, n_evals, Q)
    if p.get("adam_lr") is not None:
        _job(cost, "Adam gold", p["n_seeds_adam"] * (1 + L), n, B, ft_steps, n_evals, Q)
    if p.get("retrain_epochs"):
        e = p["retrain_epochs"]
        _job(
            cost, "LOO re-training", 1 + L, n, B, e * slots, e // p.get("retrain_eval_every", 1), Q
        )
    cost.train_steps = p["train_epochs"] * slots
    return cost


def _fake_splits(dataset: str, p: dict, n: int):
    from ..data.registry import Splits

    _, _, shape, k, task = _sizes(dataset, p)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 8, *shape, generator=g)
    y = (
        torch.randn(n + 8, 1, generator=g)
        if task == "regression"
        else torch.randint(k, (n + 8,), generator=g)
    )
    meta = {"n_classes": k} if task == "classification" else {}
    return Splits(
        f"probe_{dataset}", TensorDataset(x[:n], y[:n]), TensorDataset(x[n:], y[n:]), task, meta
    )


@cache
def _matmul_rate(device: str) -> float:
    """Dense matmul FLOP/s measured on ``device`` (1024 x 1024, float32)."""
    a = torch.randn(1024, 1024, device=device)
    a @ a
    reps, start = 5, time.perf_counter()
    for _ in range(reps):
        b = a @ a
    _ = b.sum().item()
    return 2 * 1024**3 * reps / (time.perf_counter() - start)


@cache
def _seconds_per_sample(notebook: str, dataset: str, params_json: str, device: str) -> float:
    """Seconds per run-sample of a training step, from a short timed probe on ``device``."""
    from ..gold import further_training as ft
    from ..config import FurtherTrainingConfig
    from ..models.registry import build_model

    p = json.loads(params_json)
    model_name = p.get("model_name", "mlp") if not notebook.startswith("04") else "text"
    if model_name == "text":
        path = str(p.get("model_path") or "")
        n_par = TEXT_PARAMS["bert" if "bert" in path.lower() else "default"]
        return 6 * n_par * _sizes(dataset, p)[2][0] / _matmul_rate(device)
    if model_name in ("mlp", "linear"):
        n = min(_sizes(dataset, p)[0], 512)
        splits = _fake_splits(dataset, p, n)
        model = build_model(model_name, splits)
        runs = min(101, n)  # one seed's chunk: 1 full + 100 left-out runs

        def timed(epochs: int) -> float:
            cfg = FurtherTrainingConfig(
                lr=1e-3, epochs=epochs, seeds=[0], left_out=range(runs - 1), batch_size=128
            )
            res = ft.further_train(
                model, splits, cfg, cache_dir=None, progress=False, device=device
            )
            return res.wall_time

        timed(1)  # warm-up
        # the difference of 3 and 1 epochs leaves out the per-call set-up
        return max(timed(3) - timed(1), 1e-12) / (runs * 2 * n)
    splits = _fake_splits(dataset, p, 16)
    model = build_model(model_name, splits, **(p.get("model_options") or {}))
    dev = torch.device(device)
    model.to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = (t.to(dev) for t in splits.train.tensors)
    for i in range(4):  # one warm-up step, then three timed
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _ = loss.item()
    return (time.perf_counter() - start) / (3 * len(y))


def estimate(runs, device="auto", probe: bool = True, root: Path | None = None) -> list[RunCost]:
    """``RunCost`` of every ``reproduce.Run``; times from probes on ``device`` when ``probe``."""
    dev = str(resolve_device(device))
    out = []
    for r in runs:
        cost = run_cost(r.notebook, r.dataset, r.parameters, root)
        if probe and cost.ft_runs:
            p = {**notebook_defaults(r.notebook, root), **r.parameters}
            ds = r.dataset or p.get("dataset") or NOTEBOOK_DATASET.get(r.notebook)
            t_ft = _seconds_per_sample(
                r.notebook, ds, json.dumps(p, sort_keys=True, default=str), dev
            )
            n = _sizes(ds, p)[0]
            B = p.get("batch_size", 128)
            cost.seconds = cost.samples * t_ft + cost.train_steps * min(B, n) * t_ft
        out.append(cost)
    return out


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def format_costs(costs: list[RunCost], device="auto") -> str:
    """A table: run, further-training runs, their optimizer steps, final-model steps, est. time."""
    dev = resolve_device(device)
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    width = max([len(c.name) for c in costs] + [3])
    lines = [
        f"dry run on {dev} ({name}); estimates exclude attribution methods",
        f"{'run':<{width}}  {'FT runs':>9}  {'FT steps':>14}  {'train steps':>11}  "
        f"{'est. time':>10}",
        f"{'-' * width}  {'-' * 9}  {'-' * 14}  {'-' * 11}  {'-' * 10}",
    ]
    for c in costs:
        lines.append(
            f"{c.name:<{width}}  {c.ft_runs:>9,}  {c.ft_steps:>14,}  {c.train_steps:>11,}  "
            f"{_hms(c.seconds):>10}"
        )
    total = sum(c.seconds or 0 for c in costs)
    lines.append(
        f"{'total':<{width}}  {sum(c.ft_runs for c in costs):>9,}  "
        f"{sum(c.ft_steps for c in costs):>14,}  {sum(c.train_steps for c in costs):>11,}  "
        f"{_hms(total):>10}"
    )
    for c in costs:
        if c.detail:
            lines.append(f"  {c.name}: " + "; ".join(c.detail))
    return "\n".join(lines)


def dry_run(runs) -> int:
    """Print the cost table of ``runs`` (the runner's ``--dry-run``); the exit status."""
    device = next((r.parameters["device"] for r in runs if "device" in r.parameters), "auto")
    try:
        print(format_costs(estimate(runs, device), device))
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    return 0
