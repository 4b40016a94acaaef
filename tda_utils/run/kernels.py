"""The notebook kernels' transport: CurveZMQ-encrypted sockets where the kernel supports them.

Public: ``transport_encryption``, ``kernel_config``.

ipykernel (7.4) logs ``[IPKernelApp] WARNING | Kernel is running over TCP without encryption
...`` (``IPKernelApp.init_sockets``) when it starts on TCP sockets without CurveZMQ keys, which
is what a jupyter_client (8.10) ``KernelManager`` gives it by default
(``transport_encryption="disabled"``). With ``transport_encryption="auto"`` the manager's
provisioner makes a CurveZMQ key pair for a kernel whose kernelspec declares
``"supported_encryption": ["curve"]`` (ipykernel's own kernelspec does, and so does the one
``make setup`` installs), writes it into the connection file, and the manager's clients use it:
the sockets are encrypted and the kernel has nothing to warn about. A kernel that declares no
support starts as before, unencrypted, and still warns (a true warning).

The runner passes ``kernel_config()`` to papermill, which hands it to nbclient's kernel
manager; ``notebooks/conftest.py`` starts nbval's kernels with
``start_kernel(transport_encryption=transport_encryption())``.
"""

from __future__ import annotations

from typing import Any


def transport_encryption() -> str:
    """``"auto"`` when pyzmq has CurveZMQ (libzmq built with libsodium), else ``"disabled"``."""
    import zmq

    return "auto" if zmq.has("curve") else "disabled"


def kernel_config() -> Any:
    """The traitlets ``Config`` for a notebook client's kernel manager (papermill's ``config=``):
    ``KernelManager.transport_encryption = transport_encryption()``.
    """
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": transport_encryption()}})
