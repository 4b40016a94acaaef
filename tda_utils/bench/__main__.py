"""``python -m tda_utils.bench``: score attribution methods (plug-ins) against further training.

    python -m tda_utils.bench --method MODULE:FUNCTION [--method ...] [--libraries [NAME ...]]
        [--profile cpu|smoke|paper]
        [--only NOTEBOOK[:DATASET] ...] [--device auto] [--option KEY=VALUE ...]
        [--results-dir DIR] [--reports-dir DIR] [--figures-dir DIR] [--out-dir DIR]
        [--rerun] [--no-compute] [--manifest reproduce.yaml]
        [--time-limit SECONDS] [--memory-limit GIB]

A plug-in is ``f(model, splits, train_indices, query_indices, **options)`` returning scores of
shape ``(len(query_indices), len(train_indices))``, positive = helpful (``bench.plugin``). Each is
scored on every run of the profile whose notebook is 01-04, next to the built-in methods that
run computed; a run without saved inputs is computed first by running its notebook (the cache
makes that cheap when ``make reproduce`` or the runner ran it before). Writes
``<reports>/bench/leaderboard.csv``, ``leaderboard.md``, ``leaderboard.png`` and ``.pdf``
(``reports/<profile>/bench/`` by default) and prints the plug-ins' rows. Exit status: 0, or 1
when a plug-in or a run failed (its rows say "failed"; the error list names the plug-in and the
run), 2 for bad command-line input. ``--libraries`` adds the shipped adapters of other libraries
(``bench.adapters.ADAPTERS``: dattri, kronfluence), all of them or those named (a name or a
prefix such as ``dattri`` or ``kronfluence_ekfac``). ``--time-limit`` / ``--memory-limit`` bound
each plug-in call (``bench.limits``): past a bound, the call is stopped and its row fails with
the reason, and the benchmark goes on.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import pandas as pd
import yaml

from .suite import BenchWarning, benchmark

ADAPTERS_MODULE = "tda_utils.bench.adapters"


def parse_options(items: list[str] | None) -> dict:
    """``["KEY=VALUE", ...]`` -> {KEY: YAML value}; ValueError naming a malformed item."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"--option {item!r} is not of the form KEY=VALUE (e.g. damping=0.01)")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--option {item!r}: the value is not valid YAML ({err})") from None
    return out


def library_plugins(names: list[str] | None) -> list[str]:
    """``--libraries`` -> plug-in specs ``"tda_utils.bench.adapters:<name>"``: every adapter for an
    empty list, else those whose name starts with one of ``names`` (ValueError naming an unknown
    one and the choices).
    """
    from .adapters import ADAPTERS

    if names is None:
        return []
    chosen = list(ADAPTERS) if not names else []
    for name in names:
        hits = [a for a in ADAPTERS if a.startswith(name)]
        if not hits:
            raise ValueError(
                f"--libraries {name!r} matches no adapter; choose from {', '.join(ADAPTERS)} "
                "(or a prefix: dattri, kronfluence)"
            )
        chosen += [a for a in hits if a not in chosen]
    return [f"{ADAPTERS_MODULE}:{a}" for a in chosen]


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser."""
    p = argparse.ArgumentParser(prog="python -m tda_utils.bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("--method", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="a plug-in (repeatable); none: the built-in methods only")
    p.add_argument("--libraries", nargs="*", default=None, metavar="NAME",
                   help="add other libraries' adapters as plug-ins: all, or those named or "
                   "prefixed (e.g. dattri, kronfluence_ekfac)")
    p.add_argument("--profile", default="cpu", help="profile of reproduce.yaml (default: cpu)")
    p.add_argument("--only", action="extend", nargs="+", metavar="NOTEBOOK[:DATASET]",
                   help="score only these runs (repeatable), e.g. 01_tabular_regression:concrete")
    p.add_argument("--device", default="auto", help="passed to plug-ins that take device")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a keyword option for every plug-in (repeatable; YAML value)")
    p.add_argument("--results-dir", default=None,
                   help="results folder: inputs and cache (default: $FIMO_RESULTS_DIR or results/)")
    p.add_argument("--reports-dir", default=None,
                   help="reports of notebooks run for missing inputs (default: reports/<profile>)")
    p.add_argument("--figures-dir", default=None,
                   help="figures of notebooks run for missing inputs (default: figures/<profile>)")
    p.add_argument("--out-dir", default=None,
                   help="where the leaderboard goes (default: <reports-dir>/bench)")
    p.add_argument("--rerun", action="store_true",
                   help="run the selected notebooks again first (reuses the cache)")
    p.add_argument("--no-compute", action="store_true",
                   help="do not run notebooks for missing inputs (a missing run is an error)")
    p.add_argument("--manifest", default=None, help="path of reproduce.yaml")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="stop a plug-in that runs longer on one run; its row fails, saying so")
    p.add_argument("--memory-limit", type=float, default=None, metavar="GIB",
                   help="stop a plug-in whose call grows the process's memory by more")
    p.add_argument("--list", action="store_true", help="list the runs scored and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv`` defaults to ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        options = parse_options(args.option)
        methods = list(args.method) + [
            m for m in library_plugins(args.libraries) if m not in args.method
        ]
        if args.list:
            from .suite import gold_runs

            print("\n".join(r.name for r in gold_runs(args.profile, args.only, args.manifest)))
            return 0
        with warnings.catch_warnings():  # the sign warnings are printed below, as notes
            warnings.simplefilter("ignore", BenchWarning)
            result = benchmark(
                methods, profile=args.profile, only=args.only, results_dir=args.results_dir,
                reports_dir=args.reports_dir, figures_dir=args.figures_dir, out_dir=args.out_dir,
                device=args.device, options=options, compute_missing=not args.no_compute,
                rerun=args.rerun, manifest=args.manifest, time_limit=args.time_limit,
                memory_limit=args.memory_limit,
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shown = result.table[["run", "method", "kind", "first", "best", "last", "spearman_first",
                          "crossing_time", "wall_time_s", "status"]]
    mine = shown[shown["kind"] == "plug-in"] if result.plugins else shown
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(mine.round(3).to_string(index=False))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for err in result.errors:
        print(f"ERROR: {err}", file=sys.stderr)
    for path in result.paths:
        print(f"wrote {path}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
