"""The disentanglement measures: statistics on score arrays, no model and no data loading.

Every model is read out three ways (`READOUTS`): ``model`` = as trained (its learned α), ``long`` = α = 1
(the long-term interest u^l alone), ``short`` = α = 0 (the short-term interest u^s alone). A measure of a
readout carries its suffix (`SUFFIX`): ``gauc``, ``gauc_long``, ``gauc_short``.

Counterfactual (`counterfactual_indices`, any dataset): the GAUC drops of the two readouts under
recent-only and shuffled histories, signed so that > 0 is the direction a disentangled model predicts.

Ground truth (synthetic data, driver 0 = long-driven, 1 = short-driven):

* ``alpha_auc`` (`alpha_separation`): ROC-AUC of the positives' α for "long-driven". Chance 0.5; 1 = α
  ranks every long-driven event above every short-driven one.
* per-driver accuracy of each readout (GAUC, MRR, hit@10) and ``specialisation`` (`driver_accuracy`)
  = [AUC(α=1 | long) − AUC(α=1 | short)] − [AUC(α=0 | long) − AUC(α=0 | short)] (mean per-instance AUC,
  = GAUC when every user has one test instance): > 0 when each readout is relatively better on its own
  driver; 0 for any model whose two readouts are the same function (entangled), whatever the base rates.
* interest match (`interest_match`): the K category scores of a readout per instance against the truth:
  Spearman ρ and graded NDCG (gains θ_u) against the user's long-term profile, and the reciprocal rank of
  the current topic (expected value under random tie-breaking). ``profile_contrast`` = ρ(α=1) − ρ(α=0) and
  ``topic_contrast`` = RR_topic(α=0) − RR_topic(α=1) are 0 for an entangled model.
* `reference_levels`: exact chance levels (ρ 0, RR H_K / K, NDCG per user) and a non-personal reference
  (categories scored by train popularity; topics are drawn by global popularity, so popularity alone beats
  chance on the topic measure).

95 % intervals are percentile bootstraps over test instances (`bootstrap_ci`, fixed seed). These are
per-instance measures of this study, kept beside `clsr.metrics` (the ranking metrics of training and
evaluation) rather than in it.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
from scipy.stats import rankdata

from clsr import metrics as M
from clsr.disentangle.truth import Truth

#: readout name -> alpha_override (None = the model's own α)
READOUTS: dict[str, float | None] = {"model": None, "long": 1.0, "short": 0.0}
#: metric-name suffix of each readout (gauc, gauc_long, gauc_short, ...)
SUFFIX = {"model": "", "long": "_long", "short": "_short"}


# ---- per-instance ranking measures -----------------------------------------------------------------
def instance_auc(scores: np.ndarray) -> np.ndarray:
    """Per row: share of negatives (columns 1..) scored below the positive (column 0), ties ½."""
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[:, :1], s[:, 1:]
    return ((neg < pos).sum(1) + 0.5 * (neg == pos).sum(1)) / neg.shape[1]


def harmonic(n: np.ndarray) -> np.ndarray:
    """H_n = Σ_{i=1..n} 1/i, elementwise (H_0 = 0)."""
    n = np.asarray(n, dtype=np.int64)
    table = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, int(n.max(initial=0)) + 1))])
    return table[n]


def target_rr(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Reciprocal rank of column `target[i]` in row i, in expectation over random tie-breaking
    (so constant scores give the chance value H_K / K). NaN where target < 0."""
    s = np.asarray(scores, dtype=np.float64)
    ok = target >= 0
    out = np.full(len(s), np.nan)
    if not ok.any():
        return out
    rows = s[ok]
    t = rows[np.arange(len(rows)), target[ok]][:, None]
    g = (rows > t).sum(1)  # strictly better
    e = (rows == t).sum(1)  # tie block size, the target included
    out[ok] = (harmonic(g + e) - harmonic(g)) / e
    return out


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman ρ of each row of `a` with the same row of `b` (average ranks); NaN for a constant row."""
    ra = rankdata(np.asarray(a, dtype=np.float64), method="average", axis=1)
    rb = rankdata(np.asarray(b, dtype=np.float64), method="average", axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def graded_ndcg(scores: np.ndarray, gains: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NDCG of each row's ranking by `scores` with graded `gains`, its expected value under a random
    ranking). Tied scores share the mean discount of the positions they occupy (expected NDCG under
    random tie-breaking). NaN where a row has no gain."""
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64)
    K = s.shape[1]
    disc = 1.0 / np.log2(np.arange(2, K + 2))
    cum = np.concatenate([[0.0], np.cumsum(disc)])
    lo = rankdata(-s, method="min", axis=1).astype(np.int64)
    hi = rankdata(-s, method="max", axis=1).astype(np.int64)
    eff = (cum[hi] - cum[lo - 1]) / (hi - lo + 1)
    dcg = (g * eff).sum(1)
    idcg = (np.sort(g, axis=1)[:, ::-1] * disc).sum(1)
    chance = g.sum(1) * disc.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = idcg > 0
        return np.where(ok, dcg / np.where(ok, idcg, 1.0), np.nan), np.where(ok, chance / np.where(ok, idcg, 1.0), np.nan)


# ---- bootstrap -----------------------------------------------------------------------------------
def bootstrap_ci(
    stat: Callable[[np.ndarray], float], n: int, reps: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of `stat(idx)` over `reps` resamples of the n instances (fixed seed)."""
    if reps <= 0 or n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(reps)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    q = (1 - level) / 2
    return float(np.quantile(vals, q)), float(np.quantile(vals, 1 - q))


def mean_ci(x: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """(mean, lower, upper) of the finite values of x, with a bootstrap interval."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), len(x), reps, seed)
    return float(x.mean()), lo, hi


# ---- counterfactual --------------------------------------------------------------------------------
def counterfactual_indices(cf: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Derived from the counterfactual GAUCs (positive = the direction a disentangled model predicts):

    * ``recent_gap``  = drop(α=1) − drop(α=0) under recent-only histories;
    * ``shuffle_gap`` = drop(α=0) − drop(α=1) under shuffled histories;
    with drop = GAUC(original) − GAUC(counterfactual)."""
    out = {}
    o = cf.get("original")
    if o is None:
        return out
    if "recent" in cf:
        r = cf["recent"]
        out["recent_gap"] = (o["gauc_long"] - r["gauc_long"]) - (o["gauc_short"] - r["gauc_short"])
    if "shuffled" in cf:
        s = cf["shuffled"]
        out["shuffle_gap"] = (o["gauc_short"] - s["gauc_short"]) - (o["gauc_long"] - s["gauc_long"])
    return out


# ---- ground truth ----------------------------------------------------------------------------------
def alpha_separation(alpha_pos: np.ndarray, driver: np.ndarray, reps: int = 200, seed: int = 0) -> dict[str, float]:
    """AUC of α for 'long-driven' (driver 0), with a bootstrap interval, and mean α per driver."""
    a = np.asarray(alpha_pos, dtype=np.float64)
    y = np.asarray(driver) == 0
    out = {
        "alpha_auc": M.auc(a, y),
        "mean_alpha_long_driven": float(a[y].mean()) if y.any() else float("nan"),
        "mean_alpha_short_driven": float(a[~y].mean()) if (~y).any() else float("nan"),
    }
    out["alpha_auc_lo"], out["alpha_auc_hi"] = bootstrap_ci(lambda i: M.auc(a[i], y[i]), len(a), reps, seed)
    return out


def driver_accuracy(
    logits: Mapping[str, np.ndarray], users: np.ndarray, driver: np.ndarray, ties: str = "released",
    reps: int = 200, seed: int = 0,
) -> dict[str, float]:
    """GAUC / MRR / hit@10 of each readout on long-driven (driver 0) and short-driven instances, and the
    specialisation index (difference in differences of mean per-instance AUC) with an interval."""
    out: dict[str, float] = {}
    groups = {"long_driven": np.asarray(driver) == 0, "short_driven": np.asarray(driver) == 1}
    for r, sc in logits.items():
        for g, sel in groups.items():
            if not sel.any():
                continue
            m = M.evaluate_scores(sc[sel], users[sel], (10,), ties)
            out[f"gauc{SUFFIX[r]}@{g}"] = m["gauc"]
            out[f"mrr{SUFFIX[r]}@{g}"] = m["mrr"]
            if "hit@10" in m:
                out[f"hit10{SUFFIX[r]}@{g}"] = m["hit@10"]
    out["n_long_driven"] = int(groups["long_driven"].sum())
    out["n_short_driven"] = int(groups["short_driven"].sum())
    if "long" in logits and "short" in logits and groups["long_driven"].any() and groups["short_driven"].any():
        al, as_ = instance_auc(logits["long"]), instance_auc(logits["short"])
        d = np.asarray(driver)
        out["specialisation"] = specialisation(al, as_, d)
        out["specialisation_lo"], out["specialisation_hi"] = bootstrap_ci(
            lambda i: specialisation(al[i], as_[i], d[i]), len(d), reps, seed)
    return out


def specialisation(auc_long: np.ndarray, auc_short: np.ndarray, driver: np.ndarray) -> float:
    """[mean AUC(α=1 | long) − mean AUC(α=1 | short)] − [mean AUC(α=0 | long) − mean AUC(α=0 | short)] from
    per-instance AUCs (`instance_auc`) of the two readouts; NaN unless both drivers occur."""
    dl, ds = np.asarray(driver) == 0, np.asarray(driver) == 1
    if not dl.any() or not ds.any():
        return float("nan")
    a1, a0 = np.asarray(auc_long, dtype=np.float64), np.asarray(auc_short, dtype=np.float64)
    return float((a1[dl].mean() - a1[ds].mean()) - (a0[dl].mean() - a0[ds].mean()))


def interest_match(
    cat_scores: Mapping[str, np.ndarray], truth: Truth, reps: int = 200, seed: int = 0
) -> dict[str, float]:
    """Category scores of each readout against the true profile (Spearman ρ, graded NDCG) and the true
    current topic (reciprocal rank), plus the two contrasts with intervals."""
    out: dict[str, float] = {}
    per: dict[str, np.ndarray] = {}
    for r, sc in cat_scores.items():
        sfx = SUFFIX[r]
        if truth.theta is not None:
            rho = spearman_rows(sc, truth.theta)
            ndcg, _ = graded_ndcg(sc, truth.theta)
            per[f"rho{sfx}"] = rho
            out[f"profile_rho{sfx}"] = float(np.nanmean(rho))
            out[f"profile_ndcg{sfx}"] = float(np.nanmean(ndcg))
        rr = target_rr(sc, truth.topic)
        per[f"rr{sfx}"] = rr
        out[f"topic_mrr{sfx}"] = float(np.nanmean(rr))
    if "rho_long" in per and "rho_short" in per:
        diff = per["rho_long"] - per["rho_short"]
        out["profile_contrast"], out["profile_contrast_lo"], out["profile_contrast_hi"] = mean_ci(diff, reps, seed)
    if "rr_long" in per and "rr_short" in per:
        diff = per["rr_short"] - per["rr_long"]
        out["topic_contrast"], out["topic_contrast_lo"], out["topic_contrast_hi"] = mean_ci(diff, reps, seed)
    return out


def reference_levels(truth: Truth, n_candidates: int) -> dict[str, dict[str, float]]:
    """Chance (random scores) and non-personal popularity reference for the ground-truth measures."""
    K = len(truth.cats)
    chance: dict[str, float] = {
        "alpha_auc": 0.5, "specialisation": 0.0, "profile_contrast": 0.0, "topic_contrast": 0.0,
        "gauc": 0.5, "mrr": float(harmonic(np.array([n_candidates]))[0] / n_candidates),
        "hit10": min(10, n_candidates) / n_candidates,  # the positive lands in the top 10 of C
        "topic_mrr": float(harmonic(np.array([K]))[0] / K), "profile_rho": 0.0,
    }
    pop = np.broadcast_to(truth.cat_popularity, (len(truth.driver), K))
    popularity = {"topic_mrr": float(np.nanmean(target_rr(pop, truth.topic)))}
    if truth.theta is not None:
        ndcg_pop, ndcg_chance = graded_ndcg(pop, truth.theta)
        chance["profile_ndcg"] = float(np.nanmean(ndcg_chance))
        popularity["profile_rho"] = float(np.nanmean(spearman_rows(pop, truth.theta)))
        popularity["profile_ndcg"] = float(np.nanmean(ndcg_pop))
    return {"chance": chance, "popularity": popularity}


def known_answers(truth: Truth) -> dict[str, tuple[float, float]]:
    """{check: (measured, expected)}: the measures on inputs whose answer is known, built from the truth
    itself. A constant α (an entangled model) gives α-AUC 0.5, α = 1 − driver gives 1, profile scores = θ
    give ρ = 1 and a one-hot topic score gives topic MRR 1; a measure that misses these is broken."""
    n = len(truth.driver)
    out = {
        "α-AUC, constant α": (alpha_separation(np.full(n, 0.5), truth.driver, reps=0)["alpha_auc"], 0.5),
        "α-AUC, α = 1 − driver": (alpha_separation(1.0 - truth.driver, truth.driver, reps=0)["alpha_auc"], 1.0),
    }
    if truth.theta is not None:
        out["profile ρ, scores = θ"] = (float(np.nanmean(spearman_rows(truth.theta, truth.theta))), 1.0)
    one_hot = np.eye(len(truth.cats))[np.maximum(truth.topic, 0)]
    out["topic MRR, scores = one-hot topic"] = (float(np.nanmean(target_rr(one_hot, truth.topic))), 1.0)
    return out


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coordinates (n, 2), explained variance ratio (2,)) of the rows of x."""
    xc = x - x.mean(0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2
    ratio = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return xc @ vt[:2].T, ratio


# ---- ceilings: the Bayes oracle (clsr.oracle) --------------------------------------------------------
#: the metrics whose share of the oracle's margin over popularity is reported
MARGIN_METRICS = ("auc", "gauc", "mrr")


def margin_share(model: Mapping[str, float], oracle: Mapping[str, float], popularity: Mapping[str, float],
                 keys: tuple[str, ...] = MARGIN_METRICS) -> dict[str, float]:
    """Per metric: (model − popularity) / (oracle − popularity), the share of the oracle's margin over the
    non-personal popularity scorer that the model recovers (1 = as good as the oracle, 0 = no better than
    popularity, < 0 = worse). NaN where the oracle does not beat popularity on that metric."""
    out = {}
    for k in keys:
        m, o, p = (float(d.get(k, np.nan)) for d in (model, oracle, popularity))
        out[k] = (m - p) / (o - p) if o - p > 0 else float("nan")
    return out


def soft_auc(scores: np.ndarray, weight: np.ndarray) -> float:
    """AUC of `scores` against soft labels: each instance i counts as a positive with weight w_i and as a
    negative with weight 1 − w_i, pairs of distinct instances only, ties ½:

        Σ_{i≠j} w_i (1 − w_j) ([s_i > s_j] + ½[s_i = s_j]) / Σ_{i≠j} w_i (1 − w_j).

    With 0/1 weights it is the ordinary ROC-AUC; with w = P(long-driven | history, target category) it is
    the share of the posterior-weighted (long-driven, short-driven) pairs that the scores order correctly
    (the ratio of the expected counts under drivers drawn from the posterior). O(n log n)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    _, group = np.unique(s, return_inverse=True)  # groups of equal scores, in increasing order
    w1 = np.bincount(group, weights=w)
    w0 = np.bincount(group, weights=1.0 - w)
    below0 = np.concatenate([[0.0], np.cumsum(w0)[:-1]])
    self_pairs = float((w * (1.0 - w)).sum())  # the i = j terms, each a tie of weight w_i (1 − w_i)
    num = float((w1 * (below0 + 0.5 * w0)).sum()) - 0.5 * self_pairs
    den = float(w.sum() * (1.0 - w).sum()) - self_pairs
    return num / den if den > 0 else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a**2).sum() * (b**2).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (Pearson of average ranks); NaN when either side is constant."""
    return pearson(rankdata(a), rankdata(b))


def alpha_vs_posterior(alpha_pos: np.ndarray, long_posterior: np.ndarray, reps: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """Per test instance, a model's α against the oracle's posterior long-driven probability
    P(long | c_t, h) = 1 − P(short | c_t, h): Pearson and Spearman correlation and the soft α-AUC
    (`soft_auc` with the posterior as the label weight), each with a bootstrap interval."""
    a = np.asarray(alpha_pos, dtype=np.float64)
    w = np.asarray(long_posterior, dtype=np.float64)
    out: dict[str, float] = {}
    for name, f in (("pearson", pearson), ("spearman", spearman), ("alpha_auc_posterior", soft_auc)):
        out[name] = f(a, w)
        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap_ci(lambda i, f=f: f(a[i], w[i]), len(a), reps, seed)
    return out
