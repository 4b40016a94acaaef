"""Where computations run: one resolver for every ``device=`` argument.

Public: ``resolve_device``, ``DEVICE_CHOICES``, ``to_cpu``, ``PORTABLE_CPU_MATH``, ``AT_START``,
``portable_cpu_math``, ``cpu_math_settings``.

Every public entry point that computes (``train_model``, ``further_train``, ``attribute``,
``evaluate``) takes ``device="auto"``: CUDA when ``torch.cuda.is_available()``, else the CPU. An
explicit ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``) is honoured, and a device
that is not available here raises a ValueError naming ``device`` and the allowed values. Models
given to these functions are left where they were; results and caches are stored on the CPU.

CPU math kernels: MKL, oneDNN and PyTorch's own vectorized kernels pick the widest vector
instructions a CPU has, and a different kernel rounds differently. A final model trained for a
long time at a large learning rate (Concrete: 1000 epochs at lr 0.3) amplifies that rounding into
a different model, so the same code gives different numbers on, say, an AVX2 and an AVX-512
CPU. ``PORTABLE_CPU_MATH`` (environment variables read when a process starts its math
libraries) pins all three to their AVX2 kernels. On a CPU with AVX2 (``portable_cpu_math``)
the runner (``python -m tda_utils.reproduce``) sets them for its notebook kernels, unless given
``--native-math``; ``cpu_math_settings`` names the ones this process started with (the ones
its kernels use), which every cache key includes. MKL's reproducible branches are for Intel
CPUs, and a parallel reduction may split differently with another number of threads: the same
numbers need an Intel CPU with AVX2 or newer, the same thread count and the same PyTorch build.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

# MKL's conditional numerical reproducibility branch, oneDNN's and ATen's instruction-set caps
PORTABLE_CPU_MATH = {
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
}


def portable_cpu_math() -> dict[str, str]:
    """``PORTABLE_CPU_MATH`` on an x86 CPU with AVX2; ``{}`` elsewhere (on an ARM CPU, say, the
    values are invalid: ATen would warn and the libraries keep their own kernels).
    """
    try:
        avx2 = bool(torch.cpu._is_avx2_supported())
    except (AttributeError, RuntimeError):  # a PyTorch without the query
        avx2 = False
    return dict(PORTABLE_CPU_MATH) if avx2 else {}


# The variables as this process started: the libraries read them at their first operation,
# which comes after this import, so these are the kernels this process computes with (a value
# set in os.environ later reaches only child processes).
AT_START = {k: os.environ.get(k) for k in PORTABLE_CPU_MATH}


def cpu_math_settings(environ: dict[str, str | None] | None = None) -> str:
    """The ``PORTABLE_CPU_MATH`` variables set in ``environ`` (default ``AT_START``, this
    process's), as ``"NAME=value,..."`` in sorted order; ``""`` when none is set (each library's
    own choice).
    """
    env = AT_START if environ is None else environ
    return ",".join(f"{k}={env[k]}" for k in sorted(PORTABLE_CPU_MATH) if env.get(k))


def _allowed() -> str:
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cuda = f"'cuda', 'cuda:0'..'cuda:{n - 1}'" if n else "no CUDA device on this machine"
    return f"'auto', 'cpu' ({cuda})"


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` meant by ``device``.

    Args:
        device: ``"auto"`` (or None): ``cuda`` when CUDA is available, else ``cpu``; ``"cpu"``;
            ``"cuda"`` (the current CUDA device); ``"cuda:N"``; or a ``torch.device``.

    Raises:
        ValueError: naming ``device`` and the allowed values, for an unknown string or a CUDA
            device that this machine does not have.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        spec = str(device)
    elif isinstance(device, str):
        spec = device.strip().lower()
    else:
        raise ValueError(f"device={device!r} is not valid; allowed values: {_allowed()}")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise ValueError(f"device={device!r} is not valid; allowed values: {_allowed()}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} is not available (torch.cuda.is_available() is False); "
            f"allowed values: {_allowed()}"
        )
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} is not available ({torch.cuda.device_count()} CUDA devices); "
            f"allowed values: {_allowed()}"
        )
    return torch.device(spec)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor (in nested dicts, lists and tuples) moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
