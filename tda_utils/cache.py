"""Config-keyed, resumable, atomic on-disk cache.

Public: ``Cache``, ``atomic_save``, ``default_results_dir``, ``repo_root``.

Entries live in ``<root>/<kind>/<key>/``. Each entry directory holds ``config.json`` (the full
configuration the key was made from) and one or more ``*.pt`` items. Items are written to a
temporary file and moved into place with ``os.replace``, so an interrupted write never leaves a
corrupt item; a key whose stored config differs from the requested one is never reused (it
raises, since that means a hash collision or a hand-edited cache).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def repo_root() -> Path:
    """The repository root (the folder that holds ``reproduce.yaml``), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    if (here / "reproduce.yaml").exists():
        return here
    return Path.cwd()


def repo_path(path: str | os.PathLike, root: Path | None = None) -> Path:
    """A user path: ``~`` expanded; a relative path is read from ``root`` (default: the
    repository root), so notebooks and the runner resolve ``data_path`` alike."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(root or repo_root()) / p


def default_results_dir() -> Path:
    """``$FIMO_RESULTS_DIR`` if set, else ``<repo>/results``."""
    env = os.environ.get("FIMO_RESULTS_DIR")
    return Path(env) if env else repo_root() / "results"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` into ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Cache:
    """One cache entry: ``Cache(root, kind, key, config)``.

    ``root=None`` disables caching (every ``load`` misses, ``save`` does nothing).
    """

    def __init__(self, root: Path | str | None, kind: str, key: str, config: dict) -> None:
        self.enabled = root is not None
        self.config = json.loads(json.dumps(config, sort_keys=True))
        self.dir = Path(root) / kind / key if root is not None else None
        if self.enabled:
            cfg_path = self.dir / "config.json"
            if cfg_path.exists():
                stored = json.loads(cfg_path.read_text())
                if stored != self.config:
                    raise RuntimeError(
                        f"cache entry {self.dir} was written with another config; "
                        "delete that folder to recompute"
                    )
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
                tmp = cfg_path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(self.config, indent=1, sort_keys=True))
                os.replace(tmp, cfg_path)

    def path(self, item: str) -> Path | None:
        return self.dir / f"{item}.pt" if self.enabled else None

    def has(self, item: str) -> bool:
        return self.enabled and self.path(item).exists()

    def load(self, item: str) -> Any | None:
        """The stored object, or None when caching is off or the item is missing."""
        if not self.has(item):
            return None
        return torch.load(self.path(item), map_location="cpu", weights_only=False)

    def save(self, item: str, obj: Any) -> None:
        if self.enabled:
            atomic_save(obj, self.path(item))
