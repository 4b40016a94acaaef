"""Config-keyed, resumable, atomic on-disk cache that is safe to share.

Public: ``Cache``, ``atomic_save``, ``atomic_write_text``, ``default_results_dir``,
``output_root``, ``repo_root``, ``repo_path``, ``model_fingerprint``, ``SCHEMA_VERSION``,
``CacheWarning``, ``UnsafeCacheItemError``.

Default output folders: ``reports/``, ``figures/`` and ``results/`` (this cache) lie in
``output_root()``, the repository root unless ``$FIMO_OUTPUT_DIR`` names another folder (``make
test`` points it at a temporary folder so that its notebook runs leave the repository alone);
``$FIMO_RESULTS_DIR``, when set, moves the cache alone.

Entries live in ``<root>/<kind>/<key>/``. Each entry directory holds ``config.json`` (the full
configuration the key was made from) and one or more ``*.pt`` items.

* **Concurrency.** Every write goes to a uniquely named temporary file in the same folder and is
  moved into place with ``os.replace``: several processes may create the same entry or item at
  once; whoever finishes last replaces an identical file, and nobody fails.
* **Only plain data.** Items are read with ``torch.load(weights_only=True)``: tensors, numbers,
  strings, lists, tuples and dicts. A file whose pickle names any other object (for example one
  that would run code) is refused with ``UnsafeCacheItemError`` and never executed.
* **Corruption.** An item or ``config.json`` that cannot be read (truncated, empty, garbage, or
  rejected by the caller's ``check``) gives a ``CacheWarning`` naming the path, is moved aside to
  ``<name>.corrupt`` and counts as missing, so it is recomputed; the other items are kept.
* **Staleness.** The directory key is the caller's key hashed with ``SCHEMA_VERSION``; a stored
  config that differs from the requested one after normalising defaults raises (a hash collision
  or a hand-edited cache).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


# Bump SCHEMA_VERSION whenever an engine, a method or a training routine changes the numbers it
# caches (a bug fix, a new default, another arithmetic order): every cache key includes it, so old
# entries are never returned for the new code (they stay on disk, under their old keys).
# History: 1 = first release; 2 = model class and structure in the keys, plain-data items;
# 3 = query losses in float64 (models.query_loss); 4 = plain SGD's weight update fused into its
# matmul (float32 rounding), and a custom loss_fn is also the recorded query loss.
SCHEMA_VERSION = 4
#: {name: builder} of the registered models (``models.MODELS`` is this dict), whose
#: default options ``_normalise`` fills in; the cache imports nothing above the core
MODEL_BUILDERS: dict[str, Callable[..., Any]] = {}


class CacheWarning(UserWarning):
    """A cache item could not be read; it was moved aside and will be recomputed."""


class UnsafeCacheItemError(RuntimeError):
    """A cache file holds pickled objects other than plain data; it was not loaded."""


def repo_root() -> Path:
    """The repository root (the folder that holds ``reproduce.yaml``), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    if (here / "reproduce.yaml").exists():
        return here
    return Path.cwd()


def repo_path(path: str | os.PathLike, root: Path | None = None) -> Path:
    """A user path: ``~`` expanded; a relative path is read from ``root`` (default: the
    repository root), so notebooks and the runner resolve ``data_path`` alike.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root or repo_root()) / p


def output_root() -> Path:
    """The folder holding the default ``reports/``, ``figures/`` and ``results/``:
    ``$FIMO_OUTPUT_DIR`` if set, else the repository root (``repo_root()``).
    """
    env = os.environ.get("FIMO_OUTPUT_DIR")
    return Path(env).expanduser() if env else repo_root()


def default_results_dir() -> Path:
    """``$FIMO_RESULTS_DIR`` if set, else ``<output_root()>/results`` (``<repo>/results``)."""
    env = os.environ.get("FIMO_RESULTS_DIR")
    return Path(env) if env else output_root() / "results"


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a uniquely named temporary file beside ``path``, then ``os.replace``."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a uniquely named temporary file."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def model_fingerprint(model: nn.Module) -> dict[str, str]:
    """What identifies a model's function beyond its parameters, for cache keys.

    ``class``: the module's qualified class name; ``structure``: a hash of ``repr(model)`` (every
    submodule and its settings, so ReLU vs Tanh differ); ``code``: a hash of the source of every
    module class not defined by torch (custom ``forward`` code).
    """
    sources = []
    classes = {type(m) for m in model.modules()}
    for cls in sorted(classes, key=lambda c: (c.__module__, c.__qualname__)):
        if cls.__module__.split(".")[0] == "torch":
            continue
        try:
            sources.append(f"{cls.__module__}.{cls.__qualname__}\n{inspect.getsource(cls)}")
        except (OSError, TypeError):
            sources.append(f"{cls.__module__}.{cls.__qualname__} (source unavailable)")
    digest = lambda s: hashlib.sha256(s.encode()).hexdigest()[:16]  # noqa: E731
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "structure": digest(repr(model)),
        "code": digest("\n".join(sources)),
    }


def _normalise(obj: Any) -> Any:
    """A JSON value with model specs (``{"name", "options", ...}`` of a registered model) given
    every default option explicitly, so that spelling a default or not is the same config.
    """
    if isinstance(obj, dict):
        out = {k: _normalise(v) for k, v in obj.items()}
        if isinstance(out.get("name"), str) and isinstance(out.get("options"), dict):
            fn = MODEL_BUILDERS.get(out["name"])
            if fn is not None:
                params = list(inspect.signature(fn).parameters.values())[1:]  # after `splits`
                defaults = {
                    p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                }
                filled = {**defaults, **out["options"]}
                out["options"] = json.loads(json.dumps(filled, sort_keys=True, default=str))
        return out
    if isinstance(obj, list):
        return [_normalise(v) for v in obj]
    return obj


def _move_aside(path: Path, reason: str) -> None:
    target = path.with_name(path.name + ".corrupt")
    k = 1
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.corrupt{k}")
    try:
        os.replace(path, target)
        where = f"moved to {target}"
    except FileNotFoundError:  # another process moved or replaced it first
        where = "already moved by another process"
    warnings.warn(
        f"cache item {path} is unreadable ({reason}); {where}; it will be recomputed",
        CacheWarning,
        stacklevel=3,
    )


class Cache:
    """One cache entry: ``Cache(root, kind, key, config)``; see the module docstring.

    ``root=None`` disables caching (every ``load`` misses, ``save`` does nothing).
    """

    def __init__(self, root: Path | str | None, kind: str, key: str, config: dict) -> None:
        self.enabled = root is not None
        stamp = {"schema_version": SCHEMA_VERSION}
        self.config = _normalise(
            json.loads(json.dumps({**config, **stamp}, sort_keys=True, default=str))
        )
        tag = f"{key}|schema {SCHEMA_VERSION}"
        full_key = hashlib.sha256(tag.encode()).hexdigest()[:16]
        self.dir = Path(root) / kind / full_key if root is not None else None
        if self.enabled:
            self._check_config()

    def _check_config(self) -> None:
        cfg_path = self.dir / "config.json"
        stored = None
        if cfg_path.exists():
            try:
                stored = json.loads(cfg_path.read_text(encoding="utf-8"))
                if not isinstance(stored, dict):
                    raise ValueError("not a JSON object")
            except FileNotFoundError:
                stored = None
            except (ValueError, UnicodeDecodeError) as err:
                _move_aside(cfg_path, f"{type(err).__name__}: {err}")
                stored = None
        if stored is None:
            atomic_write_text(json.dumps(self.config, indent=1, sort_keys=True), cfg_path)
        elif _normalise(stored) != self.config:
            raise RuntimeError(
                f"cache entry {self.dir} was written with another config; "
                "delete that folder to recompute"
            )

    def path(self, item: str) -> Path | None:
        """The file of ``item`` (``<dir>/<item>.pt``), or None when caching is off."""
        return self.dir / f"{item}.pt" if self.enabled else None

    def has(self, item: str) -> bool:
        """Whether caching is on and the file of ``item`` exists."""
        return self.enabled and self.path(item).exists()

    def load(self, item: str, check: Callable[[Any], None] | None = None) -> Any | None:
        """The stored object, or None when caching is off or the item is missing or unreadable.

        ``check(obj)`` may raise ``ValueError`` / ``TypeError`` / ``KeyError`` to reject an object
        of the wrong structure or shape; a rejected or unreadable item is moved aside with a
        ``CacheWarning``. Raises ``UnsafeCacheItemError`` (without running it) for a pickle that
        names objects other than plain data.
        """
        if not self.has(item):
            return None
        path = self.path(item)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except pickle.UnpicklingError as err:
            if "Unsupported global" in str(err) or "GLOBAL" in str(err):
                raise UnsafeCacheItemError(
                    f"cache item {path} holds pickled objects other than plain data (tensors, "
                    "numbers, strings, lists, dicts) and was not loaded; this suite never writes "
                    "such files: if you did not put it there, inspect it, then delete it to "
                    "recompute"
                ) from None
            lines = [ln for ln in str(err).splitlines() if ln.strip()]
            at = next((i for i, ln in enumerate(lines) if "WeightsUnpickler error" in ln), None)
            detail = (
                lines[at + 1]
                if at is not None and at + 1 < len(lines)
                else lines[0]
                if lines
                else ""
            )
            _move_aside(path, f"not a torch file of plain data: {detail.strip()[:200]}")
            return None
        except Exception as err:  # truncated zip, empty file, garbage: all recomputable
            _move_aside(path, f"{type(err).__name__}: {str(err).strip()[:200]}")
            return None
        if check is not None:
            try:
                check(obj)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
                _move_aside(path, f"wrong content: {err}")
                return None
        return obj

    def save(self, item: str, obj: Any) -> None:
        """Write ``obj`` as ``item`` atomically; does nothing when caching is off."""
        if self.enabled:
            atomic_save(obj, self.path(item))
