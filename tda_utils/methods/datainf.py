"""DataInf (Kwon et al. 2024).

Public: ``DataInfOptions``, ``datainf``.
"""

from __future__ import annotations

import dataclasses

import torch

from ..linalg.grads import param_offsets
from .common import BaseOptions, check_int, check_number, inverse_scores, prepare

#: d-vectors per query that DataInf keeps (v, its per-tensor copies, the accumulators)
DATAINF_COPIES = 4


@dataclasses.dataclass(frozen=True)
class DataInfOptions(BaseOptions):
    """Options of ``datainf``.

    Attributes:
        c: lambda_l = (1/c) x the tensor's mean squared gradient entry (10: the paper's figures).
        n_hessian_samples: None uses every training instance; else this many, drawn with ``seed``.
        seed: the seed of that draw.
    """

    c: float = 10.0
    n_hessian_samples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("c", self.c)
        check_int("seed", self.seed, minimum=0)
        if self.n_hessian_samples is not None:
            check_int("n_hessian_samples", self.n_hessian_samples)
        super().__post_init__()


def datainf(model, splits, train_indices, query_indices, opts: DataInfOptions):
    """DataInf, (Q, T), + = helpful, IF scale (includes 1/n_train).

    Per parameter tensor l (weights and biases separately), over the m Hessian samples j (all
    training instances, or ``n_hessian_samples`` drawn without replacement with ``seed``):
    lambda_l = (1/c) mean_j mean(g_{j,l}^2);
    v_hat_l = (1/(m lambda_l)) sum_j [v_l - (v_l . g_{j,l}) / (lambda_l + ||g_{j,l}||^2) g_{j,l}]
    with v = g_q (v_hat_l ~ (G_l + lambda_l I)^{-1} v_l, G_l the layer's empirical Fisher);
    score_i = (1/n_train) sum_l v_hat_l . g_{i,l}. Two chunked passes over the sample gradients.
    """
    ctx = prepare(model, splits, opts)
    if opts.n_hessian_samples is None:
        sample = None
        m = ctx.n
    else:
        m = min(opts.n_hessian_samples, ctx.n)
        g = torch.Generator().manual_seed(opts.seed)
        sample = torch.randperm(ctx.n, generator=g)[:m].sort().values.tolist()
    offsets = param_offsets(ctx.model)
    sq = {name: 0.0 for name in offsets}
    for _, gj in ctx.grad_chunks("train", sample):
        for name, (a, b) in offsets.items():
            sq[name] += float((gj[:, a:b].double() ** 2).sum())
    lam = {name: sq[name] / (m * (b - a)) / opts.c for name, (a, b) in offsets.items()}
    if any(v <= 0 for v in lam.values()):
        zero = [k for k, v in lam.items() if v <= 0]
        raise ValueError(
            f"datainf: the parameter tensors {zero} have zero gradients on every Hessian sample, "
            f"so lambda_l = 0; freeze them (requires_grad=False)"
        )

    def v_hat(V: torch.Tensor):
        Vl = {name: V[:, a:b].contiguous() for name, (a, b) in offsets.items()}
        acc = {name: torch.zeros_like(v) for name, v in Vl.items()}
        for _, gj in ctx.grad_chunks("train", sample):
            for name, (a, b) in offsets.items():
                gl = gj[:, a:b]
                coef = (Vl[name] @ gl.T) / (lam[name] + (gl * gl).sum(1))[None, :]
                acc[name].addmm_(coef, gl)
        for name, (a, b) in offsets.items():
            V[:, a:b] = (Vl[name] - acc[name] / m) / lam[name]  # V now holds v_hat
        return V, {}

    values, _ = inverse_scores(ctx, train_indices, query_indices, DATAINF_COPIES, v_hat)
    return values, {"lambdas": lam, "c": opts.c, "n_hessian_samples": m, "hessian_sample": sample}
