"""Wall time and peak memory of the analysis (a benchmark, not a test): the reference path
(every figure cell and ``collect_results`` recompute their panels on the CPU) against the memo
(``tda_utils.analysis.panels``: each panel once, where the gold standard ran).

Usage::

    python benchmarks/analysis.py                      # cpu profile's Concrete run + a larger shape
    python benchmarks/analysis.py --device cuda        # the memo path on CUDA
    python benchmarks/analysis.py --large 500,100,100,103 --skip-reference-large   # paper scale

The cpu-profile run is notebook 01's analysis on Concrete (synthetic losses of its shapes): the
SGD gold standard (T=40 evaluations, S=8 seeds, Q=103 queries, L=100 left-out), Adam (40, 3),
re-training (15, 1), ten methods (``if_time`` time-resolved); the calls are those of its figure
cells (Figs. 2, 6, 5, 4, 7, 9, 8, 10, 11; drawing excluded), Table 2 and ``collect_results``.
The larger shape runs Figs. 2 and 7 and Table 2 (``--large T,S,Q,L``). Peak memory: the rise of
the process's resident memory (the kernel's high-water mark) and, on CUDA,
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch

import tda_utils as tu
from tda_utils.analysis import panels, pipeline
from tda_utils.methods.registry import PeakMemory

METHODS = ("grad_dot", "grad_cos", "datainf", "cg", "lissa", "lissa_h", "ekfac", "trak",
           "trak_loss", "if_time")


def synthetic_gold(n_evals, n_seeds, n_query, n_left_out, optimizer="sgd", lr=0.03, seed=0):
    """A FurtherTrainingResult of random losses (float64, CPU) of the given shape."""
    g = torch.Generator().manual_seed(seed)
    full = torch.rand(n_evals, n_seeds, n_query, generator=g, dtype=torch.float64)
    noise = torch.randn(n_evals, n_seeds, n_left_out, n_query, generator=g, dtype=torch.float64)
    loo = full[:, :, None, :] + 1e-3 * noise
    cfg = tu.FurtherTrainingConfig(optimizer=optimizer, lr=lr, epochs=n_evals, batch_size=128,
                                   seeds=range(n_seeds), left_out=range(n_left_out))
    return tu.FurtherTrainingResult(
        full, loo, torch.arange(1, n_evals + 1, dtype=torch.float64), "epoch",
        tuple(range(n_seeds)), tuple(range(n_left_out)), tuple(range(n_query)), cfg)


def synthetic_scores(n_evals, n_query, n_left_out, lr=0.03, seed=1):
    """Ten methods' scores; ``if_time`` time-resolved (applicable to an SGD gold at ``lr``)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for m in METHODS:
        shape = (n_evals, n_query, n_left_out) if m == "if_time" else (n_query, n_left_out)
        v = torch.randn(*shape, generator=g, dtype=torch.float64)
        diag = {"values_by_time": v} if m == "if_time" else {}
        cfg = {"lr": lr, "times": list(range(1, n_evals + 1))} if m == "if_time" else {}
        out[m] = tu.AttributionScores(m, v[-1] if v.ndim == 3 else v, tuple(range(n_left_out)),
                                      tuple(range(n_query)), cfg, diag, 0.0, 0.0)
    return out


def notebook_analysis(gold, gold_adam, gold_retrain, scores, results_dir, device=None):
    """Notebook 01's analysis calls: the figure cells' panels, Table 2, ``collect_results``."""
    dev = {} if panels.is_reference() else {"device": device}
    out = {"fig2": pipeline.agreement_panel(gold, scores, **dev)}
    pipeline.summary_table(out["fig2"], gold.times, scores)
    out["fig6"] = pipeline.agreement_panel(gold, scores, metric="spearman", **dev)
    out["fig5"] = pipeline.agreement_panel(gold, scores, subtract_mean=False, **dev)
    out["fig4"] = pipeline.agreement_panel(gold_adam, scores, **dev)
    out["fig7"] = pipeline.seed_panel(gold, scores, ks=pipeline.SEED_KS, **dev)
    out["fig9"] = pipeline.seed_panel(gold, scores, subtract_mean=False, ks=pipeline.SEED_KS, **dev)
    out["fig8"] = pipeline.seed_panel(gold_adam, scores, ks=pipeline.SEED_KS, **dev)
    late = [0, min(9, len(gold.times) - 1)]  # the cpu profile's sorted_time_indices [0, 9]
    out["fig10"] = pipeline.sorted_panel(gold, scores, time_indices=late, **dev)
    out["fig11"] = pipeline.agreement_panel(gold_retrain, scores, **dev)
    out["table2"] = pipeline.top_instances(gold, scores, 3, k=3)
    out["record"] = pipeline.collect_results(
        "01_tabular_regression", "concrete", "cpu", gold, scores, {"test_mse": 0.0},
        gold_adam=gold_adam, gold_retrain=gold_retrain, sorted_time_indices=late,
        results_dir=results_dir, **dev)
    return out


def large_analysis(gold, scores, device=None):
    """Figs. 2 and 7 and Table 2 on one gold standard."""
    dev = {} if panels.is_reference() else {"device": device}
    return {
        "fig2": pipeline.agreement_panel(gold, scores, **dev),
        "fig7": pipeline.seed_panel(gold, scores, ks=pipeline.SEED_KS, **dev),
        "table2": pipeline.top_instances(gold, scores, 3, k=3),
    }


def max_difference(a, b) -> float:
    """Largest absolute difference between two nested results (NaN positions must match)."""
    if isinstance(a, dict):
        return max([max_difference(a[k], b[k]) for k in a] or [0.0])
    if dataclasses.is_dataclass(a):
        fields = dataclasses.fields(a)
        return max(max_difference(getattr(a, f.name), getattr(b, f.name)) for f in fields)
    if isinstance(a, torch.Tensor):
        if not torch.equal(torch.isnan(a), torch.isnan(b)):
            return float("inf")
        return float((a.double() - b.double()).nan_to_num().abs().max()) if a.numel() else 0.0
    if hasattr(a, "select_dtypes"):  # a DataFrame
        if not a.select_dtypes(exclude="number").equals(b.select_dtypes(exclude="number")):
            return float("inf")
        x, y = (t.select_dtypes("number").to_numpy(dtype=float) for t in (a, b))
        return float(abs(x - y).max()) if x.size else 0.0
    return 0.0 if a == b else float("inf")


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(field)


class PeakResident:
    """Peak rise of resident memory: the kernel's high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs``), no sampling thread to compete with the timed code; elsewhere,
    the sampled ``PeakMemory``.
    """

    def __enter__(self):
        self.peak_mb, self._sampled = 0.0, None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _status_mb("VmRSS")
        except OSError:
            self._sampled = PeakMemory().__enter__()
        return self

    def __exit__(self, *exc):
        if self._sampled is not None:
            self._sampled.__exit__(*exc)
            self.peak_mb = self._sampled.peak_mb
        else:
            self.peak_mb = _status_mb("VmHWM") - self._base


def timed(fn, device, repeats):
    """(best wall seconds, peak resident rise MB, CUDA peak MB, last result, first run's
    seconds) of ``fn()``; the memo is cleared before each run.
    """
    best, peak, cuda_peak, out, first = float("inf"), 0.0, 0.0, None, None
    for _ in range(repeats):
        panels.clear_memo()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        with PeakResident() as mem:
            start = time.perf_counter()
            out = fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            took = time.perf_counter() - start
            best, first = min(best, took), took if first is None else first
        peak = max(peak, mem.peak_mb)
        if device.type == "cuda":
            cuda_peak = max(cuda_peak, torch.cuda.max_memory_allocated(device) / 2**20)
    return best, peak, cuda_peak, out, first


def report(name, ref, new, device):
    cuda = f", CUDA peak {new[2]:.0f} MB" if device.type == "cuda" else ""
    line = (f"  {name:<13} memo ({device}) {new[0]:7.2f} s (first {new[4]:.2f}), "
            f"peak +{new[1]:.0f} MB{cuda}")
    if ref is not None:
        line += (f" | reference (cpu) {ref[0]:7.2f} s (first {ref[4]:.2f}), "
                 f"peak +{ref[1]:.0f} MB | "
                 f"{ref[0] / new[0]:.1f}x, max |diff| {max_difference(ref[3], new[3]):.1e}")
    print(line)
    print(f"    {'':<13} (time: best of the repeats; peak: the largest rise of resident memory)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="where the memo path computes")
    ap.add_argument("--cpu-shape", default="40,8,103,100", help="T,S,Q,L of the SGD gold")
    ap.add_argument("--large", default="100,32,100,103", help="T,S,Q,L; 'none' skips it")
    ap.add_argument("--skip-reference-large", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = tu.devices.resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else tu.devices.cpu_name()
    print(f"device: {device} ({name}); CPU {tu.devices.cpu_name()}, "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}")

    t, s, q, ln = (int(x) for x in args.cpu_shape.split(","))
    golds = (synthetic_gold(t, s, q, ln), synthetic_gold(t, min(3, s), q, ln, "adam", 1e-4, 1),
             synthetic_gold(max(1, (t * 3) // 8), 1, q, ln, lr=0.3, seed=2))
    scores = synthetic_scores(t, q, ln)
    print(f"cpu profile (Concrete): SGD gold {t}x{s}x{q}x{ln}, Adam {t}x{min(3, s)}, "
          f"re-training {golds[2].loss_full.shape[0]}x1, {len(scores)} methods")
    with tempfile.TemporaryDirectory() as tmp:
        def run():
            return notebook_analysis(*golds, scores, tmp, device)
        new = timed(run, device, args.repeats)  # first: it bears any warm-up
        with panels.reference():
            ref = timed(run, torch.device("cpu"), args.repeats)
    for out in (ref[3], new[3]):
        out.pop("record")  # saved and compared through its panels above
    report("analysis", ref, new, device)

    if args.large != "none":
        t, s, q, ln = (int(x) for x in args.large.split(","))
        gold, scores = synthetic_gold(t, s, q, ln), synthetic_scores(t, q, ln)
        size = gold.loss_loo.numel() * 8 / 2**20
        print(f"larger shape: {t}x{s}x{q}x{ln} (per-seed tensor {size:.0f} MB), Figs. 2, 7, "
              "Table 2")
        new = timed(lambda: large_analysis(gold, scores, device), device, 1)
        ref = None
        if not args.skip_reference_large:
            with panels.reference():
                ref = timed(lambda: large_analysis(gold, scores), torch.device("cpu"), 1)
        report("figs 2, 7, T2", ref, new, device)


if __name__ == "__main__":
    main()
