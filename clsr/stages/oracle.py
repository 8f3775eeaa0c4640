"""Stage oracle@<dataset> (notebook 07): the Bayes oracle (`clsr.oracle`) of every dataset of
``pipeline.oracle_datasets`` (`clsr.params` checks that each comes from the synthetic source), scored like a
model on the same test candidates.

Writes reports/metrics/oracle/<dataset>.json:

    {"dataset", "ties",
     "test":      metrics of the full oracle on the fixed test candidates (the keys of a model run's "test"
                  dict, `clsr.metrics.evaluate_scores`),
     "protocols": {"sampled", "uniform", "full"} of the full oracle, as `clsr.evaluation.test_report` gives
                  them for a model: the fixed 1 + N candidates (= "test"), the uniformly sampled ones (only
                  when the data hold "test_uniform"), and the target among every item of the training
                  vocabulary with the user's earlier items excluded (ties "mean"; targets unseen in training
                  left out and counted, as for the models),
     "long", "short": {"protocols": ...} of the one-interest oracles,
     "popularity":   {"protocols": {"sampled", "uniform"}} of the train-popularity scorer (non-personal),
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
#: protocol name (as in clsr.evaluation.test_report) -> candidate set of the test split
SAMPLED = {"sampled": "test", "uniform": "test_uniform"}


def result_path(ctx: Context, dataset: str) -> Path:
    return ctx.metrics_path("oracle", dataset)


def evaluate(data: PreparedData, ties: str = "mean", params: O.OracleParams | None = None) -> dict[str, Any]:
    """Every metric of the oracle, its one-interest variants and popularity on `data` (the JSON's layout)."""
    params = params or O.params_for(data)
    users = data.instances["test"].user
    per: dict[str, dict[str, Any]] = {r: {} for r in READOUTS}
    popularity: dict[str, Any] = {}
    for protocol, cands in SAMPLED.items():
        if cands not in data.candidates:
            continue
        scores = O.score_candidates(data, cands, params)
        for r in READOUTS:
            per[r][protocol] = M.evaluate_scores(scores[r], users, ties=ties)
        popularity[protocol] = M.evaluate_scores(O.popularity_scores(data, cands), users, ties=ties)
    for r, metrics in full_ranking(data, params).items():
        per[r]["full"] = metrics
    driver = data.event_extra.get("driver")
    posterior = O.short_driven_posterior(data, "test", params)
    out: dict[str, Any] = {"dataset": data.name, "ties": ties, "test": per["full"]["sampled"],
                           "protocols": per["full"], "long": {"protocols": per["long"]},
                           "short": {"protocols": per["short"]}, "popularity": {"protocols": popularity}}
    out["alpha_auc"] = O.oracle_alpha_auc(data, "test", params) if driver is not None else None
    out["short_driven"] = {
        "posterior_mean": float(posterior.mean()),
        "observed_share": float((driver[data.target_event("test")] == 1).mean()) if driver is not None else None,
    }
    return out


def full_ranking(data: PreparedData, params: O.OracleParams, ks=M.FULL_RANKING_KS) -> dict[str, dict[str, Any]]:
    """Per oracle readout: the test target among every item of the training vocabulary, the user's earlier
    items excluded, ties "mean" (what `clsr.evaluation.full_ranking` computes for a model). Targets unseen
    in training cannot be ranked by a model and are left out here too (``left_out``)."""
    from clsr.data.batches import history_items

    catalogue = O.score_catalogue(data, "test", params)  # column code + 1
    codes = np.flatnonzero(data.item_index > 0)
    targets = data.item_index[data.event_item[data.target_event("test")]].astype(np.int64)
    rows = np.flatnonzero(targets > 0)
    offsets, items = history_items(data, "test")
    sub_off = np.concatenate([[0], np.cumsum(offsets[rows + 1] - offsets[rows])])
    sub_items = np.concatenate([items[offsets[i]:offsets[i + 1]] for i in rows]) if len(rows) else items[:0]
    out = {}
    for r in READOUTS:
        vocab = np.full((len(rows), data.item_vocab_size), -np.inf)
        vocab[:, data.item_index[codes]] = catalogue[r][rows][:, codes + 1]
        m = M.full_ranking_metrics(vocab, targets[rows], (sub_off, sub_items), ks, ties="mean")
        m.update(left_out=int(len(targets) - len(rows)), items=int(data.item_vocab_size - 1))
        out[r] = m
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
        for protocol in (*SAMPLED, "full"):
            for k in cols:
                if k in d["protocols"].get(protocol, {}):
                    row[f"{protocol} {k}"] = d["protocols"][protocol][k]
        frame[name] = row
    return pd.DataFrame(frame).T
