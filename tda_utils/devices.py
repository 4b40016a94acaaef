"""Where computations run: one resolver for every ``device=`` argument.

Public: ``resolve_device``, ``DEVICE_CHOICES``, ``to_cpu``, ``cpu_name``, ``math_kernels``.

Every public entry point that computes (``train_model``, ``further_train``, ``attribute``,
``evaluate``) takes ``device="auto"``: CUDA when ``torch.cuda.is_available()``, else the CPU. An
explicit ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (or a ``torch.device``) is honoured, and a device
that is not available here raises a ValueError naming ``device`` and the allowed values. Models
given to these functions are left where they were; results and caches are stored on the CPU.

Numbers across machines: the CPU's math kernels (MKL, oneDNN, PyTorch's vectorized kernels)
round differently with its vector width, and a final model trained for long at a large learning
rate (Concrete: 1000 epochs at lr 0.3) amplifies that into a different model. The suite therefore
ships its final models (``final/shipped.py``); from the same final model, further training and
the methods agree across CPUs and GPUs far inside the README's +-0.01.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path
from typing import Any

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")

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


def math_kernels() -> str:
    """The CPU and PyTorch's CPU kernel level, e.g. ``"AMD EPYC / AVX512"``: scores computed
    under another stamp may differ from this process's by rounding.
    """
    return f"{cpu_name()} / {torch.backends.cpu.get_cpu_capability()}"
