"""EK-FAC influence (Grosse et al. 2023).

Public: ``EkfacOptions``, ``ekfac``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import torch

from ..linalg import kfac as kfac
from ..linalg.grads import activation_numel
from .common import DampedOptions, prepare, resolve_damping

#: memory model of one sample while fitting: float64 copies of the d parameters and of its
#: activations per output column; chunks of at most ``EKFAC_MAX_CHUNK`` samples
EKFAC_PARAM_COPIES, EKFAC_ACTIVATION_COPIES, EKFAC_MAX_CHUNK = 2, 4, 1024
#: the hook check runs on this many training samples
HOOK_CHECK_SAMPLES = 4
F64_BYTES = 8


@dataclasses.dataclass(frozen=True)
class EkfacOptions(DampedOptions):
    """Options of ``ekfac``: the damping (and ``dtype``, ``memory_budget_mb``)."""


def _usable_layers(ctx):
    """(layers, ignored parameter names, skipped layers, unhooked layers) of the model."""
    layers, ignored, skipped = kfac.kfac_layers(ctx.model)
    if not layers:
        raise ValueError(
            "ekfac found no supported nn.Linear / nn.Conv2d layer with a trainable weight "
            f"(skipped: {skipped}); use cg, lissa, datainf or trak"
        )
    unhooked = kfac.unhooked_layers(
        ctx.model,
        layers,
        tuple(x[:HOOK_CHECK_SAMPLES] for x in ctx.tr_inputs),
        ctx.tr_target[:HOOK_CHECK_SAMPLES],
        ctx.task,
    )
    if unhooked:
        warnings.warn(
            f"ekfac: layers {unhooked} use their weights outside their module's forward (hooks "
            "cannot see those uses); they are ignored like other unsupported parameters (for "
            "bert_classifier use last_block='cls_kv' or 'full' to include them)",
            stacklevel=3,
        )
        dropped = [ly for ly in layers if ly.module_name in unhooked]
        layers = [ly for ly in layers if ly.module_name not in unhooked]
        ignored = ignored + [name for ly in dropped for name in (ly.weight, ly.bias) if name]
        if not layers:
            raise ValueError(
                "ekfac: no layer left whose weights are used only through its module's forward"
            )
    return layers, ignored, skipped, unhooked


def ekfac(model, splits, train_indices, query_indices, opts: EkfacOptions):
    """EK-FAC influence, (Q, T): (1/n) g_q^T (G_ekfac + lambda I)^{-1} g_i, + = helpful, IF scale.

    G_ekfac: the block-diagonal (per layer) eigenvalue-corrected Kronecker factorisation of the
    Gauss-Newton matrix over every ``nn.Linear`` / ``nn.Conv2d`` layer (``tda_utils.ekfac``),
    fitted on the full training set with the exact expected output-gradient factors. Other
    trainable parameters are ignored: their gradient entries do not enter the scores
    (``diagnostics["ignored_params"]``; ``"skipped_layers"`` lists unsupported layers, and
    ``"unhooked_layers"`` layers whose weights are also used outside their module's forward,
    which are ignored too, with a warning).
    lambda = damping_multiple x lambda0 (lambda0 over all trainable parameters).
    """
    ctx = prepare(model, splits, opts)
    layers, ignored, skipped, unhooked = _usable_layers(ctx)
    damps, lam0, mode = resolve_damping(opts, ctx.lambda0)
    lam = damps[0][1]
    acts = activation_numel(ctx.model, tuple(x[:1] for x in ctx.tr_inputs))
    per_sample = F64_BYTES * (
        EKFAC_PARAM_COPIES * ctx.d + EKFAC_ACTIVATION_COPIES * acts * max(ctx.k, 1)
    )
    chunk = min(EKFAC_MAX_CHUNK, max(1, int(0.5 * ctx.budget_bytes // per_sample)))
    kfac.fit_ekfac(
        ctx.model,
        ctx.tr_inputs,
        ctx.tr_target,
        ctx.task,
        chunk=chunk,
        layers=layers,
        check_hooks=False,
    )  # unhooked layers were dropped above

    def rotated(split: str, indices) -> Iterator[list[torch.Tensor]]:
        for c in range(0, len(indices), chunk):
            inputs, target = ctx.rows(split, indices[c : c + chunk])
            yield kfac.rotated_loss_grads(ctx.model, layers, inputs, target, ctx.task)

    qchunk = max(1, min(len(query_indices), int(0.25 * ctx.budget_bytes // (F64_BYTES * ctx.d))))
    vals = []
    for s in range(0, len(query_indices), qchunk):
        q_rot = [torch.cat(parts) for parts in zip(*rotated("test", query_indices[s : s + qchunk]))]
        cols = [
            kfac.ekfac_inverse_scores(q_rot, t_rot, layers, lam)
            for t_rot in rotated("train", train_indices)
        ]
        vals.append(torch.cat(cols, dim=1) / ctx.n)
    diag = {
        "lambda0": lam0,
        "damping": lam,
        "damping_mode": mode,
        "layers": [ly.module_name for ly in layers],
        "ignored_params": ignored,
        "skipped_layers": skipped,
        "unhooked_layers": unhooked,
        "min_corrected_eigenvalue": min(float(ly.evals.min()) for ly in layers),
    }
    return torch.cat(vals, dim=0).to(ctx.dtype), diag
