"""Comparing models: a paired bootstrap over seeds × test users, and Kendall τ between model orderings.

Every metric here is one where higher is better (AUC, GAUC, reciprocal rank, hit@k, ndcg@k).

Input of the paired comparison, per model: a mapping ``seed -> (user_ids, values)``, one value per test
user (e.g. each user's AUC from `clsr.metrics.per_user_auc`; per-instance values such as reciprocal ranks
are first averaged per user with `per_user_mean`). Models A and B must hold the same seeds, and every seed
of both the same set of user ids (in any order): the comparison is paired user by user, so a user missing
on one side is an error, not silently dropped.

A statistic that is not a mean over instances (an AUC over test instances) goes through
`paired_resample_bootstrap` instead: the instances are resampled jointly for both models and the statistic
is recomputed on each resample.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

VERDICTS = ("A better", "B better", "no detectable difference")


@dataclass(frozen=True)
class PairedComparison:
    """B − A for one metric: `difference` is the mean over seeds of the per-seed (weighted) user mean."""

    difference: float
    low: float  # the interval's bounds (percentile bootstrap)
    high: float
    level: float  # coverage of [low, high], e.g. 0.95
    per_seed: tuple[float, ...]  # B − A per seed, in `seeds` order (shows the seed-to-seed spread)
    seeds: tuple
    users: int
    replicates: int
    verdict: str  # "B better" (low > 0), "A better" (high < 0) or "no detectable difference"


def per_user_mean(users: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted user ids, mean value per user, instance count per user) from per-instance values."""
    users = np.asarray(users)
    values = np.asarray(values, dtype=np.float64)
    if users.shape != values.shape or users.ndim != 1:
        raise ValueError(f"per_user_mean: users {users.shape} and values {values.shape} must be equal-length 1-D")
    ids, inverse, counts = np.unique(users, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=values, minlength=len(ids))
    return ids, sums / counts, counts


def _sorted_by_id(name: str, ids, values) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids)
    values = np.asarray(values, dtype=np.float64)
    if ids.ndim != 1 or ids.shape != values.shape:
        raise ValueError(f"{name}: user ids {ids.shape} and values {values.shape} must be equal-length 1-D arrays")
    if len(ids) == 0:
        raise ValueError(f"{name}: no users")
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    if np.any(ids[1:] == ids[:-1]):
        raise ValueError(f"{name}: user id {ids[1:][ids[1:] == ids[:-1]][0]!r} appears twice; "
                         "average per-instance values per user first (clsr.stats.per_user_mean)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: values must be finite (user {ids[~np.isfinite(values)][0]!r} is not)")
    return ids, values


def align_users(
    a: Mapping[object, tuple[np.ndarray, np.ndarray]],
    b: Mapping[object, tuple[np.ndarray, np.ndarray]],
) -> tuple[tuple, np.ndarray, np.ndarray, np.ndarray]:
    """(seeds, user ids, A (seeds, users), B (seeds, users)) with users sorted by id in every row."""
    if not a or not b:
        raise ValueError("paired comparison: model A and model B each need at least one seed")
    if set(a) != set(b):
        raise ValueError(f"paired comparison: seeds differ, A has {sorted(a)}, B has {sorted(b)}")
    seeds = tuple(sorted(a))
    ids = None
    rows_a, rows_b = [], []
    for seed in seeds:
        ids_a, va = _sorted_by_id(f"model A seed {seed!r}", *a[seed])
        ids_b, vb = _sorted_by_id(f"model B seed {seed!r}", *b[seed])
        reference = ids_a if ids is None else ids
        for side, got in (("A", ids_a), ("B", ids_b)):
            if len(got) != len(reference) or np.any(got != reference):
                missing = np.setdiff1d(reference, got)
                extra = np.setdiff1d(got, reference)
                raise ValueError(
                    f"model {side} seed {seed!r}: users differ from model A seed {seeds[0]!r} "
                    f"({len(missing)} missing, {len(extra)} extra); pass the same test users for both models "
                    "and every seed"
                )
        ids = reference
        rows_a.append(va)
        rows_b.append(vb)
    return seeds, ids, np.stack(rows_a), np.stack(rows_b)


def paired_bootstrap_arrays(
    a: np.ndarray,
    b: np.ndarray,
    weights: np.ndarray | None = None,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    seeds: tuple | None = None,
) -> PairedComparison:
    """Paired bootstrap of B − A from aligned (seeds, users) arrays: column u is the same user everywhere.

    Scheme. d[s, u] = b[s, u] − a[s, u]. The estimate is the mean over seeds of the per-seed weighted user
    mean, Σ_u w_u d[s, u] / Σ_u w_u (w = 1 without `weights`, e.g. the users' row counts for GAUC). One
    replicate draws U users with replacement (``numpy.random.default_rng(seed).integers(0, U, (R, U))``,
    one row per replicate), keeps each drawn user's pair (a, b), uses the SAME drawn users for every seed,
    and recomputes the estimate; [low, high] are the (1 − level)/2 and (1 + level)/2 quantiles of the R
    replicates. Because the weights do not depend on the seed, a replicate equals the weighted mean over
    the drawn users of each user's seed-averaged difference: user-to-user variation is resampled directly,
    seed-to-seed variation enters through each user's difference averaged over the seeds (a handful of
    seeds is too few to resample; `per_seed` shows their spread).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"paired comparison: A {a.shape} and B {b.shape} must be equal (seeds, users) arrays")
    n_seeds, n_users = a.shape
    if n_seeds == 0 or n_users == 0:
        raise ValueError(f"paired comparison: need at least one seed and one user, got shape {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired comparison: values must be finite")
    w = np.ones(n_users) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n_users,) or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"weights: need {n_users} finite non-negative weights with a positive sum")
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates must be >= 1 and 0 < level < 1, got {replicates}, {level}")
    diff = b - a
    per_seed = diff @ w / w.sum()
    user_diff = diff.mean(axis=0)
    draws = np.random.default_rng(seed).integers(0, n_users, size=(replicates, n_users))
    offsets = np.arange(replicates)[:, None] * n_users
    counts = np.bincount((draws + offsets).ravel(), minlength=replicates * n_users).reshape(replicates, n_users)
    replicate_estimates = counts @ (w * user_diff) / (counts @ w)
    return _comparison(per_seed, replicate_estimates, level, seeds, n_users, replicates)


def paired_bootstrap(
    a: Mapping[object, tuple[np.ndarray, np.ndarray]],
    b: Mapping[object, tuple[np.ndarray, np.ndarray]],
    weights: tuple[np.ndarray, np.ndarray] | None = None,
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """B − A over seeds × test users from ``seed -> (user_ids, values)`` mappings (see the module docstring).

    weights: optional (user_ids, weight) covering the same users, e.g. `per_user_auc`'s rows so that the
    difference is the GAUC difference. The scheme is `paired_bootstrap_arrays`'s.
    """
    seeds, ids, arr_a, arr_b = align_users(a, b)
    w = None
    if weights is not None:
        w_ids, w = _sorted_by_id("weights", *weights)
        if len(w_ids) != len(ids) or np.any(w_ids != ids):
            raise ValueError("weights: user ids must be exactly the compared users")
    return paired_bootstrap_arrays(arr_a, arr_b, w, replicates, level, seed, seeds)


def paired_resample_bootstrap(
    statistic: Callable[..., float],
    a: Sequence[tuple[np.ndarray, ...]],
    b: Sequence[tuple[np.ndarray, ...]],
    replicates: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    seeds: tuple | None = None,
) -> PairedComparison:
    """Paired bootstrap of B − A for a statistic that is not a mean over instances (e.g. an AUC over them).

    a, b: one entry per seed, in the same order on both sides; each entry is the tuple of the statistic's
    arguments, arrays with one row per test instance (e.g. (α on the positive, driver)); every entry of
    both sides holds the same n instances in the same order. Scheme: per seed s,
    d_s = statistic(*b[s]) − statistic(*a[s]), and the estimate is the mean of d_s over seeds. One replicate
    draws n instance indices with replacement (``numpy.random.default_rng(seed).integers(0, n, (R, n))``,
    one row per replicate), the SAME draw for both models and every seed, recomputes each d_s on the drawn
    rows and averages them over the seeds; [low, high] are the (1 − level)/2 and (1 + level)/2 quantiles of
    the replicates whose value is finite (a draw can leave the statistic undefined, e.g. one class only).
    This is `paired_bootstrap_arrays`'s scheme with the statistic recomputed on each resample instead of a
    weighted mean of per-user differences; with one test instance per user, an instance is a user.
    """
    if len(a) == 0 or len(a) != len(b):
        raise ValueError(f"paired comparison: A and B need the same number (>= 1) of seeds, got {len(a)} and {len(b)}")
    rows = {len(x) for entry in (*a, *b) for x in entry}
    if len(rows) != 1 or 0 in rows:
        raise ValueError("paired comparison: every array of every seed must hold the same n >= 1 instances, "
                         f"got {sorted(rows)}")
    if replicates < 1 or not 0 < level < 1:
        raise ValueError(f"replicates must be >= 1 and 0 < level < 1, got {replicates}, {level}")
    n = rows.pop()
    arrays_a = [tuple(np.asarray(x) for x in entry) for entry in a]
    arrays_b = [tuple(np.asarray(x) for x in entry) for entry in b]

    def seed_differences(idx: np.ndarray | slice) -> np.ndarray:
        return np.array([statistic(*(x[idx] for x in eb)) - statistic(*(x[idx] for x in ea))
                         for ea, eb in zip(arrays_a, arrays_b)], dtype=np.float64)

    per_seed = seed_differences(slice(None))
    if not np.all(np.isfinite(per_seed)):
        raise ValueError(f"paired comparison: the statistic is undefined on the full data (B − A per seed: {per_seed})")
    draws = np.random.default_rng(seed).integers(0, n, size=(replicates, n))
    estimates = np.array([seed_differences(idx).mean() for idx in draws])
    estimates = estimates[np.isfinite(estimates)]
    if not len(estimates):
        raise ValueError("paired comparison: the statistic is undefined on every resample")
    return _comparison(per_seed, estimates, level, seeds, n, replicates)


def _comparison(per_seed: np.ndarray, estimates: np.ndarray, level: float, seeds, users: int,
                replicates: int) -> PairedComparison:
    """The comparison from the per-seed differences and the bootstrap replicates' estimates: the mean over
    seeds, the central `level` interval of the estimates, and its verdict."""
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return PairedComparison(
        difference=float(per_seed.mean()),
        low=float(low),
        high=float(high),
        level=float(level),
        per_seed=tuple(float(x) for x in per_seed),
        seeds=tuple(range(len(per_seed))) if seeds is None else tuple(seeds),
        users=int(users),
        replicates=int(replicates),
        verdict=_verdict(float(low), float(high)),
    )


def _verdict(low: float, high: float) -> str:
    """`VERDICTS`' words for an interval of B − A: "B better" above 0, "A better" below, else no difference."""
    if low > 0:
        return "B better"
    if high < 0:
        return "A better"
    return "no detectable difference"


@dataclass(frozen=True)
class RankAgreement:
    """Kendall τ-b between two orderings of the same models, with scipy's two-sided p-value."""

    tau: float
    p_value: float
    models: tuple[str, ...]


def kendall_tau(a: Mapping[str, float], b: Mapping[str, float]) -> RankAgreement:
    """τ-b between the orderings that two {model: score} mappings induce (e.g. paper vs. this replication).

    τ-b = (concordant − discordant) / sqrt((pairs − ties in a) · (pairs − ties in b)) over model pairs;
    nan when either side scores every model alike. For an ordering given best first, pass {name: -position}.
    """
    if set(a) != set(b):
        raise ValueError(f"kendall_tau: models differ, only in A {sorted(set(a) - set(b))}, "
                         f"only in B {sorted(set(b) - set(a))}")
    models = tuple(sorted(a))
    if len(models) < 2:
        raise ValueError(f"kendall_tau: need at least 2 models, got {list(models)}")
    x = np.array([a[m] for m in models], dtype=np.float64)
    y = np.array([b[m] for m in models], dtype=np.float64)
    result = scipy.stats.kendalltau(x, y)
    return RankAgreement(tau=float(result.statistic), p_value=float(result.pvalue), models=models)
