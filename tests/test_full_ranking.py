"""Full-ranking metrics (the target among every catalogue item) against a brute-force Python ranking."""
from __future__ import annotations

import math

import numpy as np
import pytest

from clsr import metrics as M


def brute_rank(row: np.ndarray, target: int, excluded: set[int], ties: str) -> float:
    """Sort the candidate items (all but padding 0 and the excluded ones, the target always kept) by score.

    optimistic: the target first among its ties; pessimistic: last; mean: the expected position when the
    tie block is shuffled uniformly, the midpoint of the two.
    """
    candidates = [j for j in range(1, len(row)) if j == target or j not in excluded]
    first = sorted(candidates, key=lambda j: (-row[j], j != target)).index(target) + 1
    last = sorted(candidates, key=lambda j: (-row[j], j == target)).index(target) + 1
    return {"optimistic": first, "pessimistic": last, "released": last, "mean": (first + last) / 2}[ties]


def brute_metrics(ranks: list[float], ks=(10, 20)) -> dict[str, float]:
    out = {"mrr": float(np.mean([1 / r for r in ranks]))}
    for k in ks:
        out[f"hit@{k}"] = float(np.mean([r <= k for r in ranks]))
        out[f"ndcg@{k}"] = float(np.mean([1 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]))
    return out


def random_case(seed: int, n=60, n_items=40, decimals=1):
    """Scores with many ties, targets, and per-instance exclusions that sometimes hold the target and 0."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((n, n_items)), decimals)
    targets = rng.integers(1, n_items, size=n)
    exclude = []
    for i in range(n):
        seen = rng.choice(n_items, size=rng.integers(0, n_items // 2), replace=False)
        if i % 3 == 0:
            seen = np.append(seen, targets[i])  # the target among the user's earlier items
        if i % 4 == 0:
            seen = np.append(seen, 0)
        exclude.append(seen)
    scores[::5, 1] = scores[::5, 0]  # padding tied with an item: padding must still be left out
    return scores, targets, exclude


def to_csr(exclude: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in exclude])])
    return offsets, np.concatenate(exclude)


@pytest.mark.parametrize("ties", ["mean", "pessimistic", "optimistic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_with_ties_and_exclusions(seed, ties):
    scores, targets, exclude = random_case(seed)
    ranks = [brute_rank(scores[i], targets[i], set(exclude[i].tolist()), ties) for i in range(len(targets))]
    per = M.full_ranking_per_instance(scores, targets, exclude, ties=ties)
    assert per["rank"].tolist() == pytest.approx(ranks, abs=1e-12)
    got = M.full_ranking_metrics(scores, targets, exclude, ties=ties)
    want = brute_metrics(ranks)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["instances"] == len(targets) and got["items"] == scores.shape[1]


def test_csr_and_list_exclusions_agree_and_chunking_does_not_matter(monkeypatch):
    scores, targets, exclude = random_case(3, n=97)
    whole = M.full_ranking_per_instance(scores, targets, exclude)
    csr = M.full_ranking_per_instance(scores, targets, to_csr(exclude))
    monkeypatch.setattr(M, "FULL_RANKING_CHUNK_ELEMENTS", 7 * scores.shape[1])  # 7 rows per chunk
    chunked = M.full_ranking_per_instance(scores, targets, to_csr(exclude))
    for key in whole:
        np.testing.assert_array_equal(whole[key], csr[key])
        np.testing.assert_array_equal(whole[key], chunked[key])


def test_no_exclusions_ranks_among_all_real_items():
    scores, targets, _ = random_case(4, decimals=3)
    ranks = [brute_rank(scores[i], targets[i], set(), "mean") for i in range(len(targets))]
    assert M.full_ranking_per_instance(scores, targets)["rank"].tolist() == pytest.approx(ranks)
    per32 = M.full_ranking_per_instance(scores.astype(np.float32), targets)
    want32 = [brute_rank(scores.astype(np.float32)[i], targets[i], set(), "mean") for i in range(len(targets))]
    assert per32["rank"].tolist() == pytest.approx(want32)


def test_hand_worked_example():
    # items 0..5; 0 is padding (its high score never counts)
    scores = np.array([
        [9.0, 0.3, 0.7, 0.7, 0.1, 0.7],  # target 2: tied with 3 and 5 -> mean rank 1 + 0 + 2/2 = 2
        [9.0, 0.3, 0.7, 0.7, 0.1, 0.7],  # target 2, items 3 and 5 seen before -> rank 1
        [9.0, 0.3, 0.7, 0.7, 0.1, 0.7],  # target 4, seen before itself (kept), 1 seen -> 3 above -> rank 4
    ])
    targets = np.array([2, 2, 4])
    exclude = [np.array([], dtype=int), np.array([3, 5]), np.array([4, 1])]
    per = M.full_ranking_per_instance(scores, targets, exclude, ks=(1, 2))
    assert per["rank"].tolist() == [2.0, 1.0, 4.0]
    assert per["rr"].tolist() == pytest.approx([0.5, 1.0, 0.25])
    assert per["hit@1"].tolist() == [0.0, 1.0, 0.0]
    assert per["hit@2"].tolist() == [1.0, 1.0, 0.0]
    assert per["ndcg@2"].tolist() == pytest.approx([1 / math.log2(3), 1.0, 0.0])
    pess = M.full_ranking_per_instance(scores, targets, exclude, ties="pessimistic")
    opt = M.full_ranking_per_instance(scores, targets, exclude, ties="optimistic")
    assert pess["rank"].tolist() == [3.0, 1.0, 4.0]
    assert opt["rank"].tolist() == [1.0, 1.0, 4.0]


def test_bad_input_is_a_clear_value_error():
    scores = np.random.default_rng(0).random((3, 6))
    with pytest.raises(ValueError, match="targets"):
        M.full_ranking_per_instance(scores, np.array([1, 0, 2]))  # padding as target
    with pytest.raises(ValueError, match="targets"):
        M.full_ranking_per_instance(scores, np.array([1, 6, 2]))
    with pytest.raises(ValueError, match="targets"):
        M.full_ranking_per_instance(scores, np.array([1, 2]))
    with pytest.raises(ValueError, match="exclude"):
        M.full_ranking_per_instance(scores, np.array([1, 2, 3]), [np.array([1])])
    with pytest.raises(ValueError, match="exclude"):
        M.full_ranking_per_instance(scores, np.array([1, 2, 3]), [np.array([7]), [], []])
    with pytest.raises(ValueError, match="exclude"):
        M.full_ranking_per_instance(scores, np.array([1, 2, 3]), (np.array([0, 1, 1]), np.array([2])))
    with pytest.raises(ValueError, match="ties"):
        M.full_ranking_per_instance(scores, np.array([1, 2, 3]), ties="random")
    nan_scores = scores.copy()
    nan_scores[2, 4] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        M.full_ranking_per_instance(nan_scores, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="no instances"):
        M.full_ranking_metrics(np.zeros((0, 6)), np.zeros(0, dtype=int))
