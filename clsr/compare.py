"""Paired comparisons of runs, from the per-instance test values each run leaves beside its metrics file
(``reports/metrics/**/<variant>_seed<s>.npz``, written by clsr/stages/train.py from clsr.evaluation).

A comparison of model B against model A on one metric pairs each test user's value across the two models,
seed by seed (the same seeds on both sides), and asks `clsr.stats.paired_bootstrap` for the mean difference
B − A and its 95 % interval over test users. A winner is named only where the interval excludes 0.

Per-user values: the mean over a user's test instances of the per-instance value (AUC over the instance's
1 + N candidates, reciprocal rank, NDCG@10). With one test instance per user (the per-user split) the mean
of the per-user AUCs is exactly the GAUC; with several it is the per-instance mean, close to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from clsr import stats
from clsr.rundir import load_per_instance

#: metric name -> (protocol, per-instance array) in the npz files
PAIRED_METRICS: dict[str, tuple[str, str]] = {
    "GAUC": ("sampled", "auc"),
    "MRR": ("sampled", "rr"),
    "uniform GAUC": ("uniform", "auc"),
    "full NDCG@10": ("full", "ndcg@10"),
    "full MRR": ("full", "rr"),
}


def user_values(npz: Mapping[str, np.ndarray], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(user ids, per-user mean) of `metric` in one run's per-instance values, None if the run lacks it."""
    protocol, name = PAIRED_METRICS[metric]
    users, values = npz.get(f"{protocol}/user"), npz.get(f"{protocol}/{name}")
    if users is None or values is None or not len(values):
        return None
    ids, means, _ = stats.per_user_mean(users, values)
    return ids, means


def compare(a: Mapping[int, str | Path], b: Mapping[int, str | Path], metric: str, replicates: int = 1000,
            seed: int = 0) -> stats.PairedComparison | None:
    """B − A on `metric` over the seeds both have ({seed: npz path} each); None when either lacks the metric."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    va, vb = {}, {}
    for s in seeds:
        x, y = user_values(load_per_instance(a[s]), metric), user_values(load_per_instance(b[s]), metric)
        if x is None or y is None:
            return None
        va[s], vb[s] = x, y
    return stats.paired_bootstrap(va, vb, replicates=replicates, seed=seed)


def verdict(c: stats.PairedComparison, a: str, b: str) -> str:
    """The comparison in words, naming the better model only where the interval excludes 0."""
    if c.low > 0:
        return f"{b} better"
    if c.high < 0:
        return f"{a} better"
    return "no detectable difference"


def row(c: stats.PairedComparison, a: str, b: str, nd: int = 4) -> dict:
    return {
        "difference": round(c.difference, nd),
        "95% interval": f"[{c.low:+.{nd}f}, {c.high:+.{nd}f}]",
        "seeds": len(c.seeds),
        "users": c.users,
        "verdict": verdict(c, a, b),
    }
