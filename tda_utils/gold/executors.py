"""Where the gold standard's seeds are trained: this process, or Ray tasks on a cluster.

Public: ``get_executor``, ``LocalExecutor``, ``RayExecutor``, ``EXECUTORS``.

An executor takes a further-training engine class, its arguments and a list of seeds, and yields
``(seed, {"loss_full", "loss_loo"})`` pairs (CPU tensors) as seeds finish; ``further_train``
writes each one to the per-seed cache as it arrives, so a run that stops part-way resumes with
any executor, and the merged result does not depend on the executor (each seed's runs are the
same arithmetic wherever they run).

``RayExecutor`` sends chunks of seeds (by default the engine's own CPU chunk, the seeds that fit
its memory budget together; on GPUs, about two tasks per GPU) to Ray tasks: on the cluster at
``$RAY_ADDRESS`` (or ``address=``) when set (this ``tda_utils`` is shipped to its workers), else
on a Ray started here (``num_cpus`` from the machine, every GPU it sees), kept for the later
calls of this process (a notebook trains several gold standards) and shut down when it exits.
A task asks for one GPU when the device is CUDA (``device="auto"`` means CUDA when the cluster
has GPUs). A task that fails is retried ``max_retries`` times; seeds still failing are reported
in one error naming them, after every other seed has been yielded (and so cached).
"""

from __future__ import annotations

import atexit
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..devices import resolve_device

EXECUTORS = ("local", "ray")


class LocalExecutor:
    """Train every seed in this process, on ``device``."""

    def run(
        self, engine_cls, args: tuple, device, seeds: Sequence[int], progress: bool
    ) -> Iterator[tuple[int, dict]]:
        """Yield ``(seed, result)`` for ``seeds`` from ``engine_cls(*args, device=...)``."""
        if not seeds:
            return
        yield from engine_cls(*args, device=resolve_device(device)).run(list(seeds), progress)


def _run_chunk(engine_cls, args: tuple, device: str, seeds: list[int]) -> list[tuple[int, dict]]:
    """A Ray task: train ``seeds`` with ``engine_cls`` on ``device``; results on the CPU."""
    return list(engine_cls(*args, device=resolve_device(device)).run(seeds, False))


class RayExecutor:
    """Chunks of seeds as Ray tasks (see the module docstring).

    Args:
        address: a Ray cluster address (default ``$RAY_ADDRESS``; None starts a local Ray).
        num_cpus: CPUs of a local Ray started here (default: all of this machine's).
        seeds_per_task: seeds per task (default: the engine's chunk for its memory budget).
        cpus_per_task: CPUs each task asks for (its torch threads on a CPU worker).
        max_retries: retries of a failed task before its seeds are reported.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        seeds_per_task: int | None = None,
        cpus_per_task: float = 1,
        max_retries: int = 2,
    ):
        if seeds_per_task is not None and (
            not isinstance(seeds_per_task, int) or seeds_per_task < 1
        ):
            raise ValueError(
                f"seeds_per_task={seeds_per_task!r} must be a positive integer or None"
            )
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r} must be an integer >= 0")
        self.address = address
        self.num_cpus = num_cpus
        self.seeds_per_task = seeds_per_task
        self.cpus_per_task = cpus_per_task
        self.max_retries = max_retries

    def _connect(self) -> bool:
        """Connect to (or start) Ray; True when this call started it (then shut down at exit)."""
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is a pinned dependency
            raise ValueError(
                "executor='ray' needs the ray package (pip install ray==2.60.0)"
            ) from exc
        if ray.is_initialized():
            return False
        address = self.address or os.environ.get("RAY_ADDRESS")
        if address:  # ship this tda_utils to the cluster's workers (they need its dependencies)
            ray.init(
                address=address,
                log_to_driver=False,
                runtime_env={"py_modules": [str(Path(__file__).resolve().parents[1])]},
            )
            atexit.register(ray.shutdown)
            return True
        pkg_root = str(Path(__file__).resolve().parents[2])  # workers import this tda_utils
        path = os.pathsep.join(p for p in (pkg_root, os.environ.get("PYTHONPATH")) if p)
        for attempt in range(
            3
        ):  # on an overloaded machine the raylet can miss Ray's 30 s start window
            try:
                ray.init(
                    num_cpus=self.num_cpus or os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
                break
            except (
                Exception
            ) as exc:  # Ray raises a bare Exception("... timed out during startup ...")
                ray.shutdown()
                if attempt == 2 or "timed out during startup" not in str(exc):
                    raise
        atexit.register(ray.shutdown)
        return True

    @staticmethod
    def task_device(device) -> str:
        """The device string a task uses: "cuda" (its assigned GPU) or "cpu"."""
        import ray

        if device is None or device == "auto":
            return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
        spec = str(device).strip().lower()
        if spec == "cpu":
            return "cpu"
        if re.fullmatch(r"cuda(:\d+)?", spec):
            return "cuda"  # Ray gives each task its own GPU, visible to it as cuda:0
        raise ValueError(
            f"device={device!r} is not valid; allowed values: 'auto', 'cpu', 'cuda', 'cuda:N'"
        )

    def run(
        self, engine_cls, args: tuple, device, seeds: Sequence[int], progress: bool
    ) -> Iterator[tuple[int, dict]]:
        """Yield ``(seed, result)`` as Ray tasks finish; raise naming seeds that kept failing."""
        seeds = list(seeds)
        if not seeds:
            return
        import ray

        self._connect()
        dev = self.task_device(device)
        if self.seeds_per_task:
            per_task = self.seeds_per_task
        elif dev == "cuda":  # about two tasks per GPU; each chunks its runs to its GPU's memory
            per_task = math.ceil(
                len(seeds) / (2 * max(1, int(ray.cluster_resources().get("GPU", 1))))
            )
        else:
            per_task = engine_cls(*args, device="cpu").seeds_per_chunk()
        chunks = [seeds[i : i + per_task] for i in range(0, len(seeds), per_task)]
        task = ray.remote(_run_chunk).options(
            num_cpus=self.cpus_per_task,
            num_gpus=1 if dev == "cuda" else 0,
            max_retries=self.max_retries,
            retry_exceptions=True,
        )
        args_ref = ray.put(args)
        pending = {task.remote(engine_cls, args_ref, dev, chunk): chunk for chunk in chunks}
        failed: list[tuple[list[int], BaseException]] = []
        bar = tqdm(total=len(seeds), desc=f"further training (ray, {dev})", disable=not progress)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                chunk = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except Exception as exc:  # ray.exceptions.RayTaskError and worker deaths
                    failed.append((chunk, exc))
                    continue
                for s, res in out:
                    yield s, res
                bar.update(len(chunk))
        bar.close()
        if failed:
            bad = sorted(s for chunk, _ in failed for s in chunk)
            cause = str(failed[0][1]).strip().splitlines()
            raise RuntimeError(
                f"Ray tasks for seeds {bad} failed after {self.max_retries} retries "
                f"(first error: {cause[-1] if cause else type(failed[0][1]).__name__}); "
                "every other seed is cached: run again to resume"
            )


def get_executor(executor) -> LocalExecutor | RayExecutor:
    """The executor meant by ``executor``: "local", "ray", or an object with a ``run`` method."""
    if isinstance(executor, str):
        if executor == "local":
            return LocalExecutor()
        if executor == "ray":
            return RayExecutor()
    elif hasattr(executor, "run"):
        return executor
    raise ValueError(
        f"executor={executor!r} is not valid; allowed values: 'local', 'ray' "
        "(or an executor object such as RayExecutor(address=...))"
    )
