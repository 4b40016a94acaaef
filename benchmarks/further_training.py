"""Benchmark: the vectorized further-training engine against a plain torch.optim loop (prints
figures; asserts nothing).

    python benchmarks/further_training.py [--device auto|cpu|cuda] [--seeds K] [--epochs E]
                                          [--plain-runs P] [--runs-per-chunk R]

On the Concrete MLP (8 -> 128 -> 128 -> 1, 927 training samples, batch 128), in one process:

* ``vectorized``: ``further_train`` with K seeds x 101 runs (1 full + 100 left-out) for E epochs;
* ``plain loop``: P of the same runs one after another, each a fresh ``torch.optim.SGD`` over
  the model's parameters (the way the authors' code trains);

each as milliseconds per run-epoch (the best of ``--repeats`` timings; query losses once, at the
end), next to the FLOP-bound limit of this device: 6 x parameters x samples per run-epoch at the
peak measured rate of ``torch.bmm`` on (R, 128, 128) blocks (the engine's largest matmul; the
best R, usually one whose blocks stay in cache; measured before and after the engine, the
higher kept), and at the rate for the engine's own R; and, per timing, the engine's fraction of
the FLOP-bound time at the bmm rate for its R measured just before and after that timing (on a
machine shared with other jobs, both slow down together). Also: the implied time of 10 seeds x
101 runs x 300 epochs and of the paper's Concrete gold standard (100 seeds x 101 runs x 500
epochs). Targets (issue 15): on 2 CPU cores, the vectorized engine at >= 75% of the bmm rate
(10 x 101 x 300 in <= 3.5 min); on a GPU, large chunks (``--runs-per-chunk`` in the
thousands). On a CPU it also profiles one step of the MLP fast path (``torch.profiler``): the
time in its large matmuls and in everything else, per run and step, and the fraction of the
peak the engine would reach if the large matmuls ran at the peak rate and the rest took what
it takes (the most the stock operations allow). ``--clock cpu`` times with the process's CPU
time instead of the wall clock (CPU only; for a machine shared with other jobs, where wall times
measure the waiting; use it with ``--threads 1``).
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch

import tda_utils as tu
from tda_utils.devices import resolve_device
from tda_utils.gold.engines import GPU_MAX_RUNS, MLP_CPU_MAX_RUNS
from tda_utils.linalg.grads import n_params
from tda_utils.models.registry import per_sample_loss
from tda_utils.final.training import batch_slices, epoch_orders


CLOCK = time.perf_counter  # or time.process_time (--clock cpu)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_bmm_flops(dev: torch.device, chunk: int) -> tuple[int, float]:
    """(block count, FLOP/s) of the fastest torch.bmm on (R, 128, 128) blocks over R."""
    sizes = sorted({8, 16, 32, 64, 128, 256, chunk} if dev.type == "cpu" else {chunk, 4 * chunk})
    return max(((r, bmm_flops(dev, r)) for r in sizes), key=lambda rf: rf[1])


def bmm_flops(dev: torch.device, runs: int, repeats: int = 20) -> float:
    """FLOP/s of torch.bmm on (runs, 128, 128) x (runs, 128, 128) float32 blocks."""
    a = torch.randn(runs, 128, 128, device=dev)
    b = torch.randn(runs, 128, 128, device=dev)
    out = torch.empty_like(a)
    torch.bmm(a, b, out=out)
    sync(dev)
    best = math.inf
    for _ in range(5):
        start = CLOCK()
        for _ in range(repeats):
            torch.bmm(a, b, out=out)
        sync(dev)
        best = min(best, CLOCK() - start)
    return 2 * runs * 128**3 * repeats / best


LARGE_MATMULS = ("aten::bmm", "aten::baddbmm", "aten::baddbmm_")


def step_breakdown(final, runs: int, steps: int = 100) -> tuple[float, float, float]:
    """Where one step of the MLP fast path (``MLPStack.sgd_step``, CPU) spends its time:
    (large-matmul microseconds, other microseconds, large-matmul FLOPs), each per run and step of
    128 samples, from ``torch.profiler``'s self CPU times over ``steps`` steps of ``runs``
    stacked runs. A large matmul is a bmm/baddbmm whose operands are all at least 128 x 128.
    "Other" includes the profiler's own overhead per operation but not the Python time between
    operations, so a fraction of the peak computed from it is an upper bound.
    """
    from torch.profiler import ProfilerActivity, profile

    from tda_utils.gold.stacked import MLPStack, stack_runs

    params = stack_runs(dict(final.named_parameters()), runs)
    stack = MLPStack.maybe(final, params)
    if stack is None:
        raise ValueError("the benchmark's model is not on the MLP fast path")
    d_in = params[stack.linear[0][0]].shape[-1]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(runs, 128, d_in, generator=g), torch.randn(runs, 128, 1, generator=g)
    w, check = torch.full((runs, 128), 1 / 128), torch.empty(runs, 1)
    for _ in range(20):
        stack.sgd_step(params, x, y, w, "regression", 1e-6, check)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            stack.sgd_step(params, x, y, w, "regression", 1e-6, check)
    large = other = flops = 0.0
    for ev in prof.key_averages(group_by_input_shape=True):
        # bmm(a, b[, out]); baddbmm(c, a, b, beta, alpha[, out]) and c.baddbmm_(a, b, ...): the
        # operands a and b, by position (c may be broadcast, of any number of dimensions)
        operands = ev.input_shapes[:2] if ev.key == "aten::bmm" else ev.input_shapes[1:3]
        big = len(operands) == 2 and all(len(s) == 3 and min(s[1:]) >= 128 for s in operands)
        if ev.key in LARGE_MATMULS and big:
            large += ev.self_cpu_time_total
            (_, m, k), (_, _, n) = operands
            flops += 2 * m * k * n * ev.count  # per run, over all steps
        else:
            other += ev.self_cpu_time_total
    return large / (runs * steps), other / (runs * steps), flops / steps


def plain_loop(final, splits, runs: int, epochs: int, lr: float, dev: torch.device) -> float:
    """Seconds for ``runs`` further-training runs one after another with torch.optim.SGD."""
    x, y = (t.to(dev) for t in splits.train.tensors)
    n = len(y)
    start = CLOCK()
    for r in range(runs):
        model = copy.deepcopy(final).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for perm in epoch_orders(n, 0, epochs):
            perm = perm.to(dev)
            if r:  # a leave-one-out run: the seed's order without one instance
                perm = perm[perm != r]
            for sl in batch_slices(len(perm), 128):
                idx = perm[sl]
                loss = per_sample_loss(model(x[idx]), y[idx], splits.task).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    sync(dev)
    return CLOCK() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument(
        "--plain-runs", type=int, default=5, help="runs timed with the plain torch.optim loop"
    )
    parser.add_argument(
        "--runs-per-chunk",
        type=int,
        default=None,
        help="max_runs_per_chunk of the engine (default: automatic, 34 on a CPU)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timings of the engine; the best is reported"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock (default) or this process's CPU time (CPU device only)",
    )
    args = parser.parse_args()
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    if args.clock == "cpu" and dev.type != "cpu":
        parser.error("--clock cpu needs --device cpu")
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )

    splits = tu.load_dataset("concrete")
    final = tu.build_model("mlp", splits)  # the speed does not depend on the weights
    d, n = n_params(final), splits.n_train
    left_out = list(range(0, 900, 9))
    extra = (
        {}
        if args.runs_per_chunk is None
        else {"max_runs_per_chunk": args.runs_per_chunk, "memory_budget_mb": 1e6}
    )
    cfg = tu.FurtherTrainingConfig(
        lr=3e-2,
        epochs=args.epochs,
        seeds=range(args.seeds),
        left_out=left_out,
        eval_every=args.epochs,  # the query losses once, at the end: training is what is timed
        **extra,
    )
    runs = 101 * args.seeds
    # the engine's parts: whole seeds per chunk, each chunk split into equal parts of <= max_runs
    max_runs = args.runs_per_chunk or (
        MLP_CPU_MAX_RUNS if dev.type == "cpu" else GPU_MAX_RUNS
    )  # on a GPU the engine also caps the runs to half the free memory
    pairs = min(max(1, max_runs // 101), args.seeds) * 101
    chunk = -(-pairs // -(-pairs // max_runs))
    flop_per_run_epoch = 6 * d * n  # forward 2dn + backward 4dn (LOO runs see n - 1: within 0.1%)
    # the peak bmm rate is measured before and after the engine (a busy moment lowers one of them)
    best_r, peak = peak_bmm_flops(dev, chunk)
    print(f"device: {dev} ({name}); torch {torch.__version__}; clock: {args.clock}")
    print(
        f"Concrete MLP: {d} parameters, {n} training samples, batch 128, {args.epochs} epochs, "
        f"SGD; {runs} runs in parts of {chunk}; best of {args.repeats} timings"
    )

    tu.further_train(
        final,
        splits,
        tu.FurtherTrainingConfig(**{**cfg.__dict__, "seeds": (0,), "epochs": 1, "eval_every": 1}),
        cache_dir=None,
        progress=False,
        device=dev,
    )  # warm-up
    times, at_r = [], []  # per timing: seconds, and the bmm rates at R just before and after
    for _ in range(args.repeats):
        at_r.append(bmm_flops(dev, chunk))
        start = CLOCK()
        tu.further_train(final, splits, cfg, cache_dir=None, progress=False, device=dev)
        sync(dev)
        times.append(CLOCK() - start)
        at_r.append(bmm_flops(dev, chunk))
    alongside = [(a + b) / 2 for a, b in zip(at_r[::2], at_r[1::2])]
    vec_ms = min(times) / (runs * args.epochs) * 1e3
    # the engine against the bmm rate of the same moments (on a machine shared with other jobs
    # both slow down together): the fraction of the FLOP-bound time, per timing
    fractions = [
        flop_per_run_epoch * runs * args.epochs / rate / t for t, rate in zip(times, alongside)
    ]
    plain_loop(final, splits, 1, 1, 3e-2, dev)  # warm-up
    plain_ms = (
        plain_loop(final, splits, args.plain_runs, args.epochs, 3e-2, dev)
        / (args.plain_runs * args.epochs)
        * 1e3
    )
    rate = max(at_r)
    r2, peak2 = peak_bmm_flops(dev, chunk)
    if peak2 > peak:
        best_r, peak = r2, peak2
    limit_ms = flop_per_run_epoch / peak * 1e3
    chunk_limit_ms = flop_per_run_epoch / rate * 1e3
    print(
        f"measured bmm rate (R x 128x128 blocks, the highest of before and after): peak "
        f"{peak / 1e9:.1f} GFLOP/s (R = {best_r}) -> FLOP-bound limit {limit_ms:.3f} ms per "
        f"run-epoch; at the engine's R = {chunk}: {rate / 1e9:.1f} GFLOP/s "
        f"({chunk_limit_ms:.3f} ms)"
    )
    print(f"{'engine':>12}  {'ms/run-epoch':>12}  {'% of peak bmm':>13}  {'% of bmm at R':>13}")
    for label, ms in (("vectorized", vec_ms), ("plain loop", plain_ms)):
        print(
            f"{label:>12}  {ms:12.3f}  {100 * limit_ms / ms:12.0f}%  "
            f"{100 * chunk_limit_ms / ms:12.0f}%"
        )
    print(
        "vectorized against the bmm rate at R measured alongside each timing: "
        + ", ".join(f"{100 * f:.0f}%" for f in fractions)
        + f" (rates {', '.join(f'{r / 1e9:.0f}' for r in alongside)} GFLOP/s)"
    )
    print(f"vectorized / plain loop speed-up: {plain_ms / vec_ms:.1f}x")
    if dev.type == "cpu":
        large_us, other_us, large_flops = step_breakdown(final, chunk)
        bound_us = 6 * d * 128 / peak * 1e6
        print(
            f"one fast-path step at R = {chunk} (torch.profiler, per run and step of 128 "
            f"samples): large matmuls {large_us:.1f} us ({large_flops / large_us / 1e3:.0f} "
            f"GFLOP/s), other operations {other_us:.1f} us; FLOP-bound {bound_us:.1f} us: with "
            f"the large matmuls at the peak rate and the rest as measured, the engine would "
            f"reach {100 * bound_us / (large_flops / peak * 1e6 + other_us):.0f}% of the peak"
        )
    for label, runs, epochs in (
        ("10 seeds x 101 runs x 300 epochs", 1010, 300),
        ("paper Concrete gold standard, 100 seeds x 101 runs x 500 epochs", 10100, 500),
    ):
        print(
            f"{label}: vectorized {runs * epochs * vec_ms / 6e4:.1f} min, plain loop "
            f"{runs * epochs * plain_ms / 6e4:.1f} min, "
            f"FLOP-bound {runs * epochs * limit_ms / 6e4:.1f} min"
        )


if __name__ == "__main__":
    main()
