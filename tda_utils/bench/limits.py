"""Limits on one plug-in call: wall time and memory, so that one slow or memory-hungry plug-in
costs the benchmark a bounded amount and its row says why it stopped.

Public: ``Limits``, ``LimitExceeded``, ``enforced``.

``with enforced(Limits(time_s=120, memory_gb=8)): f(...)`` raises ``LimitExceeded`` inside the
block once it has run ``time_s`` seconds of wall time, or once the process's resident memory has
grown by more than ``memory_gb`` GiB since the block began (sampled every ``interval`` seconds
in a thread). Python delivers the stop between bytecodes, so a single long library call (one big
matrix product) finishes first; memory that one call allocates at once can still exceed the
limit. ``LimitExceeded`` is a ``BaseException``, so a plug-in's own ``except Exception`` does not
swallow it. The limits use POSIX signals (SIGALRM, SIGUSR1) and work in the main thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
from collections.abc import Iterator

#: seconds between two samples of the resident memory
MEMORY_INTERVAL_S = 0.05


class LimitExceeded(BaseException):
    """A plug-in ran past a ``Limits`` bound; the message says which and by how much."""


def _check_limit(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number > 0 or None (no limit)")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a finite number > 0 or None (no limit)")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on one plug-in call (None: no bound).

    Attributes:
        time_s: wall-clock seconds.
        memory_gb: growth of the process's resident memory, GiB, over its size when the call
            began (what the plug-in allocates beyond the benchmark's inputs).
    """

    time_s: float | None = None
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "time_s", _check_limit("time_limit", self.time_s))
        object.__setattr__(self, "memory_gb", _check_limit("memory_limit", self.memory_gb))

    @property
    def active(self) -> bool:
        """Whether any bound is set."""
        return self.time_s is not None or self.memory_gb is not None

    def describe(self) -> str:
        """e.g. "120 s, 8 GiB" ("none" without bounds)."""
        parts = ([f"{self.time_s:g} s"] if self.time_s is not None else []) + (
            [f"{self.memory_gb:g} GiB"] if self.memory_gb is not None else []
        )
        return ", ".join(parts) or "none"


@contextlib.contextmanager
def enforced(limits: Limits | None, interval: float = MEMORY_INTERVAL_S) -> Iterator[None]:
    """Within the block, ``LimitExceeded`` is raised when ``limits`` is passed (module docstring).

    Raises:
        ValueError: limits were given outside the main thread or without POSIX signals.
    """
    if limits is None or not limits.active:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("plug-in limits (time_limit, memory_limit) work in the main thread only")
    if not (hasattr(signal, "SIGALRM") and hasattr(signal, "pthread_kill")):
        raise ValueError("plug-in limits (time_limit, memory_limit) need POSIX signals")
    import psutil

    proc = psutil.Process()
    base = proc.memory_info().rss
    state = {"active": True, "reason": ""}
    stop = threading.Event()

    def on_time(_signum, _frame) -> None:
        if state["active"]:
            state["active"] = False
            raise LimitExceeded(f"stopped after the time limit of {limits.time_s:g} s")

    def on_memory(_signum, _frame) -> None:
        if state["active"]:
            state["active"] = False
            raise LimitExceeded(state["reason"])

    def watch(main_id: int) -> None:
        budget = limits.memory_gb * 2**30
        while not stop.wait(interval):
            grown = proc.memory_info().rss - base
            if grown > budget:
                state["reason"] = (
                    f"stopped when its memory grew by {grown / 2**30:.1f} GiB, past the memory "
                    f"limit of {limits.memory_gb:g} GiB"
                )
                signal.pthread_kill(main_id, signal.SIGUSR1)
                return

    old_alarm = signal.signal(signal.SIGALRM, on_time)
    old_usr1 = signal.signal(signal.SIGUSR1, on_memory)
    watcher = None
    try:
        if limits.memory_gb is not None:
            watcher = threading.Thread(target=watch, args=(threading.get_ident(),), daemon=True)
            watcher.start()
        if limits.time_s is not None:
            signal.setitimer(signal.ITIMER_REAL, limits.time_s)
        yield
    finally:
        state["active"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        stop.set()
        if watcher is not None:
            watcher.join()
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGUSR1, old_usr1)
