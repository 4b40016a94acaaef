"""One ``device`` argument: the resolver, explicit CPU runs, errors, CPU results; CPU/GPU agreement
(marked ``gpu``, skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

import tda_utils as tu
from tda_utils.devices import resolve_device, to_cpu

from .conftest import make_splits, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_resolver():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x", 3):
        with pytest.raises(ValueError, match=r"device=.*allowed values: 'auto', 'cpu'"):
            resolve_device(bad)
    with pytest.raises(ValueError, match=r"device='cuda:99' is not available"):
        resolve_device("cuda:99")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device='cuda' is not available.*no CUDA device"):
        resolve_device("cuda")
    splits = make_splits("regression")
    model = tu.build_model("mlp", splits, hidden=4).double()
    with pytest.raises(ValueError, match="device='cuda'"):
        tu.train_model(
            model, splits, tu.TrainConfig(epochs=1), cache_dir=None, progress=False, device="cuda"
        )
    with pytest.raises(ValueError, match="device='cuda'"):
        tu.evaluate(model, splits, device="cuda")
    cfg = tu.FurtherTrainingConfig(epochs=1, seeds=[0], left_out=[1], dtype="float64")
    with pytest.raises(ValueError, match="device='cuda'"):
        tu.further_train(model, splits, cfg, cache_dir=None, progress=False, device="cuda")


def test_to_cpu_nested():
    out = to_cpu({"a": [torch.ones(2)], "b": (torch.zeros(1), 3)})
    assert out["a"][0].device.type == "cpu" and out["b"][1] == 3 and isinstance(out["b"], tuple)


def test_explicit_cpu_equals_auto_here_and_model_stays_put(tmp_path):
    """On a CPU-only machine "auto" is the CPU: identical numbers; the cache holds CPU tensors."""
    if torch.cuda.is_available():
        pytest.skip("compares 'auto' with 'cpu' on a CPU-only machine")
    splits = make_splits("classification")
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8)
    a = tu.train_model(
        tu.build_model("mlp", splits, hidden=5).double(),
        splits,
        cfg,
        cache_dir=None,
        progress=False,
        device="cpu",
    )
    b = tu.train_model(
        tu.build_model("mlp", splits, hidden=5).double(),
        splits,
        cfg,
        cache_dir=tmp_path,
        progress=False,
    )
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb) and va.device.type == "cpu"
    assert a.fimo_history == b.fimo_history
    stored = torch.load(next(tmp_path.glob("models/*/final.pt")), weights_only=False)
    assert all(t.device.type == "cpu" for t in stored["state_dict"].values())
    assert tu.evaluate(a, splits, device="cpu") == tu.evaluate(a, splits)
    ft = tu.FurtherTrainingConfig(
        lr=0.05, epochs=2, batch_size=8, seeds=[0, 1], left_out=[0, 3], dtype="float64"
    )
    for engine in ("vectorized", "sequential"):
        ftc = tu.FurtherTrainingConfig(**{**ft.__dict__, "engine": engine})
        r1 = tu.further_train(a, splits, ftc, cache_dir=None, progress=False, device="cpu")
        r2 = tu.further_train(a, splits, ftc, cache_dir=None, progress=False)
        assert torch.equal(r1.loss_loo, r2.loss_loo) and r1.loss_loo.device.type == "cpu"


# ---------------------------------------------------------------- GPU (skipped without CUDA)
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
@pytest.mark.parametrize("leave_out", ["permutation", "every_batch"])
def test_further_training_cpu_and_gpu_agree(engine, leave_out, tmp_path):
    splits = make_splits("regression", n_train=21, n_test=4)
    final = tiny_model(splits, hidden=6, train_epochs=5)
    cfg = tu.FurtherTrainingConfig(
        lr=0.05,
        epochs=3,
        batch_size=5,
        seeds=range(3),
        left_out=[0, 7, 20],
        dtype="float64",
        engine=engine,
        leave_out=leave_out,
    )
    on_cpu = tu.further_train(final, splits, cfg, cache_dir=None, progress=False, device="cpu")
    on_gpu = tu.further_train(final, splits, cfg, cache_dir=tmp_path, progress=False, device="cuda")
    assert on_gpu.loss_loo.device.type == "cpu" and on_gpu.loss_full.device.type == "cpu"
    torch.testing.assert_close(on_gpu.loss_full, on_cpu.loss_full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(on_gpu.loss_loo, on_cpu.loss_loo, rtol=1e-10, atol=1e-12)
    stored = torch.load(next(tmp_path.glob("further_training/*/seed_0.pt")), weights_only=False)
    assert stored["loss_loo"].device.type == "cpu"
    assert next(final.parameters()).device.type == "cpu"  # the given model is not moved


@pytest.mark.gpu
@cuda
def test_train_and_evaluate_cpu_and_gpu_agree():
    splits = make_splits("classification")
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8)
    a = tu.train_model(
        tu.build_model("mlp", splits, hidden=5).double(),
        splits,
        cfg,
        cache_dir=None,
        progress=False,
        device="cpu",
    )
    b = tu.train_model(
        tu.build_model("mlp", splits, hidden=5).double(),
        splits,
        cfg,
        cache_dir=None,
        progress=False,
        device="cuda",
    )
    assert next(b.parameters()).device.type == "cpu"
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-10, atol=1e-12)
    ea, eb = tu.evaluate(a, splits, device="cpu"), tu.evaluate(a, splits, device="cuda")
    assert eb["accuracy"] == ea["accuracy"] and abs(eb["loss"] - ea["loss"]) < 1e-10


# ---------------------------------------------------------------- attribution methods
def test_attribute_on_explicit_cpu_and_bad_device():
    splits = make_splits("regression", n_train=15, n_test=3)
    final = tiny_model(splits, hidden=4, train_epochs=5)
    for method in ("grad_dot", "lissa"):
        a = tu.attribute(method, final, splits, device="cpu")
        b = tu.attribute(method, final, splits)
        assert a.values.device.type == "cpu"
        if not torch.cuda.is_available():  # "auto" is the CPU here
            assert torch.equal(a.values, b.values)
    with pytest.raises(ValueError, match="device='tpu'"):
        tu.attribute("grad_dot", final, splits, device="tpu")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(
    "method",
    [
        "grad_dot",
        "grad_cos",
        "datainf",
        "cg",
        "lissa",
        "lissa_h",
        "ekfac",
        "trak",
        "if_time",
        "if_explicit",
    ],
)
def test_every_method_cpu_and_gpu_agree(method):
    splits = make_splits("classification", n_train=15, n_test=3)
    final = tiny_model(splits, hidden=4, train_epochs=5)
    on_cpu = tu.attribute(method, final, splits, device="cpu")
    on_gpu = tu.attribute(method, final, splits, device="cuda")
    assert on_gpu.values.device.type == "cpu" and next(final.parameters()).device.type == "cpu"
    torch.testing.assert_close(on_gpu.values, on_cpu.values, rtol=1e-6, atol=1e-9)
