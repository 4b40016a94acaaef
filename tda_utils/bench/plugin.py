"""Plug-in attribution methods: load one by ``module:function``, call it on a run, check what
it returns.

Public: ``Plugin``, ``PluginError``, ``NotApplicable``, ``load_plugin``, ``run_plugin``.

The contract: ``f(model, splits, train_indices, query_indices, **options)`` returns scores of
shape ``(len(query_indices), len(train_indices))`` (a tensor, a numpy array, or anything
``torch.as_tensor`` takes; an ``AttributionScores`` is also accepted), query-major, positive =
helpful (removing the training instance raises the query's loss), on any scale. ``options``
holds ``device`` (when the function takes it or ``**options``) and the user's ``--option``
values. A plug-in is named ``module:function`` (``pkg.mod:fn``; ``module:Class.method`` also
works), importable from the current directory or ``PYTHONPATH``.

Every problem is a ``PluginError`` whose message names the plug-in and, when it happened on a
run, the run: not importable, not callable, an exception inside it (with its message), a wrong
shape (with the expected one), NaN or inf values (how many). A plug-in that does not apply to a
run (a model too large for it, a task it does not handle) raises ``NotApplicable`` with the
reason: its row says "not applicable" and it is not an error.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..methods import AttributionScores, PeakMemory
from .limits import LimitExceeded, Limits, enforced


class PluginError(RuntimeError):
    """A plug-in could not be loaded, failed, or returned unusable scores."""


class NotApplicable(Exception):
    """Raised by a plug-in when its method does not apply to this run (say why in the message):
    the leaderboard row says "not applicable" with the reason; the benchmark goes on, exit 0.
    """


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A loaded plug-in: its ``name`` (``module:function``, the leaderboard's ``method``) and
    ``function``.
    """

    name: str
    function: Callable[..., Any]

    def accepts(self, option: str) -> bool:
        """Whether the function takes keyword ``option`` (by name or through ``**kwargs``)."""
        try:
            params = inspect.signature(self.function).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature: pass everything
            return True
        return any(p.kind is p.VAR_KEYWORD or (p.name == option and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) for p in params)


def load_plugin(spec: str) -> Plugin:
    """The plug-in named ``spec`` = ``"module:function"``, imported from the current directory or
    ``PYTHONPATH``.

    Raises:
        PluginError: a malformed name, a module that cannot be imported (or raises while it is
            imported), a missing attribute, or one that is not callable.
    """
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise PluginError(
            f"plug-in {spec!r}: not of the form MODULE:FUNCTION (e.g. my_methods:grad_dot_last "
            "for a function grad_dot_last in my_methods.py in the current directory)"
        )
    module_name, attr = module_name.strip(), attr.strip()
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        where = "found" if err.name and err.name != module_name.split(".")[0] else "importable"
        raise PluginError(
            f"plug-in {spec!r}: cannot import module {module_name!r} ({type(err).__name__}: "
            f"{err}); the module must be {where} from the current directory ({cwd}) or "
            "PYTHONPATH"
        ) from None
    except Exception as err:
        raise PluginError(
            f"plug-in {spec!r}: importing module {module_name!r} raised {type(err).__name__}: "
            f"{err}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n, v in vars(module).items()
                            if callable(v) and not n.startswith("_")
                            and getattr(v, "__module__", None) == module.__name__)
            raise PluginError(
                f"plug-in {spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) "
                f"has no function {attr!r}; its functions: {', '.join(public) or 'none'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise PluginError(
            f"plug-in {spec!r}: {module_name}.{attr} is a {type(obj).__name__}, not a function"
        )
    return Plugin(str(spec), obj)


def _as_values(out: Any, where: str) -> torch.Tensor:
    """The plug-in's return value as a CPU tensor (numbers only)."""
    if isinstance(out, AttributionScores):
        out = out.values
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        out = out[0]  # (values, diagnostics), as the registry's method functions return
    try:
        if isinstance(out, np.ndarray):
            values = torch.from_numpy(np.ascontiguousarray(out))
        else:
            values = torch.as_tensor(out).detach()
    except Exception as err:
        raise PluginError(
            f"{where} returned a {type(out).__name__}, not a tensor or array of numbers ({err})"
        ) from None
    values = values.cpu()
    if values.is_complex() or values.dtype == torch.bool:
        raise PluginError(f"{where} returned {values.dtype} values; give real numbers")
    return values if values.is_floating_point() else values.double()


def run_plugin(
    plugin: Plugin,
    run: str,
    model,
    splits,
    train_indices,
    query_indices,
    device: str = "auto",
    options: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
) -> AttributionScores:
    """Call ``plugin`` on one run and check its scores; returns them as ``AttributionScores``
    (``wall_time`` and ``peak_memory_mb`` measured as for the built-in methods).

    The plug-in gets a deep copy of ``model`` (in eval mode), so it cannot change what later
    plug-ins see; ``device`` is passed when it takes it (or ``**options``), and so is each of
    ``options``. ``limits`` bounds the call's wall time and memory (``limits.enforced``).

    Raises:
        NotApplicable: the plug-in said it does not apply to this run (the message names both).
        PluginError: an exception inside the plug-in (its message, the last frames), a wrong
            shape (the expected one), NaN or inf values (how many), a limit passed (which one),
            naming the plug-in and run.
    """
    where = f"plug-in {plugin.name!r} on run {run}"
    kwargs = dict(options or {})
    if plugin.accepts("device"):
        kwargs.setdefault("device", device)
    refused = [k for k in kwargs if k != "device" and not plugin.accepts(k)]
    if refused:
        raise PluginError(f"{where}: the function takes no option(s) {refused} (--option)")
    mine = copy.deepcopy(model).eval()
    train, query = list(train_indices), list(query_indices)
    start = time.perf_counter()
    try:
        with PeakMemory() as mem, enforced(limits):
            out = plugin.function(mine, splits, list(train), list(query), **kwargs)
    except KeyboardInterrupt:
        raise
    except LimitExceeded as err:
        raise PluginError(f"{where} {err} (limits: {limits.describe()})") from None
    except NotApplicable as err:
        raise NotApplicable(f"{where} does not apply: {err}") from None
    except BaseException as err:  # SystemExit too: a plug-in must not end the benchmark
        last = traceback.extract_tb(err.__traceback__)[-1]
        raise PluginError(
            f"{where} raised {type(err).__name__}: {err} (at {last.filename}:{last.lineno}, "
            f"in {last.name})"
        ) from None
    wall = time.perf_counter() - start
    values = _as_values(out, where)
    expected = (len(query), len(train))
    if tuple(values.shape) != expected:
        hint = (
            "; it looks transposed (train-major): return values.T"
            if tuple(values.shape) == expected[::-1]
            else ""
        )
        raise PluginError(
            f"{where} returned shape {tuple(values.shape)}; expected {expected} = "
            f"(len(query_indices), len(train_indices)), query-major{hint}"
        )
    n_nan, n_inf = int(torch.isnan(values).sum()), int(torch.isinf(values).sum())
    if n_nan or n_inf:
        raise PluginError(
            f"{where} returned {n_nan} NaN and {n_inf} inf values out of {values.numel()}; "
            "scores must be finite"
        )
    return AttributionScores(
        method=plugin.name,
        values=values,
        train_indices=tuple(train),
        query_indices=tuple(query),
        config={k: v for k, v in kwargs.items()},
        diagnostics={},
        wall_time=wall,
        peak_memory_mb=mem.peak_mb,
    )
