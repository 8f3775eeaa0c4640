"""One model through the study: scored (`clsr.scoring.score_batches`) on the counterfactual sets and the
probe batches, then measured (`clsr.disentangle.measures`)."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

from clsr import metrics as M
from clsr.data.batches import Batch
from clsr.data.store import PreparedData
from clsr.disentangle import measures
from clsr.disentangle.counterfactual import SETS, counterfactual_batches
from clsr.disentangle.measures import READOUTS, SUFFIX
from clsr.disentangle.truth import Truth, category_batches
from clsr.scoring import Scores, score_batches


def positive_alpha(scores: Scores) -> np.ndarray:
    """(n,) the as-trained α on each instance's positive (column 0); NaN for a model without α."""
    if "alpha" not in scores.outputs:
        return np.full(len(scores.user), np.nan)
    return scores.outputs["alpha"].reshape(len(scores.user), -1)[:, 0]


def counterfactual_eval(
    model: Callable,
    data: PreparedData,
    split: str = "test",
    sets: Iterable[str] = SETS,
    recent_k: int = 5,
    shuffle_seed: int = 0,
    batch_size: int = 500,
    ties: str = "released",
) -> tuple[dict[str, dict[str, float]], dict[str, Scores]]:
    """For each set: AUC / GAUC / MRR of every readout (``auc``, ``auc_long``, ``auc_short``, ...) and
    ``mean_alpha_pos`` (mean α of the model readout on positive rows). Also returns the scores."""
    metrics: dict[str, dict[str, float]] = {}
    raw: dict[str, Scores] = {}
    for kind in sets:
        batches = counterfactual_batches(data, kind, split, batch_size, recent_k, shuffle_seed)
        s = score_batches(model, batches, READOUTS, keep=("alpha",))
        row: dict[str, float] = {}
        for r in READOUTS:
            m = M.evaluate_scores(s.logits[r], s.user, (10,), ties)
            for key in ("auc", "gauc", "mrr"):
                row[f"{key}{SUFFIX[r]}"] = float(m[key])
        a = positive_alpha(s)
        row["mean_alpha_pos"] = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
        metrics[kind] = row
        raw[kind] = s
    return metrics, raw


def counterfactual_users(raw: Mapping[str, Scores]) -> dict[str, np.ndarray]:
    """Per test user: the counterfactual indices (`measures.counterfactual_indices`) computed from the
    user's AUC (`clsr.metrics.per_user_auc`: the GAUC's per-user part) instead of the GAUC, from the scores
    of `counterfactual_eval`. Returns {'user': sorted ids, 'rows': the user's candidate count (the GAUC's
    weight), 'recent_gap', 'shuffle_gap'}; the rows-weighted mean of a user index is the index itself,
    since every set holds the same users with the same candidates."""
    per_set: dict[str, dict[str, np.ndarray]] = {}
    users = rows = None
    for kind, s in raw.items():
        per_set[kind] = {}
        for r in ("long", "short"):
            pu = M.per_user_auc(s.logits[r], s.user)
            if users is None:
                users, rows = pu["user"], pu["rows"]
            elif not (np.array_equal(pu["user"], users) and np.array_equal(pu["rows"], rows)):
                raise ValueError(f"counterfactual_users: set {kind!r} holds other users or candidates than the "
                                 "first set")
            per_set[kind][f"gauc{SUFFIX[r]}"] = pu["auc"]
    if users is None:
        raise ValueError("counterfactual_users: no scores")
    return {"user": users, "rows": rows, **measures.counterfactual_indices(per_set)}


def ground_truth_instances(original: Scores, categories: Scores, truth: Truth) -> dict[str, np.ndarray]:
    """Per test instance (split order) the values behind the ground-truth verdicts: 'user', 'alpha' (α on
    the positive, NaN without α), 'auc_long' / 'auc_short' (`measures.instance_auc` of the α = 1 / α = 0
    readouts, the specialisation's parts), 'rho_long' / 'rho_short' (profile ρ; absent without profiles)
    and 'rr_long' / 'rr_short' (topic reciprocal rank): the profile and topic contrasts are their means."""
    out = {"user": np.asarray(original.user), "alpha": positive_alpha(original)}
    for r in ("long", "short"):
        sfx = SUFFIX[r]
        out[f"auc{sfx}"] = measures.instance_auc(original.logits[r])
        if truth.theta is not None:
            out[f"rho{sfx}"] = measures.spearman_rows(categories.logits[r], truth.theta)
        out[f"rr{sfx}"] = measures.target_rr(categories.logits[r], truth.topic)
    return out


def ground_truth_eval(
    model: Callable,
    data: PreparedData,
    truth: Truth,
    original: Scores | None = None,
    split: str = "test",
    batch_size: int = 500,
    ties: str = "released",
    reps: int = 200,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, Scores]]:
    """All ground-truth measures of one model. `original`: its scores (`READOUTS`, α kept) on the original
    test set, computed here when None. Returns (measures, {'original', 'categories'} scores)."""
    if original is None:
        batches = counterfactual_batches(data, "original", split, batch_size)
        original = score_batches(model, batches, READOUTS, keep=("alpha",))
    out: dict[str, float] = {}
    alpha = positive_alpha(original)
    if np.isfinite(alpha).all():
        out.update(measures.alpha_separation(alpha, truth.driver, reps, seed))
    out.update(measures.driver_accuracy(original.logits, original.user, truth.driver, ties, reps, seed))
    cat = score_batches(model, category_batches(data, truth, split, batch_size), READOUTS)
    out.update(measures.interest_match(cat.logits, truth, reps, seed))
    return out, {"original": original, "categories": cat}


def interest_vectors(model: Callable, batch: Batch) -> dict[str, np.ndarray]:
    """u^l (n, d) and u^s (n, d) (of the positive candidate), the user row and the positive's α."""
    s = score_batches(model, [batch], keep=("alpha", "u_long", "u_short"))
    ul, us = s.outputs["u_long"], s.outputs["u_short"]
    return {"u_long": ul[:, 0] if ul.ndim == 3 else ul, "u_short": us[:, 0] if us.ndim == 3 else us,
            "user_row": s.user_row, "alpha_pos": positive_alpha(s)}


def oracle_eval(
    data: PreparedData, truth: Truth, split: str = "test", ties: str = "released", reps: int = 200, seed: int = 0,
) -> tuple[dict[str, object], np.ndarray]:
    """The Bayes oracle (`clsr.oracle`) through the same measures as a model, its readouts being the full
    oracle (``model``), the long-only (``long``) and the short-only (``short``) one; and the popularity
    scorer on the same candidates. Returns ({'original': AUC / GAUC / MRR per readout, 'ground_truth':
    per-driver accuracy and the oracle's α-AUC, 'popularity': metrics}, the posterior long-driven
    probability P(long | c_t, h) of each instance)."""
    from clsr import oracle as O

    params = O.params_for(data)
    scores = O.score_candidates(data, split, params)
    logits = {"model": scores["full"], "long": scores["long"], "short": scores["short"]}
    users = data.instances[split].user
    original: dict[str, float] = {}
    for r, sc in logits.items():
        m = M.evaluate_scores(sc, users, (10,), ties)
        for key in ("auc", "gauc", "mrr"):
            original[f"{key}{SUFFIX[r]}"] = float(m[key])
    long_posterior = 1.0 - O.short_driven_posterior(data, split, params)
    gt = measures.driver_accuracy(logits, users, truth.driver, ties, reps, seed)
    gt.update(measures.alpha_separation(long_posterior, truth.driver, reps, seed))
    gt["alpha_auc_posterior"] = measures.soft_auc(long_posterior, long_posterior)
    pop = M.evaluate_scores(O.popularity_scores(data, split), users, (10,), ties)
    popularity = {key: float(pop[key]) for key in ("auc", "gauc", "mrr")}
    return {"original": original, "ground_truth": gt, "popularity": popularity}, long_posterior


def ceilings(original: dict[str, float], oracle: dict[str, object], alpha: np.ndarray,
             long_posterior: np.ndarray, reps: int = 200, seed: int = 0) -> dict[str, object]:
    """One model against the oracle: the share of the oracle's margin over popularity each readout recovers
    (as trained vs the full oracle, α = 1 vs the long-only one, α = 0 vs the short-only one; `margin_share`)
    and, for a model with α, α against the posterior long-driven probability (`alpha_vs_posterior`)."""
    out: dict[str, object] = {}
    for r, sfx in SUFFIX.items():
        model = {k: original.get(f"{k}{sfx}", np.nan) for k in measures.MARGIN_METRICS}
        best = {k: oracle["original"][f"{k}{sfx}"] for k in measures.MARGIN_METRICS}
        out[f"margin_share{sfx}"] = measures.margin_share(model, best, oracle["popularity"])
    if np.isfinite(alpha).all():
        out["alpha_vs_posterior"] = measures.alpha_vs_posterior(alpha, long_posterior, reps, seed)
    return out
