"""One ``device`` argument: the resolver, explicit CPU runs, errors, CPU results; every device of
``conftest.DEVICES`` (the CPU always; CUDA marked ``gpu``, skipped without) against a CPU float64
reference."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

import tda_utils as tu
from tda_utils.data.registry import Splits
from tda_utils.devices import resolve_device, to_cpu

from .conftest import DEVICES, make_splits, tiny_model


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


# ------------------------------------------- every device against a CPU float64 reference
# Parametrized over DEVICES: the body runs on the CPU in CI and on CUDA where there is one. Each
# compares the device's float64 run (tight) and its float32 run (loose) with a CPU float64
# reference, so the "cpu" case checks float32 against float64 and a broken body fails anywhere.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ["vectorized", "sequential"])
@pytest.mark.parametrize("leave_out", ["permutation", "every_batch"])
def test_further_training_device_agrees_with_cpu_float64(device, engine, leave_out, tmp_path):
    splits = make_splits("regression", n_train=21, n_test=4)
    final = tiny_model(splits, hidden=6, train_epochs=5)
    common = dict(
        lr=0.05, epochs=3, batch_size=5, seeds=range(3), left_out=[0, 7, 20], engine=engine,
        leave_out=leave_out,
    )  # fmt: skip
    ref_cfg = tu.FurtherTrainingConfig(dtype="float64", **common)
    ref = tu.further_train(final, splits, ref_cfg, cache_dir=None, progress=False, device="cpu")
    on_dev = tu.further_train(
        final, splits, ref_cfg, cache_dir=tmp_path, progress=False, device=device
    )
    assert on_dev.loss_loo.device.type == "cpu" and on_dev.loss_full.device.type == "cpu"
    torch.testing.assert_close(on_dev.loss_full, ref.loss_full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(on_dev.loss_loo, ref.loss_loo, rtol=1e-10, atol=1e-12)
    stored = torch.load(next(tmp_path.glob("further_training/*/seed_0.pt")), weights_only=False)
    assert stored["loss_loo"].device.type == "cpu"
    f32_cfg = tu.FurtherTrainingConfig(dtype="float32", **common)
    f32 = tu.further_train(final, splits, f32_cfg, cache_dir=None, progress=False, device=device)
    torch.testing.assert_close(f32.loss_full.double(), ref.loss_full, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(f32.loss_loo.double(), ref.loss_loo, rtol=1e-4, atol=1e-6)
    assert next(final.parameters()).device.type == "cpu"  # the given model is not moved
    assert next(final.parameters()).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_train_and_evaluate_device_agrees_with_cpu_float64(device):
    splits = make_splits("classification")
    cfg = tu.TrainConfig(lr=0.1, epochs=3, batch_size=8)

    x, y = splits.train.tensors
    xt, yt = splits.test.tensors
    splits32 = Splits(
        splits.name,
        TensorDataset(x.float(), y),
        TensorDataset(xt.float(), yt),
        splits.task,
        splits.meta,
    )
    data = {torch.float64: splits, torch.float32: splits32}

    def train(dtype, where):
        model = tu.build_model("mlp", splits, hidden=5).to(dtype)
        return tu.train_model(model, data[dtype], cfg, cache_dir=None, progress=False, device=where)

    ref = train(torch.float64, "cpu")
    a64, a32 = train(torch.float64, device), train(torch.float32, device)
    assert next(a64.parameters()).device.type == "cpu"
    assert next(a32.parameters()).device.type == "cpu"
    for vr, v64, v32 in zip(
        ref.state_dict().values(), a64.state_dict().values(), a32.state_dict().values()
    ):
        torch.testing.assert_close(v64, vr, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(v32.double(), vr, rtol=1e-4, atol=1e-5)
    er = tu.evaluate(ref, splits, device="cpu")
    e64 = tu.evaluate(ref, splits, device=device)
    e32 = tu.evaluate(a32, splits32, device=device)
    assert e64["accuracy"] == er["accuracy"] and abs(e64["loss"] - er["loss"]) < 1e-10
    assert e32["accuracy"] == er["accuracy"] and abs(e32["loss"] - er["loss"]) < 1e-4


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


#: options that every method test passes: if_time needs the step counts and the learning rate;
#: LiSSA and LiSSA-H at a shorter depth (the scores still agree across devices and dtypes)
METHOD_TEST_OPTIONS = {
    "if_time": {"times": [0, 5, 20], "lr": 0.05},
    "lissa": {"depth": 200},
    "lissa_h": {"depth": 200},
}


@pytest.mark.parametrize("device", DEVICES)
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
def test_every_method_device_agrees_with_cpu_float64(method, device):
    splits = make_splits("classification", n_train=15, n_test=3)
    final = tiny_model(splits, hidden=4, train_epochs=5)
    opts = METHOD_TEST_OPTIONS.get(method, {})
    ref = tu.attribute(method, final, splits, device="cpu", dtype="float64", **opts).values
    assert ref.dtype == torch.float64 and ref.abs().max() > 0
    on_dev = tu.attribute(method, final, splits, device=device, dtype="float64", **opts)
    assert on_dev.values.device.type == "cpu" and next(final.parameters()).device.type == "cpu"
    torch.testing.assert_close(on_dev.values, ref, rtol=1e-6, atol=1e-9)
    # float32 on the device: within 1e-3 of the reference's largest score (relative)
    f32 = tu.attribute(method, final, splits, device=device, dtype="float32", **opts).values
    scale = ref.abs().max().item()
    torch.testing.assert_close(f32.double(), ref, rtol=1e-3, atol=1e-3 * scale)
    assert next(final.parameters()).dtype == torch.float64
