"""Stacked-run arithmetic of the vectorized further-training engine (``further_training``).

``StackedOptimizer``: SGD / Adam / AdamW on parameters stacked over runs (R, ...) with a per-run
mask; ``MLPStack``: a fast forward/backward path for ``nn.Sequential`` MLPs of Linear and ReLU,
with ``sgd_step`` for plain SGD (each weight update fused into its gradient's matmul). All match
``torch.optim`` / autograd (tests/test_further_training.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FurtherTrainingConfig


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
        self.layers = layers  # per layer: (weight name, bias name) for Linear, None for ReLU
        self._buffers: dict[tuple, torch.Tensor] = {}  # reused by ``grads`` from step to step

    def _buffer(self, key: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """A preallocated tensor for ``key`` (no allocation, no page faults per step)."""
        k = (key, tuple(shape), like.dtype, like.device)
        buf = self._buffers.get(k)
        if buf is None:
            buf = self._buffers[k] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf

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

    def forward(self, params, x: torch.Tensor, reuse: bool = False) -> list[torch.Tensor]:
        """Inputs of each Linear layer and the output: [x, h1, ..., out]; x (R, B, d_in).

        ``reuse``: write into this object's buffers (valid until the next such call).
        """
        acts = [x]
        for i, lay in enumerate(self.layers):
            if lay is None:
                acts[-1].clamp_(min=0)
            else:
                w, b = params[lay[0]], params[lay[1]]
                h = acts[-1]
                out = self._buffer(f"act{i}", (*h.shape[:2], w.shape[1]), h) if reuse else None
                acts.append(torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2), out=out))
        return acts

    @torch.no_grad()
    def grads(self, params, x, target, w, task) -> dict[str, torch.Tensor]:
        """Per-run gradients of sum_b w[r, b] * loss_rb (loss: models.per_sample_loss).

        The weight gradients live in buffers reused by the next call (consume them first).
        """
        return self._backward(params, x, target, w, task, lr=None)

    @torch.no_grad()
    def sgd_step(self, params, x, target, w, task, lr: float) -> torch.Tensor:
        """One plain SGD step (no momentum, weight decay or clipping) of every run, in place.

        The same arithmetic as ``grads`` followed by ``p -= lr * g``, except that each large
        weight update is fused into its gradient's matmul (W <- W - lr * dz^T a in one
        ``baddbmm_``): no gradient is stored and no extra pass over the weights is made. A run
        whose weights w[r] are all zero is left unchanged (as a masked step).

        Returns (R,): the sum of each run's updated parameters, non-finite when a gradient was (a
        non-finite output makes the last bias gradient non-finite) or when an update overflowed
        (one step before the loss shows it): the divergence check.
        """
        self._backward(params, x, target, w, task, lr=lr)
        return sum(p.reshape(p.shape[0], -1).sum(1) for p in params.values())

    def _backward(self, params, x, target, w, task, lr: float | None) -> dict[str, torch.Tensor]:
        """Forward and hand-written backward: ``lr=None`` returns the gradients; else applies
        the SGD step in place and returns {}.
        """
        acts = self.forward(params, x, reuse=True)
        out = acts[-1]
        if task == "regression":
            dz = (2.0 / out.shape[-1]) * (out - target)
        else:
            dz = torch.softmax(out, dim=-1)
            dz.scatter_add_(-1, target.long().unsqueeze(-1), -torch.ones_like(dz[..., :1]))
        dz = dz * w.unsqueeze(-1)
        grads: dict[str, torch.Tensor] = {}
        linear = [lay for lay in self.layers if lay is not None]
        for j in range(len(linear) - 1, -1, -1):
            wn, bn = linear[j]
            a, weight = acts[j], params[wn]
            R, d_out, d_in = weight.shape
            back = None
            if j > 0:  # the error for layer j - 1, from the weights before this step's update
                back = self._buffer(f"back{j}", a.shape, a)
                if d_out == 1:  # an outer product, not a K=1 matmul
                    torch.mul(dz, weight, out=back)
                else:
                    torch.bmm(dz, weight, out=back)
            if d_in < d_out:  # MKL is faster making the (in, out) product
                g = torch.bmm(a.transpose(1, 2), dz, out=self._buffer(f"g{j}", (R, d_in, d_out), a))
                g = g.transpose(1, 2)
                if lr is None:
                    grads[wn] = g
                else:
                    weight.add_(g, alpha=-lr)
            elif lr is None:
                grads[wn] = torch.bmm(
                    dz.transpose(1, 2), a, out=self._buffer(f"g{j}", (R, d_out, d_in), a)
                )
            else:  # the update fused into the gradient's matmul
                weight.baddbmm_(dz.transpose(1, 2), a, alpha=-lr)
            if lr is None:
                grads[bn] = dz.sum(1)
            else:
                params[bn].add_(dz.sum(1), alpha=-lr)
            if back is not None:
                dz = torch.ops.aten.threshold_backward.grad_input(back, a, 0, grad_input=back)
        return grads
