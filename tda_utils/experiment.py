"""Glue that keeps the notebooks thin: paths, left-out selection, running methods, tables.

Public: ``output_paths``, ``select_left_out``, ``select_queries``, ``run_methods``,
``agreement_curves``, ``summary_table``.
"""
from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .cache import default_results_dir, repo_path, repo_root
from .config import check_indices, check_positive
from .data import Splits
from .further_training import FurtherTrainingResult
from .methods import METHODS, AttributionScores, attribute, method_order, method_style, methods_in_family
from .metrics import Curve, agreement


def output_paths(profile: str = "cpu", figures_dir: str | None = None, results_dir: str | None = None):
    """Where a notebook writes: ``figures`` (default ``<repo>/figures/<profile>``) and ``results``
    (the cache; default ``<repo>/results`` or ``$FIMO_RESULTS_DIR``)."""
    figures = Path(figures_dir) if figures_dir else repo_root() / "figures" / profile
    results = Path(results_dir) if results_dir else default_results_dir()
    figures.mkdir(parents=True, exist_ok=True)
    return types.SimpleNamespace(figures=figures, results=results)


def load_data(dataset: str, data_path: str | None = None, seed: int = 0, **options: Any) -> Splits:
    """``load_dataset`` with the notebooks' ``data_path`` passed to the loader's own file or
    folder parameter (``path``, ``root_dir`` or ``root``)."""
    import inspect

    from .data import DATASETS, load_dataset

    if data_path is not None and dataset in DATASETS:
        accepted = inspect.signature(DATASETS[dataset]).parameters
        name = next((p for p in ("path", "root_dir", "root") if p in accepted), None)
        if name is None:
            raise ValueError(f"data_path is given but dataset {dataset!r} reads no local files; set data_path=None")
        options[name] = str(repo_path(data_path))
    if options.get("model_path") is not None:
        options["model_path"] = str(repo_path(options["model_path"]))
    return load_dataset(dataset, seed=seed, **options)


def paper_step_schedule(n_train: int, batch_size: int, epochs: int, every: int = 5) -> list[int]:
    """The paper's SST-2 evaluation steps: after batch b (0-based) when b > 0 and b % every == 0,
    plus the last step; as step counts: 6, 11, ..., and the total for ``every=5``."""
    total = -(-n_train // batch_size) * epochs
    return sorted({b + 1 for b in range(1, total) if b % every == 0} | {total})


def select_left_out(splits: Splits, left_out: Sequence[int] | None = None, n_left_out: int | None = None) -> list[int]:
    """The left-out training instances: ``left_out`` if given, else the dataset's default
    (``splits.meta["default_left_out"]``), truncated to the first ``n_left_out``."""
    chosen = list(splits.meta["default_left_out"]) if left_out is None else list(left_out)
    if n_left_out is not None:
        if n_left_out < 2:
            raise ValueError(f"n_left_out={n_left_out} must be >= 2 (agreement is across left-out instances)")
        chosen = chosen[:n_left_out]
    return list(check_indices("left_out", chosen, splits.n_train))


def select_queries(splits: Splits, query_indices: Sequence[int] | None = None, n_queries: int | None = None) -> list[int]:
    """Test instances scored: ``query_indices`` if given, else the first ``n_queries`` (all if None)."""
    chosen = list(range(splits.n_test)) if query_indices is None else list(query_indices)
    if n_queries is not None:
        chosen = chosen[:n_queries]
    return list(check_indices("query_indices", chosen, splits.n_test))


def run_methods(methods: Sequence[str], model, splits: Splits, train_indices, query_indices,
                damping_multiple: float = 100.0, method_options: Mapping[str, Mapping[str, Any]] | None = None,
                gold: FurtherTrainingResult | None = None, progress: bool = True) -> dict[str, AttributionScores]:
    """Run each method in ``methods`` (paper order) on the same train x query pairs.

    Hessian-based methods get ``damping_multiple`` (unless ``method_options[m]`` gives an absolute
    ``damping``); ``method_options[m]`` overrides per method.
    ``if_time`` is evaluated at the gold standard's times (converted to optimizer steps) with its
    learning rate.
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
                raise ValueError("if_time needs the gold standard (gold=...) for its times and learning rate")
            opts.update(times=gold_steps(gold, splits), lr=gold.config.lr)
        opts.update(method_options.get(m, {}))
        out[m] = attribute(m, model, splits, train_indices=train_indices, query_indices=query_indices, **opts)
    return out


def gold_steps(gold: FurtherTrainingResult, splits: Splits) -> torch.Tensor:
    """The gold standard's evaluation times in optimizer steps, (n_evals,)."""
    if gold.time_unit == "step":
        return gold.times.clone()
    per_epoch = -(-splits.n_train // gold.config.batch_size)
    return gold.times * per_epoch


def method_values(score: AttributionScores) -> torch.Tensor:
    """Scores to compare with tau: (n_query, n_train) or, for time-resolved methods
    (``diagnostics["values_by_time"]``), (n_evals, n_query, n_train)."""
    return score.diagnostics.get("values_by_time", score.values)


def agreement_curves(tau: torch.Tensor, scores: Mapping[str, AttributionScores], metric: str = "cosine") -> dict[str, Curve]:
    """{method: Curve} of every method's agreement with ``tau`` (n_evals, n_query, n_left_out)."""
    return {m: agreement(tau, method_values(s), metric) for m, s in scores.items()}


def applicable(scores: Mapping[str, AttributionScores], gold: FurtherTrainingResult,
               splits: Splits | None = None) -> dict[str, AttributionScores]:
    """The scores that can be compared with ``gold``: time-resolved predictions (``if_time``) only
    when they were made for this gold standard (SGD, same learning rate and times)."""
    out = {}
    for m, s in scores.items():
        if "values_by_time" in s.diagnostics:
            times = s.config.get("times")
            same = (gold.config.optimizer == "sgd" and s.config.get("lr") == gold.config.lr
                    and times is not None and len(times) == len(gold.times)
                    and (splits is None or torch.allclose(torch.as_tensor(times).double(), gold_steps(gold, splits))))
            if not same:
                continue
        out[m] = s
    return out


def reference_score(splits: Splits) -> dict[str, float]:
    """A scikit-learn reference on the same split, as the paper checks its MLP: ridge regression
    (test MSE, R^2) or logistic regression and gradient boosting (test accuracy)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression, Ridge

    xtr, ytr = (t.reshape(len(t), -1).double().numpy() for t in splits.train.tensors)
    xte, yte = (t.reshape(len(t), -1).double().numpy() for t in splits.test.tensors)
    if splits.task == "regression":
        pred = Ridge(alpha=1.0).fit(xtr, ytr).predict(xte).reshape(yte.shape)
        mse = float(((pred - yte) ** 2).mean())
        return {"ridge_test_mse": mse, "ridge_test_r2": 1 - mse / float(yte.var())}
    ytr, yte = ytr.ravel(), yte.ravel()
    lr = LogisticRegression(max_iter=2000).fit(xtr, ytr)
    gb = HistGradientBoostingClassifier(random_state=0).fit(xtr, ytr)
    return {"logistic_test_accuracy": float(lr.score(xte, yte)), "boosting_test_accuracy": float(gb.score(xte, yte))}


def summary_table(curves: Mapping[str, Curve], times, scores: Mapping[str, AttributionScores] | None = None) -> pd.DataFrame:
    """Per method: agreement (mean +- SEM) at the first evaluation, at its best and at the last,
    the time of the best, and the method's wall time."""
    t = torch.as_tensor(times).double()
    rows = []
    for m in method_order(list(curves)):
        c = curves[m]
        best = int(torch.nan_to_num(c.mean, nan=-2.0).argmax())
        row = {
            "method": method_style(m)["label"],
            "first": float(c.mean[0]), "first_sem": float(c.sem[0]),
            "best": float(c.mean[best]), "best_time": float(t[best]),
            "last": float(c.mean[-1]), "last_sem": float(c.sem[-1]),
            "nan_queries_max": int(c.n_nan.max()),
        }
        if scores is not None and m in scores:
            row["wall_time_s"] = round(scores[m].wall_time, 2)
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


# ----------------------------------------------------------------------------------------------
# Per-dataset paper panels (one call per figure keeps the notebooks free of copied cells)
# ----------------------------------------------------------------------------------------------
FIGURE_NAMES = {
    "fig2": "cos_sim_epochs_{opt}_{ds}", "fig6": "spearman_epochs_{opt}_{ds}",
    "fig5": "cos_sim_epochs_{opt}_subfull_{ds}", "fig4": "cos_sim_epochs_{opt}_{ds}",
    "fig7": "cos_sim_seeds_{opt}_{ds}", "fig8": "cos_sim_seeds_{opt}_{ds}", "fig9": "cos_sim_seeds_{opt}_subfull_{ds}",
    "fig10": "attrib_scores_{ds}", "fig11": "cos_sim_epochs_re-train_{ds}",
}


def figure_name(fig_id: str, dataset: str, optimizer: str = "sgd") -> str:
    """File stem of a per-dataset panel: ``<fig_id>_<the paper's file name>``, e.g.
    ``fig2_cos_sim_epochs_sgd_concrete``."""
    if fig_id not in FIGURE_NAMES:
        raise ValueError(f"fig_id={fig_id!r} is not valid; allowed values: {', '.join(FIGURE_NAMES)}")
    return f"{fig_id}_" + FIGURE_NAMES[fig_id].format(opt=optimizer, ds=dataset)


def agreement_figure(fig_id: str, gold: FurtherTrainingResult, scores: Mapping[str, AttributionScores],
                     dataset: str, figures_dir, subtract_mean: bool = True, metric: str = "cosine",
                     seeds=None, note: str = "", xlabel: str | None = None):
    """Agreement vs further-training time for every method (Figs. 2, 4, 5, 6, 11).

    Returns ``(figure, {method: Curve})``; the figure is saved as PNG + PDF.
    """
    from . import plotting

    tau = gold.attribution(subtract_mean=subtract_mean, seeds=seeds)
    curves = agreement_curves(tau, applicable(scores, gold), metric)
    ylabel = "cosine similarity" if metric == "cosine" else "Spearman correlation"
    adj = "" if subtract_mean else ", full-data run subtracted only"
    title = f"{fig_id.replace('fig', 'Fig. ')}: {dataset}, {gold.config.optimizer.upper()}{adj}" + (f"\n{note}" if note else "")
    fig = plotting.plot_agreement(curves, gold.times, gold.time_unit, ylabel, title=title, xlabel=xlabel)
    plotting.save_figure(fig, figure_name(fig_id, dataset, gold.config.optimizer), figures_dir)
    return fig, curves


def seed_figure(fig_id: str, gold: FurtherTrainingResult, scores: Mapping[str, AttributionScores], dataset: str,
                figures_dir, subtract_mean: bool = True, ks=(1, 2, 5, 10, 20, 50, 100), note: str = ""):
    """Best cosine agreement vs number of seeds averaged (Figs. 3/7, 8, 9).

    Returns ``(figure, {method: SeedCurve})``.
    """
    from . import plotting
    from .metrics import seed_group_agreement

    per_seed = gold.per_seed(subtract_mean=subtract_mean)
    curves = {m: seed_group_agreement(per_seed, method_values(s), ks) for m, s in applicable(scores, gold).items()}
    adj = "" if subtract_mean else ", full-data run subtracted only"
    title = f"{fig_id.replace('fig', 'Fig. ')}: {dataset}, {gold.config.optimizer.upper()}{adj}" + (f"\n{note}" if note else "")
    fig = plotting.plot_seed_curves(curves, title=title)
    plotting.save_figure(fig, figure_name(fig_id, dataset, gold.config.optimizer), figures_dir)
    return fig, curves


def sorted_scores_figure(gold: FurtherTrainingResult, scores: Mapping[str, AttributionScores], dataset: str,
                         figures_dir, time_indices=(0,), methods=("grad_dot", "grad_cos")):
    """Fig. 10: sorted attribution scores of Grad-Dot, Grad-Cos and further training at the
    evaluation indices ``time_indices``. Returns ``(figure, {label: curve})``."""
    from . import plotting
    from .metrics import sorted_scores

    tau = gold.attribution(subtract_mean=True)
    bad = [j for j in time_indices if not -len(gold.times) <= j < len(gold.times)]
    if bad:
        raise ValueError(f"time_indices {bad} out of range: the gold standard has {len(gold.times)} evaluations")
    curves = {m: sorted_scores(scores[m].values) for m in methods if m in scores}
    unit = "epoch" if gold.time_unit == "epoch" else "step"
    for j in time_indices:
        t = gold.times[j].item()
        curves[f"further training, {unit} {t:g}"] = sorted_scores(tau[j])
    fig = plotting.plot_sorted_scores(curves, title=f"Fig. 10: {dataset}")
    plotting.save_figure(fig, figure_name("fig10", dataset), figures_dir)
    return fig, curves


def top_instances(gold: FurtherTrainingResult, scores: Mapping[str, AttributionScores], query_positions=3,
                  k: int = 3, time_index: int | None = None) -> pd.DataFrame:
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
    tau_all = gold.attribution(subtract_mean=True)  # (T, Q, L)
    signal = (gold.attribution(subtract_mean=False) != 0).double().mean(dim=-1) >= 0.5  # (T, Q)
    if isinstance(query_positions, int):
        check_positive("query_positions", query_positions, integer=True)
        query_positions = signal.any(dim=0).nonzero().flatten().tolist()[:query_positions]
        if not query_positions:
            raise ValueError("no query has a non-zero gold standard; pass query_positions as a list to force some")
    for qp in query_positions:
        if not 0 <= qp < tau_all.shape[1]:
            raise ValueError(f"query position {qp} is out of range [0, {tau_all.shape[1]})")
    if time_index is None:
        ready = signal[:, list(query_positions)].all(dim=-1)  # (T,)
        time_index = int(ready.nonzero()[0]) if bool(ready.any()) else 0
    elif not -tau_all.shape[0] <= time_index < tau_all.shape[0]:
        raise ValueError(f"time_index={time_index} is out of range for {tau_all.shape[0]} evaluations")
    tau = tau_all[time_index]  # (Q, L)
    rows = []
    for qp in query_positions:
        order = tau[qp].argsort(descending=True).tolist()
        for kind, picks in (("helpful", order[:k]), ("harmful", order[::-1][:k])):
            for pos in picks:
                row = {"query": gold.query_indices[qp], "kind": kind, "train_index": gold.left_out[pos],
                       "time": float(gold.times[time_index]), "tau": float(tau[qp, pos])}
                for m, s in scores.items():
                    v = s.values[qp]
                    row[f"{m}_score"] = float(v[pos])
                    row[f"{m}_rank"] = int((v > v[pos]).sum()) + 1
                rows.append(row)
    return pd.DataFrame(rows)


def save_panels(panels: Mapping[str, Any], profile: str, notebook: str, dataset: str, results_dir=None) -> Path:
    """Store a notebook's panel data for ``05_paper_figures`` under
    ``<results>/panels/<profile>/<notebook>__<dataset>.pt`` (atomic)."""
    from .cache import atomic_save

    path = Path(results_dir or default_results_dir()) / "panels" / profile / f"{notebook}__{dataset}.pt"
    atomic_save(dict(panels), path)
    return path


def load_panels(profile: str, results_dir=None) -> dict[str, dict]:
    """All stored panel data of ``profile``: {"<notebook>__<dataset>": panels}."""
    folder = Path(results_dir or default_results_dir()) / "panels" / profile
    return {p.stem: torch.load(p, weights_only=False) for p in sorted(folder.glob("*.pt"))} if folder.exists() else {}




def crossing_time(curves: Mapping[str, Curve], times) -> float | None:
    """First evaluation time at which the influence-function curve reaches the first-order one
    after starting below it; None if they do not cross.

    The curves compared: the first registered first-order method present (Grad-Dot) and the first
    registered influence method damped by lambda0 present (CG, else LiSSA, LiSSA-H, EK-FAC,
    explicit IF).
    """
    fo = next((curves[m] for m in methods_in_family("first_order") if m in curves), None)
    inf = next((curves[m] for m in methods_in_family("influence") if m in curves
                and METHODS[m].damping == "lambda0"), None)
    if fo is None or inf is None:
        return None
    diff = (inf.mean - fo.mean).double()
    if not diff[0] < 0:
        return None
    above = torch.nonzero(diff >= 0).flatten()
    return float(torch.as_tensor(times)[above[0]]) if len(above) else None


def cross_dataset_summary(panels_by_run: Mapping[str, Mapping]) -> pd.DataFrame:
    """One row per (notebook run, method): cosine agreement at the first evaluation, at its best
    and at the last (Fig. 2 curves), and the time at which first-order and IF curves cross."""
    rows = []
    for run, p in panels_by_run.items():
        if "fig2" not in p:
            continue
        cross = crossing_time(p["fig2"], p["times"])
        table = summary_table(p["fig2"], p["times"])
        for method, r in table.iterrows():
            rows.append({"run": run, "method": method, "first": r["first"], "best": r["best"],
                         "best_time": r["best_time"], "last": r["last"], "crossing_time": cross,
                         "time_unit": p.get("time_unit", "epoch")})
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats rounded, NaN/None shown as "-"; whole
    numbers in columns named ``*time*`` shown without decimals)."""
    def cell(v, column):
        if v is None or (isinstance(v, float) and v != v):
            return "-"
        if isinstance(v, float) and "time" in str(column) and v.is_integer():
            return str(int(v))
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, df.columns)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def update_readme(summary: pd.DataFrame, figure: Path, profile: str, readme: Path | None = None) -> bool:
    """Replace the README's results section (between the ``results`` markers) with the
    multi-panel Fig. 2 and the summary table of ``profile``. Returns False if the README has no
    markers (then nothing is written)."""
    readme = Path(readme) if readme else repo_root() / "README.md"
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    rel = Path(figure).resolve().relative_to(readme.parent.resolve()) if Path(figure).is_absolute() else Path(figure)
    cols = ["run", "method", "first", "best", "best_time", "last", "crossing_time"]
    table = markdown_table(summary[cols]) if len(summary) else "(no results)"
    body = (f"{README_START}\n*Generated by `make reproduce` (profile `{profile}`) from "
            f"`notebooks/05_paper_figures.ipynb`; cosine agreement of each method with further training "
            f"at the first evaluation, at its best and at the last.*\n\n![Fig. 2, {profile} profile]({rel.as_posix()})"
            f"\n\n{table}\n{README_END}")
    start, end = text.index(README_START), text.index(README_END) + len(README_END)
    readme.write_text(text[:start] + body + text[end:])
    return True


def image_table_figure(table: pd.DataFrame, splits: Splits, dataset: str, figures_dir, methods: Sequence[str] = ()):
    """Table 2 as an image grid (one row per query: the query, then its most helpful and most
    harmful training images by the gold standard, titled with tau and each method's rank)."""
    from . import plotting

    x_test, x_train = splits.test.tensors[0], splits.train.tensors[0]
    names = splits.meta.get("class_names")
    label = lambda y: names[int(y)] if names else str(int(y))  # noqa: E731
    y_test, y_train = splits.test.tensors[-1], splits.train.tensors[-1]
    queries = list(dict.fromkeys(table["query"].tolist()))
    rows = []
    for q in queries:
        part = table[table["query"] == q]
        cells = []
        for _, r in part.iterrows():
            ranks = [f"{method_style(m)['label']} #{int(r[f'{m}_rank'])}"
                     for m in methods if f"{m}_rank" in r]
            ranks = "\n".join(", ".join(ranks[i:i + 2]) for i in range(0, len(ranks), 2))
            text = f"{r['kind']} {label(y_train[int(r['train_index'])])}\ntau={r['tau']:.2g}" + (f"\n{ranks}" if ranks else "")
            cells.append((x_train[int(r["train_index"])], text))
        rows.append(cells)
    norm = splits.meta.get("normalization") or {}
    fig = plotting.plot_image_table(x_test[queries], [f"test {q}: {label(y_test[q])}" for q in queries], rows,
                                    title=f"Table 2: {dataset}", mean=norm.get("mean"), std=norm.get("std"))
    plotting.save_figure(fig, f"table2_{dataset}", figures_dir)
    return fig


def text_table(table: pd.DataFrame, splits: Splits, width: int = 160) -> pd.DataFrame:
    """Table 2 for text: ``top_instances`` with the test and training texts and their labels
    (from ``splits.meta["texts_train"/"texts_test"]`` and ``class_names``), texts shortened to
    ``width`` characters."""
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
