"""Bring your own final model and data (notebook ``06_your_model``).

Public: ``load_table``, ``load_tensors``, ``load_data``, ``load_model``, ``write_example``,
``to_query_major``, ``load_external_scores``, ``dattri_loss``, ``Example``.

Data (``load_data``):

* a CSV file with a ``target`` column (``target_column``) and numeric feature columns, optionally
  a ``split`` column ("train" / "test"; without it the rows are split 90/10 with
  ``train_test_split(random_state=0)``), or with a text column (``text_column``) tokenised with
  the tokenizer of a Hugging Face model folder;
* a ``.pt`` file holding ``{"x_train", "y_train", "x_test", "y_test"}`` tensors (optionally
  ``"task"``).

Features are used as stored (no standardisation): they must be what your model was trained on.
Regression targets become float (n, 1); classification labels are mapped to 0..k-1 in sorted
order of their values (``meta["class_values"]``). ``task="auto"`` picks classification for an
integer or string target with at most 20 distinct values.

Models (``load_model``): a torch checkpoint (a ``state_dict``, or a dict holding one under
``"state_dict"``; loaded with ``weights_only=True``) plus ``model_spec``: ``{"name": <a
registered model, e.g. "mlp">, **options}`` or ``{"builder": "package.module:function",
**options}`` where ``function(splits, **options)`` returns the ``nn.Module``; or a Hugging Face
folder (``config.json``): its BERT-family encoder with the paper's linear head on the [CLS] output
(``bert_classifier``, no pooler), the head trained on your training data (``head_config``) with
the encoder frozen. (A saved ``*ForSequenceClassification`` head sits on the pooler, which this
architecture does not have, so it is not used.)

External scores (``to_query_major``): the suite's convention is query-major ``(n_query,
n_train)`` with positive = helpful (removing the instance raises the query's loss). Libraries
differ: dattri's ``attribute`` returns ``(n_train, n_query)`` (``layout="train_query"``) with
positive = helpful (``sign=+1``); a library whose scores estimate the loss change when the
instance is *upweighted* needs ``sign=-1``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..cache import repo_path
from ..config import check_choice
from ..data.registry import Splits
from ..data.tabular import seeded_left_out

TASKS = ("auto", "regression", "classification")
LAYOUTS = ("query_train", "train_query")
MAX_CLASSES = 20


def _meta(name: str, n_train: int, source: str, **extra: Any) -> dict[str, Any]:
    return {
        "source": source,
        "n_train": n_train,
        "default_left_out": seeded_left_out(n_train),
        **extra,
    }


def _targets(
    y_train: np.ndarray, y_test: np.ndarray, task: str
) -> tuple[torch.Tensor, torch.Tensor, str, dict]:
    check_choice("task", task, TASKS)
    both = np.concatenate([y_train, y_test])
    if task == "auto":
        integral = both.dtype.kind in "iubOSU" or (
            both.dtype.kind == "f" and np.all(np.mod(both, 1) == 0)
        )
        task = (
            "classification" if integral and len(np.unique(both)) <= MAX_CLASSES else "regression"
        )
    if task == "regression":
        if both.dtype.kind not in "iuf":
            raise ValueError(f"task='regression' needs a numeric target, got dtype {both.dtype}")
        f = lambda y: torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1, 1)  # noqa: E731
        return f(y_train), f(y_test), task, {}
    values = np.unique(both)
    lookup = {v: i for i, v in enumerate(values.tolist())}
    f = lambda y: torch.tensor([lookup[v] for v in y.tolist()], dtype=torch.int64)  # noqa: E731
    return f(y_train), f(y_test), task, {"n_classes": len(values), "class_values": values.tolist()}


def load_table(
    path: str | os.PathLike,
    target_column: str = "target",
    task: str = "auto",
    split_column: str = "split",
    text_column: str | None = None,
    model_path: str | os.PathLike | None = None,
    max_length: int = 64,
    name: str | None = None,
) -> Splits:
    """A CSV file -> ``Splits`` (see the module docstring for the layout and conventions)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    path = repo_path(path)
    df = pd.read_csv(path)
    if target_column not in df.columns:
        raise ValueError(
            f"target_column={target_column!r} is not a column of {path}; "
            f"columns: {list(df.columns)}"
        )
    if split_column in df.columns:
        bad = sorted(set(df[split_column].astype(str)) - {"train", "test"})
        if bad:
            raise ValueError(
                f"column {split_column!r} of {path} must hold 'train' or 'test', found {bad}"
            )
        train, test = df[df[split_column] == "train"], df[df[split_column] == "test"]
    else:
        train, test = train_test_split(df, test_size=0.1, random_state=0)
    drop = [c for c in (target_column, split_column) if c in df.columns]
    y_train, y_test, task, extra = _targets(
        train[target_column].to_numpy(), test[target_column].to_numpy(), task
    )
    name = name or path.stem
    if text_column is not None:
        from ..data.text import tokenize

        if text_column not in df.columns:
            raise ValueError(
                f"text_column={text_column!r} is not a column of {path}; "
                f"columns: {list(df.columns)}"
            )
        if task != "classification":
            raise ValueError("a text column needs a classification target (bert_classifier)")
        texts = train[text_column].astype(str).tolist(), test[text_column].astype(str).tolist()
        tr, te, info = tokenize(*texts, model_path=model_path, max_length=max_length)
        meta = _meta(
            name,
            len(train),
            str(path),
            texts_train=texts[0],
            texts_test=texts[1],
            **info,
            **extra,
            model_path=str(model_path) if model_path else None,
        )
        return Splits(
            name,
            TensorDataset(tr["input_ids"], tr["attention_mask"], y_train),
            TensorDataset(te["input_ids"], te["attention_mask"], y_test),
            task,
            meta,
        )
    features = train.drop(columns=drop)
    non_numeric = [c for c in features.columns if features[c].dtype.kind not in "iufb"]
    if non_numeric:
        raise ValueError(
            f"feature columns {non_numeric} of {path} are not numeric; encode them (e.g. one-hot) "
            "as your model expects, or pass text_column= for a text column"
        )
    x = lambda part: torch.as_tensor(part.drop(columns=drop).to_numpy(dtype=np.float32))  # noqa: E731
    meta = _meta(name, len(train), str(path), feature_names=list(features.columns), **extra)
    return Splits(
        name, TensorDataset(x(train), y_train), TensorDataset(x(test), y_test), task, meta
    )


def load_tensors(path: str | os.PathLike, task: str = "auto", name: str | None = None) -> Splits:
    """A ``.pt`` file with ``x_train``, ``y_train``, ``x_test``, ``y_test`` (and optionally
    ``task``) -> ``Splits`` (inputs as stored; targets as in ``load_table``).
    """
    path = repo_path(path)
    blob = torch.load(path, weights_only=True)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in blob]
    if missing:
        raise ValueError(
            f"{path} lacks the tensors {missing}; it must hold x_train, y_train, x_test, y_test"
        )
    task = blob.get("task", task) if task == "auto" else task
    y_train, y_test, task, extra = _targets(
        np.asarray(blob["y_train"]).reshape(-1), np.asarray(blob["y_test"]).reshape(-1), task
    )
    x_train, x_test = (
        torch.as_tensor(blob["x_train"]).float(),
        torch.as_tensor(blob["x_test"]).float(),
    )
    return Splits(
        name or path.stem,
        TensorDataset(x_train, y_train),
        TensorDataset(x_test, y_test),
        task,
        _meta(name or path.stem, len(x_train), str(path), **extra),
    )


def load_data(data_path: str | os.PathLike, **options: Any) -> Splits:
    """``load_table`` for ``.csv``, ``load_tensors`` for ``.pt``/``.pth`` (by suffix)."""
    suffix = Path(data_path).suffix.lower()
    if suffix == ".csv":
        return load_table(data_path, **options)
    if suffix in (".pt", ".pth"):
        return load_tensors(
            data_path, **{k: v for k, v in options.items() if k in ("task", "name")}
        )
    raise ValueError(
        f"data_path={str(data_path)!r} must end in .csv or .pt "
        "(allowed: a CSV with a target column, "
        "or a .pt file of x_train/y_train/x_test/y_test tensors)"
    )


def _builder(spec: Mapping[str, Any]) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    from ..models.registry import MODELS, build_model

    opts = dict(spec)
    if "builder" in opts:
        target = opts.pop("builder")
        module, _, attr = str(target).partition(":")
        if not attr:
            raise ValueError(
                f"model_spec builder={target!r} must look like 'package.module:function'"
            )
        return getattr(importlib.import_module(module), attr), opts
    if "name" not in opts:
        raise ValueError(
            "model_spec must have 'name' (a registered model: "
            f"{', '.join(sorted(MODELS))}) or 'builder' ('package.module:function')"
        )
    name = opts.pop("name")
    return (lambda splits, **kw: build_model(name, splits, **kw)), opts


def load_model(
    model_path: str | os.PathLike,
    splits: Splits,
    model_spec: Mapping[str, Any] | None = None,
    head_config=None,
    cache_dir: Any = ...,
) -> nn.Module:
    """Your final model, in eval mode (see the module docstring for what ``model_path`` and
    ``model_spec`` may be). Raises ValueError when the checkpoint does not fit the built model.

    For a Hugging Face folder, ``model_spec`` holds ``bert_classifier`` options (e.g.
    ``{"trainable": "last_layer"}``: what further training and the methods differentiate) and
    ``head_config`` (a ``TrainConfig``; default 20 epochs of SGD at lr 0.1) trains the head.
    """
    path = repo_path(model_path)
    if path.is_dir():
        from ..config import TrainConfig
        from ..models.registry import build_model
        from .training import train_model

        if not (path / "config.json").exists():
            raise ValueError(
                f"model_path={str(path)!r} is a folder without config.json "
                "(not a Hugging Face model)"
            )
        opts = dict(model_spec or {})
        if opts.pop("name", "bert_classifier") != "bert_classifier" or "builder" in opts:
            raise ValueError(
                f"model_path={str(path)!r} is a Hugging Face folder: model_spec must be None or "
                "bert_classifier options, e.g. {'trainable': 'last_layer'}"
            )
        model = build_model("bert_classifier", splits, model_path=str(path), **opts)
        trainable = model.trainable
        model.set_trainable("head")
        train_model(
            model,
            splits,
            head_config or TrainConfig(lr=0.1, epochs=20, batch_size=32),
            cache_dir=cache_dir,
            progress=False,
        )
        return model.set_trainable(trainable).eval()
    if model_spec is None:
        raise ValueError(
            "a torch checkpoint needs model_spec, e.g. {'name': 'mlp', 'hidden': 128} or "
            "{'builder': 'mypackage.models:build'}"
        )
    build, opts = _builder(model_spec)
    model = build(splits, **opts)
    state = torch.load(path, weights_only=True, map_location="cpu")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"the checkpoint {path} does not fit model_spec={dict(model_spec)}: {exc}"
        ) from exc
    return model.eval()


@dataclasses.dataclass(frozen=True)
class Example:
    """Files written by ``write_example``: a CSV, a checkpoint and the spec that rebuilds it."""

    data_path: Path
    model_path: Path
    model_spec: dict


def write_example(
    dataset: str,
    folder: str | os.PathLike,
    model_spec: Mapping[str, Any] | None = None,
    train_config=None,
    cache_dir: Any = ...,
) -> Example:
    """Stand-in user files from a packaged dataset: ``<folder>/<dataset>.csv`` (its features as
    the loader gives them, ``target`` and ``split`` columns) and ``<folder>/<dataset>_model.pt``
    (the ``state_dict`` of ``model_spec``'s model trained with ``train_config``,
    default ``TrainConfig()``).
    """
    import pandas as pd

    from ..config import TrainConfig
    from ..data.registry import load_dataset
    from .training import train_model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits = load_dataset(dataset)
    if len(splits.train.tensors) != 2 or splits.train.tensors[0].ndim != 2:
        raise ValueError(
            f"dataset={dataset!r} is not a table; use a tabular dataset (e.g. concrete, credit)"
        )
    parts = []
    for split, part in (("train", splits.train), ("test", splits.test)):
        x, y = (t.numpy() for t in part.tensors)
        df = pd.DataFrame(
            x, columns=splits.meta.get("feature_names") or [f"x{j}" for j in range(x.shape[1])]
        )
        df["target"], df["split"] = y.reshape(len(y), -1)[:, 0], split
        parts.append(df)
    data_path = folder / f"{dataset}.csv"
    pd.concat(parts).to_csv(data_path, index=False, float_format="%.9g")
    spec = dict(model_spec or {"name": "mlp"})
    splits = load_table(data_path)  # what the notebook will read, so the model fits it exactly
    build, opts = _builder(spec)
    model = train_model(
        build(splits, **opts), splits, train_config or TrainConfig(), cache_dir=cache_dir
    )
    model_path = folder / f"{dataset}_model.pt"
    torch.save(model.state_dict(), model_path)
    return Example(data_path, model_path, spec)


def to_query_major(
    scores, n_query: int, n_train: int, layout: str = "query_train", sign: int = 1
) -> torch.Tensor:
    """External scores in the suite's convention: float64 ``(n_query, n_train)``, + = helpful.

    Args:
        scores: array-like of shape ``(n_query, n_train)`` (``layout="query_train"``) or
            ``(n_train, n_query)`` (``layout="train_query"``, e.g. dattri).
        n_query: the expected number of queries (checked).
        n_train: the expected number of training examples (checked).
        layout: "query_train" | "train_query".
        sign: +1 when the library's positive means helpful, -1 when it means harmful.
    """
    check_choice("layout", layout, LAYOUTS)
    if sign not in (1, -1):
        raise ValueError(
            f"sign={sign!r} is not valid; "
            "allowed values: 1 (positive = helpful), -1 (positive = harmful)"
        )
    s = torch.as_tensor(
        np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores)
    ).double()
    want = (n_query, n_train) if layout == "query_train" else (n_train, n_query)
    if tuple(s.shape) != want:
        raise ValueError(
            f"scores have shape {tuple(s.shape)}; layout={layout!r} expects {want} "
            f"(n_query={n_query}, n_train={n_train})"
        )
    return sign * (s if layout == "query_train" else s.T)


def load_external_scores(
    path: str | os.PathLike, n_query: int, n_train: int, layout: str = "train_query", sign: int = 1
) -> torch.Tensor:
    """``to_query_major`` of scores stored in a ``.npy`` or ``.pt`` file."""
    path = repo_path(path)
    if path.suffix == ".npy":
        raw = np.load(path)
    elif path.suffix in (".pt", ".pth"):
        raw = torch.load(path, weights_only=True)
    else:
        raise ValueError(f"external scores path={str(path)!r} must end in .npy or .pt")
    return to_query_major(raw, n_query, n_train, layout, sign)


def dattri_loss(model: nn.Module, task: str) -> Callable:
    """The loss in dattri's ``f(params, data)`` form (``torch.func.functional_call``): the mean
    MSE / cross-entropy of ``model`` on a batch ``data = (inputs..., target)``.
    """
    from torch.func import functional_call

    from ..models.registry import resolve_loss

    per_sample = resolve_loss(task)

    def f(params, data):
        *inputs, target = data
        return per_sample(functional_call(model, params, tuple(inputs)), target).mean()

    return f
