"""What a notebook sequences: load and select, run the methods, tables, and its results record.

Public: ``output_paths``, ``load_data``, ``paper_step_schedule``, ``select_left_out``,
``select_queries``, ``data_table``, ``run_methods``, ``cost_table``, ``gold_steps``,
``method_values``, ``applicable``, ``agreement_curves``, ``agreement_panel``, ``seed_panel``,
``sorted_panel``, ``reference_score``, ``summary_table``, ``top_instances``, ``text_table``,
``RunResults``, ``collect_results``, ``load_results`` (the record: ``records.py``),
``readable_scores`` (a table's score columns, scaled and legible: ``tables.py``). The panels
are computed once per gold standard and scores, where it ran (``panels.py``).

A notebook run ends with one ``collect_results`` call: the ``RunResults`` record of every
per-dataset panel (agreement curves over time, seed curves, sorted scores), stored as plain data
(dicts, lists, numbers, strings, tensors; ``torch.load(weights_only=True)``) under
``<results>/panels/<profile>/<notebook>__<dataset>.pt``, and read by ``05_paper_figures``.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from tqdm.auto import tqdm

from ..cache import default_results_dir, output_root, repo_path
from ..config import check_indices, check_positive
from ..data.registry import DATASETS, Splits, load_dataset
from ..gold.further_training import FurtherTrainingResult
from ..methods import METHODS, AttributionScores, attribute, method_order, method_style
from ..methods.registry import method_label
from . import panels
from .metrics import Curve, SeedCurve, agreement, nan_argmax, seed_group_agreement, sorted_scores
from .records import AGREEMENT_FIGURES, SEED_FIGURES, RunResults, load_results  # noqa: F401 (public here)
from .tables import readable_scores  # noqa: F401 (public here)

#: the number of seeds averaged in the seed figures (clipped to the seeds available)
SEED_KS = (1, 2, 5, 10, 20, 50, 100)


def output_paths(
    profile: str = "cpu", figures_dir: str | None = None, results_dir: str | None = None
):
    """Where a notebook writes: ``figures`` (default ``<repo>/figures/<profile>``) and ``results``
    (the cache; default ``<repo>/results`` or ``$FIMO_RESULTS_DIR``). ``$FIMO_OUTPUT_DIR``, when
    set, replaces ``<repo>`` in both defaults (``cache.output_root``).
    """
    figures = Path(figures_dir) if figures_dir else output_root() / "figures" / profile
    results = Path(results_dir) if results_dir else default_results_dir()
    figures.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(figures=figures, results=results)


def load_data(dataset: str, data_path: str | None = None, seed: int = 0, **options: Any) -> Splits:
    """``load_dataset`` with the notebooks' ``data_path`` passed to the loader's own file or
    folder parameter (``path``, ``root_dir`` or ``root``).
    """
    if data_path is not None and dataset in DATASETS:
        accepted = inspect.signature(DATASETS[dataset]).parameters
        name = next((p for p in ("path", "root_dir", "root") if p in accepted), None)
        if name is None:
            raise ValueError(
                f"data_path is given but dataset {dataset!r} reads no local files; "
                "set data_path=None"
            )
        options[name] = str(repo_path(data_path))
    if options.get("model_path") is not None:
        options["model_path"] = str(repo_path(options["model_path"]))
    return load_dataset(dataset, seed=seed, **options)


def paper_step_schedule(n_train: int, batch_size: int, epochs: int, every: int = 5) -> list[int]:
    """The paper's SST-2 evaluation steps: after batch b (0-based) when b > 0 and b % every == 0,
    plus the last step; as step counts: 6, 11, ..., and the total for ``every=5``.
    """
    total = -(-n_train // batch_size) * epochs
    return sorted({b + 1 for b in range(1, total) if b % every == 0} | {total})


def select_left_out(
    splits: Splits, left_out: Sequence[int] | None = None, n_left_out: int | None = None
) -> list[int]:
    """The left-out training instances: ``left_out`` if given, else the dataset's default
    (``splits.meta["default_left_out"]``), truncated to the first ``n_left_out``.
    """
    chosen = list(splits.meta["default_left_out"]) if left_out is None else list(left_out)
    if n_left_out is not None:
        if n_left_out < 2:
            raise ValueError(
                f"n_left_out={n_left_out} must be >= 2 (agreement is across left-out instances)"
            )
        chosen = chosen[:n_left_out]
    return list(check_indices("left_out", chosen, splits.n_train))


def select_queries(
    splits: Splits, query_indices: Sequence[int] | None = None, n_queries: int | None = None
) -> list[int]:
    """Test instances scored: ``query_indices``, else the first ``n_queries`` (all if None)."""
    chosen = list(range(splits.n_test)) if query_indices is None else list(query_indices)
    if n_queries is not None:
        chosen = chosen[:n_queries]
    return list(check_indices("query_indices", chosen, splits.n_test))


def run_methods(
    methods: Sequence[str],
    model,
    splits: Splits,
    train_indices,
    query_indices,
    damping_multiple: float = 100.0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    gold: FurtherTrainingResult | None = None,
    progress: bool = True,
    device: str = "auto",
) -> dict[str, AttributionScores]:
    """Run each method in ``methods`` (paper order) on the same train x query pairs.

    Hessian-based methods get ``damping_multiple`` (unless ``method_options[m]`` gives an absolute
    ``damping``); ``method_options[m]`` overrides per method.
    ``if_time`` is evaluated at the gold standard's times (converted to optimizer steps) with its
    learning rate. ``device``: where every method computes (``attribute``).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods has unknown names {unknown}; allowed: {sorted(METHODS)}")
    method_options = dict(method_options or {})
    out: dict[str, AttributionScores] = {}
    for m in tqdm(method_order(list(methods)), desc="attribution methods", disable=not progress):
        opts: dict[str, Any] = {}
        if METHODS[m].damping == "lambda0" and "damping" not in method_options.get(m, {}):
            opts["damping_multiple"] = damping_multiple
        if m == "if_time":
            if gold is None:
                raise ValueError(
                    "if_time needs the gold standard (gold=...) for its times and learning rate"
                )
            opts.update(times=gold_steps(gold, splits), lr=gold.config.lr)
        opts.update(method_options.get(m, {}))
        out[m] = attribute(
            m,
            model,
            splits,
            train_indices=train_indices,
            query_indices=query_indices,
            device=device,
            **opts,
        )
    return out


def gold_steps(gold: FurtherTrainingResult, splits: Splits) -> torch.Tensor:
    """The gold standard's evaluation times in optimizer steps, (n_evals,)."""
    if gold.time_unit == "step":
        return gold.times.clone()
    per_epoch = -(-splits.n_train // gold.config.batch_size)
    return gold.times * per_epoch


def method_values(score: AttributionScores) -> torch.Tensor:
    """Scores to compare with tau: (n_query, n_train) or, for time-resolved methods
    (``diagnostics["values_by_time"]``), (n_evals, n_query, n_train).
    """
    return score.diagnostics.get("values_by_time", score.values)


def agreement_curves(
    tau: torch.Tensor, scores: Mapping[str, AttributionScores], metric: str = "cosine"
) -> dict[str, Curve]:
    """{method: Curve} of every method's agreement with ``tau`` (n_evals, n_query, n_left_out)."""
    return {m: agreement(tau, method_values(s), metric) for m, s in scores.items()}


def applicable(
    scores: Mapping[str, AttributionScores],
    gold: FurtherTrainingResult,
    splits: Splits | None = None,
) -> dict[str, AttributionScores]:
    """The scores that can be compared with ``gold``: time-resolved predictions (``if_time``) only
    when they were made for this gold standard (SGD, same learning rate and times).
    """
    out = {}
    for m, s in scores.items():
        if "values_by_time" in s.diagnostics:
            times = s.config.get("times")
            same = (
                gold.config.optimizer == "sgd"
                and s.config.get("lr") == gold.config.lr
                and times is not None
                and len(times) == len(gold.times)
                and (
                    splits is None
                    or torch.allclose(torch.as_tensor(times).double(), gold_steps(gold, splits))
                )
            )
            if not same:
                continue
        out[m] = s
    return out


def reference_score(splits: Splits) -> dict[str, float]:
    """A scikit-learn reference on the same split, as the paper checks its MLP: ridge regression
    (test MSE, R^2) or logistic regression and gradient boosting (test accuracy).
    """
    xtr, ytr = (t.reshape(len(t), -1).double().numpy() for t in splits.train.tensors)
    xte, yte = (t.reshape(len(t), -1).double().numpy() for t in splits.test.tensors)
    if splits.task == "regression":
        pred = Ridge(alpha=1.0).fit(xtr, ytr).predict(xte).reshape(yte.shape)
        mse = float(((pred - yte) ** 2).mean())
        return {"ridge_test_mse": mse, "ridge_test_r2": 1 - mse / float(yte.var())}
    ytr, yte = ytr.ravel(), yte.ravel()
    lr = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    gb = HistGradientBoostingClassifier(random_state=0).fit(xtr, ytr)
    return {
        "logistic_test_accuracy": float(lr.score(xte, yte)),
        "boosting_test_accuracy": float(gb.score(xte, yte)),
    }


def summary_table(
    curves: Mapping[str, Curve],
    times,
    scores: Mapping[str, AttributionScores] | None = None,
    wall_time: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Per method (label): agreement (mean +- SEM) at the first evaluation, at its best and at
    the last, the time of the best, and the method's wall time (from ``scores`` or ``wall_time``).

    ``dropped``: the largest number of queries left out of the agreement mean at any evaluation
    (``Curve.n_dropped``, max over time). Labels name a non-paper LiSSA depth
    (``method_label``): from ``scores``, else from ``labels`` ({method: label}).
    """
    t = torch.as_tensor(times).double()
    if scores is not None:
        wall_time = {m: s.wall_time for m, s in scores.items()}
        labels = score_labels(scores)
    rows = []
    for m in method_order(list(curves)):
        c = curves[m]
        best = nan_argmax(c.mean)
        row = {
            "method": (labels or {}).get(m, method_style(m)["label"]),
            "first": float(c.mean[0]),
            "first_sem": float(c.sem[0]),
            "best": float(c.mean[best]),
            "best_time": float(t[best]),
            "last": float(c.mean[-1]),
            "last_sem": float(c.sem[-1]),
            "nan_queries_max": int(c.n_nan.max()),
            "dropped": int(torch.as_tensor(c.n_dropped).max()),
        }
        if wall_time is not None and m in wall_time:
            row["wall_time_s"] = round(wall_time[m], 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def top_instances(
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    query_positions=3,
    k: int = 3,
    time_index: int | None = None,
) -> pd.DataFrame:
    """Table 2: for each query, the ``k`` most helpful and most harmful left-out instances by the
    gold standard (seed-averaged, mean-subtracted tau at evaluation ``time_index``), with every
    method's score and rank (1 = most helpful) for the same instances.

    ``query_positions``: positions in ``gold.query_indices``, or an int n: the first n queries
    with a signal at some evaluation. A query has a signal at an evaluation when its raw
    (not mean-subtracted) seed-averaged tau is non-zero for at least half of the left-out
    instances: a query the model fits with a float32 loss of ~1e-7 gets exactly 0 for most.
    ``time_index=None`` (default): the first evaluation at which every chosen query has a signal
    (with ``leave_out="permutation"`` and evaluations within the first epoch, an instance no
    seed has visited yet has tau = 0). The column ``time`` records it.
    """
    tau_all, raw = (_tau(gold, sm) for sm in (True, False))  # (T, Q, L)
    signal = (raw != 0).double().mean(dim=-1) >= 0.5  # (T, Q)
    if isinstance(query_positions, int):
        check_positive("query_positions", query_positions, integer=True)
        query_positions = signal.any(dim=0).nonzero().flatten().tolist()[:query_positions]
        if not query_positions:
            raise ValueError(
                "no query has a non-zero gold standard; "
                "pass query_positions as a list to force some"
            )
    for qp in query_positions:
        if not 0 <= qp < tau_all.shape[1]:
            raise ValueError(f"query position {qp} is out of range [0, {tau_all.shape[1]})")
    if time_index is None:
        ready = signal[:, list(query_positions)].all(dim=-1)  # (T,)
        time_index = int(ready.nonzero()[0]) if bool(ready.any()) else 0
    elif not -tau_all.shape[0] <= time_index < tau_all.shape[0]:
        raise ValueError(
            f"time_index={time_index} is out of range for {tau_all.shape[0]} evaluations"
        )
    tau = tau_all[time_index]  # (Q, L)
    rows = []
    for qp in query_positions:
        order = tau[qp].argsort(descending=True).tolist()
        for kind, picks in (("helpful", order[:k]), ("harmful", order[::-1][:k])):
            for pos in picks:
                row = {
                    "query": gold.query_indices[qp],
                    "kind": kind,
                    "train_index": gold.left_out[pos],
                    "time": float(gold.times[time_index]),
                    "tau": float(tau[qp, pos]),
                }
                for m, s in scores.items():
                    v = s.values[qp]
                    row[f"{m}_score"] = float(v[pos])
                    row[f"{m}_rank"] = int((v > v[pos]).sum()) + 1
                rows.append(row)
    return pd.DataFrame(rows)


def text_table(table: pd.DataFrame, splits: Splits, width: int = 160) -> pd.DataFrame:
    """Table 2 for text: ``top_instances`` with the test and training texts and their labels
    (from ``splits.meta["texts_train"/"texts_test"]`` and ``class_names``), texts shortened to
    ``width`` characters.
    """
    names = splits.meta.get("class_names")
    label = lambda y: names[int(y)] if names else int(y)  # noqa: E731
    short = lambda s: s if len(s) <= width else s[: width - 3] + "..."  # noqa: E731
    y_train, y_test = splits.train.tensors[-1], splits.test.tensors[-1]
    out = table.copy()
    out.insert(1, "query_text", [short(splits.meta["texts_test"][q]) for q in out["query"]])
    out.insert(2, "query_label", [label(y_test[q]) for q in out["query"]])
    out.insert(5, "train_text", [short(splits.meta["texts_train"][i]) for i in out["train_index"]])
    out.insert(6, "train_label", [label(y_train[i]) for i in out["train_index"]])
    return out


def data_table(
    splits: Splits,
    left_out: Sequence[int],
    queries: Sequence[int],
    reference: bool = False,
    hidden: Sequence[str] = ("default_left_out", "texts_train", "texts_test"),
) -> pd.DataFrame:
    """One-column table of the data's provenance (``splits.meta`` without ``hidden`` keys), the
    numbers of left-out instances and queries and, with ``reference``, ``reference_score``.
    """
    meta = {k: v for k, v in splits.meta.items() if k not in hidden}
    meta.update(n_left_out=len(left_out), n_queries=len(queries))
    if reference:
        meta.update(reference_score(splits))
    return pd.Series(meta, dtype=object).to_frame("value")


def cost_table(scores: Mapping[str, AttributionScores]) -> pd.DataFrame:
    """Wall time (s) and peak memory (MB) of every method's run."""
    return pd.DataFrame(
        {
            m: {"wall time (s)": s.wall_time, "peak memory (MB)": s.peak_memory_mb}
            for m, s in scores.items()
        }
    ).T


# ----------------------------------------------------------------------------------------------
# Panels and the results record
# ----------------------------------------------------------------------------------------------
def score_labels(scores: Mapping[str, AttributionScores]) -> dict[str, str]:
    """{method: its figure and table label} (``method_label``: names a non-paper LiSSA depth)."""
    return {m: method_label(m, s) for m, s in scores.items()}


def _tau(gold: FurtherTrainingResult, subtract_mean: bool, device=None) -> torch.Tensor:
    """``gold.attribution(subtract_mean)``, from the panels' memo unless ``panels.reference()``."""
    if panels.is_reference():
        return gold.attribution(subtract_mean=subtract_mean)
    return panels.tau(gold, subtract_mean, device=device)


def agreement_panel(
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    subtract_mean: bool = True,
    metric: str = "cosine",
    seeds=None,
    device=None,
) -> dict[str, Curve]:
    """{method: Curve}: agreement with the gold standard over time (Figs. 2, 4, 5, 6, 11),
    computed once per gold standard and scores, where it ran or on ``device`` (``panels``).
    """
    kept = applicable(scores, gold)
    if panels.is_reference():
        tau = gold.attribution(subtract_mean=subtract_mean, seeds=seeds)
        return agreement_curves(tau, kept, metric)
    values = {m: method_values(s) for m, s in kept.items()}
    return panels.agreement_curves(gold, values, subtract_mean, metric, seeds, device)


def seed_panel(
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    subtract_mean: bool = True,
    ks: Sequence[int] = SEED_KS,
    device=None,
) -> dict[str, SeedCurve]:
    """{method: SeedCurve}: best agreement vs the number of seeds averaged (Figs. 3, 7, 8, 9),
    computed once per gold standard and scores, where it ran or on ``device`` (``panels``).
    """
    kept = applicable(scores, gold)
    if not panels.is_reference():
        values = {m: method_values(s) for m, s in kept.items()}
        return panels.seed_curves(gold, values, subtract_mean, ks, device=device)
    per_seed = gold.per_seed(subtract_mean=subtract_mean)
    return {m: seed_group_agreement(per_seed, method_values(s), ks) for m, s in kept.items()}


def sorted_panel(
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    time_indices=(0,),
    methods: Sequence[str] = ("grad_dot", "grad_cos"),
    device=None,
) -> dict[str, torch.Tensor]:
    """{label: (n_left_out,)}: sorted scores of ``methods`` and of the gold standard at the
    evaluation indices ``time_indices`` (Fig. 10).
    """
    tau = _tau(gold, True, device)
    bad = [j for j in time_indices if not -len(gold.times) <= j < len(gold.times)]
    if bad:
        raise ValueError(
            f"time_indices {bad} out of range: the gold standard has {len(gold.times)} evaluations"
        )
    curves = {m: sorted_scores(scores[m].values) for m in methods if m in scores}
    unit = "epoch" if gold.time_unit == "epoch" else "step"
    for j in time_indices:
        curves[f"further training, {unit} {gold.times[j].item():g}"] = sorted_scores(tau[j])
    return curves


def collect_results(
    notebook: str,
    dataset: str,
    profile: str,
    gold: FurtherTrainingResult,
    scores: Mapping[str, AttributionScores],
    final_eval: Mapping[str, float],
    gold_adam: FurtherTrainingResult | None = None,
    gold_retrain: FurtherTrainingResult | None = None,
    seed_ks: Sequence[int] = SEED_KS,
    sorted_time_indices=(0,),
    results_dir=None,
    final_model: str = "",
    device=None,
) -> RunResults:
    """Build a notebook run's ``RunResults`` from its gold standards and scores, and save it.

    The same curves as the notebook's figures (``paper.agreement_figure`` and friends call the
    same panel functions). ``gold_adam`` adds Figs. 4 and 8, ``gold_retrain`` Fig. 11.
    ``final_model``: where the final model came from (``tu.final.describe(final)``), shown in
    the gallery. Panels the figure cells drew come from the memo (``panels``); ``device``: where
    the others compute (default: where each gold standard ran).
    """
    dev = {"device": device}
    agree = {
        "fig2": agreement_panel(gold, scores, **dev),
        "fig6": agreement_panel(gold, scores, metric="spearman", **dev),
        "fig5": agreement_panel(gold, scores, subtract_mean=False, **dev),
    }
    times = {f: gold.times for f in agree}
    seeds = {
        "fig7": seed_panel(gold, scores, ks=seed_ks, **dev),
        "fig9": seed_panel(gold, scores, False, seed_ks, **dev),
    }
    if gold_adam is not None:
        agree["fig4"], times["fig4"] = agreement_panel(gold_adam, scores, **dev), gold_adam.times
        seeds["fig8"] = seed_panel(gold_adam, scores, ks=seed_ks, **dev)
    if gold_retrain is not None:
        agree["fig11"] = agreement_panel(gold_retrain, scores, **dev)
        times["fig11"] = gold_retrain.times
    record = RunResults(
        notebook=notebook,
        dataset=dataset,
        profile=profile,
        time_unit=gold.time_unit,
        times=times,
        agreement=agree,
        seeds=seeds,
        sorted_scores=sorted_panel(gold, scores, sorted_time_indices, device=device),
        wall_time={m: float(s.wall_time) for m, s in scores.items()},
        final_eval=dict(final_eval),
        labels=score_labels(scores),
        final_model=final_model,
    )
    record.save(results_dir)
    return record
