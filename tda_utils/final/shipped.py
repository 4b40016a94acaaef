"""Final models shipped with the suite, so that every machine starts from the same final model.

A final model trained for 1000 epochs at a large learning rate (Concrete: SGD 0.3) turns the
rounding of one CPU's or GPU's math kernels into a different model, and the attribution curves
follow it. The cpu profile's final models are therefore inputs: each is a file in
``tda_utils/final/shipped/`` (``<dataset>.pt``: the state_dict as plain tensors, loaded with
``weights_only=True``) with a record (``<dataset>.json``): its recipe, the data fingerprint, the
machine and kernels it was trained on, its test metrics and the file's sha256.

Public: ``final_model`` (notebooks: ``final_model="shipped" | "train" | <checkpoint path>``),
``describe``, ``recipe``, ``data_fingerprint``, ``ship``, ``SHIPPED_DIR``, ``SOURCES``.

Matching: a shipped model is used only when its recipe (dataset, architecture spec and
structure, the initial parameters, the training config, the loss) and the data fingerprint equal
the run's; otherwise the model is trained anew and the reason is said. A shipped file whose
checksum does not match its record is an error naming the file, never a silent retrain.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cache import atomic_save, atomic_write_text
from ..config import TrainConfig, stable_hash, to_dict
from ..data.registry import Splits
from ..devices import cpu_name, resolve_device
from ..models.registry import loss_key
from .training import evaluate, train_model

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
#: the values of ``final_model`` besides a checkpoint path
SOURCES = ("shipped", "train")


class ShippedModelError(RuntimeError):
    """A shipped final model file is damaged (its checksum does not match its record)."""


def data_fingerprint(splits: Splits) -> str:
    """What identifies the data a final model was trained on, equal on every machine.

    ``splits.meta["data_fingerprint"]`` when the loader computed one from exact inputs (the raw
    pixels of an image set, the token ids and trunk weights of cached text features), else a hash
    of the train and test tensors (tabular loaders standardise with numpy, whose reductions do
    not depend on the CPU's vector width).
    """
    given = splits.meta.get("data_fingerprint")
    if given:
        return str(given)
    return stable_hash(splits.name, *splits.train.tensors, *splits.test.tensors)


def recipe(model: nn.Module, splits: Splits, cfg: TrainConfig, loss_fn=None) -> dict[str, Any]:
    """The recipe of the final model that ``train_model(model, splits, cfg)`` would give.

    ``model`` is the initial model (before training). Keys: ``dataset``, ``model`` (the
    registry spec), ``architecture`` (class name and a hash of its printed structure),
    ``initial_state`` (a hash of the initial parameters and buffers), ``train`` (the config),
    ``loss`` (None for the built-in loss).
    """
    state = [t for _, t in sorted(model.state_dict().items())]
    spec = getattr(model, "fimo_spec", None)
    return {
        "dataset": splits.name,
        "model": json.loads(json.dumps(spec, default=str)) if spec is not None else None,
        "architecture": {
            "class": type(model).__qualname__,
            "structure": hashlib.sha256(repr(model).encode()).hexdigest()[:16],
        },
        "initial_state": stable_hash(*state),
        "train": json.loads(json.dumps(to_dict(cfg), default=str)),
        "loss": loss_key(loss_fn) if loss_fn is not None else None,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _machine() -> dict[str, Any]:
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: shipped {x!r}, this run {y!r}")
    return out


def _lookup(rec: dict, fingerprint: str, name: str, shipped_dir: Path):
    """(state_dict, record) of the matching shipped model, or (None, reason)."""
    record_path = shipped_dir / f"{name}.json"
    if not record_path.is_file():
        return None, f"none is shipped for {name!r}"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    diffs = _differences(record["recipe"], rec)
    if record["data_fingerprint"] != fingerprint:
        diffs.append("the data differ (another data file, subsample or preprocessing)")
    if diffs:
        return None, "the shipped one differs: " + "; ".join(diffs[:4])
    path = shipped_dir / record["file"]
    if not path.is_file() or _sha256(path) != record["sha256"]:
        raise ShippedModelError(
            f"shipped final model {path} is missing or damaged: its sha256 does not match "
            f"{record_path}; reinstall the package, or pass final_model='train' to train anew"
        )
    return torch.load(path, map_location="cpu", weights_only=True), record


def final_model(
    model: nn.Module,
    splits: Splits,
    cfg: TrainConfig,
    source: str = "shipped",
    cache_dir=...,
    device="auto",
    loss_fn=None,
    progress: bool = True,
    shipped_dir: str | os.PathLike | None = None,
    ship_to: str | os.PathLike | None = None,
) -> nn.Module:
    """The final model: the shipped one, trained anew, or a user's checkpoint.

    Args:
        model: the initial model (``build_model``); it is loaded or trained in place.
        splits: the data.
        cfg: the training recipe (``TrainConfig``).
        source: "shipped" (default: the shipped model when its recipe and data fingerprint
            match, else trained anew, saying why), "train" (``train_model``, with its cache),
            or the path of a checkpoint (a state_dict, or a dict holding one under
            "state_dict", loaded with ``weights_only=True``).
        cache_dir: as for ``train_model``.
        device: as for ``train_model``.
        loss_fn: as for ``train_model``.
        progress: as for ``train_model``.
        shipped_dir: where shipped models are looked up (default ``SHIPPED_DIR``).
        ship_to: with ``source="train"``, also write the trained model there as a shipped final
            model (``ship``; maintainers refresh ``SHIPPED_DIR`` this way).

    Returns:
        The model in eval mode, with ``model.fimo_final`` = {"source": "shipped" | "trained" |
        "checkpoint", "detail": one line for people, ...} (``describe``), ``fimo_history`` and
        ``fimo_train_seconds`` as ``train_model`` sets them.

    Raises:
        ValueError: ``source`` is neither a known value nor an existing file.
        ShippedModelError: a matching shipped file fails its checksum.
    """
    if not isinstance(source, (str, os.PathLike)) or (
        str(source) not in SOURCES and not Path(source).is_file()
    ):
        raise ValueError(
            f"final_model must be one of {SOURCES} or the path of an existing checkpoint, "
            f"got {source!r}"
        )
    if str(source) not in SOURCES:
        obj = torch.load(Path(source), map_location="cpu", weights_only=True)
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict):
            raise ValueError(f"final_model={str(source)!r} holds no state_dict")
        model.load_state_dict(state)
        model.fimo_history, model.fimo_train_seconds = {}, 0.0
        model.fimo_final = {"source": "checkpoint", "detail": f"checkpoint {source}"}
        return model.eval()
    if ship_to is not None and source != "train":
        raise ValueError(f"ship_to needs final_model='train', got final_model={source!r}")
    reason = "final_model='train'"
    rec = recipe(model, splits, cfg, loss_fn)
    if source == "shipped":
        fingerprint = data_fingerprint(splits)
        state, record = _lookup(rec, fingerprint, splits.name, Path(shipped_dir or SHIPPED_DIR))
        if state is not None:
            model.load_state_dict(state)
            model.fimo_history = record.get("history", {})
            model.fimo_train_seconds = float(record.get("train_seconds", 0.0))
            on = record["trained_on"]
            model.fimo_final = {
                "source": "shipped",
                "detail": f"shipped, trained on {on['cpu']} ({on['device']}, torch {on['torch']})",
                "record": record,
            }
            return model.eval()
        reason = f"no shipped final model matches ({record})"
    train_model(model, splits, cfg, cache_dir=cache_dir, progress=progress, device=device,
                loss_fn=loss_fn)
    model.fimo_final = {"source": "trained", "detail": f"trained here; {reason}"}
    if ship_to is not None:
        ship(model, rec, splits, ship_to, device=device)
    return model


def describe(model: nn.Module) -> str:
    """One line for people: where the final model came from (``final_model`` sets it)."""
    info = getattr(model, "fimo_final", None)
    return f"final model: {info['detail']}" if info else "final model: trained here"


def ship(
    model: nn.Module,
    initial_recipe: dict[str, Any],
    splits: Splits,
    out_dir: str | os.PathLike | None = None,
    device="auto",
) -> Path:
    """Write ``model`` (trained from ``initial_recipe``) as the shipped final model of its data.

    Writes ``<out_dir>/<dataset>.pt`` (the state_dict, plain CPU tensors) and ``<dataset>.json``
    (recipe, data fingerprint, machine, device, test metrics, history, sha256), each atomically.
    Returns the record's path.
    """
    out = Path(out_dir or SHIPPED_DIR)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    path = out / f"{splits.name}.pt"
    atomic_save(state, path)
    history = getattr(model, "fimo_history", {}) or {}
    record = {
        "file": path.name,
        "sha256": _sha256(path),
        "recipe": initial_recipe,
        "data_fingerprint": data_fingerprint(splits),
        "trained_on": {**_machine(), "device": str(resolve_device(device))},
        "date": _dt.date.today().isoformat(),
        "test_metrics": evaluate(model, splits, device="cpu"),
        "train_seconds": round(float(getattr(model, "fimo_train_seconds", 0.0)), 2),
        "history": {k: [float(x) for x in v] if isinstance(v, list) else v
                    for k, v in history.items()},
    }
    record_path = out / f"{splits.name}.json"
    atomic_write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", record_path)
    return record_path
