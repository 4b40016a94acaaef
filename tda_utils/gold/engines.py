"""The further-training engines behind ``further_train``: batch orders and the two engines.

Public: ``run_orders``, ``QUERY_CHUNK``, ``GPU_MAX_RUNS``. The engines (``_Sequential``: a plain
loop over runs with torch.optim; ``_Vectorized``: all runs of a chunk of seeds trained together
with ``torch.func.vmap`` over stacked parameters) are used through ``further_train``, which
describes the leave-out modes and the time axis; both give the same numbers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from ..config import FurtherTrainingConfig
from ..data.registry import Splits
from ..devices import resolve_device
from ..linalg.grads import activation_numel, dataset_tensors, frozen_state, trainable_params
from ..models.registry import query_loss, resolve_loss
from .stacked import MLPStack, StackedOptimizer, stack_runs
from ..final.training import (
    DivergenceError,
    batch_slices,
    divergence_message,
    epoch_orders,
    make_optimizer,
)


QUERY_CHUNK = 128  # queries evaluated at once per run by the vectorized engine
GPU_MAX_RUNS = 16384  # runs per part on a GPU (max_runs_per_chunk=None)
CPU_MAX_RUNS = 128  # runs per part on a CPU (max_runs_per_chunk=None)
# ... and for the MLP fast path on a CPU: the stacked (R, 128, 128) matmuls run near the peak
# bmm rate while their operands stay in cache (2 cores, 2 MiB L2, 32 MiB L3; a copy of the
# fast path's step, the sizes interleaved in one process, best of 6: 0.62-0.63 ms per run-epoch
# at R = 26-34 against 0.65-0.67 at 17, 51 and 64), so a seed's 101 runs go in 3 parts of 33-34
MLP_CPU_MAX_RUNS = 34


def gather_rows(x: torch.Tensor, index: torch.Tensor, runs: int) -> torch.Tensor:
    """Rows ``index`` (runs * width,) of ``x`` (n, ...) as (runs, width, ...) (index_select:
    faster than advanced indexing).
    """
    return torch.index_select(x, 0, index).view(runs, -1, *x.shape[1:])


def run_orders(perm: torch.Tensor, left_out: Sequence[int], mode: str) -> torch.Tensor:
    """Per-run orders for one epoch, (1 + n_left_out, n) with -1 padding.

    Row 0 is the full run's ``perm``; row 1 + j is ``perm`` with ``left_out[j]`` deleted (padded
    with -1 at the end) for ``permutation``, or ``perm`` itself for ``every_batch``.
    """
    n = perm.numel()
    L = len(left_out)
    rows = perm.expand(1 + L, n).clone()
    if mode == "permutation" and L:
        lo = torch.as_tensor(left_out, dtype=torch.long)
        keep = perm[None, :] != lo[:, None]  # (L, n), one False per row
        shorter = perm.expand(L, n)[keep].reshape(L, n - 1)
        rows[1:, :-1] = shorter
        rows[1:, -1] = -1
    return rows


class _Engine:
    def __init__(
        self,
        model,
        data: Splits,
        cfg: FurtherTrainingConfig,
        left_out,
        queries,
        points,
        loss_fn=None,
        device="cpu",
    ):
        self.device = dev = resolve_device(device)
        self.model, self.data, self.cfg = model.to(dev), data, cfg
        self.left_out, self.points = list(left_out), points
        self.inputs, self.target = dataset_tensors(data.train)
        self.q_inputs, self.q_target = dataset_tensors(data.test, queries)
        self.inputs, self.q_inputs = (
            tuple(x.to(dev) for x in self.inputs),
            tuple(x.to(dev) for x in self.q_inputs),
        )
        self.target, self.q_target = self.target.to(dev), self.q_target.to(dev)
        self.task = data.task
        self.custom_loss = loss_fn is not None
        self.loss = resolve_loss(self.task, loss_fn)  # the training loss (..., k), (...) -> (...)
        self.n = len(self.target)
        self.n_slots = math.ceil(self.n / cfg.batch_size)
        self.eval_at: dict[tuple[int, int], int] = {}
        for j, p in enumerate(points):
            self.eval_at.setdefault(p, j)
        self.last_epoch = max(e for e, _ in points) + 1

    def query_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-query loss as float64, shape (...): ``models.query_loss`` (computed in float64) for
        the built-in loss, else the custom ``loss_fn`` in the runs' dtype (it may hold constants
        of that dtype), so the gold standard measures the loss that the model trains on and the
        methods attribute.
        """
        if not self.custom_loss:
            return query_loss(output, target, self.task)
        return self.loss(output, target).double()

    def seeds_per_chunk(self) -> int:
        """Seeds trained together (and the natural size of an executor's task)."""
        return 1

    def run_name(self, seed: int, train_index: int | None) -> str:
        what = (
            "the full-data run"
            if train_index is None
            else f"the run without training index {train_index}"
        )
        return f"further training {what} (seed {seed}, dataset {self.data.name!r})"

    def check_finite(self, first_bad: torch.Tensor, pairs: list[tuple[int, int]]) -> None:
        """Raise ``DivergenceError`` for the first run whose ``first_bad`` step (global, 1-based;
        0 = none) is set.
        """
        bad = first_bad.nonzero().ravel()
        if len(bad):
            r = int(bad[first_bad[bad].argmin()])
            k, (seed, run) = int(first_bad[r]), pairs[r]
            name = self.run_name(seed, self.left_out[run - 1] if run else None)
            raise DivergenceError(
                divergence_message(
                    name, (k - 1) // self.n_slots + 1, (k - 1) % self.n_slots + 1, self.cfg.lr
                )
            )


# ----------------------------------------------------------------------------------------------
# Sequential reference engine
# ----------------------------------------------------------------------------------------------
class _Sequential(_Engine):
    """One run after another with torch.optim: the readable reference."""

    @torch.no_grad()
    def _query_losses(self, model) -> torch.Tensor:
        return self.query_loss(model(*self.q_inputs), self.q_target)

    def _one_run(self, seed: int, run: int | None) -> torch.Tensor:
        cfg = self.cfg
        model = copy.deepcopy(self.model)
        opt = make_optimizer(
            cfg.optimizer,
            [p for p in model.parameters() if p.requires_grad],
            cfg.lr,
            cfg.weight_decay,
            cfg.betas,
            cfg.eps,
        )
        losses = torch.empty(
            len(self.points), len(self.q_target), dtype=torch.float64, device=self.device
        )
        if (0, 0) in self.eval_at:
            losses[self.eval_at[(0, 0)]] = self._query_losses(model)
        for epoch, perm in enumerate(epoch_orders(self.n, seed, self.last_epoch)):
            perm = perm.to(self.device)
            if run is not None and cfg.leave_out == "permutation":
                perm = perm[perm != run]
            for slot, sl in enumerate(batch_slices(self.n, cfg.batch_size), start=1):
                idx = perm[sl]
                if len(idx):
                    out = model(*(x[idx] for x in self.inputs))
                    loss = self.loss(out, self.target[idx]).mean()
                    if run is not None and cfg.leave_out == "every_batch":
                        out_i = model(*(x[[run]] for x in self.inputs))
                        loss = loss - self.loss(out_i, self.target[[run]]).sum() / self.n
                    if not bool(torch.isfinite(loss)):
                        raise DivergenceError(
                            divergence_message(self.run_name(seed, run), epoch + 1, slot, cfg.lr)
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                if (epoch, slot) in self.eval_at:
                    losses[self.eval_at[(epoch, slot)]] = self._query_losses(model)
        return losses

    def run(self, seeds, progress):
        for s in tqdm(seeds, desc="further training (sequential)", disable=not progress):
            full = self._one_run(s, None)
            loo = (
                torch.stack([self._one_run(s, i) for i in self.left_out], dim=1)
                if self.left_out
                else full.new_empty(full.shape[0], 0, full.shape[1])
            )
            yield s, {"loss_full": full.cpu(), "loss_loo": loo.cpu()}


# ----------------------------------------------------------------------------------------------
# Vectorized engine
# ----------------------------------------------------------------------------------------------
class _Vectorized(_Engine):
    """All runs of a chunk trained together on stacked parameters (vmap over runs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params0 = trainable_params(self.model)
        self.frozen = frozen_state(self.model)
        # the MLP fast path hand-codes the built-in loss's gradient: a custom loss takes autograd
        self.mlp = None if self.custom_loss else MLPStack.maybe(self.model, self.params0)
        model = self.model

        def forward(params, inputs):
            return functional_call(model, {**params, **self.frozen}, tuple(inputs))

        self.fwd_batch = vmap(forward, in_dims=(0, 0))  # per-run batches
        self.fwd_shared = vmap(forward, in_dims=(0, None))  # the same queries for every run

    def _grads(self, params, inputs, target, w) -> dict[str, torch.Tensor]:
        """Per-run gradients of sum_b w[r, b] * loss(run r, sample b); inputs (R, B', ...)."""
        if self.mlp is not None:
            return self.mlp.grads(params, inputs[0], target, w, self.task)
        out = self.fwd_batch(params, inputs)
        total = (self.loss(out, target) * w).sum()
        return dict(zip(params, torch.autograd.grad(total, list(params.values()))))

    def _runs_per_chunk(self) -> int:
        """Runs that fit the memory budget: parameters, grads, 2 optimizer states, activations."""
        elem = next(iter(self.params0.values())).element_size()
        n_par = sum(p.numel() for p in self.params0.values())
        acts = activation_numel(self.model, tuple(x[:1] for x in self.inputs))
        per_run = elem * (
            5 * n_par
            + 3 * acts * (self.cfg.batch_size + 1)
            + acts * min(len(self.q_target), QUERY_CHUNK)
        )
        budget_mb, max_runs = self.cfg.memory_budget_mb, self.cfg.max_runs_per_chunk
        if self.device.type == "cuda":
            if budget_mb == FurtherTrainingConfig.memory_budget_mb:  # the CPU-sized default
                budget_mb = torch.cuda.mem_get_info(self.device)[0] / 2**21  # half the free memory
            if max_runs is None:
                max_runs = GPU_MAX_RUNS
        elif max_runs is None:
            max_runs = MLP_CPU_MAX_RUNS if self.mlp is not None else CPU_MAX_RUNS
        return max(1, min(max_runs, int(budget_mb * 2**20 // per_run)))

    def seeds_per_chunk(self) -> int:
        return max(1, self._runs_per_chunk() // (1 + len(self.left_out)))

    def run(self, seeds, progress):
        if not seeds:
            return
        R1 = 1 + len(self.left_out)
        max_runs = self._runs_per_chunk()
        seeds_per_chunk = self.seeds_per_chunk()
        chunks = [seeds[i : i + seeds_per_chunk] for i in range(0, len(seeds), seeds_per_chunk)]
        bar = tqdm(total=len(seeds), desc="further training (vectorized)", disable=not progress)
        for chunk in chunks:
            pairs = [(s, r) for s in chunk for r in range(R1)]
            # equal parts of at most max_runs runs (no small remainder part, which runs slowly)
            n_parts = -(-len(pairs) // max_runs)
            bounds = [round(i * len(pairs) / n_parts) for i in range(n_parts + 1)]
            parts = [
                self._train(pairs[lo:hi], progress) for lo, hi in zip(bounds[:-1], bounds[1:])
            ]
            losses = torch.cat(parts, dim=1)  # (E, len(pairs), Q)
            for j, s in enumerate(chunk):
                block = losses[:, j * R1 : (j + 1) * R1]
                yield (
                    s,
                    {
                        "loss_full": block[:, 0].to("cpu", copy=True),
                        "loss_loo": block[:, 1:].to("cpu", copy=True),
                    },
                )
                bar.update(1)
        bar.close()

    def _train(self, pairs: list[tuple[int, int]], progress: bool) -> torch.Tensor:
        """Train the runs ``pairs`` = [(seed, run)] (run 0 = full, 1 + j = left_out[j]) together.

        Returns query losses (n_evals, len(pairs), n_query).
        """
        cfg, n, B = self.cfg, self.n, self.cfg.batch_size
        R = len(pairs)
        params = stack_runs(self.params0, R)
        for p in params.values():
            p.requires_grad_(self.mlp is None)
        # plain SGD on the MLP fast path: each weight update fused into its gradient's matmul
        fused = (
            self.mlp is not None
            and cfg.optimizer == "sgd"
            and not cfg.weight_decay
            and cfg.grad_clip is None
        )
        opt = None if fused else StackedOptimizer(cfg, params, R)
        dev = self.device
        seeds = sorted({s for s, _ in pairs})
        run_seed = torch.tensor([seeds.index(s) for s, _ in pairs], device=dev)
        is_loo = torch.tensor([r > 0 for _, r in pairs], device=dev)
        lo_idx = torch.tensor(
            [self.left_out[r - 1] if r > 0 else 0 for _, r in pairs], dtype=torch.long, device=dev
        )
        dtype = next(iter(self.params0.values())).dtype
        losses = torch.empty(
            len(self.points), R, len(self.q_target), dtype=torch.float64, device=dev
        )
        if (0, 0) in self.eval_at:
            losses[self.eval_at[(0, 0)]] = self._query_losses(params)
        gens = [epoch_orders(n, s, self.last_epoch) for s in seeds]
        first_bad = torch.zeros(R, dtype=torch.long, device=dev)  # a run's first non-finite step
        # per step of the epoch, a value per run that is finite iff the step was (read at the
        # evaluations and the epoch's end: no per-step reduction or host sync)
        k_out = params[self.mlp.linear[-1][1]].shape[-1] if fused else 1
        signal = torch.zeros(self.n_slots, R, k_out, dtype=dtype, device=dev)

        def note_bad(epoch: int, steps: int) -> torch.Tensor:
            """``first_bad`` updated with this epoch's first ``steps`` steps."""
            bad = ~torch.isfinite(signal[:steps]).all(-1)  # (steps, R)
            step = epoch * self.n_slots + 1 + bad.to(torch.uint8).argmax(0)
            return torch.where((first_bad == 0) & bad.any(0), step, first_bad)

        every_batch = cfg.leave_out == "every_batch"
        shorter = not every_batch and any(r > 0 for _, r in pairs)  # some runs see n - 1 samples
        length = torch.where(is_loo, n - 1, n) if shorter else torch.full((R,), n, device=dev)
        k = torch.arange(n, device=dev)
        eb_w = -is_loo.to(dtype)[:, None] / n
        if every_batch:  # each run's left-out instance, appended to every batch
            lo_inputs = tuple(x[lo_idx][:, None] for x in self.inputs)
            lo_target = self.target[lo_idx][:, None]
        # per slot, the same every epoch: widths, per-run sample weights (R, width), active runs
        slots = []
        for slot in range(self.n_slots):
            width = min(B, n - slot * B)  # the last slot is narrower: no padded rows to compute
            valid = (slot * B + torch.arange(width, device=dev)) < length[:, None]
            count = valid.sum(1)
            w = valid.to(dtype) / count.clamp(min=1).to(dtype)[:, None]
            if every_batch:
                w = torch.cat([w, eb_w], dim=1)
            slots.append((slot * B, width, w, count > 0, (n - shorter) > slot * B))
        for epoch in tqdm(range(self.last_epoch), desc="epochs", leave=False, disable=not progress):
            perms = torch.stack([next(g) for g in gens]).to(
                dev
            )  # (n_seeds, n): one transfer per epoch
            rows = perms[run_seed]  # (R, n)
            if shorter:  # run_orders on the device: row k takes perm[k + (k >= position of i)]
                inv = torch.empty_like(perms).scatter_(1, perms, k.expand_as(perms))
                pos = inv[run_seed, lo_idx]
                src = torch.where(is_loo[:, None], k + (k >= pos[:, None]), k).clamp_(max=n - 1)
                rows = rows.gather(1, src).masked_fill_(is_loo[:, None] & (k == n - 1), -1)
            safe_all = rows.clamp(min=0)  # padding (-1) reads row 0 with weight 0
            for slot, (start, width, w, active, everyone) in enumerate(slots):
                safe = safe_all[:, start : start + width].reshape(-1)  # one batch per run
                inputs = tuple(gather_rows(x, safe, R) for x in self.inputs)
                target = gather_rows(self.target, safe, R)
                if every_batch:
                    inputs = tuple(torch.cat(pair, dim=1) for pair in zip(inputs, lo_inputs))
                    target = torch.cat([target, lo_target], dim=1)
                if fused:  # a zero-weight (inactive) run gets a zero update, as masked
                    self.mlp.sgd_step(params, inputs[0], target, w, self.task, cfg.lr, signal[slot])
                else:
                    grads = self._grads(params, inputs, target, w)
                    total = sum(g.detach().reshape(R, -1).sum(1) for g in grads.values())
                    signal[slot, :, 0] = total
                    opt.step(grads, active, everyone=everyone)
                if (epoch, slot + 1) in self.eval_at:
                    first_bad = note_bad(epoch, slot + 1)
                    self.check_finite(first_bad, pairs)
                    losses[self.eval_at[(epoch, slot + 1)]] = self._query_losses(params)
            first_bad = note_bad(epoch, self.n_slots)
        self.check_finite(first_bad, pairs)
        return losses

    @torch.no_grad()
    def _query_losses(self, params) -> torch.Tensor:
        if self.mlp is not None:
            x = self.q_inputs[0]
            out = self.mlp.forward(
                params, x.expand(next(iter(params.values())).shape[0], *x.shape)
            )[-1]
            return self.query_loss(out, self.q_target.expand(out.shape[0], *self.q_target.shape))
        detached = {k: v.detach() for k, v in params.items()}
        parts = []
        for sl in batch_slices(
            len(self.q_target), QUERY_CHUNK
        ):  # queries in chunks bound the memory
            out = self.fwd_shared(detached, tuple(x[sl] for x in self.q_inputs))  # (R, chunk, k)
            target = self.q_target[sl]
            parts.append(self.query_loss(out, target.expand(out.shape[0], *target.shape)))
        return torch.cat(parts, dim=1)
