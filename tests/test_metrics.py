"""Metrics (docs/protocol.md §9) against sklearn and brute-force loops, including ties."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score, roc_auc_score

from clsr import metrics as M


def brute_rank(row: np.ndarray, ties: str) -> float:
    """1-based rank of column 0 by explicit sorting.

    released: ``np.argsort(scores)[::-1]`` with a *stable* ascending sort puts the positive (index 0) first
    among equal scores, so after reversal it comes last among them (below tied negatives).
    optimistic: the positive first among equal scores. mean: average of the two.
    """
    if ties == "released":
        order = list(np.argsort(row, kind="stable")[::-1])
        return float(order.index(0) + 1)
    if ties == "optimistic":
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))  # index 0 first among ties
        return float(order.index(0) + 1)
    if ties == "mean":
        return (brute_rank(row, "released") + brute_rank(row, "optimistic")) / 2
    raise AssertionError(ties)


def brute_ndcg(row: np.ndarray, k: int, ties: str) -> float:
    """DCG@k with gains 2^y - 1 and discount log2(position + 1) over the sorted list, / ideal DCG (= 1)."""
    rank = brute_rank(row, ties)
    labels = [1.0] + [0.0] * (len(row) - 1)
    dcg = 0.0
    # the positive's position in the list is `rank`; negatives have gain 0
    for position in range(1, min(k, len(row)) + 1):
        gain = 2 ** labels[0] - 1 if position == rank else 0.0
        dcg += gain / math.log2(position + 1)
    if ties == "mean" and rank != int(rank):  # fractional mean rank: the formula 1/log2(rank+1) if rank <= k
        dcg = 1.0 / math.log2(rank + 1) if rank <= k else 0.0
    idcg = 1.0 / math.log2(2)
    return dcg / idcg


def random_scores(rng, n, c, decimals=None):
    s = rng.random((n, c))
    if decimals is not None:
        s = np.round(s, decimals)
    return s


# ------------------------------------------------------------------------------------------------
# auc / gauc
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_auc_equals_sklearn(decimals):
    rng = np.random.default_rng(decimals or 0)
    s = rng.random(3000)
    y = rng.random(3000) < 0.3
    s = s + 0.2 * y  # informative
    if decimals is not None:
        s = np.round(s, decimals)  # many ties
    assert M.auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert math.isnan(M.auc(np.array([0.1, 0.2]), np.array([1, 1])))


def brute_gauc(scores: np.ndarray, users: np.ndarray) -> float:
    n, c = scores.shape
    total, weight = 0.0, 0
    for u in np.unique(users):
        rows = scores[users == u]
        y = np.zeros_like(rows, dtype=int)
        y[:, 0] = 1
        if len(np.unique(y)) < 2:
            continue
        w = rows.size
        total += w * roc_auc_score(y.ravel(), rows.ravel())
        weight += w
    return total / weight


@pytest.mark.parametrize("decimals", [None, 1])
def test_gauc_equals_weighted_per_user_sklearn(decimals):
    rng = np.random.default_rng(1)
    n, c = 600, 5
    s = random_scores(rng, n, c, decimals)
    s[:, 0] += 0.1
    users = rng.integers(0, 40, size=n)
    got = M.evaluate_scores(s, users)["gauc"]
    assert got == pytest.approx(brute_gauc(s, users), abs=1e-12)
    # pooled auc of the same matrix
    y = np.zeros_like(s, dtype=int)
    y[:, 0] = 1
    assert M.evaluate_scores(s, users)["auc"] == pytest.approx(roc_auc_score(y.ravel(), s.ravel()), abs=1e-12)


def test_group_weighted_auc_skips_single_class_users():
    # user "a": two rows, labels (1, 0), scores ranked perfectly -> auc 1, weight 2
    # user "b": three rows, labels (1, 0, 0): positive 0.5, negatives 0.7, 0.5 -> auc (0 + 0.5) / 2 = 0.25, weight 3
    # user "c": positives only -> skipped
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.5, 0.3, 0.2])
    labels = np.array([1, 0, 1, 0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "b", "b", "c", "c"])
    want = (2 * 1.0 + 3 * 0.25) / 5
    assert M.group_weighted_auc(scores, labels, groups) == pytest.approx(want)
    assert math.isnan(M.group_weighted_auc(np.array([0.1, 0.2]), np.array([1, 1]), np.array([0, 0])))


def test_gauc_pools_rows_across_instances_of_a_user():
    # one user, two instances: (pos 0.6 | neg 0.5) and (pos 0.4 | neg 0.7)
    # pooled pairs: 0.6>0.5 ok, 0.6<0.7, 0.4<0.5, 0.4<0.7 -> 1/4 (per-instance mean would be 1/2)
    s = np.array([[0.6, 0.5], [0.4, 0.7]])
    assert M.evaluate_scores(s, np.array([7, 7]))["gauc"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------
# ranking metrics
# ------------------------------------------------------------------------------------------------
def test_hand_worked_example_with_tie():
    s = np.array([
        [0.5, 0.9, 0.5, 0.1, 0.2],  # one negative above, one tied: released rank 3, optimistic 2, mean 2.5
        [0.8, 0.1, 0.2, 0.3, 0.4],  # rank 1
        [0.1, 0.2, 0.3, 0.4, 0.5],  # rank 5
    ])
    users = np.array([0, 0, 1])
    r = M.evaluate_scores(s, users, ks=(1, 2, 4), ties="released")
    assert r["mrr"] == pytest.approx((1 / 3 + 1 + 1 / 5) / 3)
    assert r["hit@1"] == pytest.approx(1 / 3)
    assert r["hit@2"] == pytest.approx(1 / 3)
    assert r["hit@4"] == pytest.approx(2 / 3)
    assert r["ndcg@2"] == pytest.approx((0 + 1 + 0) / 3)
    assert r["ndcg@4"] == pytest.approx((1 / math.log2(4) + 1 + 0) / 3)
    o = M.evaluate_scores(s, users, ks=(2,), ties="optimistic")
    assert o["mrr"] == pytest.approx((1 / 2 + 1 + 1 / 5) / 3)
    assert o["hit@2"] == pytest.approx(2 / 3)
    assert o["ndcg@2"] == pytest.approx((1 / math.log2(3) + 1) / 3)
    m = M.evaluate_scores(s, users, ks=(2,), ties="mean")
    assert m["mrr"] == pytest.approx((1 / 2.5 + 1 + 1 / 5) / 3)
    assert m["hit@2"] == pytest.approx(1 / 3)
    assert r["instances"] == 3 and r["candidates"] == 5
    # ks larger than the group are skipped
    assert "hit@10" not in M.evaluate_scores(s, users)


@pytest.mark.parametrize("ties", ["released", "mean", "optimistic"])
@pytest.mark.parametrize("decimals", [None, 1])
def test_ranking_metrics_match_brute_force(ties, decimals):
    rng = np.random.default_rng(5)
    n, c = 400, 8
    s = random_scores(rng, n, c, decimals)
    s[:, 0] += 0.05
    if decimals is not None:
        s = np.round(s, decimals)
        s[::7, 0] = s[::7, 1]  # force exact ties with a negative
    users = rng.integers(0, 30, size=n)
    ks = (1, 2, 4, 6)
    r = M.evaluate_scores(s, users, ks=ks, ties=ties)
    ranks = np.array([brute_rank(row, ties) for row in s])
    assert r["mrr"] == pytest.approx(np.mean(1 / ranks), abs=1e-12)
    for k in ks:
        assert r[f"hit@{k}"] == pytest.approx(np.mean(ranks <= k), abs=1e-12), k
        assert r[f"ndcg@{k}"] == pytest.approx(np.mean([brute_ndcg(row, k, ties) for row in s]), abs=1e-12), k
    if decimals is not None and ties == "released":
        # ties make the released rule strictly more pessimistic than the optimistic one
        assert r["mrr"] < M.evaluate_scores(s, users, ties="optimistic")["mrr"]


def test_ndcg_matches_sklearn_without_ties():
    rng = np.random.default_rng(8)
    s = rng.random((300, 10))
    y = np.zeros_like(s)
    y[:, 0] = 1
    for k in (1, 2, 4, 6):
        want = ndcg_score(y, s, k=k)
        assert M.evaluate_scores(s, np.zeros(300), ks=(k,))[f"ndcg@{k}"] == pytest.approx(want, abs=1e-12)


def test_positive_rank_rejects_unknown_tie_rule():
    with pytest.raises(ValueError, match="ties"):
        M.positive_rank(np.zeros((2, 3)), ties="random")


def test_random_scores_reference_values():
    # per-instance sd of 1/rank and of ndcg@2 is ~0.12, so with n = 10 000 the tolerance 0.005 is ~4 sd
    rng = np.random.default_rng(0)
    n = 10000
    s = rng.random((n, 100))
    users = rng.integers(0, 500, size=n)
    r = M.evaluate_scores(s, users, ks=(2,))
    h100 = sum(1 / k for k in range(1, 101))
    assert abs(r["auc"] - 0.5) < 0.01
    assert abs(r["gauc"] - 0.5) < 0.01
    assert r["mrr"] == pytest.approx(h100 / 100, abs=0.005)
    assert r["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 100, abs=0.005)
    s5 = rng.random((n, 5))
    assert M.evaluate_scores(s5, users)["mrr"] == pytest.approx(sum(1 / k for k in range(1, 6)) / 5, abs=0.01)


# ------------------------------------------------------------------------------------------------
# tie modes and per-instance / per-user outputs
# ------------------------------------------------------------------------------------------------
def test_each_tie_mode_on_a_hand_worked_example():
    # positive 0.5; negatives 0.9 (above), 0.5 and 0.5 (tied), 0.1 (below)
    s = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
    want_rank = {"pessimistic": 4.0, "released": 4.0, "optimistic": 2.0, "mean": 3.0}
    # per-instance AUC: 1 negative below, 2 tied counted 0, 1 or ½ each, out of 4
    want_auc = {"pessimistic": 1 / 4, "released": 1 / 4, "optimistic": 3 / 4, "mean": 2 / 4}
    for ties in M.TIE_MODES:
        assert M.positive_rank(s, ties).tolist() == [want_rank[ties]], ties
        per = M.sampled_per_instance(s, np.array([0]), ks=(2, 4), ties=ties)
        assert per["auc"].tolist() == pytest.approx([want_auc[ties]]), ties
        assert per["rr"].tolist() == pytest.approx([1 / want_rank[ties]]), ties
        assert per["hit@2"].tolist() == [float(want_rank[ties] <= 2)], ties
        assert per["ndcg@4"].tolist() == pytest.approx([1 / math.log2(want_rank[ties] + 1)]), ties
    with pytest.raises(ValueError, match="pessimistic"):
        M.positive_rank(s, "random")


@pytest.mark.parametrize("ties", ["mean", "pessimistic", "optimistic"])
def test_sampled_per_instance_means_equal_evaluate_scores(ties):
    rng = np.random.default_rng(9)
    s = np.round(rng.random((300, 6)), 1)
    s[::4, 0] = s[::4, 2]
    users = rng.integers(0, 25, size=300)
    per = M.sampled_per_instance(s, users, ks=(1, 4, 10), ties=ties)
    whole = M.evaluate_scores(s, users, ks=(1, 4, 10), ties=ties)
    assert per["user"].tolist() == users.tolist()
    assert np.mean(per["rr"]) == pytest.approx(whole["mrr"], abs=1e-12)
    for k in (1, 4):
        assert np.mean(per[f"hit@{k}"]) == pytest.approx(whole[f"hit@{k}"], abs=1e-12)
        assert np.mean(per[f"ndcg@{k}"]) == pytest.approx(whole[f"ndcg@{k}"], abs=1e-12)
    assert "hit@10" not in per  # cut-offs beyond the group are skipped, as in evaluate_scores
    assert M.evaluate_scores(s, users, ties="released") == M.evaluate_scores(s, users, ties="pessimistic")


def test_mean_mode_auc_equals_sklearn_per_instance_and_per_user():
    rng = np.random.default_rng(10)
    n, c = 200, 5
    s = np.round(rng.random((n, c)), 1)  # many ties
    s[::3, 0] = s[::3, 1]
    users = rng.integers(0, 15, size=n)
    y = np.zeros(c, dtype=int)
    y[0] = 1
    per = M.sampled_per_instance(s, users, ties="mean")
    assert per["auc"].tolist() == pytest.approx([roc_auc_score(y, row) for row in s], abs=1e-12)
    parts = M.per_user_auc(s, users)
    assert parts["user"].tolist() == sorted(set(users.tolist()))
    for u, a, rows in zip(parts["user"], parts["auc"], parts["rows"]):
        mine = s[users == u]
        labels = np.zeros_like(mine, dtype=int)
        labels[:, 0] = 1
        assert a == pytest.approx(roc_auc_score(labels.ravel(), mine.ravel()), abs=1e-12)
        assert rows == mine.size
    gauc = np.sum(parts["auc"] * parts["rows"]) / np.sum(parts["rows"])
    assert gauc == pytest.approx(M.evaluate_scores(s, users)["gauc"], abs=1e-12)
