"""Single-model TRAK (Park et al. 2023).

Public: ``TrakOptions``, ``TrakLossOptions``, ``trak``, ``SKETCH_ABOVE``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ..config import check_choice
from ..linalg.grads import frozen_state, trainable_params
from ..linalg.hessian import math_sdpa
from .common import DampedOptions, check_int, prepare, resolve_damping

#: "auto" projection: entries of a dense projection above which a count sketch is used
SKETCH_ABOVE = 2**28
#: the dense projection is drawn in row blocks of this many parameters
PROJECTION_BLOCK = 8192
#: memory model of one sample: about 3 copies of its d gradient entries plus its p features;
#: at most ``TRAK_MAX_CHUNK`` samples per chunk
TRAK_PARAM_COPIES, TRAK_MAX_CHUNK = 3, 4096


@dataclasses.dataclass(frozen=True)
class TrakOptions(DampedOptions):
    """Options of ``trak`` (see its docstring); ``damping_multiple`` x TRAK's own lambda0."""

    damping_multiple: float | None = 0.01
    proj_dim: int = 2048
    seed: int = 0
    reweight: bool | None = None
    projection: str = "auto"
    output: str = "prediction"

    def __post_init__(self) -> None:
        check_int("proj_dim", self.proj_dim)
        check_choice("output", self.output, ("prediction", "loss"))
        check_int("seed", self.seed, minimum=0)
        check_choice("projection", self.projection, ("auto", "gaussian", "sketch", "none"))
        super().__post_init__()


@dataclasses.dataclass(frozen=True)
class TrakLossOptions(TrakOptions):
    """Options of ``trak_loss``: ``trak`` with ``output="loss"`` (regression)."""

    output: str = "loss"


def _output_fn(model: nn.Module, task: str):
    """TRAK's per-sample output function f(params, *inputs, target): the margin
    log p_y - log(1 - p_y) (classification) or the prediction (regression, k = 1).
    """
    state = frozen_state(model)

    def f(params, *args):
        *xs, y = args
        out = functional_call(
            model, {**params, **state}, tuple(x.unsqueeze(0) for x in xs)
        ).squeeze(0)
        if task == "regression":
            return out.reshape(-1)[0]
        mask = torch.arange(out.shape[-1], device=out.device) == y
        zy = (out * mask).sum()
        rest = torch.where(mask, torch.full_like(out, -torch.inf), out).logsumexp(-1)
        return zy - rest

    return f


def _projection_blocks(d: int, p: int, seed: int, dtype, device, block: int = PROJECTION_BLOCK):
    """Gaussian projection P (d, p), entries N(0, 1/p), as row blocks (slice, (rows, p)); the
    blocks depend only on (d, p, seed) (drawn in float32, then cast to ``dtype``).
    """
    g = torch.Generator().manual_seed(seed)
    for r in range(0, d, block):
        rows = min(block, d - r)
        Pb = torch.randn(rows, p, generator=g, dtype=torch.float32) / math.sqrt(p)
        yield slice(r, r + rows), Pb.to(device=device, dtype=dtype)


def trak(model, splits, train_indices, query_indices, opts: TrakOptions):
    """Single-model TRAK, (Q, T).

    phi_j = P^T grad f_j, with f the margin log p_y - log(1 - p_y) (classification) or the
    prediction (regression, one output) and P a Gaussian (d, proj_dim) projection with entries
    N(0, 1/proj_dim) (``seed``). ``projection``: "gaussian", "sketch" (a count sketch: each
    parameter's gradient entry goes to one random feature with a random sign, a sparse JL
    embedding costing O(d) per sample, for models whose dense P does not fit), "none"
    (phi = grad f) or "auto" (none when proj_dim >= d; else gaussian when P has at most
    ``SKETCH_ABOVE`` entries, sketch otherwise; never dependent on the memory budget).
    score_i = (1/n) phi_q^T (Phi^T Phi / n + lambda I)^{-1} phi_i x Q_i
            = phi_q^T (Phi^T Phi + n lambda I)^{-1} phi_i x Q_i  (TRAK's formula, damping n lambda),
    Phi over the full training set; Q_i = 1 - p_i (the probability of i's label) when
    ``reweight`` (default: True for classification; regression has no reweighting).
    Sign and scale: + = helpful in the paper's convention; for classification the score is the
    estimated decrease of the query's margin when i is removed (its loss change is that times
    (1 - p_q) > 0, up to TRAK's unweighted Gauss-Newton); for regression it is the estimated
    change of the query's prediction per unit residual, whose sign is not tied to helpfulness.
    lambda = damping_multiple x lambda0_phi, lambda0_phi = ||Phi||_F^2 / (n p) the mean squared
    feature entry (TRAK works in its own feature space); default multiple 0.01 (TRAK's reference
    implementation does not damp; a small damping keeps Phi^T Phi invertible when p > n).

    ``output`` (regression): "prediction" (the default, the paper's TRAK) attributes the query's
    prediction; "loss" attributes its squared loss: score_i x 2 r_q r_i (r = prediction - target),
    which is the Gauss-Newton influence function on TRAK's features (without projection and with
    damping 2 lambda, exactly the GNH influence function), + = helpful.
    """
    ctx = prepare(model, splits, opts)
    if ctx.task == "regression" and ctx.k != 1:
        raise ValueError(
            f"trak needs a single regression output (the prediction); this model has {ctx.k}"
        )
    if opts.output == "loss" and ctx.task != "regression":
        raise ValueError(
            "output='loss' applies to regression; classification TRAK already weights the "
            "margin by 1 - p (reweight), use output='prediction'"
        )
    reweight = ctx.task == "classification" if opts.reweight is None else opts.reweight
    if reweight and ctx.task != "classification":
        raise ValueError("reweight=True (TRAK's Q = diag(1 - p_i)) applies to classification only")
    proj_dim, seed = opts.proj_dim, opts.seed
    project = opts.projection in ("gaussian", "sketch") or (
        opts.projection == "auto" and proj_dim < ctx.d
    )
    sketch = opts.projection == "sketch" or (
        opts.projection == "auto" and project and ctx.d * proj_dim > SKETCH_ABOVE
    )
    p = proj_dim if project else ctx.d
    params = trainable_params(ctx.model)
    gfn = vmap(
        grad(_output_fn(ctx.model, ctx.task)), in_dims=(None,) + (0,) * (len(ctx.tr_inputs) + 1)
    )
    cache_P = project and not sketch and ctx.d * p * ctx.elem <= ctx.budget_bytes / 2
    if sketch:
        gen = torch.Generator().manual_seed(seed)
        buckets = torch.randint(0, p, (ctx.d,), generator=gen).to(ctx.device)
        signs = (torch.randint(0, 2, (ctx.d,), generator=gen) * 2 - 1).to(
            device=ctx.device, dtype=ctx.dtype
        )
    P_cached = list(_projection_blocks(ctx.d, p, seed, ctx.dtype, ctx.device)) if cache_P else None
    # samples per chunk: their gradients in a quarter of the budget, or in almost half of it when
    # P is regenerated chunk by chunk (fewer regenerations)
    share = 0.25 if (cache_P or sketch or not project) else 0.45
    per_sample = (TRAK_PARAM_COPIES * ctx.d + p) * ctx.elem
    chunk = max(1, min(TRAK_MAX_CHUNK, int(share * ctx.budget_bytes // per_sample)))

    def features(split: str, indices) -> Iterator[torch.Tensor]:
        """Projected output gradients phi (chunk, p), float64, chunk by chunk."""
        for s in range(0, len(indices), chunk):
            inputs, target = ctx.rows(split, indices[s : s + chunk])
            with math_sdpa():
                gd = gfn(params, *inputs, target)
            G = torch.cat([v.reshape(v.shape[0], -1) for v in gd.values()], dim=1)
            del gd
            if not project:
                yield G.to(torch.float64)
                continue
            if sketch:
                yield (
                    torch.zeros(G.shape[0], p, dtype=G.dtype, device=G.device)
                    .index_add_(1, buckets, G * signs)
                    .to(torch.float64)
                )
                continue
            blocks = (
                P_cached
                if P_cached is not None
                else _projection_blocks(ctx.d, p, seed, ctx.dtype, ctx.device)
            )
            yield sum(G[:, sl] @ Pb for sl, Pb in blocks).to(torch.float64)

    pos = {int(i): j for j, i in enumerate(train_indices)}
    gram = torch.zeros(p, p, dtype=torch.float64, device=ctx.device)
    phi_t = torch.empty(len(train_indices), p, dtype=torch.float64, device=ctx.device)
    rows = list(range(ctx.n))
    for c, phi in enumerate(features("train", rows)):
        gram += phi.T @ phi
        for r, i in enumerate(rows[c * chunk : (c + 1) * chunk]):
            if i in pos:
                phi_t[pos[i]] = phi[r]
    lam0 = float(torch.diagonal(gram).sum() / (ctx.n * p))
    damps, _, mode = resolve_damping(opts, lambda: lam0)
    lam = damps[0][1]
    K = gram / ctx.n + lam * torch.eye(p, dtype=torch.float64, device=ctx.device)
    Lc, info = torch.linalg.cholesky_ex(K)
    phi_q = torch.cat(list(features("test", query_indices)))
    X = torch.cholesky_solve(phi_q.T, Lc) if int(info) == 0 else torch.linalg.solve(K, phi_q.T)
    vals = X.T @ phi_t.T / ctx.n
    diag = {
        "lambda0": lam0,
        "lambda0_kind": "mean squared projected output-gradient entry",
        "damping": lam,
        "projection_used": "sketch" if sketch else "gaussian" if project else "none",
        "damping_mode": mode,
        "proj_dim": p,
        "projected": project,
        "reweight": bool(reweight),
    }
    if reweight:
        tin, tt = ctx.rows("train", train_indices)
        with torch.no_grad():
            prob = torch.softmax(ctx.model(*tin), dim=-1).gather(-1, tt.long()[:, None]).squeeze(-1)
        q_weight = (1 - prob).to(torch.float64)
        vals = vals * q_weight[None, :]
        diag["one_minus_p_train"] = q_weight.cpu()
    diag["output"] = opts.output
    if opts.output == "loss":
        resid = []
        for split, idx in (("test", query_indices), ("train", train_indices)):
            xs, y = ctx.rows(split, idx)
            with torch.no_grad():
                resid.append((ctx.model(*xs).reshape(-1) - y.reshape(-1)).to(torch.float64))
        vals = vals * 2 * resid[0][:, None] * resid[1][None, :]
    return vals.to(ctx.dtype), diag
