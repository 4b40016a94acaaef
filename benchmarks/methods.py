"""Wall time and peak memory of every attribution method (a benchmark, not a test).

Usage::

    python benchmarks/methods.py                 # Concrete MLP + the ~2M-parameter MLP
    python benchmarks/methods.py --skip-large    # Concrete only
    python benchmarks/methods.py --threads 1     # e.g. on a machine shared with other jobs

Concrete: the paper's MLP (8 -> 128 -> 128 -> 1, 17,793 parameters) trained for ``--epochs``
epochs (the paper: 1000; fewer is enough for timing), all 100 left-out instances
``range(0, 900, 9)`` x all 103 test queries. Large: the same data with an MLP of hidden width
1400 (about 1.97M parameters); the methods that scale with the number of parameters run on all
pairs, CG and LiSSA on a few queries with few iterations, from which their time per query (and
per iteration) is printed. Peak memory is the rise of the process's resident memory.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import tda_utils as tu

warnings.filterwarnings("ignore", category=FutureWarning)


def _diag_summary(s: tu.AttributionScores) -> str:
    d = s.diagnostics
    parts = []
    for key in ("route", "hvp_mode", "rank", "lambda0", "damping"):
        if d.get(key) is not None:
            v = d[key]
            parts.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
    if "iterations" in d:
        parts.append(
            f"cg_iters(mean/max)={float(d['iterations'].float().mean()):.1f}/{int(d['iterations'].max())}"
        )
        parts.append(f"max_residual={float(d['residuals'].max()):.1e}")
    return " ".join(parts)


def run(name: str, method: str, model, splits, train, queries, **opts) -> tu.AttributionScores:
    s = tu.attribute(method, model, splits, train, queries, **opts)
    per_q = s.wall_time / len(queries)
    print(
        f"  {name:<22s} {s.wall_time:8.2f} s  {per_q * 1e3:9.1f} ms/query  "
        f"{s.peak_memory_mb:8.1f} MB  "
        f"{_diag_summary(s)}",
        flush=True,
    )
    return s


def concrete(epochs: int, budget: float, lissa_h_depth: int) -> None:
    splits = tu.load_dataset("concrete")
    model = tu.build_model("mlp", splits)
    t = time.perf_counter()
    model = tu.train_model(
        model, splits, tu.TrainConfig(epochs=epochs), cache_dir=None, progress=False
    )
    n_par = sum(p.numel() for p in model.parameters())
    print(
        f"Concrete MLP: {n_par:,} parameters, trained {epochs} epochs in "
        f"{time.perf_counter() - t:.1f} s, "
        f"test loss {tu.evaluate(model, splits)['loss']:.3f}"
    )
    train, queries = list(range(0, 900, 9)), list(range(splits.n_test))
    print(f"  {len(train)} left-out x {len(queries)} queries, memory_budget_mb={budget:g}")
    steps_per_epoch = -(-splits.n_train // 128)
    common = {"memory_budget_mb": budget}
    res = {}
    for name, method, opts in [
        ("grad_dot", "grad_dot", {}),
        ("grad_cos", "grad_cos", {}),
        ("datainf", "datainf", {}),
        ("cg (gnh)", "cg", {}),
        ("lissa (gnh, depth 1000)", "lissa", {}),
        (f"lissa_h (depth {lissa_h_depth})", "lissa_h", {"depth": lissa_h_depth}),
        ("ekfac", "ekfac", {}),
        ("trak (proj 2048)", "trak", {}),
        ("if_explicit (gnh)", "if_explicit", {}),
        (
            "if_time (gnh, 500 ep.)",
            "if_time",
            {"times": torch.arange(1, 501) * steps_per_epoch, "lr": 3e-2},
        ),
    ]:
        res[name] = run(name, method, model, splits, train, queries, **common, **opts)
    ref = res["if_explicit (gnh)"].values.double()
    print(
        "  cosine with if_explicit (mean over queries):",
        ", ".join(
            f"{k.split()[0]} {float(tu.metrics.cosine_rows(v.values.double(), ref).mean()):.3f}"
            for k, v in res.items()
            if k != "if_explicit (gnh)"
        ),
    )
    if lissa_h_depth < 1000:
        w = res[f"lissa_h (depth {lissa_h_depth})"].wall_time
        print(f"  lissa_h extrapolated to depth 1000: about {w * 1000 / lissa_h_depth:.0f} s")


def large(hidden: int, epochs: int, budget: float, n_queries: int) -> None:
    splits = tu.load_dataset("concrete")
    model = tu.build_model("mlp", splits, hidden=hidden)
    t = time.perf_counter()
    model = tu.train_model(
        model, splits, tu.TrainConfig(epochs=epochs, lr=0.01), cache_dir=None, progress=False
    )
    n_par = sum(p.numel() for p in model.parameters())
    print(
        f"\nLarge MLP (hidden {hidden}): {n_par:,} parameters, trained {epochs} epochs in "
        f"{time.perf_counter() - t:.1f} s, memory_budget_mb={budget:g}"
    )
    train, queries = list(range(0, 900, 9)), list(range(splits.n_test))
    few = queries[:n_queries]
    common = {"memory_budget_mb": budget}
    for name, method, q, opts in [
        ("grad_dot", "grad_dot", queries, {}),
        ("grad_cos", "grad_cos", queries, {}),
        ("datainf", "datainf", queries, {}),
        ("ekfac", "ekfac", queries, {}),
        # the (d, 256) projection (2 GB) is kept in memory when it fits half the budget
        (
            "trak (proj 256)",
            "trak",
            queries,
            {"proj_dim": 256, "memory_budget_mb": max(budget, 4400.0)},
        ),
    ]:
        run(name, method, model, splits, train, q, **{**common, **opts})
    print(
        f"  CG and LiSSA on {n_queries} queries "
        "(autodiff HVPs: the Jacobian does not fit the budget):"
    )
    c = run("cg (5 iterations)", "cg", model, splits, train, few, max_iter=5, tol=1e-12, **common)
    it = int(c.diagnostics["iterations"].max())
    print(
        f"    -> about {c.wall_time / max(it, 1) / n_queries:.2f} s per CG iteration per query "
        f"(includes lambda0 and the gradients)"
    )
    # the wide model's GNH has eigenvalues in the thousands: scale 10 diverges (LiSSA raises)
    li = run("lissa (depth 5)", "lissa", model, splits, train, few, depth=5, scale=1e4, **common)
    print(f"    -> about {li.wall_time / 5 / n_queries:.2f} s per LiSSA step per query")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100, help="training epochs of the Concrete MLP")
    ap.add_argument("--memory-budget-mb", type=float, default=1024.0)
    ap.add_argument(
        "--lissa-h-depth",
        type=int,
        default=100,
        help="LiSSA-H depth (exact-Hessian HVPs are slow; its time is extrapolated)",
    )
    ap.add_argument("--skip-large", action="store_true", help="skip the ~2M-parameter model")
    ap.add_argument("--large-hidden", type=int, default=1400)
    ap.add_argument("--large-epochs", type=int, default=3)
    ap.add_argument("--large-budget-mb", type=float, default=2048.0)
    ap.add_argument("--large-queries", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    concrete(args.epochs, args.memory_budget_mb, args.lissa_h_depth)
    if not args.skip_large:
        large(args.large_hidden, args.large_epochs, args.large_budget_mb, args.large_queries)


if __name__ == "__main__":
    main()
