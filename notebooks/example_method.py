"""A worked example of a benchmark plug-in (notebook 07): Grad-Dot on the last layer only.

Written from scratch with ``torch.func``, without the suite's helpers, to show what a plug-in
receives and returns. Benchmark it with ``notebooks/07_benchmark_your_method.ipynb`` or, from
``notebooks/``, ``python -m tda_utils.bench --method example_method:last_layer_grad_dot``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def last_layer_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters of the model's last layer (those sharing the last one's module)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    prefix = names[-1].rpartition(".")[0]
    return [n for n in names if n.rpartition(".")[0] == prefix]


def per_sample_grads(model, dataset, indices, names, task, device, batch_size=256):
    """(len(indices), n_params) gradients of each example's loss w.r.t. the parameters ``names``."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(trained, *example):
        *inputs, target = (t.unsqueeze(0) for t in example)
        out = functional_call(model, ({**params, **trained}, buffers), tuple(inputs))
        if task == "regression":
            return ((out - target) ** 2).mean()
        return F.cross_entropy(out, target)

    per_example = vmap(grad(loss), in_dims=(None, *[0] * len(dataset.tensors)))
    rows = []
    for start in range(0, len(indices), batch_size):
        idx = torch.as_tensor(indices[start : start + batch_size])
        batch = (t[idx].to(device) for t in dataset.tensors)
        g = per_example({n: params[n] for n in names}, *batch)
        rows.append(torch.cat([g[n].reshape(len(idx), -1) for n in names], dim=1))
    return torch.cat(rows)


def last_layer_grad_dot(model, splits, train_indices, query_indices, device="auto"):
    """g_query . g_train over the last layer's parameters: (n_query, n_train), + = helpful.

    Removing a training example whose gradient points along the query's raises the query's loss
    after a gradient step, so a positive dot product means "helpful", as the contract asks.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    names = last_layer_names(model)
    g_train = per_sample_grads(model, splits.train, train_indices, names, splits.task, device)
    g_query = per_sample_grads(model, splits.test, query_indices, names, splits.task, device)
    return (g_query @ g_train.T).cpu()
