"""Tests never write into the repository's outputs: snapshot them, compare, name what changed.

``snapshot(root)`` records every file under ``root``'s ``reports/``, ``figures/``, ``results/``,
``outputs/`` and ``docs/paper_scale/`` (the last two written by ``make paper-scale``; relative
path -> (size, mtime_ns); a directory as ``path/`` -> None, so that an empty folder made by
``mkdir`` counts too) and the tracked files that ``make reproduce``
rewrites (``README.md``, ``docs/results_fig2_cpu.png``). ``compare(before, after)`` lists the
paths that were added, removed or modified. One ``os.scandir`` walk, a few ms on a full
``results/``.

Used by ``tests/conftest.py`` (an autouse fixture around every test, and the whole session) and by
``notebooks/conftest.py`` (around every nbval cell), which loads this file by its path.
"""

from __future__ import annotations

import os
from pathlib import Path

#: the repository root
ROOT = Path(__file__).resolve().parent.parent
#: the output trees watched (every file in them; make paper-scale writes the last two)
TREES = ("reports", "figures", "results", "outputs", "docs/paper_scale")
#: single files watched (README.md and its figure are rewritten by ``make reproduce`` only)
FILES = ("README.md", "docs/results_fig2_cpu.png")

Snapshot = dict[str, "tuple[int, int] | None"]


def snapshot(
    root: str | os.PathLike = ROOT, trees: tuple[str, ...] = TREES, files: tuple[str, ...] = FILES
) -> Snapshot:
    """``{relative posix path: (size, mtime_ns)}`` of every file under ``root/<tree>`` and of
    ``root/<file>``; directories as ``"<path>/": None``. Missing trees and files are left out.
    """
    root = os.fspath(root)
    state: Snapshot = {}
    for name in files:
        try:
            st = os.stat(os.path.join(root, name))
        except OSError:
            continue
        state[name] = (st.st_size, st.st_mtime_ns)
    stack = []
    for tree in trees:
        if os.path.isdir(os.path.join(root, tree)):
            state[tree + "/"] = None
            stack.append(os.path.join(root, tree))
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:  # missing, not a folder, or removed while we looked
            continue
        for e in entries:
            rel = os.path.relpath(e.path, root).replace(os.sep, "/")
            try:
                if e.is_dir(follow_symlinks=False):
                    state[rel + "/"] = None
                    stack.append(e.path)
                else:
                    st = e.stat(follow_symlinks=False)
                    state[rel] = (st.st_size, st.st_mtime_ns)
            except OSError:
                continue
    return state


def compare(before: Snapshot, after: Snapshot) -> list[str]:
    """Sorted ``"added PATH"`` / ``"removed PATH"`` / ``"modified PATH"`` lines; [] when equal."""
    changes = [f"added {p}" for p in after.keys() - before.keys()]
    changes += [f"removed {p}" for p in before.keys() - after.keys()]
    changes += [f"modified {p}" for p in before.keys() & after.keys() if before[p] != after[p]]
    return sorted(changes, key=lambda line: (line.split(" ", 1)[1], line))


def describe(
    changes: list[str], what: str = "this test", root: str | os.PathLike = ROOT, limit: int = 25
) -> str:
    """The failure message: what changed in the repository (at most ``limit`` paths named)."""
    shown = changes[:limit]
    if len(changes) > limit:
        shown.append(f"... and {len(changes) - limit} more")
    return (
        f"{what} wrote into the repository's outputs ({', '.join(TREES)}, "
        f"{', '.join(FILES)}) under {root}; tests must write under tmp_path "
        "(pass reports_dir / figures_dir / results_dir, or set FIMO_OUTPUT_DIR):\n  "
        + "\n  ".join(shown)
    )


def check(before: Snapshot, root: str | os.PathLike = ROOT, what: str = "this test") -> str | None:
    """``describe(...)`` of the changes since ``before`` under ``root``, or None when none."""
    changes = compare(before, snapshot(root))
    return describe(changes, what, root) if changes else None
