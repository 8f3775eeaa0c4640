"""Ranking metrics as the released code computes them (docs/protocol.md §9), vectorised.

Input: `scores` (n, 1+N) with column 0 the positive, and `users` (n,) the user of each instance.

- auc   : ROC-AUC over every row of the split pooled (ties count ½, as sklearn's roc_auc_score).
- gauc  : the released `wauc`: per user, AUC over all that user's rows (positives and negatives of
          different instances pooled), weighted by the user's row count. Users whose rows hold one
          class only have no AUC and are left out of the weighted mean (cannot happen with 1+N groups).
- mrr   : mean over instances of 1 / rank of the positive in its group.
- ndcg@k: 1 / log2(rank + 1) if rank <= k else 0 (one positive per group, gains 2^y - 1).
- hit@k : 1 if rank <= k.

Ties (`ties`):
- "released" (default): a positive tied with negatives is ranked *below* them, as
  ``np.argsort(scores)[::-1]`` does with the positive at index 0: rank = 1 + #(neg >= pos).
- "mean": the mean rank of the tie block, rank = 1 + #(neg > pos) + #(neg == pos) / 2.
- "optimistic": rank = 1 + #(neg > pos).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_KS = (1, 2, 4, 6, 10)


def _auc_from_ranks(pos_rank_sum: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC-AUC with average ranks for ties (Mann–Whitney U)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    n_pos = labels.sum()
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float(_auc_from_ranks(ranks[labels].sum(), n_pos, n_neg))


def group_weighted_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """The released `wauc`: Σ_g (rows_g / rows) · AUC_g over groups holding both classes."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    groups = np.asarray(groups).ravel()
    df = pd.DataFrame({"g": groups, "s": scores, "y": labels})
    df["r"] = df.groupby("g", sort=False)["s"].rank(method="average")
    agg = df.assign(rp=df["r"] * df["y"]).groupby("g", sort=False).agg(
        n=("y", "size"), n_pos=("y", "sum"), rank_pos=("rp", "sum")
    )
    n_pos = agg["n_pos"].to_numpy(np.float64)
    n_neg = agg["n"].to_numpy(np.float64) - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan")
    a = _auc_from_ranks(agg["rank_pos"].to_numpy()[ok], n_pos[ok], n_neg[ok])
    w = agg["n"].to_numpy(np.float64)[ok]
    return float((a * w).sum() / w.sum())


def positive_rank(scores: np.ndarray, ties: str = "released") -> np.ndarray:
    """1-based rank of column 0 within each row."""
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores[:, :1]
    neg = scores[:, 1:]
    greater = (neg > pos).sum(axis=1)
    equal = (neg == pos).sum(axis=1)
    if ties == "released":
        return 1.0 + greater + equal
    if ties == "mean":
        return 1.0 + greater + equal / 2.0
    if ties == "optimistic":
        return 1.0 + greater
    raise ValueError(f"ties: {ties!r} is not one of ['released', 'mean', 'optimistic']")


def evaluate_scores(
    scores: np.ndarray,
    users: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: str = "released",
) -> dict[str, float]:
    """All metrics for a (n, 1+N) score matrix (positive in column 0) and the user of each row."""
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape
    labels = np.zeros((n, c), dtype=bool)
    labels[:, 0] = True
    rank = positive_rank(scores, ties)
    out = {
        "auc": auc(scores, labels),
        "gauc": group_weighted_auc(scores, labels, np.repeat(np.asarray(users), c)),
        "mrr": float(np.mean(1.0 / rank)),
    }
    for k in ks:
        if k > c:
            continue
        hit = rank <= k
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)))
        out[f"hit@{k}"] = float(np.mean(hit))
    out["instances"] = int(n)
    out["candidates"] = int(c)
    return out
