"""Benchmark: the further-training engines on the Concrete MLP (prints figures; asserts nothing).

    .venv/bin/python benchmarks/further_training.py [--seeds K] [--epochs E]

For 101 runs (1 full + 100 left-out) x K seeds: wall time of the vectorized and sequential
engines in the same process, their ratio, achieved GFLOP/s (6 x parameters x samples per run,
summed over runs) next to the machine's batched-matmul rate measured here (torch.bmm of 101 x
128x128 blocks), and peak resident-memory increase. Targets on 2 cores (design.md §9): vectorized
>= 3x sequential and >= 50% of the measured matmul rate.
"""
from __future__ import annotations

import argparse
import time

import torch

import tda_utils as tu
from tda_utils.grads import n_params
from tda_utils.methods import PeakMemory


def matmul_gflops(repeats: int = 30) -> float:
    a, b = torch.randn(101, 128, 128), torch.randn(101, 128, 128)
    torch.bmm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(a, b)
    return 2 * 101 * 128**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sequential-seeds", type=int, default=1, help="seeds timed with the slow engine")
    args = parser.parse_args()

    splits = tu.load_dataset("concrete")
    final = tu.train_model(tu.build_model("mlp", splits), splits, tu.TrainConfig())
    left_out = list(range(0, 900, 9))
    d, n = n_params(final), splits.n_train
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; Concrete MLP: {d} parameters, "
          f"{n} training samples, 101 runs per seed, {args.epochs} epochs")
    peak_mm = matmul_gflops()
    print(f"machine batched matmul (bmm 101 x 128x128): {peak_mm:.1f} GFLOP/s")

    rows = {}
    for engine, k in (("vectorized", args.seeds), ("sequential", args.sequential_seeds)):
        cfg = tu.FurtherTrainingConfig(lr=3e-2, epochs=args.epochs, seeds=range(k), left_out=left_out, engine=engine)
        with PeakMemory() as mem:
            res = tu.further_train(final, splits, cfg, cache_dir=None, progress=False)
        flops = 6 * d * n * args.epochs * 101 * k  # LOO runs see n - 1 samples: within 0.1%
        per_seed = res.wall_time / k
        rows[engine] = per_seed
        print(f"{engine:>10}: {k} seeds in {res.wall_time:7.2f} s = {per_seed:6.2f} s per seed "
              f"({per_seed / args.epochs:.3f} s per seed-epoch); {flops / res.wall_time / 1e9:6.1f} GFLOP/s "
              f"= {100 * flops / res.wall_time / 1e9 / peak_mm:4.0f}% of bmm; peak memory +{mem.peak_mb:.0f} MB")
    print(f"speed-up vectorized / sequential: {rows['sequential'] / rows['vectorized']:.1f}x")


if __name__ == "__main__":
    main()
