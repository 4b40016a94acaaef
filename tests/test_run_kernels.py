"""The runner's notebook kernels run on CurveZMQ-encrypted sockets, so ipykernel has no
"Kernel is running over TCP without encryption" warning to print; a kernel started the old way
(no config) still prints it, so the check can fail."""

from __future__ import annotations

import nbformat
import papermill
import pytest
import zmq

from tda_utils.run import kernels, reproduce

WARNING = "Kernel is running over TCP without encryption"
PROBE = (
    "from ipykernel.kernelapp import IPKernelApp\n"
    "app = IPKernelApp.instance()\n"
    "print('encrypted:', app.curve_secretkey is not None)"
)


def test_kernel_config_asks_for_encryption_where_pyzmq_has_curve():
    expected = "auto" if zmq.has("curve") else "disabled"
    assert kernels.transport_encryption() == expected
    assert kernels.kernel_config().KernelManager.transport_encryption == expected


def _probe_notebook(folder):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROBE)])
    spec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["kernelspec"] = spec
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / "probe.ipynb")
    return folder / "probe.ipynb"


@pytest.mark.notebook
@pytest.mark.skipif(not zmq.has("curve"), reason="pyzmq without CurveZMQ")
def test_runner_kernels_are_encrypted_and_quiet(tmp_path, capfd):
    _probe_notebook(tmp_path / "notebooks")
    rows = reproduce.run([reproduce.Run("probe", None, {})], "smoke", root=tmp_path)
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    out = nbformat.read(tmp_path / "reports" / "smoke" / "probe.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "encrypted: True\n"
    assert WARNING not in capfd.readouterr().err
    # the same notebook without the runner's kernel config: unencrypted, and ipykernel warns
    plain_path = tmp_path / "plain.ipynb"
    papermill.execute_notebook(
        str(tmp_path / "notebooks" / "probe.ipynb"), str(plain_path), progress_bar=False
    )
    plain = nbformat.read(plain_path, as_version=4)
    assert plain.cells[-1].outputs[0]["text"] == "encrypted: False\n"
    assert WARNING in capfd.readouterr().err
