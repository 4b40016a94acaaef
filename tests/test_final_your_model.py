"""Bring-your-own model and data (tda_utils.final.your_model) and notebook 06's smoke runs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import tda_utils as tu
from tda_utils.run import reproduce
from tda_utils.final import your_model as ym

SMOKE = {r.notebook: r for r in reproduce.plan(reproduce.load_manifest(), "smoke")}


def _table(tmp_path, n=60, classification=False, split=True):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    y = (
        (x[:, 0] > 0).astype(int) * 2 + 5
        if classification
        else x @ [1.0, -2.0, 0.5] + 0.1 * rng.normal(size=n)
    )
    df = pd.DataFrame(x, columns=["a", "b", "c"])
    df["target"] = y
    if split:
        df["split"] = ["train"] * (n - 10) + ["test"] * 10
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    return path, df


def test_csv_regression_and_classification(tmp_path):
    path, df = _table(tmp_path)
    s = ym.load_data(path)
    assert s.task == "regression" and s.n_train == 50 and s.n_test == 10
    assert s.train.tensors[1].shape == (50, 1)
    assert torch.allclose(
        s.train.tensors[0].double(), torch.tensor(df[["a", "b", "c"]].to_numpy()[:50]), atol=1e-6
    )
    path, df = _table(tmp_path, classification=True, split=False)
    s = ym.load_data(path)
    assert s.task == "classification" and s.n_outputs == 2 and s.meta["class_values"] == [5, 7]
    assert s.n_train + s.n_test == 60 and s.train.tensors[1].dtype == torch.int64
    assert len(s.meta["default_left_out"]) == s.n_train  # fewer than 100 instances: all of them


def test_bad_inputs_name_the_parameter(tmp_path):
    path, df = _table(tmp_path)
    with pytest.raises(ValueError, match="target_column='y'"):
        ym.load_data(path, target_column="y")
    df.assign(a=["x"] * len(df)).to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(ValueError, match=r"\['a'\].*not numeric"):
        ym.load_data(tmp_path / "text.csv")
    with pytest.raises(ValueError, match="must end in .csv or .pt"):
        ym.load_data(tmp_path / "data.parquet")
    with pytest.raises(ValueError, match="task='nonsense'"):
        ym.load_data(path, task="nonsense")
    s = ym.load_data(path)
    torch.save(tu.build_model("mlp", s, hidden=8).state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="does not fit model_spec"):
        ym.load_model(tmp_path / "m.pt", s, {"name": "mlp", "hidden": 16})
    with pytest.raises(ValueError, match="needs model_spec"):
        ym.load_model(tmp_path / "m.pt", s, None)
    with pytest.raises(ValueError, match="layout='sideways'"):
        ym.to_query_major(torch.zeros(2, 3), 2, 3, "sideways")
    with pytest.raises(ValueError, match=r"layout='train_query' expects \(3, 2\)"):
        ym.to_query_major(torch.zeros(2, 3), 2, 3, "train_query")
    with pytest.raises(ValueError, match="sign=0"):
        ym.to_query_major(torch.zeros(2, 3), 2, 3, sign=0)


def test_checkpoint_round_trip_with_a_builder(tmp_path, monkeypatch):
    path, _ = _table(tmp_path)
    s = ym.load_data(path)
    module = type(sys)("my_models_for_test")
    module.build = lambda splits, width=4: nn.Sequential(
        nn.Linear(splits.n_features, width), nn.Tanh(), nn.Linear(width, splits.n_outputs)
    )
    monkeypatch.setitem(sys.modules, "my_models_for_test", module)
    torch.manual_seed(1)
    mine = module.build(s, width=5)
    torch.save({"state_dict": mine.state_dict()}, tmp_path / "mine.pt")
    loaded = ym.load_model(
        tmp_path / "mine.pt", s, {"builder": "my_models_for_test:build", "width": 5}
    )
    x = s.test.tensors[0]
    assert torch.equal(loaded(x), mine(x)) and not loaded.training


def test_tensors_file(tmp_path):
    torch.save(
        {
            "x_train": torch.randn(20, 4),
            "y_train": torch.arange(20) % 3,
            "x_test": torch.randn(5, 4),
            "y_test": torch.arange(5) % 3,
        },
        tmp_path / "t.pt",
    )
    s = ym.load_data(tmp_path / "t.pt")
    assert s.task == "classification" and s.n_outputs == 3 and s.n_features == 4


def test_external_scores_orientation_and_sign(tmp_path):
    """A library's (n_train, n_query) scores with positive = harmful come back query-major,
    positive = helpful, and then agree exactly with tau built from the same numbers."""
    tau = torch.randn(2, 3, 7, dtype=torch.float64)  # (n_evals, n_query, n_left_out)
    library = -tau[-1].T.numpy()  # (n_train, n_query), positive = harmful
    np.save(tmp_path / "s.npy", library)
    good = ym.load_external_scores(tmp_path / "s.npy", 3, 7, layout="train_query", sign=-1)
    assert good.shape == (3, 7)
    assert tu.agreement(tau, good).mean[-1].item() == pytest.approx(1.0)
    wrong_sign = ym.load_external_scores(tmp_path / "s.npy", 3, 7, layout="train_query", sign=1)
    assert tu.agreement(tau, wrong_sign).mean[-1].item() == pytest.approx(-1.0)


def test_dattri_influence_matches_the_closed_form(tmp_path):
    """dattri's influence function (through ``dattri_loss``) on a linear regression equals
    g_i^T (H + lambda I)^{-1} g_q with H the explicit Hessian of the mean loss; positive = helpful.
    (notebook 06 uses the same attributor, restricted to the output layer.)"""
    from dattri.algorithm.influence_function import IFAttributorExplicit
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, Subset

    path, _ = _table(tmp_path)
    s = ym.load_data(path)
    model = tu.training.fit_linear_exact(tu.build_model("linear", s), s, 0.0)
    lam = 1e-2
    task = AttributionTask(
        loss_func=ym.dattri_loss(model, s.task), model=model, checkpoints=model.state_dict()
    )
    att = IFAttributorExplicit(task=task, regularization=lam)
    att.cache(DataLoader(s.train, batch_size=s.n_train))
    raw = att.attribute(
        DataLoader(Subset(s.train, [0, 1, 2, 3]), batch_size=4), DataLoader(s.test, batch_size=10)
    )
    ours = ym.to_query_major(raw, 10, 4, "train_query")
    H = tu.hessian.explicit_hessian(
        model, *tu.grads.dataset_tensors(s.train), s.task, "exact"
    ).double()
    gq = tu.grads.per_sample_grads(model, s.test, task=s.task).double()
    gi = tu.grads.per_sample_grads(model, s.train, [0, 1, 2, 3], task=s.task).double()
    exact = gq @ torch.linalg.solve(H + lam * torch.eye(H.shape[0], dtype=H.dtype), gi.T)
    assert torch.allclose(ours, exact, rtol=1e-4, atol=1e-7)


def _run(run, tmp_path):
    rows = reproduce.run(
        [run], "smoke", reports_dir=tmp_path / "reports", figures_dir=tmp_path / "figures"
    )
    assert rows[0]["status"] == "ok", rows[0]["detail"]
    nb = json.loads((tmp_path / "reports" / f"{run.name}.ipynb").read_text())
    return "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        if c["cell_type"] == "code"
        for o in c["outputs"]
    )


@pytest.mark.notebook
def test_06_smoke_run_at_default_files(tmp_path):
    """The smoke profile's 06: no files given, so it writes and reads the stand-in CSV and model."""
    run = SMOKE["06_your_model"]
    run.parameters = {**run.parameters, "results_dir": str(tmp_path / "results")}
    text = _run(run, tmp_path)
    assert "no files given: using the stand-in CSV" in text
    assert "dattri IF: mean cosine with this suite's CG" in text and "same sign" in text
    for stem in (
        "fig2_cos_sim_epochs_sgd_your_model",
        "fig7_cos_sim_seeds_sgd_your_model",
        "fig10_attrib_scores_your_model",
        "fig2_external_scores_your_model",
    ):
        assert (tmp_path / "figures" / f"{stem}.png").exists() and (
            tmp_path / "figures" / f"{stem}.pdf"
        ).exists()


@pytest.mark.notebook
def test_06_smoke_run_with_a_model_and_data_built_here(tmp_path):
    """A classification CSV and a checkpoint of a registered model built in tmp_path, plus
    external scores from a .npy file in (n_left_out, n_query) layout."""
    path, _ = _table(tmp_path, n=90, classification=True)
    s = ym.load_data(path)
    model = tu.train_model(
        tu.build_model("mlp", s, hidden=16, depth=1),
        s,
        tu.TrainConfig(lr=0.1, epochs=20),
        cache_dir=None,
        progress=False,
    )
    torch.save(model.state_dict(), tmp_path / "clf.pt")
    np.save(tmp_path / "ext.npy", np.random.default_rng(0).normal(size=(6, 8)))
    params = {
        **SMOKE["06_your_model"].parameters,
        "data_path": str(path),
        "model_path": str(tmp_path / "clf.pt"),
        "model_spec": {"name": "mlp", "hidden": 16, "depth": 1},
        "n_left_out": 6,
        "name": "mine",
        "external_scores_path": str(tmp_path / "ext.npy"),
        "use_dattri": False,
        "results_dir": str(tmp_path / "results"),
    }
    text = _run(reproduce.Run("06_your_model", None, params), tmp_path)
    assert "mine: classification, 80 training and 10 test instances" in text
    assert "from file: mean cosine" in text and "no files given" not in text
    assert (tmp_path / "figures" / "fig2_cos_sim_epochs_sgd_mine.png").exists()


def test_hugging_face_folder_with_a_text_csv(tmp_path):
    """A saved tiny BERT + its tokenizer: the text CSV is tokenised with the folder's tokenizer,
    the encoder's weights are the folder's, the [CLS] head is trained on the training data (the
    training loss falls) and the trainable subset is what ``model_spec`` asked for."""
    from transformers import BertConfig, BertModel

    from tda_utils.data.text import load_tokenizer

    tok = load_tokenizer(None)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    hf = BertModel(cfg, add_pooling_layer=False).eval()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    texts = [
        "good food",
        "terrible service and cold soup",
        "fine",
        "would come again",
        "never again",
        "ok",
    ] * 3
    pd.DataFrame(
        {
            "review": texts,
            "target": ["pos", "neg", "pos", "pos", "neg", "neg"] * 3,
            "split": ["train"] * 12 + ["test"] * 6,
        }
    ).to_csv(tmp_path / "reviews.csv", index=False)
    s = ym.load_data(tmp_path / "reviews.csv", text_column="review", model_path=str(folder))
    assert s.task == "classification" and s.meta["class_values"] == ["neg", "pos"] and s.n_test == 6
    assert torch.equal(s.train.tensors[0][0, :4], torch.tensor(tok("good food")["input_ids"]))
    model = ym.load_model(folder, s, {"trainable": "last_layer"}, cache_dir=None)
    assert torch.equal(
        model.embeddings.word_embeddings.weight, hf.embeddings.word_embeddings.weight
    )
    assert model.trainable == "last_layer" and not model.training
    assert model.fimo_history["train_loss"][-1] < model.fimo_history["train_loss"][0]
    with pytest.raises(ValueError, match="without config.json"):
        ym.load_model(tmp_path, s)
