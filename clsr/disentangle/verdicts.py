"""The verdicts of the study: CLSR against each other model on every verdict quantity, over every seed.

For each quantity the comparison is CLSR − other: the mean over seeds of the per-seed difference, with a 95 %
interval from a paired bootstrap (`clsr.stats`) that resamples test users (or instances) jointly for both
models and pools the seeds (the same resampled users for every seed). A winner is named only where the
interval excludes 0; otherwise the verdict is "no detectable difference".

* Means over test users go through `clsr.stats.paired_bootstrap`: the counterfactual ``recent_gap`` and
  ``shuffle_gap`` (per user from the user's AUC, `evaluate.counterfactual_users`, weighted by the user's
  candidate count as the GAUC is), and the ground-truth ``profile_contrast`` (ρ(α=1) − ρ(α=0)) and
  ``topic_contrast`` (RR(α=0) − RR(α=1)), per user the mean over the user's instances where the value is
  defined for both models in every seed (an instance left undefined anywhere is left out of that comparison).
* Statistics that are not means over instances go through `clsr.stats.paired_resample_bootstrap` (the
  instances resampled jointly for both models, the statistic recomputed on each resample, per seed, and the
  seed differences averaged): ``alpha_auc`` (ROC-AUC of α for "long-driven"; only between models with α)
  and ``specialisation`` (a difference of driver-group means, `measures.specialisation`).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from clsr import metrics as M
from clsr import stats
from clsr.disentangle import measures

#: the model every other model is compared with
REFERENCE = "clsr"
#: verdict quantity -> (label, what a higher value means); every one is higher = more disentangled
QUANTITIES: dict[str, tuple[str, str]] = {
    "recent_gap": ("recent gap", "higher = more disentangled"),
    "shuffle_gap": ("shuffle gap", "higher = more disentangled"),
    "alpha_auc": ("α-AUC", "higher = α follows the true driver"),
    "specialisation": ("specialisation", "higher = readouts specialise on their driver"),
    "profile_contrast": ("profile contrast", "higher = u^l carries the profile, u^s less"),
    "topic_contrast": ("topic contrast", "higher = u^s carries the topic, u^l less"),
}
#: how each quantity's interval is drawn
USERS = "paired bootstrap over test users"
INSTANCES = "test instances resampled jointly, statistic recomputed"


def summary(c: stats.PairedComparison, reference: str, other: str, method: str) -> dict[str, Any]:
    """A comparison of B = `reference` against A = `other` as JSON values: difference = reference − other."""
    if c.verdict == "B better":
        winner = reference
    elif c.verdict == "A better":
        winner = other
    else:
        winner = None
    return {
        "difference": c.difference, "low": c.low, "high": c.high, "level": c.level,
        "per_seed": {str(s): d for s, d in zip(c.seeds, c.per_seed)},
        "seeds": len(c.seeds), "users": c.users, "replicates": c.replicates,
        "winner": winner, "method": method,
    }


def _others(per_model: Mapping[str, Mapping[int, Any]], reference: str):
    """(other model, its {seed: values}, the reference's, the seeds both hold) for every model but `reference`
    that shares a seed with it."""
    ref = per_model.get(reference)
    for other, by_seed in per_model.items():
        seeds = sorted(set(ref) & set(by_seed)) if ref is not None and other != reference else []
        if seeds:
            yield other, by_seed, ref, seeds


def counterfactual_comparisons(
    per_user: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]], replicates: int = 1000, seed: int = 0,
    reference: str = REFERENCE,
) -> dict[str, dict[str, Any]]:
    """{other model: {'recent_gap' / 'shuffle_gap': `summary`}} from ``{model: {seed: counterfactual_users(...)}}``
    (the seeds every model holds), each user's index paired across the two models, weighted by its rows."""
    out: dict[str, dict[str, Any]] = {}
    for other, by_seed, ref, seeds in _others(per_user, reference):
        first = ref[seeds[0]]
        res: dict[str, Any] = {}
        for q in ("recent_gap", "shuffle_gap"):
            if q not in first:
                continue
            a = {s: (by_seed[s]["user"], by_seed[s][q]) for s in seeds}
            b = {s: (ref[s]["user"], ref[s][q]) for s in seeds}
            c = stats.paired_bootstrap(a, b, weights=(first["user"], first["rows"]), replicates=replicates, seed=seed)
            res[q] = summary(c, reference, other, USERS)
        out[other] = res
    return out


def _alpha_auc(alpha: np.ndarray, driver: np.ndarray) -> float:
    """ROC-AUC of α for 'long-driven' (driver 0), as `measures.alpha_separation`."""
    return M.auc(alpha, np.asarray(driver) == 0)


def _contrast(values: Mapping[str, np.ndarray], quantity: str) -> np.ndarray:
    if quantity == "profile_contrast":
        return values["rho_long"] - values["rho_short"]
    return values["rr_short"] - values["rr_long"]


def ground_truth_comparisons(
    per_instance: Mapping[str, Mapping[int, Mapping[str, np.ndarray]]], driver: np.ndarray,
    replicates: int = 1000, seed: int = 0, reference: str = REFERENCE,
) -> dict[str, dict[str, Any]]:
    """{other model: {quantity: `summary`}} for α-AUC, specialisation, profile and topic contrast from
    ``{model: {seed: evaluate.ground_truth_instances(...)}}`` (the same test instances everywhere) and the
    instances' true driver."""
    out: dict[str, dict[str, Any]] = {}
    driver = np.asarray(driver)
    for other, by_seed, ref, seeds in _others(per_instance, reference):
        res: dict[str, Any] = {}
        a_runs, b_runs = [by_seed[s] for s in seeds], [ref[s] for s in seeds]
        if all(np.isfinite(v["alpha"]).all() for v in a_runs + b_runs):
            c = stats.paired_resample_bootstrap(_alpha_auc, [(v["alpha"], driver) for v in a_runs],
                                                [(v["alpha"], driver) for v in b_runs], replicates, seed=seed,
                                                seeds=tuple(seeds))
            res["alpha_auc"] = summary(c, reference, other, INSTANCES)
        if (driver == 0).any() and (driver == 1).any():
            c = stats.paired_resample_bootstrap(
                measures.specialisation, [(v["auc_long"], v["auc_short"], driver) for v in a_runs],
                [(v["auc_long"], v["auc_short"], driver) for v in b_runs], replicates, seed=seed, seeds=tuple(seeds))
            res["specialisation"] = summary(c, reference, other, INSTANCES)
        for q, needs in (("profile_contrast", "rho_long"), ("topic_contrast", "rr_long")):
            if not all(needs in v for v in a_runs + b_runs):
                continue
            diffs_a = [_contrast(v, q) for v in a_runs]
            diffs_b = [_contrast(v, q) for v in b_runs]
            ok = np.logical_and.reduce([np.isfinite(d) for d in diffs_a + diffs_b])
            if not ok.any():
                continue
            users = b_runs[0]["user"][ok]
            a = {s: stats.per_user_mean(users, d[ok])[:2] for s, d in zip(seeds, diffs_a)}
            b = {s: stats.per_user_mean(users, d[ok])[:2] for s, d in zip(seeds, diffs_b)}
            ids, _, counts = stats.per_user_mean(users, np.zeros(len(users)))  # weights: a mean over instances
            c = stats.paired_bootstrap(a, b, weights=(ids, counts), replicates=replicates, seed=seed)
            res[q] = summary(c, reference, other, USERS)
        out[other] = res
    return out
