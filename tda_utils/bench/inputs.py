"""The per-run inputs of the benchmark: what a plug-in needs from one notebook run of 01-04.

Public: ``RunInputs``, ``save_run_inputs``, ``load_run_inputs``, ``inputs_path``,
``INPUTS_VERSION``, ``plain``, ``model_to_data``, ``model_from_data``.

Each notebook 01-04 ends with ``tu.bench.save_run_inputs(results, final, splits, gold, scores,
results_dir=paths.results)``, which writes one file, atomically and as plain data (dicts, lists,
tuples, numbers, strings, tensors; read back with ``torch.load(weights_only=True)``):
``<results>/bench/<profile>/<notebook>__<dataset>.pt`` holding

* ``model``: the final model the methods scored: its ``fimo_spec`` (registered models, rebuilt
  with ``build_model``) or, for a ``BertClassifier`` (text; with a cached trunk, the trainable
  head over the trunk features), its Hugging Face config and layout; its ``state_dict``, dtype
  and the names of its trainable parameters;
* ``splits``: the data the methods saw (name, task, meta, the train and test tensors; for text
  with a cached trunk, the trunk features);
* ``gold``: the SGD gold standard (``FurtherTrainingResult``: per-seed losses, times, seeds,
  left-out and query indices, its config): the notebook's agreement curves and their SEMs are
  recomputed from it exactly;
* ``scores``: every built-in method's ``AttributionScores`` (values, diagnostics such as
  ``if_time``'s ``values_by_time``, options, wall time, peak memory);
* ``final_eval``, the CPU and kernels the run computed with (``devices.math_kernels``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..analysis.records import RunResults
from ..cache import atomic_save, default_results_dir
from ..config import FurtherTrainingConfig, to_dict
from ..data.registry import Splits
from ..devices import math_kernels
from ..gold.further_training import FurtherTrainingResult
from ..methods import AttributionScores
from ..models.registry import MODELS, build_model
from ..models.text import BertClassifier

#: bump when the file layout changes; older files are recomputed by rerunning their notebook
INPUTS_VERSION = 1


def inputs_path(profile: str, run: str, results_dir=None) -> Path:
    """Where a run's inputs live: ``<results>/bench/<profile>/<notebook>__<dataset>.pt``."""
    return Path(results_dir or default_results_dir()) / "bench" / profile / f"{run}.pt"


def plain(obj: Any) -> Any:
    """``obj`` as plain data for ``torch.load(weights_only=True)``: tensors (detached, on the
    CPU), numbers, strings, None, and dicts / lists / tuples of them; numpy arrays and scalars
    become tensors and numbers, paths and anything else their ``str``.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy()) if obj.dtype.kind in "biuf" else obj.tolist()
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, (str, int, float, bool)) else str(k)): plain(v)
                for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    if isinstance(obj, (list, range, set, frozenset)):
        return [plain(v) for v in obj]
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    return str(obj)


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
def model_to_data(model: nn.Module) -> dict[str, Any]:
    """The final model as plain data (see the module docstring); ValueError for a model this
    module cannot rebuild (neither a ``BertClassifier`` nor a registered model with a
    ``fimo_spec``).
    """
    spec = getattr(model, "fimo_spec", None)
    first = next(iter(model.parameters()), None)
    data: dict[str, Any] = {
        "spec": plain(spec),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
        "dtype": str(first.dtype if first is not None else torch.float32).removeprefix("torch."),
    }
    if isinstance(model, BertClassifier):
        data["kind"] = "bert"
        data["bert"] = {
            "config": plain(model.config.to_dict()),
            "embeddings": model.embeddings is not None,
            "layers": [int(k) for k in model.layers],
            "n_layers_total": int(model.n_layers_total),
            "last_block": model.last_block,
            "n_outputs": int(model.classifier.out_features),
            "trainable_option": getattr(model, "trainable", None),
            "source": getattr(model, "source", None),
        }
    elif isinstance(spec, Mapping) and spec.get("name") in MODELS:
        data["kind"] = "registered"
    else:
        raise ValueError(
            f"cannot save a {type(model).__name__} for the benchmark: it is neither a "
            "BertClassifier nor built by tu.build_model (no fimo_spec naming a registered model)"
        )
    return data


def _bert_from_data(info: Mapping[str, Any]) -> BertClassifier:
    """A ``BertClassifier`` of the saved layout with freshly initialised parameters."""
    from transformers import AutoConfig, AutoModel

    from ..models.text import _quiet_transformers

    cfg_dict = dict(info["config"])
    config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    config._attn_implementation = "eager"
    layers = list(info["layers"])
    build = config.__class__.from_dict(config.to_dict())
    build.num_hidden_layers = len(layers)
    if not info["embeddings"]:
        build.vocab_size = 2  # the head model has no embeddings: keep the throw-away one small
    restore = _quiet_transformers()
    try:
        encoder = AutoModel.from_config(build, add_pooling_layer=False, attn_implementation="eager")
    finally:
        restore()
    blocks = dict(zip(layers, encoder.encoder.layer))
    head = nn.Linear(config.hidden_size, int(info["n_outputs"]))
    embeddings = encoder.embeddings if info["embeddings"] else None
    model = BertClassifier(config, embeddings, blocks, head, int(info["n_layers_total"]))
    model.last_block = info["last_block"]
    if info.get("trainable_option") is not None:
        model.trainable = info["trainable_option"]
    model.source = info.get("source")
    return model


def model_from_data(data: Mapping[str, Any], splits: Splits) -> nn.Module:
    """The final model from ``model_to_data``'s data (``splits``: its data, for the registered
    builders' input and output sizes), in eval mode, with the saved trainable parameters.
    """
    with torch.random.fork_rng(devices=[]):  # building seeds torch: leave the caller's RNG be
        if data["kind"] == "bert":
            model = _bert_from_data(data["bert"])
        else:
            spec = data["spec"]
            model = build_model(spec["name"], splits, seed=spec.get("seed", 0),
                                **dict(spec.get("options") or {}))
    model = model.to(getattr(torch, data["dtype"]))
    model.load_state_dict(data["state_dict"], strict=True)
    trainable = set(data["trainable"])
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    if data.get("spec") is not None:
        model.fimo_spec = dict(data["spec"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# Splits, gold standard, scores
# ----------------------------------------------------------------------------------------------
def _splits_to_data(splits: Splits) -> dict[str, Any]:
    return {
        "name": splits.name,
        "task": splits.task,
        "meta": plain(splits.meta),
        "train": [t.detach().cpu() for t in splits.train.tensors],
        "test": [t.detach().cpu() for t in splits.test.tensors],
    }


def _splits_from_data(d: Mapping[str, Any]) -> Splits:
    return Splits(d["name"], TensorDataset(*d["train"]), TensorDataset(*d["test"]), d["task"],
                  dict(d["meta"]))


_GOLD_FIELDS = ("loss_full", "loss_loo", "times", "time_unit", "seeds", "left_out",
                "query_indices", "wall_time")


def _gold_to_data(gold: FurtherTrainingResult) -> dict[str, Any]:
    out = {f: plain(getattr(gold, f)) for f in _GOLD_FIELDS}
    out["config"] = to_dict(gold.config)
    return out


def _gold_from_data(d: Mapping[str, Any]) -> FurtherTrainingResult:
    cfg = dict(d["config"])
    cfg["betas"] = tuple(cfg["betas"])
    fields = {f: d[f] for f in _GOLD_FIELDS}
    for f in ("seeds", "left_out", "query_indices"):
        fields[f] = tuple(int(i) for i in fields[f])
    return FurtherTrainingResult(config=FurtherTrainingConfig(**cfg), from_cache=0, **fields)


def _scores_to_data(score: AttributionScores) -> dict[str, Any]:
    return plain(dataclasses.asdict(score)) | {"values": score.values.detach().cpu()}


def _scores_from_data(d: Mapping[str, Any]) -> AttributionScores:
    d = dict(d)
    d["train_indices"] = tuple(int(i) for i in d["train_indices"])
    d["query_indices"] = tuple(int(i) for i in d["query_indices"])
    return AttributionScores(**d)


# ----------------------------------------------------------------------------------------------
# The record
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunInputs:
    """Everything the benchmark needs from one notebook run (see the module docstring).

    ``model`` and ``splits`` are what the run's methods saw; ``gold`` the SGD gold standard;
    ``scores`` the built-in methods' ``AttributionScores``; ``cpu_math`` the kernels they were
    computed with (``devices.math_kernels``).
    """

    notebook: str
    dataset: str
    profile: str
    model: nn.Module
    splits: Splits
    gold: FurtherTrainingResult
    scores: dict[str, AttributionScores]
    final_eval: dict[str, float]
    cpu_math: str = ""

    @property
    def name(self) -> str:
        """``<notebook>__<dataset>``."""
        return f"{self.notebook}__{self.dataset}"

    @property
    def left_out(self) -> list[int]:
        """The left-out training instances (the gold standard's order): ``train_indices``."""
        return list(self.gold.left_out)

    @property
    def queries(self) -> list[int]:
        """The test instances scored (the gold standard's order): ``query_indices``."""
        return list(self.gold.query_indices)


def save_run_inputs(
    results: RunResults,
    final: nn.Module,
    splits: Splits,
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    results_dir=None,
) -> Path:
    """Save what the benchmark needs from a notebook run (atomic, plain data); returns the path.

    Args:
        results: the run's ``RunResults`` (``collect_results``): names the notebook, dataset and
            profile, and holds the final model's test metrics.
        final: the final model the methods scored (text with a cached trunk: the head model).
        splits: the data the methods saw (text with a cached trunk: the trunk features).
        gold: the SGD gold standard; its left-out and query indices are the scored pairs.
        scores: {method: AttributionScores} of the built-in methods (``run_methods``).
        results_dir: the results folder (default: ``$FIMO_RESULTS_DIR`` or ``results/``).
    """
    for m, s in scores.items():
        if tuple(s.train_indices) != tuple(gold.left_out) or tuple(s.query_indices) != tuple(
            gold.query_indices
        ):
            raise ValueError(
                f"scores[{m!r}] were computed for other (query, left-out) pairs than the gold "
                "standard's; pass the scores of run_methods(..., left_out, queries) for this gold"
            )
    data = {
        "version": INPUTS_VERSION,
        "notebook": results.notebook,
        "dataset": results.dataset,
        "profile": results.profile,
        "model": model_to_data(final),
        "splits": _splits_to_data(splits),
        "gold": _gold_to_data(gold),
        "scores": {m: _scores_to_data(s) for m, s in scores.items()},
        "final_eval": {k: float(v) for k, v in results.final_eval.items()},
        "cpu_math": math_kernels(),
    }
    path = inputs_path(results.profile, results.name, results_dir)
    atomic_save(data, path)
    return path


def load_run_inputs(path: Path | str) -> RunInputs:
    """A ``RunInputs`` from a file written by ``save_run_inputs``.

    Raises:
        ValueError: the file is not readable as plain data or is of another version (naming
            the file and what to do: rerun its notebook).
    """
    path = Path(path)
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(d, dict) or d.get("version") != INPUTS_VERSION:
            raise ValueError(f"not a version-{INPUTS_VERSION} benchmark inputs file")
        splits = _splits_from_data(d["splits"])
        return RunInputs(
            notebook=d["notebook"],
            dataset=d["dataset"],
            profile=d["profile"],
            model=model_from_data(d["model"], splits),
            splits=splits,
            gold=_gold_from_data(d["gold"]),
            scores={m: _scores_from_data(s) for m, s in d["scores"].items()},
            final_eval=dict(d["final_eval"]),
            cpu_math=d.get("cpu_math", ""),
        )
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated, foreign or stale file: its notebook rewrites it
        raise ValueError(
            f"benchmark inputs {path} cannot be read ({type(err).__name__}: {err}); rerun its "
            "notebook (python -m tda_utils.bench ... --rerun recomputes it from the cache)"
        ) from None
