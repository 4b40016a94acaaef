"""Library adapters (tda_utils.bench.adapters): shapes, signs, and agreement with the suite.

Problems: tiny float64 MLPs (8 hidden units, ~150-300 parameters) trained on the first 120
training rows of Concrete (regression) and Credit (classification). The agreement tests compare
each adapter with the suite's own method on the same parameters, data and damping.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from importlib.util import find_spec

import pytest
import torch
from scipy.stats import spearmanr
from torch.utils.data import TensorDataset

import tda_utils as tu
from tda_utils.bench import adapters as ad
from tda_utils.bench.adapters import kronfluence_methods

HAS_KRONFLUENCE = find_spec("kronfluence") is not None
needs_kronfluence = pytest.mark.skipif(
    not HAS_KRONFLUENCE,
    reason="kronfluence is not installed (pyproject pins kronfluence==1.0.1 and its dependencies)",
)

N_TRAIN, N_TEST = 120, 6
TRAIN = [17, 3, 50, 88, 5, 64, 101, 0, 42, 77, 9, 30]  # unsorted on purpose
QUERIES = [4, 0, 2]
#: fast settings for the iterative adapters in the shape / sign tests
FAST = {
    "dattri_if_lissa": {"depth": 50},
    "dattri_if_arnoldi": {"proj_dim": 20, "max_iter": 40},
}


def _cut(ds: TensorDataset, rows) -> TensorDataset:
    return TensorDataset(*(t[rows] for t in ds.tensors))


def _problem(name: str):
    full = tu.load_dataset(name)
    meta = {"n_classes": full.n_outputs} if full.task == "classification" else {}
    splits = tu.Splits(
        f"{name}_tiny",
        _cut(full.train, slice(0, N_TRAIN)),
        _cut(full.test, slice(0, N_TEST)),
        full.task,
        meta,
    ).to(torch.float64)
    model = tu.build_model("mlp", splits, seed=0, hidden=8).double()
    cfg = tu.TrainConfig(lr=0.1, epochs=40, batch_size=32)
    return tu.train_model(model, splits, cfg, cache_dir=None, progress=False), splits


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for these tiny models (restored afterwards): on a shared 2-core
    machine, two spinning threads per op made dattri's LiSSA and Arnoldi ~10-20x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["concrete", "credit"])
def problem(request):
    return _problem(request.param)


def _suite(method: str, model, splits, **options) -> torch.Tensor:
    return tu.attribute(method, model, splits, TRAIN, QUERIES, device="cpu", **options).values


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over queries of the Spearman correlation of their rows."""
    return sum(spearmanr(x, y).statistic for x, y in zip(a.numpy(), b.numpy())) / len(a)


def _adapter_params():
    for name in ad.ADAPTERS:
        marks = [needs_kronfluence] if name.startswith("kronfluence") else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_adapter_params()))
def test_adapter_shape_and_finite(problem, name):
    model, splits = problem
    values = ad.ADAPTERS[name](model, splits, TRAIN, QUERIES, **FAST.get(name, {}))
    assert isinstance(values, torch.Tensor)
    assert values.shape == (len(QUERIES), len(TRAIN))
    assert values.dtype == torch.float64 and values.device.type == "cpu"
    assert bool(torch.isfinite(values).all())
    assert float(values.abs().max()) > 0


def test_dattri_explicit_equals_suite_explicit_if(problem):
    """Same exact Hessian of the mean loss over all parameters, same damping, float64: equal up
    to rounding (measured max relative error ~1e-15).
    """
    model, splits = problem
    for multiple in (100.0, 0.1):  # the suite's default, and a damping where H dominates
        ref = _suite("if_explicit", model, splits, hessian="exact", damping_multiple=multiple)
        ours = ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, damping_multiple=multiple)
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    lam = tu.attribute("if_explicit", model, splits, TRAIN, QUERIES, hessian="exact")
    ours = ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, damping=lam.diagnostics["damping"])
    torch.testing.assert_close(ours, lam.values, rtol=1e-9, atol=0.0)


def test_dattri_explicit_layers_equal_suite_on_frozen_model(problem):
    """``layers`` restricts dattri to some parameters; the suite differentiates the trainable
    ones: freezing the others gives the same influence function (absolute damping, since the
    suite's lambda0 would then be over fewer parameters).
    """
    model, splits = problem
    last = [n for n, _ in model.named_parameters()][-2:]
    frozen = copy.deepcopy(model)
    for n, p in frozen.named_parameters():
        p.requires_grad_(n in last)
    ref = _suite("if_explicit", frozen, splits, hessian="exact", damping=1e-3)
    ours = ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, layers=last[::-1], damping=1e-3)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


def test_dattri_cg_converges_to_suite_explicit_if(problem):
    model, splits = problem
    ref = _suite("if_explicit", model, splits, hessian="exact")
    ours = ad.dattri_if_cg(model, splits, TRAIN, QUERIES, max_iter=30)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9 * float(ref.abs().max()))


def test_dattri_tracin_is_lr_times_grad_dot(problem):
    model, splits = problem
    dot = _suite("grad_dot", model, splits)
    ours = ad.dattri_tracin(model, splits, TRAIN, QUERIES, lr=0.5)
    assert _cos(ours, dot) > 1 - 1e-12
    torch.testing.assert_close(ours, 0.5 * dot, rtol=1e-9, atol=0.0)
    cos = ad.dattri_tracin(model, splits, TRAIN, QUERIES, normalized=True)
    torch.testing.assert_close(cos, _suite("grad_cos", model, splits), rtol=1e-9, atol=1e-12)
    projected = ad.dattri_tracin(model, splits, TRAIN, QUERIES, proj_dim=64)
    assert _cos(projected, dot) > 0.8  # a 64-dim Gaussian sketch of ~150-300 parameters


def test_dattri_trak_without_projection_equals_suite_trak(problem):
    """Same features (no projection), same damping rule (0.01 x TRAK's lambda0), same
    reweighting: equal up to rounding (measured ~1e-13).
    """
    model, splits = problem
    ref = _suite("trak", model, splits, projection="none")
    ours = ad.dattri_trak(model, splits, TRAIN, QUERIES, proj_dim=None)
    torch.testing.assert_close(ours, ref, rtol=1e-7, atol=1e-9 * float(ref.abs().max()))


def test_dattri_lissa_and_arnoldi_approach_explicit_if(problem):
    """Same damped exact Hessian; LiSSA is stochastic and truncated (100 steps of batches of 32
    at scale 50: measured cosine >= 0.998), Arnoldi keeps the top 30 eigenpairs (>= 0.9995).
    """
    model, splits = problem
    ref = _suite("if_explicit", model, splits, hessian="exact")
    lissa = ad.dattri_if_lissa(model, splits, TRAIN, QUERIES, depth=100, scale=50.0)
    assert _cos(lissa, ref) > 0.99
    arnoldi = ad.dattri_if_arnoldi(model, splits, TRAIN, QUERIES, proj_dim=30, max_iter=60)
    assert _cos(arnoldi, ref) > 0.99


@needs_kronfluence
def test_kronfluence_identity_is_grad_dot_over_n(problem):
    """No preconditioning: (1/n) g_q . g_i, the sign convention check (positive = helpful)."""
    model, splits = problem
    ours = ad.kronfluence_identity(model, splits, TRAIN, QUERIES)
    ref = _suite("grad_dot", model, splits) / splits.n_train
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))


@needs_kronfluence
def test_kronfluence_tracks_only_trainable_layers_of_a_frozen_trunk(problem):
    """A frozen trunk (finefood's head over MiniLM) has layers without gradients: kronfluence
    tracks only the trainable ones, as the suite differentiates only them.
    """
    model, splits = problem
    frozen = copy.deepcopy(model)
    last = [n for n, _ in frozen.named_parameters()][-2:]
    for n, p in frozen.named_parameters():
        p.requires_grad_(n in last)
    ours = ad.kronfluence_identity(frozen, splits, TRAIN, QUERIES)
    ref = _suite("grad_dot", frozen, splits) / splits.n_train
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
    with pytest.raises(ValueError, match="not trainable nn.Linear"):
        ad.kronfluence_identity(frozen, splits, TRAIN, QUERIES, modules=["0"])


@needs_kronfluence
def test_kronfluence_ekfac_agrees_with_suite_ekfac(problem):
    """Same model, layers (every nn.Linear, weights and biases), damping and Gauss-Newton
    target, so close but not equal: kronfluence estimates the expected output-gradient factors
    by sampling labels (8 draws per instance here), the suite computes them exactly. At damping
    0.01 x lambda0 the curvature matters (Grad-Dot's cosine with the suite's EK-FAC is 0.77-0.90
    here, kronfluence's diagonal strategy 0.90-0.93); measured: cosine >= 0.998, mean row
    Spearman >= 0.98, least-squares scale 0.98-1.05. The thresholds leave room for the sampling.
    """
    model, splits = problem
    ref = _suite("ekfac", model, splits, damping_multiple=0.01)
    ours = ad.kronfluence_ekfac(
        model, splits, TRAIN, QUERIES, damping_multiple=0.01, fisher_samples=8
    )
    baseline = _cos(_suite("grad_dot", model, splits), ref)
    assert _cos(ours, ref) > 0.99 and _cos(ours, ref) > baseline + 0.05
    assert _spearman(ours, ref) > 0.95
    scale = float((ours * ref).sum() / (ref * ref).sum())
    assert 0.9 < scale < 1.1
    # the defaults (one draw per instance, the suite's default damping 100 x lambda0)
    ours = ad.kronfluence_ekfac(model, splits, TRAIN, QUERIES)
    assert _cos(ours, _suite("ekfac", model, splits)) > 0.99


@needs_kronfluence
def test_kronfluence_is_seeded_and_restores_rng(problem):
    model, splits = problem
    state = torch.get_rng_state()
    a = ad.kronfluence_diagonal(model, splits, TRAIN, QUERIES, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = ad.kronfluence_diagonal(model, splits, TRAIN, QUERIES, seed=3)
    torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)
    c = ad.kronfluence_diagonal(model, splits, TRAIN, QUERIES, seed=4)
    assert not torch.equal(a, c)  # the labels are sampled


@needs_kronfluence
def test_kronfluence_task_loss_is_the_suite_loss(problem):
    model, splits = problem
    x, y = splits.train.tensors
    with torch.no_grad():
        ours = kronfluence_methods.per_sample_loss(model(x), y, splits.task).mean()
        suite = tu.your_model.dattri_loss(model, splits.task)({}, (x, y))
    torch.testing.assert_close(ours, suite, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", list(_adapter_params()))
def test_adapter_sign_self_influence_is_helpful(problem, name):
    """Queries that are copies of training instances 0..5: removing instance j raises the loss of
    its own copy (positive self-influence for every damped positive-definite curvature, for the
    gradient dot product and for TRAK), so each adapter's score of (copy of j, j) is positive;
    a flipped sign would make all of them negative.
    """
    model, splits = problem
    rows = list(range(N_TEST))
    mirror = tu.Splits("mirror", splits.train, _cut(splits.train, rows), splits.task, splits.meta)
    values = ad.ADAPTERS[name](model, mirror, rows, rows, **FAST.get(name, {}))
    assert bool((values.diagonal() > 0).all()), values.diagonal()


def test_adapters_leave_the_model_and_global_state_unchanged(problem):
    model, splits = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng, dtype = torch.get_rng_state(), torch.get_default_dtype()
    ad.dattri_if_lissa(model, splits, TRAIN, QUERIES, depth=20)
    ad.dattri_tracin(model, splits, TRAIN, QUERIES)
    if HAS_KRONFLUENCE:
        ad.kronfluence_diagonal(model, splits, TRAIN, QUERIES)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_default_dtype() == dtype


def test_float32_model_runs_in_float32_or_float64(problem):
    model, splits = problem
    m32, s32 = copy.deepcopy(model).float(), splits.to(torch.float32)
    ref = ad.dattri_if_explicit(m32, s32, TRAIN, QUERIES, dtype="float64")
    v = ad.dattri_if_explicit(m32, s32, TRAIN, QUERIES)  # float32 compute
    assert v.dtype == torch.float64  # reported in float64 whatever the compute dtype
    assert _cos(v, ref) > 1 - 1e-4
    if HAS_KRONFLUENCE:
        v = ad.kronfluence_identity(m32, s32, TRAIN, QUERIES)
        assert _cos(v, _suite("grad_dot", m32, s32)) > 1 - 1e-5


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"device": "tpu"}, "device"),
        ({"dtype": "float16"}, "dtype"),
        ({"damping": -1.0}, "damping"),
        ({"damping_multiple": float("nan")}, "damping_multiple"),
        ({"layers": ["nope.weight"]}, "layers"),
    ],
)
def test_bad_options_name_the_parameter(problem, options, names):
    model, splits = problem
    with pytest.raises(ValueError, match=names):
        ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, **options)


def test_bad_indices_and_choices_are_refused(problem):
    model, splits = problem
    with pytest.raises(ValueError, match="train_indices"):
        ad.dattri_tracin(model, splits, [0, N_TRAIN], QUERIES)
    with pytest.raises(ValueError, match="query_indices"):
        ad.dattri_tracin(model, splits, TRAIN, [])
    with pytest.raises(ValueError, match="mode"):
        ad.dattri_if_cg(model, splits, TRAIN, QUERIES, mode="fwd-fwd")
    with pytest.raises(ValueError, match="scale"):
        ad.dattri_if_lissa(model, splits, TRAIN, QUERIES, scale="big")
    with pytest.raises(ValueError, match="diverged"):
        ad.dattri_if_lissa(model, splits, TRAIN, QUERIES, depth=30, scale=1e-3)
    with pytest.raises(ValueError, match="modules"):
        ad.dattri_ekfac(model, splits, TRAIN, QUERIES, modules=["1"])  # a ReLU
    with pytest.raises(ValueError, match="strategy"):
        ad.kronfluence_methods.kronfluence_scores(model, splits, TRAIN, QUERIES, strategy="x")
    with pytest.raises(ValueError, match="fisher"):
        ad.kronfluence_ekfac(model, splits, TRAIN, QUERIES, fisher="sampled")
    with pytest.raises(TypeError, match="unknown_option"):
        ad.dattri_trak(model, splits, TRAIN, QUERIES, unknown_option=1)


@pytest.mark.slow  # a fresh interpreter importing torch and tda_utils
def test_importing_the_adapters_imports_neither_library():
    code = (
        "import sys, tda_utils.bench.adapters as ad; "
        "assert ad.ADAPTERS; "
        "assert not {'dattri', 'kronfluence'} & set(sys.modules), 'imported a library'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_dattri_explicit_refuses_a_large_model_as_not_applicable(problem):
    model, splits = problem
    d = sum(p.numel() for p in model.parameters())
    with pytest.raises(tu.bench.NotApplicable, match=rf"{d:,} parameters \(max_params=10\)"):
        ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, max_params=10)
    with pytest.raises(ValueError, match="max_params"):
        ad.dattri_if_explicit(model, splits, TRAIN, QUERIES, max_params=0)


# ----------------------------------------------------------------------------------------------
# Image and text models: per-sample calls, hooks on every Linear, gradient batches
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_problem():
    """The suite's MNIST CNN (20,522 parameters), float64, untrained, on 24 + 4 images."""
    splits = tu.load_dataset("mnist", n_train=24, n_test=4).to(torch.float64)
    return tu.build_model("cnn", splits, seed=0).to(torch.float64), splits


@pytest.fixture(scope="module")
def text_head(tmp_path_factory):
    """A tiny BERT head on its precomputed trunk, as notebook 04 scores it: the last block
    (run at the [CLS] position only, ``last_block="cls"``) + the classifier, inputs (hidden
    states (n, L, H), attention mask (n, L)), float64.
    """
    from .test_modality_text import tiny_model, write_sst2

    root = write_sst2(tmp_path_factory.mktemp("sst2") / "glue", "glue")
    splits = tu.load_dataset("sst2", path=root, max_length=16)
    model = tiny_model(splits, "last_layer")
    trunk, head = tu.models.text.precompute_trunk(model, splits, cache_dir=None, progress=False)
    assert head.last_block == "cls"
    return head, trunk


def test_dattri_tracin_on_a_cnn_and_a_text_head_is_grad_dot(cnn_problem, text_head):
    """dattri's TracIn calls the loss once per row without its batch dimension (it failed on
    both models before the adapter gave the rows their batch dimension back).
    """
    for model, splits in (cnn_problem, text_head):
        train, queries = list(range(min(10, splits.n_train))), list(range(3))
        ref = tu.attribute("grad_dot", model, splits, train, queries, device="cpu").values
        torch.testing.assert_close(ad.dattri_tracin(model, splits, train, queries), ref,
                                   rtol=1e-9, atol=1e-12)


@needs_kronfluence
def test_kronfluence_sees_every_linear_of_the_text_heads_last_block(text_head):
    """The [CLS]-only last block uses the key and value weights directly; the adapters' copy
    runs it in full, so kronfluence hooks every Linear (KeyError before) and its identity
    strategy equals Grad-Dot / n over the Linear layers' parameters.
    """
    model, splits = text_head
    train, queries = list(range(splits.n_train)), [0, 1]
    linear_only = copy.deepcopy(model)  # kronfluence leaves out the LayerNorm parameters
    linear = {f"{name}.{p}" for name, m in linear_only.named_modules()
              if isinstance(m, torch.nn.Linear) for p, _ in m.named_parameters()}
    for name, p in linear_only.named_parameters():
        p.requires_grad_(name in linear and p.requires_grad)
    ref = tu.attribute("grad_dot", linear_only, splits, train, queries, device="cpu").values
    ours = ad.kronfluence_identity(model, splits, train, queries)
    torch.testing.assert_close(ours, ref / splits.n_train, rtol=1e-8, atol=1e-12)
    assert model.last_block == "cls"  # the caller's model is untouched


def test_dattri_ekfac_refuses_token_sequence_inputs_as_not_applicable(text_head, problem):
    model, splits = text_head
    with pytest.raises(tu.bench.NotApplicable, match=r"\(batch, features\).*attention\.self"):
        ad.dattri_ekfac(model, splits, [0, 1], [0])
    model, splits = problem  # an MLP: every Linear sees (batch, features)
    assert ad.dattri_ekfac(model, splits, TRAIN, QUERIES).shape == (len(QUERIES), len(TRAIN))


def test_gradient_batches_do_not_change_the_scores(problem, monkeypatch):
    """One batch of rows, or batches of 5 rows (a small budget): the same scores."""
    from tda_utils.bench.adapters import _shared

    model, splits = problem
    options = {"dattri_if_cg": {"max_iter": 10}, "dattri_tracin": {}, "dattri_datainf": {}}
    whole = {name: ad.ADAPTERS[name](model, splits, TRAIN, QUERIES, **opts)
             for name, opts in options.items()}
    d = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(_shared, "GRAD_BATCH_BUDGET_MB", 5.5 * d * 8 / 2**20)
    assert _shared.grad_batch_size(d, 8, len(TRAIN)) == 5
    for name, opts in options.items():
        torch.testing.assert_close(ad.ADAPTERS[name](model, splits, TRAIN, QUERIES, **opts),
                                   whole[name], rtol=1e-9, atol=1e-14, msg=name)


def test_dattri_lissa_keeps_no_graph_across_steps(problem):
    """Under the adapters' no_grad the recursion's memory does not grow with its depth, and the
    scores equal those of dattri run with autograd on (before: ~36 MB per step on Concrete).
    """
    from tda_utils.bench.adapters import dattri_methods

    model, splits = problem
    ours = ad.dattri_if_lissa(model, splits, TRAIN, QUERIES, depth=30, scale=1e3)
    s = dattri_methods._setup(model, splits, TRAIN, QUERIES, None, "cpu")
    lam = 100.0 * ad._shared.lambda0(s.model, s.splits)
    algorithm, _ = dattri_methods._import_dattri()
    attributor = algorithm.IFAttributorLiSSA(
        task=dattri_methods._task(s), layer_name=None, device="cpu", batch_size=32,
        num_repeat=1, recursion_depth=30, damping=lam / 1e3, scaling=1e3, mode="rev-rev")
    graph = dattri_methods._inner_product(s, attributor, 0, autograd=True)
    torch.testing.assert_close(ours, graph, rtol=1e-10, atol=0.0)


def test_hvp_memory_units_and_the_datainf_guard(problem, cnn_problem, monkeypatch):
    """The saved activations per row grow with the model's activations (a CNN's >> an MLP's);
    CG and LiSSA batch their queries by them; DataInf refuses what would not fit.
    """
    from tda_utils.bench.adapters import _shared, dattri_curvature

    mlp, mlp_splits = problem
    cnn, cnn_splits = cnn_problem
    a_mlp = _shared.activation_bytes(mlp, mlp_splits.train)
    a_cnn = _shared.activation_bytes(cnn, cnn_splits.train)
    assert 0 < a_mlp < 1024 < 10 * 1024 < a_cnn  # 8 hidden units vs 28 x 28 feature maps
    per = _shared.HVP_ACTIVATION_FACTOR * a_cnn * 100
    monkeypatch.setattr(_shared, "HVP_BUDGET_MB", 3.5 * per / 2**20)
    assert _shared.vectors_per_hvp(cnn, cnn_splits.train, 100) == 3
    monkeypatch.setattr(dattri_curvature, "DATAINF_MAX_GB", 1e-6)
    with pytest.raises(tu.bench.NotApplicable, match=r"all 120 training instances.*DATAINF_MAX_GB"):
        ad.dattri_datainf(mlp, mlp_splits, TRAIN, QUERIES)
