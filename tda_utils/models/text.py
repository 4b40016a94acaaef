"""Text model: ``bert_classifier`` (a BERT-family encoder + a linear head on [CLS]), and the
frozen-trunk cache.

Public: ``bert_classifier`` (registered in ``models.MODELS``), ``BertClassifier``, ``cls_block``,
``precompute_trunk``, ``attach_head``, ``tiny_bert_config``, ``TRAINABLE``, ``LAST_BLOCK``.

``BertClassifier.forward(input_ids (n, L) int64, attention_mask (n, L) int64) -> logits (n, 2)``.
It runs the Hugging Face embedding module and encoder blocks itself and builds the 4D additive
attention mask ((1 - mask) * finfo.min, shape (n, 1, 1, L)) itself, so transformers' mask
helpers (which fail under ``torch.func.vmap``) are never called; the model therefore works with
``grads.per_sample_grads`` (``vmap(grad)``) and the vectorized further-training engine
(``vmap(functional_call)`` over stacked parameters). Attention is transformers' "eager"
implementation (matmul, softmax, matmul) and, in the last block, the same arithmetic written
out (``cls_block``): twice differentiable, so Hessian-vector products (CG, LiSSA; ``jvp`` of
``grad`` or double backward) run through it without any SDPA-kernel context.
The pooler is not built (its parameters are not counted), as in the paper.

Only the [CLS] output of the last block reaches the head, so by default (``last_block="cls"``)
that block is evaluated at the [CLS] position only (``cls_block``): same logits up to rounding,
about 30x cheaper for MiniLM at L = 64.

Parameter names: ``embeddings.*`` (word, position, token-type embeddings and their LayerNorm),
``layers.<i>.*`` (encoder block i, numbered as in the checkpoint) and ``classifier.weight`` /
``classifier.bias``. ``trainable`` selects what has ``requires_grad``: "all" (the paper),
"last_layer" (the last encoder block + the head) or "head" (the linear head only).

Frozen-trunk cache: with a frozen embedding and frozen first blocks, the trunk's output is the
same for every further-training run. ``precompute_trunk(model, splits)`` computes it once and
returns ``(trunk_splits, head_model)``: ``trunk_splits`` hold ``(hidden (n, L, H) float,
attention_mask (n, L) int64, labels (n,))``, and ``head_model`` (a ``BertClassifier`` without
embeddings, holding the remaining blocks and the head under the same parameter names and values)
maps them to the same logits. Training, further training and attribution on
``(head_model, trunk_splits)`` give the same numbers as on ``(model, splits)`` with the same
trainable subset; ``attach_head(model, head_model)`` copies trained head parameters back.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from ..config import check_choice, check_positive
from ..data.registry import Splits
from .registry import register_model

TRAINABLE = ("all", "last_layer", "head")
ATTENTION = ("eager",)
LAST_BLOCK = ("cls", "cls_kv", "full")
TINY_CONFIG = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
}


def tiny_bert_config(vocab_size: int, **overrides: Any):
    """A tiny ``BertConfig`` for tests: hidden 16, 2 blocks, 2 heads, intermediate 32."""
    from transformers import BertConfig

    return BertConfig(vocab_size=int(vocab_size), **{**TINY_CONFIG, **overrides})


class BertClassifier(nn.Module):
    """Encoder blocks of a BERT-family model + a linear head on the [CLS] (first) position.

    ``embeddings``: the HF embedding module, or None for a head model that takes hidden states.
    ``layers``: ``{block index: HF encoder block}`` (applied in increasing index order).
    ``classifier``: ``nn.Linear(hidden, n_classes)``.

    ``forward(x, attention_mask)``: ``x`` is ``input_ids`` (n, L) int64 when the model has
    embeddings, else hidden states (n, L, H); ``attention_mask`` (n, L) with 1 = token, 0 = pad.
    Returns logits (n, n_classes).
    """

    def __init__(
        self,
        config,
        embeddings: nn.Module | None,
        layers: Mapping[int, nn.Module],
        classifier: nn.Linear,
        n_layers_total: int | None = None,
    ):
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.layers = nn.ModuleDict({str(i): layers[i] for i in sorted(layers)})
        self.classifier = classifier
        self.n_layers_total = int(
            n_layers_total if n_layers_total is not None else config.num_hidden_layers
        )
        self.last_block = "cls"

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(n, L) 0/1 mask -> (n, 1, 1, L) additive: 0 at tokens, ``finfo(dtype).min`` at pads."""
        keep = attention_mask[:, None, None, :].to(dtype)
        return (1.0 - keep) * torch.finfo(dtype).min

    def run_layers(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Apply this model's blocks with index in [start, stop) to hidden (n, L, H).

        Returns (n, L, H), or (n, 1, H) (the [CLS] position only) when the model's last block
        is applied and ``last_block`` is "cls" or "cls_kv".
        """
        mask = self.additive_mask(attention_mask, hidden.dtype)
        last = self.n_layers_total - 1
        for key, layer in self.layers.items():
            i = int(key)
            if i < start or (stop is not None and i >= stop):
                continue
            if i == last and self.last_block != "full":
                hidden = cls_block(layer, hidden, mask, reassociate=self.last_block == "cls")
                continue
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):  # older transformers return (hidden, ...) tuples
                hidden = hidden[0]
        return hidden

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position + token-type embeddings, (n, L) -> (n, L, H)."""
        if self.embeddings is None:
            raise ValueError(
                "this BertClassifier is a head model without embeddings; it takes hidden states"
            )
        return self.embeddings(input_ids=input_ids)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head outputs at the first ([CLS]) position: token ids ``(n, L)`` or hidden states."""
        hidden = self.embed(x) if self.embeddings is not None else x
        hidden = self.run_layers(hidden, attention_mask)
        return self.classifier(hidden[:, 0])

    def set_trainable(self, trainable: str) -> BertClassifier:
        """Set ``requires_grad``: "all", "last_layer" (last block + head) or "head"."""
        check_choice("trainable", trainable, TRAINABLE)
        last = str(self.n_layers_total - 1)
        for name, p in self.named_parameters():
            if trainable == "all":
                p.requires_grad_(True)
            elif trainable == "last_layer":
                p.requires_grad_(name.startswith(("classifier.", f"layers.{last}.")))
            else:
                p.requires_grad_(name.startswith("classifier."))
        self.trainable = trainable
        return self


def cls_block(
    layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, reassociate: bool = True
) -> torch.Tensor:
    """Output of the HF BERT encoder block ``layer`` at the first position only.

    ``hidden`` (n, L, H), ``mask`` additive (n, 1, 1, L); returns (n, 1, H), equal (up to
    rounding) to ``layer(hidden, mask)[:, :1]``. Only the [CLS] query is needed, so the query,
    attention output and feed-forward run on one position. Keys and values: with
    ``reassociate`` the scores are computed as (W_k^T q) . x_j + q . b_k and the context as
    W_v (sum_j a_j x_j) + b_v sum_j a_j, so no per-token key or value is formed (O(L H) per head
    instead of O(L H^2)); without it ``layer``'s key and value ``nn.Linear`` modules run on all
    positions (their forward hooks fire, as K-FAC needs). Dropout as in the HF block.
    """
    att = layer.attention.self
    n, L, H = hidden.shape
    nh, hd = att.num_attention_heads, att.attention_head_size
    scaling = getattr(att, "scaling", hd**-0.5)
    x0 = hidden[:, :1]
    q = att.query(x0).reshape(n, nh, hd)
    if reassociate:
        wk = att.key.weight.reshape(nh, hd, H)
        scores = torch.einsum("nhk,nlk->nhl", torch.einsum("nhd,hdk->nhk", q, wk), hidden)
        if att.key.bias is not None:
            scores = scores + (q * att.key.bias.reshape(nh, hd)).sum(-1, keepdim=True)
    else:
        k = att.key(hidden).reshape(n, L, nh, hd)
        scores = torch.einsum("nhd,nlhd->nhl", q, k)
    probs = torch.softmax(scores * scaling + mask[:, 0], dim=-1)  # (n, nh, L)
    probs = nn.functional.dropout(probs, p=att.dropout.p, training=att.training)
    if reassociate:
        mixed = torch.einsum("nhl,nlk->nhk", probs, hidden)
        ctx = torch.einsum("nhk,hdk->nhd", mixed, att.value.weight.reshape(nh, hd, H))
        if att.value.bias is not None:
            ctx = ctx + probs.sum(-1, keepdim=True) * att.value.bias.reshape(nh, hd)
    else:
        ctx = torch.einsum("nhl,nlhd->nhd", probs, att.value(hidden).reshape(n, L, nh, hd))
    attended = layer.attention.output(ctx.reshape(n, 1, nh * hd), x0)
    return layer.output(layer.intermediate(attended), attended)


def _quiet_transformers():
    """Silence transformers' load report (unused pooler weights) and its "Loading weights"
    progress bar while loading; returns a function that restores both settings.
    """
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if bars:
        hf_logging.disable_progress_bar()

    def restore() -> None:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()

    return restore


@register_model("bert_classifier")
def bert_classifier(
    splits: Splits,
    model_path: str | os.PathLike | None = None,
    trainable: str = "all",
    dropout: float | None = 0.0,
    tiny: bool = False,
    config: Mapping[str, Any] | None = None,
    last_block: str = "cls",
    attn_implementation: str = "eager",
) -> BertClassifier:
    """A BERT-family encoder from a local directory + ``nn.Linear(hidden, n_classes)`` on [CLS].

    ``model_path``: a local Hugging Face model directory (loaded offline with
    ``AutoModel.from_pretrained``); default: the directory whose tokenizer tokenised ``splits``
    (``splits.meta["model_path"]``), else the packaged all-MiniLM-L6-v2. ``tiny=True`` builds a
    randomly initialised tiny BERT (``tiny_bert_config``, vocabulary of that tokenizer) instead,
    for tests. ``config``: overrides of the model config (e.g. ``{"num_hidden_layers": 3}`` keeps
    the first 3 blocks of a checkpoint). ``dropout``: hidden and attention dropout probability
    (0.0, the default, turns dropout off; None keeps the checkpoint's values). ``trainable``:
    "all" | "last_layer" | "head". ``last_block``: how the last encoder block runs (only its
    [CLS] output reaches the head): "cls" (default; [CLS] query only, keys and values
    reassociated, about 30x cheaper than "full" for MiniLM at L = 64), "cls_kv" ([CLS] query
    only, key/value ``nn.Linear`` modules on all positions: for K-FAC / EK-FAC hooks) or "full"
    (the HF block on all positions). All three give the same logits up to rounding; the
    attribute ``model.last_block`` may be changed at any time. The head is created after the
    encoder is loaded (as in the authors' code), under ``build_model``'s
    ``torch.manual_seed(seed)``.
    """
    from transformers import AutoConfig, AutoModel

    check_choice("trainable", trainable, TRAINABLE)
    check_choice("attn_implementation", attn_implementation, ATTENTION)
    check_choice("last_block", last_block, LAST_BLOCK)
    if dropout is not None:
        check_positive("dropout", dropout, allow_zero=True)
        if dropout >= 1:
            raise ValueError(
                f"dropout={dropout!r} must be in [0, 1), or None for the checkpoint's values"
            )
    if splits.task != "classification":
        raise ValueError(
            f"bert_classifier needs a classification dataset; {splits.name!r} is {splits.task!r}"
        )
    from ..data.text import _resolve_model_path

    path = _resolve_model_path(
        model_path if model_path is not None else splits.meta.get("model_path")
    )
    overrides = dict(config or {})
    if dropout is not None:
        overrides.update(
            hidden_dropout_prob=float(dropout), attention_probs_dropout_prob=float(dropout)
        )
    restore = _quiet_transformers()
    try:
        if tiny:
            from ..data.text import load_tokenizer

            cfg = tiny_bert_config(len(load_tokenizer(path)), **overrides)
            cfg._attn_implementation = attn_implementation
            encoder = AutoModel.from_config(
                cfg, add_pooling_layer=False, attn_implementation=attn_implementation
            )
        else:
            cfg = AutoConfig.from_pretrained(str(path), local_files_only=True, **overrides)
            encoder = AutoModel.from_pretrained(
                str(path),
                config=cfg,
                add_pooling_layer=False,
                attn_implementation=attn_implementation,
                local_files_only=True,
            )
    finally:
        restore()
    cfg = encoder.config
    if getattr(cfg, "is_decoder", False):
        raise ValueError(
            f"model_path={str(path)!r} is a decoder; bert_classifier needs a bidirectional encoder"
        )
    _check_inputs(splits, cfg)
    blocks = list(encoder.encoder.layer)
    head = nn.Linear(cfg.hidden_size, splits.n_outputs)
    model = BertClassifier(cfg, encoder.embeddings, dict(enumerate(blocks)), head, len(blocks))
    model.set_trainable(trainable)
    model.last_block = last_block
    model.source = "tiny random BERT" if tiny else str(path)
    return model.eval()


def _check_inputs(splits: Splits, cfg) -> None:
    """ValueError unless the token ids fit the vocabulary and L the position embeddings."""
    ids = splits.train.tensors[0]
    if ids.is_floating_point() or ids.ndim != 2:
        raise ValueError(
            f"bert_classifier needs input_ids (n, L) int64 as the first input; dataset "
            f"{splits.name!r} has {tuple(ids.shape)} {ids.dtype}"
        )
    top = max(int(t.tensors[0].max()) for t in (splits.train, splits.test))
    if top >= cfg.vocab_size:
        raise ValueError(
            f"token id {top} >= vocab_size={cfg.vocab_size}: the data were tokenised for another "
            "model; pass the same model_path to load_dataset and build_model"
        )
    if ids.shape[1] > cfg.max_position_embeddings:
        raise ValueError(
            f"sequence length {ids.shape[1]} exceeds max_position_embeddings="
            f"{cfg.max_position_embeddings}; load the data with a smaller max_length"
        )


# ----------------------------------------------------------------------------------------------
# Frozen-trunk cache
# ----------------------------------------------------------------------------------------------
def _trunk_depth(model: BertClassifier) -> int:
    """Number of leading blocks that are frozen (with a frozen embedding)."""
    if model.embeddings is None:
        raise ValueError(
            "precompute_trunk needs a full BertClassifier (with embeddings), not a head model"
        )
    if any(p.requires_grad for p in model.embeddings.parameters()):
        raise ValueError(
            "precompute_trunk needs a frozen trunk, but the embeddings are trainable "
            "(trainable='all'); build the model with trainable='last_layer' or 'head'"
        )
    for key, layer in model.layers.items():
        if any(p.requires_grad for p in layer.parameters()):
            return int(key)
    return model.n_layers_total


@torch.no_grad()
def _trunk_outputs(
    model: BertClassifier,
    dataset: TensorDataset,
    depth: int,
    batch_size: int,
    keep: int | None,
    bar=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = dataset.tensors[0], dataset.tensors[1]
    parts = []
    for s in range(0, len(ids), batch_size):
        h = model.run_layers(
            model.embed(ids[s : s + batch_size]), mask[s : s + batch_size], 0, depth
        )
        parts.append(h[:, :keep] if keep else h)
        if bar is not None:
            bar.update(len(h))
    hidden = torch.cat(parts)
    return hidden.contiguous(), (mask[:, :keep] if keep else mask).contiguous()


def precompute_trunk(
    model: BertClassifier,
    splits: Splits,
    batch_size: int = 64,
    cache_dir=...,
    progress: bool = True,
) -> tuple[Splits, BertClassifier]:
    """Run the frozen trunk (embeddings + leading frozen blocks) once on both splits.

    ``model``: a ``BertClassifier`` whose embeddings and first k blocks are frozen (trainable
    "last_layer": k = n_layers - 1; "head": k = n_layers). ``splits``: its token data.
    Returns ``(trunk_splits, head_model)``:

    * ``trunk_splits``: ``Splits`` with train/test ``(hidden (n, L, H) in the model's dtype,
      attention_mask (n, L) int64, labels (n,))``; when no block remains (k = n_layers) only the
      [CLS] position is kept (L = 1). ``meta`` is ``splits.meta`` plus ``"trunk"`` (k, shapes).
    * ``head_model``: a ``BertClassifier`` without embeddings holding deep copies of blocks k.. and
      the head (same parameter names, values and ``requires_grad``); ``head_model(hidden, mask)``
      equals ``model(input_ids, mask)``.

    The trunk runs in eval mode (no dropout) in the model's dtype: precompute at the dtype you
    further-train in for identical numbers (a float32 trunk cast to float64 differs by rounding).
    The hidden states are cached under ``<cache_dir>/trunk/<key>`` (key: the trunk's parameters,
    the model's class, structure and code (``cache.model_fingerprint``), the token data and k;
    ``cache_dir=None`` disables caching; default: the results folder).
    MiniLM, 1,200 texts at L = 64: about 30-40 s on one CPU thread, 118 MB in float32.
    """
    from tqdm.auto import tqdm

    from ..cache import Cache, default_results_dir, model_fingerprint
    from ..config import stable_hash

    if not isinstance(model, BertClassifier):
        raise TypeError(f"model must be a BertClassifier, got {type(model).__name__}")
    check_positive("batch_size", batch_size, integer=True)
    depth = _trunk_depth(model)
    keep = 1 if depth == model.n_layers_total else None
    dtype = next(model.parameters()).dtype
    tokens = [t for ds in (splits.train, splits.test) for t in ds.tensors[:2]]
    trunk_state = [
        t
        for name, t in sorted(model.state_dict().items())
        if name.startswith("embeddings.")
        or (name.startswith("layers.") and int(name.split(".")[1]) < depth)
    ]
    key = stable_hash(
        "bert_trunk",
        depth,
        str(dtype),
        model.last_block,
        model_fingerprint(model),  # class, structure and code: the same weights in other code
        *trunk_state,
        *tokens,
    )
    root = default_results_dir() if cache_dir is ... else cache_dir
    cache = Cache(
        root,
        "trunk",
        key,
        {
            "dataset": splits.name,
            "layers_cached": depth,
            "dtype": str(dtype),
            "model": getattr(model, "source", None),
        },
    )
    hit = cache.load("hidden")
    if hit is not None:
        tr_h, tr_m, te_h, te_m = hit
    else:
        was = model.training
        model.eval()
        bar = tqdm(total=splits.n_train + splits.n_test, desc="frozen trunk", disable=not progress)
        try:
            tr_h, tr_m = _trunk_outputs(model, splits.train, depth, batch_size, keep, bar)
            te_h, te_m = _trunk_outputs(model, splits.test, depth, batch_size, keep, bar)
        finally:
            bar.close()
            model.train(was)
        cache.save("hidden", (tr_h, tr_m, te_h, te_m))
    layers = {int(k): copy.deepcopy(layer) for k, layer in model.layers.items() if int(k) >= depth}
    head = BertClassifier(
        model.config, None, layers, copy.deepcopy(model.classifier), model.n_layers_total
    )
    head.trainable = getattr(model, "trainable", None)
    head.last_block = model.last_block
    head.source = getattr(model, "source", None)
    spec = getattr(model, "fimo_spec", None)
    if spec is not None:
        head.fimo_spec = {**spec, "trunk_layers": depth}
    head.train(model.training)
    meta = {
        **splits.meta,
        "data_fingerprint": key,  # token ids and trunk weights: exact, unlike the hidden states
        "trunk": {
            "layers_cached": depth,
            "hidden_shape_train": list(tr_h.shape),
            "hidden_shape_test": list(te_h.shape),
            "dtype": str(tr_h.dtype),
            "model": getattr(model, "source", None),
            "from_cache": hit is not None,
        },
    }
    labels_tr, labels_te = splits.train.tensors[-1], splits.test.tensors[-1]
    trunk = dataclasses.replace(
        splits,
        train=TensorDataset(tr_h, tr_m, labels_tr),
        test=TensorDataset(te_h, te_m, labels_te),
        meta=meta,
    )
    return trunk, head


def attach_head(model: BertClassifier, head_model: BertClassifier) -> BertClassifier:
    """Copy ``head_model``'s parameters (e.g. after training it on cached trunk outputs) into
    ``model`` in place (matching names); returns ``model``.
    """
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in head_model.named_parameters():
            if name not in own or own[name].shape != p.shape:
                raise ValueError(
                    f"head_model parameter {name!r} has no counterpart of the same shape in model"
                )
            own[name].copy_(p)
    return model
