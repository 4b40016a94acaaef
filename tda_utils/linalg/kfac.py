"""EK-FAC: eigenvalue-corrected Kronecker-factored Gauss-Newton.

After George et al. (2018) and Grosse et al. (2023).

Public: ``EkfacLayer``, ``kfac_layers``, ``unhooked_layers``, ``fit_ekfac``, ``rotated_loss_grads``,
``layer_matrices``, ``rotate``, ``ekfac_inverse_scores``.

Which parameters: every ``nn.Linear`` and ``nn.Conv2d`` (groups = 1, zero padding given as
numbers or "valid") whose weight is trainable; the bias, when trainable, is the extra input
column (inputs get a 1 appended). All other trainable parameters (LayerNorm, embeddings, grouped
convolutions, ...) are *ignored*: they do not contribute to EK-FAC scores, and are listed by
``kfac_layers``.

For one layer with weight matrix W (out, in') (Conv2d: (out, C kh kw) + bias column) and
per-sample, per-position inputs a_{j,t} (in',) and pre-activation output gradients s_{j,t}
(out,), the per-sample gradient is G_j = sum_t s_{j,t} a_{j,t}^T (positions t: the spatial
locations of a Conv2d (unfolded patches), the extra token dims of a Linear, and repeated calls).

* Factors: A = mean_{j,t} a a^T and S = mean_{j,t,c} s_c s_c^T, where the output gradients come
  from the Gauss-Newton matrix itself: for each sample the k output cotangents are the columns of
  the square root L of the output Hessian (``hessian.output_hessian_sqrt``: sqrt(2/k) e_c for
  per-sample MSE; sqrt(p_c)(e_c - p) for cross-entropy, the exact expectation over labels
  sampled from the model). So sum_c G_{j,c} G_{j,c}^T (vectorised) is sample j's GNH block.
* Eigenbases A = Q_A diag Q_A^T, S = Q_S diag Q_S^T (float64).
* Eigenvalue correction: Lambda = (1/n) sum_j sum_c (Q_S^T G_{j,c} Q_A)^2 (elementwise), i.e.
  the exact diagonal of the layer's GNH block in the Kronecker eigenbasis.

The GNH is approximated by the block-diagonal (over layers) matrix
(Q_S x Q_A) diag(Lambda) (Q_S x Q_A)^T. Exact when the layer's GNH block is diagonal in that
basis: e.g. a model that is a single ``nn.Linear`` under MSE (the block is (2/k) I x A).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .hessian import math_sdpa, output_hessian_sqrt
from ..models.registry import per_sample_loss


@dataclasses.dataclass
class EkfacLayer:
    """One Kronecker-factored layer. ``QA`` (in', in'), ``QS`` (out, out), ``evals`` (out, in')
    the corrected eigenvalues; ``eA``, ``eS`` the K-FAC factor eigenvalues (diagnostics).
    """

    module_name: str
    kind: str
    weight: str
    bias: str | None
    out_dim: int
    in_dim: int
    QA: torch.Tensor | None = None
    QS: torch.Tensor | None = None
    eA: torch.Tensor | None = None
    eS: torch.Tensor | None = None
    evals: torch.Tensor | None = None


def _supported(module: nn.Module) -> str | None:
    """None if supported, else the reason."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return "grouped Conv2d"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
        if isinstance(module.padding, str) and module.padding != "valid":
            return f"padding={module.padding!r}"
    return None


def kfac_layers(model: nn.Module) -> tuple[list[EkfacLayer], list[str], dict[str, str]]:
    """(layers, ignored trainable parameter names, {module name: reason skipped})."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers, covered, skipped = [], set(), {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        wname = f"{name}.weight" if name else "weight"
        bname = f"{name}.bias" if name else "bias"
        if wname not in trainable:
            continue
        reason = _supported(m)
        if reason is not None:
            skipped[name] = reason
            continue
        has_bias = m.bias is not None and bname in trainable
        if isinstance(m, nn.Linear):
            out_dim, in_dim, kind = m.out_features, m.in_features, "linear"
        else:
            out_dim = m.out_channels
            in_dim = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            kind = "conv2d"
        layers.append(
            EkfacLayer(
                name, kind, wname, bname if has_bias else None, out_dim, in_dim + int(has_bias)
            )
        )
        covered.add(wname)
        if has_bias:
            covered.add(bname)
    ignored = [n for n, p in model.named_parameters() if p.requires_grad and n not in covered]
    return layers, ignored, skipped


def _positions_in(module: nn.Module, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """Layer inputs per sample and position, (B, T, in')."""
    if isinstance(module, nn.Conv2d):
        pad = 0 if module.padding == "valid" else module.padding
        a = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=pad, stride=module.stride
        )
        a = a.transpose(1, 2)  # (B, L, C kh kw), channel-major like weight.reshape(out, -1)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if with_bias:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a


def _positions_out(module: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """Output gradients per sample and position, (B, T, out)."""
    if isinstance(module, nn.Conv2d):
        return s.reshape(s.shape[0], s.shape[1], -1).transpose(1, 2)
    return s.reshape(s.shape[0], -1, s.shape[-1])


def _capture(
    model: nn.Module,
    layers: list[EkfacLayer],
    inputs: tuple[torch.Tensor, ...],
    task: str,
    target: torch.Tensor | None = None,
):
    """Forward the chunk; return [(layer index, a (B,T,in'), [s_c (B,T,out) for c])].

    ``target=None``: the output cotangents are the k columns of the output-Hessian square root
    (GNH pseudo-gradients); else a single cotangent, the gradient of the per-sample loss.
    """
    modules = dict(model.named_modules())
    store: dict[int, list] = {i: [] for i in range(len(layers))}
    handles = []
    for i, layer in enumerate(layers):

        def hook(_m, inp, out, i=i):
            store[i].append((inp[0].detach(), out))
            return (
                out.clone()
            )  # later in-place ops (ReLU(inplace=True)) must not alter the stored output

        handles.append(modules[layer.module_name].register_forward_hook(hook))
    try:
        with torch.enable_grad(), math_sdpa():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    outs = [o for i in range(len(layers)) for _, o in store[i]]
    s_by_c = []
    if target is not None:
        with math_sdpa():
            loss = per_sample_loss(out, target, task).sum()
            s_by_c.append(torch.autograd.grad(loss, outs, allow_unused=True))
    else:
        L = output_hessian_sqrt(out.detach(), task)  # (B, k, k)
        for c in range(L.shape[-1]):
            with math_sdpa():
                gs = torch.autograd.grad(
                    out, outs, grad_outputs=L[:, :, c], retain_graph=True, allow_unused=True
                )
            s_by_c.append(gs)
    result = []
    k = 0
    for i, layer in enumerate(layers):
        m = modules[layer.module_name]
        a_parts, s_parts = [], [[] for _ in s_by_c]
        for x, o in store[i]:
            a_parts.append(_positions_in(m, x, layer.bias is not None))
            for c, gs in enumerate(s_by_c):
                g = gs[k] if gs[k] is not None else torch.zeros_like(o)
                s_parts[c].append(_positions_out(m, g.detach()))
            k += 1
        if not a_parts:
            continue
        result.append((i, torch.cat(a_parts, 1), [torch.cat(p, 1) for p in s_parts]))
    return result


def unhooked_layers(
    model: nn.Module,
    layers: list[EkfacLayer],
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    rtol: float = 1e-3,
) -> list[str]:
    """Layers whose weight gradient is not what their forward hooks see, on a small batch.

    EK-FAC reads each layer's inputs and output gradients from hooks on the module; a weight also
    used elsewhere (e.g. through ``torch.nn.functional.linear`` outside the module's forward)
    would make the factors wrong. Compares sum_j sum_t s a^T with autograd's weight gradient of
    the summed loss; returns the module names that differ (relative error above ``rtol``).
    """
    params = dict(model.named_parameters())
    hooked = {
        i: torch.einsum("bto,bti->oi", s, a)
        for i, a, (s,) in _capture(model, layers, inputs, task, target)
    }
    with torch.enable_grad(), math_sdpa():
        loss = per_sample_loss(model(*inputs), target, task).sum()
        auto = torch.autograd.grad(loss, [params[ly.weight] for ly in layers], allow_unused=True)
    bad = []
    for i, (ly, g) in enumerate(zip(layers, auto)):
        g = (
            torch.zeros(ly.out_dim, ly.in_dim - (ly.bias is not None), device=target.device)
            if g is None
            else g.reshape(ly.out_dim, -1)
        )
        h = hooked[i][:, : g.shape[1]] if i in hooked else torch.zeros_like(g)
        if float((h - g).norm()) > rtol * float(g.norm()) + 1e-12:
            bad.append(ly.module_name)
    return bad


def fit_ekfac(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
    chunk: int = 64,
    layers: list[EkfacLayer] | None = None,
    check_hooks: bool = True,
) -> list[EkfacLayer]:
    """Fit EK-FAC on the dataset (inputs, target): factors, eigenbases, corrected eigenvalues.

    Two passes over the data in chunks of ``chunk`` samples (factors; eigenvalue correction). The
    factors are accumulated and decomposed in float64. ``target`` is only used for its length
    (the GNH does not depend on labels). ``check_hooks=False`` skips the ``unhooked_layers``
    check for callers that have already dropped such layers.
    """
    if layers is None:
        layers = kfac_layers(model)[0]
    n = target.shape[0]
    bad = (
        unhooked_layers(model, layers, tuple(x[:4] for x in inputs), target[:4], task)
        if check_hooks
        else []
    )
    if bad:
        raise ValueError(
            f"ekfac: the weights of layers {bad} are also used outside their module's forward "
            "(e.g. through torch.nn.functional), so hooks cannot see their gradients and the "
            "Kronecker factors would be wrong; run the model so that every use goes through the "
            "module (for bert_classifier: last_block='cls_kv' or 'full')"
        )
    dev = next(model.parameters()).device
    f64 = torch.float64
    A = [torch.zeros(ly.in_dim, ly.in_dim, dtype=f64, device=dev) for ly in layers]
    S = [torch.zeros(ly.out_dim, ly.out_dim, dtype=f64, device=dev) for ly in layers]
    cnt = [0] * len(layers)
    for s in range(0, n, chunk):
        xs = tuple(x[s : s + chunk] for x in inputs)
        for i, a, s_list in _capture(model, layers, xs, task):
            a = a.to(f64)
            A[i] += torch.einsum("bti,btj->ij", a, a)
            for sc in s_list:
                sc = sc.to(f64)
                S[i] += torch.einsum("bto,btp->op", sc, sc)
            cnt[i] += a.shape[0] * a.shape[1]
    for i, ly in enumerate(layers):
        c = max(cnt[i], 1)
        ly.eA, ly.QA = torch.linalg.eigh(A[i] / c)
        ly.eS, ly.QS = torch.linalg.eigh(S[i] / c)
        ly.evals = torch.zeros(ly.out_dim, ly.in_dim, dtype=f64, device=dev)
    for s in range(0, n, chunk):
        xs = tuple(x[s : s + chunk] for x in inputs)
        for i, a, s_list in _capture(model, layers, xs, task):
            ly = layers[i]
            at = a.to(f64) @ ly.QA
            for sc in s_list:
                st = sc.to(f64) @ ly.QS
                Gt = torch.einsum("bto,bti->boi", st, at)
                ly.evals += (Gt * Gt).sum(0)
    for ly in layers:
        ly.evals /= n
    return layers


def rotated_loss_grads(
    model: nn.Module,
    layers: list[EkfacLayer],
    inputs: tuple[torch.Tensor, ...],
    target: torch.Tensor,
    task: str,
) -> list[torch.Tensor]:
    """Per-sample loss gradients of each layer in its Kronecker eigenbasis, [(B, out, in')].

    float64.

    Q_S^T G_j Q_A = sum_t (Q_S^T s_{j,t}) (Q_A^T a_{j,t})^T from the captured factors: for a
    Linear layer (one position) this costs O(out^2 + in^2 + out in) per sample instead of the
    O(out in (out + in)) of rotating the dense gradient matrix.
    """
    rot: list[torch.Tensor | None] = [None] * len(layers)
    for i, a, (s,) in _capture(model, layers, inputs, task, target):
        ly = layers[i]
        rot[i] = torch.einsum(
            "bto,bti->boi", s.to(torch.float64) @ ly.QS, a.to(torch.float64) @ ly.QA
        )
    B = target.shape[0]
    return [
        r
        if r is not None
        else torch.zeros(B, ly.out_dim, ly.in_dim, dtype=torch.float64, device=ly.QS.device)
        for r, ly in zip(rot, layers)
    ]


def layer_matrices(
    flat: torch.Tensor,
    layer: EkfacLayer,
    offsets: dict[str, tuple[int, int]],
    shapes: dict[str, torch.Size],
) -> torch.Tensor:
    """The layer's block of flattened gradients (m, d) as matrices (m, out, in') (bias last)."""
    a, b = offsets[layer.weight]
    W = flat[:, a:b].reshape(flat.shape[0], layer.out_dim, -1)
    if layer.bias is None:
        return W
    a, b = offsets[layer.bias]
    return torch.cat([W, flat[:, a:b].reshape(flat.shape[0], layer.out_dim, 1)], dim=-1)


def rotate(G: torch.Tensor, layer: EkfacLayer) -> torch.Tensor:
    """Q_S^T G Q_A for a batch of layer matrices G (m, out, in'), in float64."""
    return layer.QS.T @ G.to(torch.float64) @ layer.QA


def ekfac_inverse_scores(
    q_rot: list[torch.Tensor], t_rot: list[torch.Tensor], layers: list[EkfacLayer], damping: float
) -> torch.Tensor:
    """sum_l <q~_l / (Lambda_l + damping), t~_l> for rotated query (Q, out, in') and train (T, ...)
    matrices: g_q^T (EK-FAC + damping I)^{-1} g_t, (Q, T), float64.
    """
    total = None
    for qr, tr, ly in zip(q_rot, t_rot, layers):
        s = (qr / (ly.evals + damping)).reshape(qr.shape[0], -1) @ tr.reshape(tr.shape[0], -1).T
        total = s if total is None else total + s
    return total
