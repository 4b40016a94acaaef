"""Stacked-run arithmetic of the vectorized further-training engine (``further_training``).

``stack_runs``: R copies of a parameter dict, stacked (R, ...); ``StackedOptimizer``: SGD /
Adam / AdamW on parameters stacked over runs (R, ...) with a per-run mask; ``MLPStack``: a fast
forward/backward path for ``nn.Sequential`` MLPs of Linear and ReLU, with ``sgd_step`` for plain
SGD (each weight update fused into its gradient's matmul). All match ``torch.optim`` / autograd
(tests/test_gold_further_training.py).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import FurtherTrainingConfig


def stack_runs(params: dict[str, torch.Tensor], runs: int) -> dict[str, torch.Tensor]:
    """``runs`` copies of each tensor of ``params``, stacked: name -> (runs, *shape), contiguous
    and detached from ``params``' autograd graph.
    """
    return {k: v.detach().unsqueeze(0).repeat(runs, *([1] * v.ndim)) for k, v in params.items()}


class StackedOptimizer:
    """SGD / Adam / AdamW on stacked parameters (R, ...) with a per-run ``active`` mask.

    Matches ``torch.optim`` (no momentum for SGD; Adam's bias correction per run) and
    ``clip_grad_norm_`` per run (coefficient max_norm / (norm + 1e-6), capped at 1).
    """

    def __init__(self, cfg: FurtherTrainingConfig, params: dict[str, torch.Tensor], R: int):
        self.cfg, self.params = cfg, params
        self.t = torch.zeros(R, dtype=torch.long, device=next(iter(params.values())).device)
        if cfg.optimizer in ("adam", "adamw"):
            self.m = {k: torch.zeros_like(v) for k, v in params.items()}
            self.v = {k: torch.zeros_like(v) for k, v in params.items()}

    @torch.no_grad()
    def step(
        self, grads: dict[str, torch.Tensor], active: torch.Tensor, everyone: bool | None = None
    ) -> None:
        """One update of the runs where ``active``; ``everyone`` (all active), when the caller
        knows it, saves a device-to-host sync.
        """
        cfg = self.cfg
        shape = lambda x, p: x.view(-1, *([1] * (p.ndim - 1)))  # noqa: E731
        if cfg.grad_clip is not None:
            norm = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values()))
            coef = (cfg.grad_clip / (norm + 1e-6)).clamp(max=1.0)
            grads = {k: g * shape(coef, g) for k, g in grads.items()}
        self.t += active.long()
        everyone = bool(active.all()) if everyone is None else everyone
        a = active.to(next(iter(self.params.values())).dtype)
        b1, b2 = cfg.betas
        for k, p in self.params.items():
            g = grads[k]
            am = None if everyone else shape(a, p)  # per-run mask, only when some runs sit out
            if cfg.optimizer == "sgd":
                if cfg.weight_decay:
                    g = g + cfg.weight_decay * p
                if am is None:
                    p.add_(g, alpha=-cfg.lr)  # as torch.optim.SGD
                else:
                    p.sub_(am * cfg.lr * g)
                continue
            if cfg.optimizer == "adamw" and cfg.weight_decay:
                p.mul_(
                    1 - cfg.lr * cfg.weight_decay
                    if am is None
                    else 1 - am * cfg.lr * cfg.weight_decay
                )
            elif cfg.weight_decay:
                g = g + cfg.weight_decay * p
            m, v = self.m[k], self.v[k]
            if am is None:
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
            else:
                m.copy_(torch.where(am.bool(), m.lerp(g, 1 - b1), m))
                v.copy_(torch.where(am.bool(), v * b2 + (1 - b2) * g * g, v))
            t = self.t.clamp(min=1).to(p.dtype)
            step_size = shape(cfg.lr / (1 - b1**t), p)
            bc2_sqrt = shape((1 - b2**t).sqrt(), p)
            upd = (v.sqrt() / bc2_sqrt).add_(cfg.eps)
            upd = torch.div(m, upd).mul_(step_size)
            p.sub_(upd if am is None else am * upd)


class MLPStack:
    """Fast path for ``nn.Sequential`` of ``Linear`` and ``ReLU`` layers (the tabular MLPs).

    Forward with ``baddbmm`` on stacked weights and a hand-written backward (the same arithmetic
    as autograd, ReLU applied in place): faster than the generic vmap path on 2 cores.
    """

    def __init__(self, layers: list[tuple[str, str] | None]):
        # (weight name, bias name) per Linear layer; a ReLU sits between consecutive ones
        self.linear = [lay for lay in layers if lay is not None]
        # per input shape, dtype and device: the step's work tensors, reused from step to step
        # (no allocation, no page faults per step)
        self._plans: dict[tuple, dict[str, torch.Tensor]] = {}
        self._views: tuple[tuple, list] = ((), [])  # the last params' (W^T, b[:, None]) views

    def _layer_views(self, params) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per Linear layer (W^T (R, d_in, d_out), b (R, 1, d_out)) views of ``params``, made once
        per set of stacked tensors (they are updated in place; the cached views keep them alive,
        so their ids stay theirs).
        """
        key = tuple(id(params[name]) for lay in self.linear for name in lay)
        if self._views[0] != key:
            views = [(params[wn].mT, params[bn].unsqueeze(1)) for wn, bn in self.linear]
            self._views = (key, views)
        return self._views[1]

    def _plan(self, params, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Buffers for a step on x (R, B, d_in): ``act{j}`` (output of Linear j), ``back{j}``
        (the error for Linear j - 1), ``g{j}`` (Linear j's weight gradient).
        """
        key = (x.shape, x.dtype, x.device)
        plan = self._plans.get(key)
        if plan is None:
            R, B = x.shape[:2]
            new = lambda *shape: torch.empty(shape, dtype=x.dtype, device=x.device)  # noqa: E731
            plan = {}
            for j, (wn, _) in enumerate(self.linear):
                d_out, d_in = params[wn].shape[1:]
                plan[f"act{j}"] = new(R, B, d_out)
                if j:
                    plan[f"back{j}"] = new(R, B, d_in)
                plan[f"g{j}"] = new(R, d_in, d_out) if d_in < d_out else new(R, d_out, d_in)
            self._plans[key] = plan
        return plan

    @classmethod
    def maybe(cls, model: nn.Module, params: dict[str, torch.Tensor]) -> "MLPStack | None":
        """The fast path for ``model`` if it is such an MLP with all parameters trainable."""
        if not isinstance(model, nn.Sequential) or not len(model):
            return None
        layers: list[tuple[str, str] | None] = []
        for name, m in model.named_children():
            if (
                isinstance(m, nn.Linear)
                and m.bias is not None
                and f"{name}.weight" in params
                and f"{name}.bias" in params
            ):
                layers.append((f"{name}.weight", f"{name}.bias"))
            elif isinstance(m, nn.ReLU):
                layers.append(None)
            else:
                return None
        alternating = all((lay is None) == (i % 2 == 1) for i, lay in enumerate(layers))
        if (
            not alternating
            or layers[-1] is None
            or len(params) != 2 * sum(lay is not None for lay in layers)
        ):
            return None  # only Linear, ReLU, Linear, ..., ReLU, Linear
        return cls(layers)

    def forward(self, params, x: torch.Tensor, plan: dict | None = None) -> list[torch.Tensor]:
        """Inputs of each Linear layer and the output: [x, h1, ..., out]; x (R, B, d_in).

        ``plan``: write into these step buffers (``_plan``; valid until the next step).
        """
        acts = [x]
        for j, (w_t, b) in enumerate(self._layer_views(params)):
            if j:
                acts[-1].clamp_(min=0)  # the ReLU between Linear layers, in place
            out = None if plan is None else plan[f"act{j}"]
            acts.append(torch.baddbmm(b, acts[-1], w_t, out=out))
        return acts

    @torch.no_grad()
    def grads(self, params, x, target, w, task) -> dict[str, torch.Tensor]:
        """Per-run gradients of sum_b w[r, b] * loss_rb (loss: models.per_sample_loss).

        The weight gradients live in buffers reused by the next call (consume them first).
        """
        return self._backward(params, x, target, w, task, lr=None)

    @torch.no_grad()
    def sgd_step(self, params, x, target, w, task, lr: float, check: torch.Tensor) -> None:
        """One plain SGD step (no momentum, weight decay or clipping) of every run, in place.

        The same arithmetic as ``grads`` followed by ``p -= lr * g``, except that each large
        weight update is fused into its gradient's matmul (W <- W - lr * dz^T a in one
        ``baddbmm_``): no gradient is stored and no extra pass over the weights is made. A run
        whose weights w[r] are all zero is left unchanged (as a masked step).

        ``check`` (R, k_out) receives a value per run that is non-finite exactly when its training
        loss on this batch is (the sequential engine's divergence test): for regression the
        weighted squared errors per output, sum_b w[r, b] (out - y)^2 (an overflowing square
        counts, as in the loss); for classification the output layer's bias gradient, non-finite
        iff a logit is (softmax and cross-entropy are stable for finite logits).
        """
        self._backward(params, x, target, w, task, lr=lr, check=check)

    def _backward(
        self, params, x, target, w, task, lr: float | None, check: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Forward and hand-written backward: ``lr=None`` returns the gradients; else applies
        the SGD step in place and returns {}.
        """
        plan = self._plan(params, x)
        acts = self.forward(params, x, plan)
        out = acts[-1]  # this object's buffer: the error is formed in place
        scale = 1.0  # the loss's constant factor, folded into the step size when stepping
        if task == "regression":
            dz = out.sub_(target)
            scale = 2.0 / out.shape[-1]  # d/d out of the mean over outputs of (out - y)^2
            if check is not None:
                torch.bmm(w.unsqueeze(1), dz.square(), out=check.unsqueeze(1))
        else:
            dz = torch.softmax(out, dim=-1)
            dz.scatter_add_(-1, target.long().unsqueeze(-1), -torch.ones_like(dz[..., :1]))
        dz.mul_(w.unsqueeze(-1))
        if check is not None and task != "regression":
            torch.sum(dz, 1, out=check)  # the output layer's bias gradient
        if lr is None:
            if scale != 1.0:
                dz.mul_(scale)
        else:
            step = -lr * scale  # 2 / k is a power of two for k = 1, 2: the same bits as scaling dz
        grads: dict[str, torch.Tensor] = {}
        for j in range(len(self.linear) - 1, -1, -1):
            wn, bn = self.linear[j]
            a, weight = acts[j], params[wn]
            d_out, d_in = weight.shape[1:]
            back = None
            if j > 0:  # the error for layer j - 1, from the weights before this step's update
                back = plan[f"back{j}"]
                if d_out == 1:  # an outer product, not a K=1 matmul
                    torch.mul(dz, weight, out=back)
                else:
                    torch.bmm(dz, weight, out=back)
            if d_in < d_out:  # MKL is faster making the (in, out) product
                g = torch.bmm(a.mT, dz, out=plan[f"g{j}"]).mT
                if lr is None:
                    grads[wn] = g
                else:
                    weight.add_(g, alpha=step)
            elif lr is None:
                grads[wn] = torch.bmm(dz.mT, a, out=plan[f"g{j}"])
            else:  # the update fused into the gradient's matmul
                weight.baddbmm_(dz.mT, a, alpha=step)
            if lr is None:
                grads[bn] = dz.sum(1)
            else:
                params[bn].add_(dz.sum(1), alpha=step)
            if back is not None:
                dz = torch.ops.aten.threshold_backward.grad_input(back, a, 0, grad_input=back)
        return grads
