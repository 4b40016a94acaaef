"""Calibrate the cpu further-training recipe for notebook 02 (credit, cps1988).

For a dataset and candidate (ft_lr, ft_epochs): train (or load) the final model, report
lambda_max of the GNH (if_time), eta x steps at the last evaluation, the predicted if_time curve's
cosine with Grad-Dot and CG, then run the gold standard with n_seeds and print each method's
agreement at every evaluation, with timings.

    python benchmarks/calibrate_tabular.py credit --lr 3e-3 --epochs 12 --seeds 4
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

import tda_utils as tu

print = functools.partial(print, flush=True)  # noqa: A001 (progress visible when redirected)
p = argparse.ArgumentParser()
p.add_argument("dataset")
p.add_argument("--lr", type=float, required=True)
p.add_argument("--epochs", type=int, required=True)
p.add_argument("--seeds", type=int, default=4)
p.add_argument("--left-out", type=int, default=100)
p.add_argument("--queries", type=int, default=100)
p.add_argument("--train-lr", type=float, default=None)
p.add_argument("--train-epochs", type=int, default=None)
p.add_argument("--methods", default="grad_dot,cg,ekfac,lissa,if_time")
p.add_argument("--damping-multiple", type=float, default=100)
p.add_argument("--lissa-depth", type=int, default=300)
p.add_argument("--no-gold", action="store_true")
p.add_argument("--results", default="results")
a = p.parse_args()

recipe = {"credit": (1e-3, 1000), "cps1988": (1e-2, 100)}[a.dataset]
train_lr = a.train_lr or recipe[0]
train_epochs = a.train_epochs or recipe[1]
torch.set_num_threads(2)
t0 = time.perf_counter()
splits = tu.experiment.load_data(a.dataset)
left_out = tu.experiment.select_left_out(splits, n_left_out=a.left_out)
queries = tu.experiment.select_queries(splits, n_queries=a.queries)
model = tu.build_model("mlp", splits, seed=0)
final = tu.train_model(
    model,
    splits,
    tu.TrainConfig(lr=train_lr, epochs=train_epochs, batch_size=128, seed=0),
    cache_dir=a.results,
    progress=False,
)
print(
    f"final: {tu.evaluate(final, splits)} train {final.fimo_train_seconds:.1f}s "
    f"(load {time.perf_counter() - t0:.1f}s)"
)
steps_per_epoch = -(-splits.n_train // 128)
print(
    f"steps/epoch {steps_per_epoch}; "
    f"eta x steps at the last eval = {a.lr * steps_per_epoch * a.epochs:.3f}"
)

cfg = tu.FurtherTrainingConfig(
    optimizer="sgd",
    lr=a.lr,
    epochs=a.epochs,
    batch_size=128,
    seeds=range(a.seeds),
    left_out=left_out,
    eval_every=1,
)
times = torch.arange(1, a.epochs + 1, dtype=torch.float64) * steps_per_epoch
methods = a.methods.split(",")
scores = {}
for m in methods:
    opts = {}
    if tu.METHODS[m].damping == "lambda0":
        opts["damping_multiple"] = a.damping_multiple
    if m == "if_time":
        opts.update(times=times, lr=a.lr, n_eigs=50)
    if m in ("lissa", "lissa_h"):
        opts["depth"] = a.lissa_depth
    t = time.perf_counter()
    scores[m] = tu.attribute(
        m, final, splits, train_indices=left_out, query_indices=queries, **opts
    )
    print(
        f"{m}: {time.perf_counter() - t:.1f}s",
        {
            k: v
            for k, v in scores[m].diagnostics.items()
            if k in ("max_eigenvalue", "n_unstable", "lambda0", "damping", "route")
        },
    )
if "if_time" in scores:
    d = scores["if_time"].diagnostics
    lam_max = d["max_eigenvalue"]
    print(f"lambda_max(GNH) = {lam_max:.4g}; eta x lambda_max = {a.lr * lam_max:.3f}")
    by_time = d["values_by_time"]
    for ref in ("grad_dot", "cg", "ekfac"):
        if ref in scores:
            c = tu.agreement(by_time, scores[ref].values)
            print(f"predicted if_time vs {ref}: " + " ".join(f"{x:.3f}" for x in c.mean.tolist()))

if a.no_gold:
    raise SystemExit
t = time.perf_counter()
gold = tu.further_train(
    final, splits, cfg, query_indices=queries, cache_dir=a.results, progress=False
)
ft_s = time.perf_counter() - t
tau = gold.attribution(subtract_mean=True)
print(
    f"further training {a.seeds} seeds: {ft_s:.1f}s ({gold.from_cache} cached) -> "
    f"{ft_s / max(1, a.seeds - gold.from_cache):.1f}s/seed"
)
out = {}
for m, s in scores.items():
    sc = s.diagnostics["values_by_time"] if m == "if_time" else s.values
    c = tu.agreement(tau, sc)
    out[m] = c.mean.tolist()
    print(
        f"{m:9s} "
        + " ".join(f"{x:.3f}" for x in c.mean.tolist())
        + f"  (sem last {float(c.sem[-1]):.3f}, dropped {int(c.n_dropped.max())})"
    )
print(
    json.dumps(
        {
            "dataset": a.dataset,
            "lr": a.lr,
            "epochs": a.epochs,
            "seeds": a.seeds,
            "ft_s": ft_s,
            "curves": out,
        }
    )
)
