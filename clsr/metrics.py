"""Ranking metrics as the released code computes them (docs/protocol.md §9), vectorised.

Input: `scores` (n, 1+N) with column 0 the positive, and `users` (n,) the user of each instance.

- auc   : ROC-AUC over every row of the split pooled (ties count ½, as sklearn's roc_auc_score).
- gauc  : the released `wauc`: per user, AUC over all that user's rows (positives and negatives of
          different instances pooled), weighted by the user's row count. Users whose rows hold one
          class only have no AUC and are left out of the weighted mean (cannot happen with 1+N groups).
- mrr   : mean over instances of 1 / rank of the positive in its group.
- ndcg@k: 1 / log2(rank + 1) if rank <= k else 0 (one positive per group, gains 2^y - 1).
- hit@k : 1 if rank <= k.

Ties (`ties`, rank-based metrics and per-instance AUC; the pooled AUC and GAUC always count a tie ½):
- "mean": the expected rank over all orders of the tie block, rank = 1 + #(neg > pos) + #(neg == pos) / 2
  (per-instance AUC counts a tie ½).
- "pessimistic" (synonym "released"): a positive tied with negatives is ranked *below* them,
  rank = 1 + #(neg >= pos). The released code sorts with numpy's unstable argsort, which orders exact
  ties arbitrarily; this mode is its worst case.
- "optimistic": the positive is ranked above its ties, rank = 1 + #(neg > pos).

Per-instance values (`sampled_per_instance`, `per_user_auc`) feed the paired bootstrap of `clsr.stats`;
`full_ranking_per_instance` / `full_ranking_metrics` rank the target among every catalogue item instead
of 1 + N sampled candidates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_KS = (1, 2, 4, 6, 10)
#: tie conventions accepted by `ties=` ("released" is a synonym of "pessimistic")
TIE_MODES = ("mean", "pessimistic", "optimistic", "released")


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


def _group_aucs(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, np.ndarray]:
    """Per group holding both classes: group id (sorted), AUC over the group's rows (ties ½) and its row count."""
    df = pd.DataFrame({"g": np.asarray(groups).ravel(), "s": np.asarray(scores, dtype=np.float64).ravel(),
                       "y": np.asarray(labels).ravel().astype(bool)})
    df["r"] = df.groupby("g", sort=True)["s"].rank(method="average")
    agg = df.assign(rp=df["r"] * df["y"]).groupby("g", sort=True).agg(
        n=("y", "size"), n_pos=("y", "sum"), rank_pos=("rp", "sum")
    )
    n_pos = agg["n_pos"].to_numpy(np.float64)
    n_neg = agg["n"].to_numpy(np.float64) - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    return {
        "group": agg.index.to_numpy()[ok],
        "auc": _auc_from_ranks(agg["rank_pos"].to_numpy(np.float64)[ok], n_pos[ok], n_neg[ok]),
        "rows": agg["n"].to_numpy(np.int64)[ok],
    }


def group_weighted_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """The released `wauc`: Σ_g (rows_g / rows) · AUC_g over groups holding both classes."""
    g = _group_aucs(scores, labels, groups)
    if not len(g["auc"]):
        return float("nan")
    w = g["rows"].astype(np.float64)
    return float((g["auc"] * w).sum() / w.sum())


def tie_share(ties: str) -> float:
    """Share of the tied candidates ranked above the positive: mean ½, pessimistic 1, optimistic 0."""
    if ties == "mean":
        return 0.5
    if ties in ("pessimistic", "released"):
        return 1.0
    if ties == "optimistic":
        return 0.0
    raise ValueError(f"ties: {ties!r} is not one of {list(TIE_MODES)}")


def rank_from_counts(greater: np.ndarray, equal: np.ndarray, ties: str) -> np.ndarray:
    """1-based rank of a positive with `greater` candidates above it and `equal` tied with it."""
    return 1.0 + np.asarray(greater, dtype=np.float64) + tie_share(ties) * np.asarray(equal, dtype=np.float64)


def positive_rank(scores: np.ndarray, ties: str = "pessimistic") -> np.ndarray:
    """1-based rank of column 0 within each row."""
    tie_share(ties)  # reject an unknown mode before any work
    scores = np.asarray(scores, dtype=np.float64)
    pos = scores[:, :1]
    neg = scores[:, 1:]
    return rank_from_counts((neg > pos).sum(axis=1), (neg == pos).sum(axis=1), ties)


def evaluate_scores(
    scores: np.ndarray,
    users: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: str = "pessimistic",
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


# ---- per-instance ranking metrics (inputs to the paired bootstrap in clsr.stats) -------------------
def ranking_per_instance(rank: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    """rr = 1 / rank, hit@k = [rank <= k], ndcg@k = [rank <= k] / log2(rank + 1), per instance."""
    rank = np.asarray(rank, dtype=np.float64)
    out = {"rank": rank, "rr": 1.0 / rank}
    for k in ks:
        hit = rank <= k
        out[f"hit@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0)
    return out


def sampled_per_instance(
    scores: np.ndarray,
    users: np.ndarray,
    ks: tuple[int, ...] = DEFAULT_KS,
    ties: str = "pessimistic",
) -> dict[str, np.ndarray]:
    """Per row of a (n, 1+N) score matrix (positive in column 0): user, rank, rr, hit@k, ndcg@k and auc.

    auc is the row's own AUC, the share of its N negatives ranked below the positive = 1 - (rank - 1) / N
    (a tie counts by `ties`: ½ for "mean"). The means of rr, hit@k and ndcg@k are `evaluate_scores`'s
    mrr, hit@k and ndcg@k; the released GAUC pools a user's rows, see `per_user_auc`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(users)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores: need a (n, 1+N) matrix with N >= 1 negatives, got shape {scores.shape}")
    if users.shape != (scores.shape[0],):
        raise ValueError(f"users: need one user per score row ({scores.shape[0]}), got shape {users.shape}")
    rank = positive_rank(scores, ties)
    out = {"user": users, **ranking_per_instance(rank, tuple(k for k in ks if k <= scores.shape[1]))}
    out["auc"] = 1.0 - (rank - 1.0) / (scores.shape[1] - 1)
    return out


def per_user_auc(scores: np.ndarray, users: np.ndarray) -> dict[str, np.ndarray]:
    """The released GAUC's parts per user: user (sorted ids), auc over all that user's rows pooled (ties ½)
    and rows (the user's candidate count, its weight): gauc = Σ rows · auc / Σ rows.
    Users whose rows hold one class only (impossible with 1+N groups) are left out, as in the GAUC."""
    scores = np.asarray(scores, dtype=np.float64)
    n, c = scores.shape
    labels = np.zeros((n, c), dtype=bool)
    labels[:, 0] = True
    g = _group_aucs(scores, labels, np.repeat(np.asarray(users), c))
    return {"user": g["group"], "auc": g["auc"], "rows": g["rows"]}


# ---- full-ranking metrics: the target among every item of the catalogue -----------------------------
FULL_RANKING_KS = (10, 20)
#: score-matrix elements compared at once (bounds the memory of one chunk to a few tens of MB)
FULL_RANKING_CHUNK_ELEMENTS = 1 << 22


def exclusion_csr(exclude, n: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets (n+1,), items) from None, a list of n index arrays, or a tuple (offsets, items)."""
    if exclude is None:
        return np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if isinstance(exclude, tuple):
        if len(exclude) != 2 or np.shape(exclude[0]) != (n + 1,):
            raise ValueError(f"exclude: a tuple must be (offsets of length {n + 1}, items); pass a list of arrays otherwise")
        offsets = np.asarray(exclude[0], dtype=np.int64)
        items = np.asarray(exclude[1], dtype=np.int64)
    else:
        if len(exclude) != n:
            raise ValueError(f"exclude: need one index array per instance ({n}), got {len(exclude)}")
        arrays = [np.asarray(e, dtype=np.int64).ravel() for e in exclude]
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        items = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(items):
        raise ValueError("exclude: offsets must start at 0, never decrease and end at len(items)")
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"exclude: item indices must lie in [0, {n_items}), got {items.min()}..{items.max()}")
    return offsets, items


def full_ranking_per_instance(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude=None,
    ks: tuple[int, ...] = FULL_RANKING_KS,
    ties: str = "mean",
) -> dict[str, np.ndarray]:
    """Rank of each instance's target among all non-excluded items, and rr, hit@k, ndcg@k per instance.

    scores (n, V): a score for every item index (0 is padding); targets (n,): the target index per row;
    exclude: the items to leave out of each row's ranking (the user's earlier items) as a list of n index
    arrays or a tuple (offsets (n+1,), items), row i's items being items[offsets[i]:offsets[i+1]]. Padding 0 is always left out, the target never is.
    rank = 1 + #(items scored above the target) + share · #(items tied with it), share ½ for ties="mean".
    Rows are processed in chunks of about FULL_RANKING_CHUNK_ELEMENTS scores.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores: need an (instances, items) matrix, got shape {scores.shape}")
    n, n_items = scores.shape
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (n,):
        raise ValueError(f"targets: need one target per score row ({n}), got shape {targets.shape}")
    if n and (targets.min() < 1 or targets.max() >= n_items):
        raise ValueError(f"targets: item indices must lie in [1, {n_items}) (0 is padding)")
    tie_share(ties)  # reject an unknown mode before any work
    offsets, items = exclusion_csr(exclude, n, n_items)
    rows_per_chunk = max(1, FULL_RANKING_CHUNK_ELEMENTS // max(n_items, 1))
    greater = np.zeros(n, dtype=np.int64)
    equal = np.zeros(n, dtype=np.int64)
    for lo in range(0, n, rows_per_chunk):
        hi = min(n, lo + rows_per_chunk)
        chunk = np.asarray(scores[lo:hi], dtype=np.float64)
        if np.isnan(chunk).any():
            row = lo + int(np.isnan(chunk).any(axis=1).argmax())
            raise ValueError(f"scores: row {row} holds NaN; a full ranking needs a number for every item")
        rows = np.arange(hi - lo)
        keep = np.ones(chunk.shape, dtype=bool)
        keep[:, 0] = False
        keep[np.repeat(rows, np.diff(offsets[lo : hi + 1])), items[offsets[lo] : offsets[hi]]] = False
        keep[rows, targets[lo:hi]] = False  # the target is not compared with itself
        target_score = chunk[rows, targets[lo:hi]][:, None]
        greater[lo:hi] = ((chunk > target_score) & keep).sum(axis=1)
        equal[lo:hi] = ((chunk == target_score) & keep).sum(axis=1)
    return ranking_per_instance(rank_from_counts(greater, equal, ties), tuple(ks))


def ranking_means(per: dict[str, np.ndarray], ks: tuple[int, ...]) -> dict[str, float]:
    """mrr, hit@k and ndcg@k: the means of per-instance values (`full_ranking_per_instance`)."""
    out = {"mrr": float(np.mean(per["rr"]))}
    for k in ks:
        out[f"hit@{k}"] = float(np.mean(per[f"hit@{k}"]))
        out[f"ndcg@{k}"] = float(np.mean(per[f"ndcg@{k}"]))
    return out


def full_ranking_metrics(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude=None,
    ks: tuple[int, ...] = FULL_RANKING_KS,
    ties: str = "mean",
) -> dict[str, float]:
    """Means of `full_ranking_per_instance`: mrr, hit@k (HR@k) and ndcg@k, with instances and items."""
    if np.shape(scores)[0] == 0:
        raise ValueError("scores: no instances to rank")
    per = full_ranking_per_instance(scores, targets, exclude, ks, ties)
    out = ranking_means(per, ks)
    out["instances"] = int(np.shape(scores)[0])
    out["items"] = int(np.shape(scores)[1])
    return out
