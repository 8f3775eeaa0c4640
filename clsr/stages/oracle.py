"""Stage oracle@<dataset> (notebook 07): the Bayes oracle (`clsr.oracle`) of every synthetic dataset of
``pipeline.datasets``, scored like a model on the same test candidates.

Writes reports/metrics/oracle/<dataset>.json:

    {"dataset", "ties",
     "test":         metrics of the full oracle on the fixed test candidates (the keys of a model run's
                     "test" dict, `clsr.metrics.evaluate_scores`),
     "test_uniform": the same on the uniformly sampled test candidates (only when the data hold them),
     "full_ranking": the target among every catalogue item, the user's earlier items left out
                     (`clsr.metrics.full_ranking_metrics`),
     "long", "short": {"test", "test_uniform", "full_ranking"} of the one-interest oracles,
     "popularity":   {"test", "test_uniform"} of the train-popularity scorer (the non-personal reference),
     "alpha_auc":    the oracle's α-AUC against the true driver (`clsr.oracle.oracle_alpha_auc`),
     "short_driven": {"posterior_mean", "observed_share"}: mean P(short | c_t, h) and the true share}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clsr import metrics as M
from clsr import oracle as O
from clsr.data.store import PreparedData, atomic_write_json
from clsr.pipeline import Context
from clsr.stages.protocol import ensure_prepared

READOUTS = ("full", "long", "short")
CANDIDATE_SETS = ("test", "test_uniform")


def oracle_datasets(params: Mapping[str, Any]) -> list[str]:
    """The datasets of ``pipeline.datasets`` whose source is the synthetic generator."""
    return [d for d in params["pipeline"]["datasets"]
            if (params["datasets"][d].get("source") or {}).get("name") == "synthetic"]


def result_path(ctx: Context, dataset: str) -> Path:
    return ctx.metrics_path("oracle", dataset)


def evaluate(data: PreparedData, ties: str = "mean", params: O.OracleParams | None = None) -> dict[str, Any]:
    """Every metric of the oracle, its one-interest variants and popularity on `data` (the JSON's layout)."""
    params = params or O.params_for(data)
    users = data.instances["test"].user
    per: dict[str, dict[str, Any]] = {r: {} for r in READOUTS}
    popularity: dict[str, Any] = {}
    for cands in CANDIDATE_SETS:
        if cands not in data.candidates:
            continue
        scores = O.score_candidates(data, cands, params)
        for r in READOUTS:
            per[r][cands] = M.evaluate_scores(scores[r], users, ties=ties)
        popularity[cands] = M.evaluate_scores(O.popularity_scores(data, cands), users, ties=ties)
    catalogue = O.score_catalogue(data, "test", params)
    targets = data.event_item[data.target_event("test")].astype(np.int64) + 1
    exclude = O.earlier_items(data, "test")
    for r in READOUTS:
        per[r]["full_ranking"] = M.full_ranking_metrics(catalogue[r], targets, exclude, ties=ties)
    driver = data.event_extra.get("driver")
    posterior = O.short_driven_posterior(data, "test", params)
    out: dict[str, Any] = {"dataset": data.name, "ties": ties, **per["full"], "long": per["long"],
                           "short": per["short"], "popularity": popularity}
    out["alpha_auc"] = O.oracle_alpha_auc(data, "test", params) if driver is not None else None
    out["short_driven"] = {
        "posterior_mean": float(posterior.mean()),
        "observed_share": float((driver[data.target_event("test")] == 1).mean()) if driver is not None else None,
    }
    return out


def run(ctx: Context, dataset: str) -> dict[str, Any]:
    """Score the test split of `dataset` with the oracle; write and return reports/metrics/oracle/<dataset>.json."""
    data = ensure_prepared(ctx, dataset)
    out = evaluate(data, ctx.params["train"]["ties"])
    path = result_path(ctx, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    return out


def table(result: Mapping[str, Any]) -> "Any":
    """One row per scorer (oracle, long-only, short-only, popularity), one column per candidate set × metric."""
    import pandas as pd

    rows = {"oracle": result, "long only": result["long"], "short only": result["short"],
            "popularity": result["popularity"]}
    cols = ("auc", "gauc", "mrr", "ndcg@10", "hit@10")
    frame = {}
    for name, d in rows.items():
        row = {}
        for cands in (*CANDIDATE_SETS, "full_ranking"):
            for k in cols:
                if cands in d and k in d[cands]:
                    row[f"{cands} {k}"] = d[cands][k]
        frame[name] = row
    return pd.DataFrame(frame).T
