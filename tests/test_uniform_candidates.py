"""The uniformly sampled test candidates ("test_uniform") and the full-ranking exclusion sets
(`clsr.data.batches.history_items`). Expectations are recomputed in plain Python from the stored events
or from the raw DataFrame."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from clsr.data import protocol as P
from clsr.data.batches import eval_batches, history_items
from clsr.data.sources import DataError
from clsr.data.store import PreparedData
from conftest import brute_sequences, build, make_random_df, random_params


def vocab_codes(data: PreparedData) -> set[int]:
    return {c for c in range(len(data.item_ids)) if data.item_index[c] > 0}


def many_test_instances() -> PreparedData:
    """400 users, 60 items, the last 30 % of the events are test: about 2 000 test rows of 1 + 20."""
    df = make_random_df(seed=11, n_users=400, n_items=60)
    return build(df, split="time_fraction", valid_fraction=0.1, test_fraction=0.3, test_negatives=20, seed=4)


# ------------------------------------------------------------------------------------------------
# the candidates themselves
# ------------------------------------------------------------------------------------------------
def test_rows_are_the_test_positives_with_distinct_vocabulary_negatives(random_df):
    data = build(random_df, split="per_user", test_negatives=12)
    uni, pop = data.candidates["test_uniform"], data.candidates["test"]
    assert uni.item.shape == pop.item.shape == (len(data.instances["test"]), 13)
    assert uni.item.dtype == pop.item.dtype and uni.cate.dtype == pop.cate.dtype
    assert np.array_equal(uni.item[:, 0], pop.item[:, 0]) and np.array_equal(uni.cate[:, 0], pop.cate[:, 0])
    vocab = vocab_codes(data)
    last_cate = {}
    for i, c in zip(data.event_item, data.event_cate):  # events in stored order: the last one wins
        last_cate[int(i)] = int(c)
    for row, cates in zip(uni.item, uni.cate):
        negs = [int(x) for x in row[1:]]
        assert len(set(negs)) == 12, "negatives are distinct"
        assert int(row[0]) not in negs, "the positive is never its own negative"
        assert set(negs) <= vocab, "negatives come from the item vocabulary (never padding or unseen items)"
        assert 0 not in data.item_index[negs]
        assert [int(c) for c in cates[1:]] == [last_cate[x] for x in negs]


def test_negatives_are_uniform_over_the_vocabulary():
    """Counts per item against their expectation: each row draws N of the vocabulary without its positive.
    The same bound rejects the popularity-sampled candidates, so the check has power."""
    data = many_test_instances()
    vocab = np.array(sorted(vocab_codes(data)))
    assert len(data.instances["test"]) > 1500

    def statistic(cand) -> tuple[float, int]:
        n_neg = cand.item.shape[1] - 1
        pos = cand.item[:, 0]
        in_vocab = np.isin(pos, vocab)
        counts = np.array([np.count_nonzero(cand.item[:, 1:] == v) for v in vocab], dtype=float)
        # E_v = sum over rows whose positive is not v of N / (pool size without that row's positive)
        per_row = n_neg / (len(vocab) - in_vocab)
        expected = np.array([per_row[pos != v].sum() for v in vocab])
        return float(((counts - expected) ** 2 / expected).sum()), len(vocab) - 1

    chi2, dof = statistic(data.candidates["test_uniform"])
    bound = dof + 6 * np.sqrt(2 * dof)  # mean + 6 sd of a chi-square with dof degrees of freedom
    assert chi2 < bound, (chi2, bound)
    chi2_pop, _ = statistic(data.candidates["test"])
    assert chi2_pop > bound, "popularity sampling must fail the uniformity bound"


def test_fixed_seed_gives_the_same_candidates_and_another_seed_others(random_df):
    a = build(random_df, split="per_user", test_negatives=12, seed=2)
    b = build(random_df, split="per_user", test_negatives=12, seed=2)
    c = build(random_df, split="per_user", test_negatives=12, seed=3)
    assert np.array_equal(a.candidates["test_uniform"].item, b.candidates["test_uniform"].item)
    assert np.array_equal(a.candidates["test_uniform"].cate, b.candidates["test_uniform"].cate)
    assert not np.array_equal(a.candidates["test_uniform"].item, c.candidates["test_uniform"].item)
    again, info = P.uniform_test_candidates(a, 2)
    assert np.array_equal(again.item, a.candidates["test_uniform"].item)
    assert info == a.meta["test_uniform"] and info["seed"] == [2, P.UNIFORM_STREAM]


def _candidate_hash(data: PreparedData) -> str:
    h = hashlib.sha256()
    for split in ("valid", "test"):
        c = data.candidates[split]
        h.update(np.ascontiguousarray(c.item, dtype=np.int32).tobytes())
        h.update(np.ascontiguousarray(c.cate, dtype=np.int32).tobytes())
    return h.hexdigest()


# sha256 of the valid and test candidate matrices built by the protocol before the uniform candidates
# existed (same inputs: make_random_df(), these protocol settings)
POPULARITY_HASHES = [
    (dict(split="per_user", test_negatives=20, seed=5),
     "e664388ffbac3ca1aef2b1034d48b40b8198adb1a83e29237d3cee53f88ac07e"),
    (dict(split="time_span", span=3 * 86400, valid_keep=0.5, test_keep=0.5, test_negatives=9, seed=3),
     "7269db1f240c430a08ec896ef133b542699cf0c0abd8ba44e9bc7c812aafbab6"),
]


@pytest.mark.parametrize("cfg, expected", POPULARITY_HASHES, ids=["per_user", "time_span"])
def test_popularity_candidates_are_unchanged(cfg, expected, monkeypatch):
    df = make_random_df()
    data = P.build(df, P.ProtocolConfig(**cfg))
    assert "test_uniform" in data.candidates
    assert _candidate_hash(data) == expected
    # the same build with the uniform stream removed gives bit-identical arrays everywhere else
    monkeypatch.setattr(P, "add_uniform_test_candidates", lambda data, seed: None)
    without = P.build(df, P.ProtocolConfig(**cfg))
    assert set(without.candidates) == {"valid", "test"}
    for split in ("valid", "test"):
        assert np.array_equal(without.candidates[split].item, data.candidates[split].item)
        assert np.array_equal(without.candidates[split].cate, data.candidates[split].cate)
    for split in ("train", "valid", "test"):
        assert np.array_equal(without.instances[split].user, data.instances[split].user)
        assert np.array_equal(without.instances[split].pos, data.instances[split].pos)


def test_a_vocabulary_smaller_than_the_row_leaves_the_set_absent():
    # three items, two negatives per row: the popularity pool has the three items, the vocabulary (train
    # targets 8 and 7 with histories 7 and 8) only two
    df = pd.DataFrame({"user": [1, 1, 1, 1, 2, 2, 2, 2], "item": [7, 8, 9, 8, 8, 7, 9, 7], "category": [0] * 8,
                       "ts": [1, 2, 3, 4, 1, 2, 3, 4]})
    data = build(df, split="per_user", valid_negatives=1, test_negatives=2)
    assert "test_uniform" not in data.candidates
    assert "fewer than 1 + 2" in data.meta["test_uniform"]["absent"]
    assert "candidates_shape" not in P.stats(data)["test_uniform"]


# ------------------------------------------------------------------------------------------------
# stored, loaded, batched
# ------------------------------------------------------------------------------------------------
def test_prepare_stores_them_and_records_them_in_stats(prepared_random):
    data, folder = prepared_random
    back = PreparedData.load(folder)
    for key in ("item", "cate"):
        assert np.array_equal(getattr(back.candidates["test_uniform"], key), getattr(data.candidates["test_uniform"], key))
    st = json.loads((folder / "stats.json").read_text())
    assert st["test_uniform"]["candidates_shape"] == list(data.candidates["test_uniform"].item.shape)
    assert st["test_uniform"]["pool_size"] == len(vocab_codes(data))
    assert st["test_uniform"]["seed"] == [random_params()["datasets"]["rand"]["protocol"]["seed"], P.UNIFORM_STREAM]


def test_eval_batches_scores_the_test_instances_on_the_uniform_candidates(random_df):
    data = build(random_df, split="per_user", test_negatives=12)
    L, r = 20, 86400.0
    uni = list(eval_batches(data, "test_uniform", 16, L, r))
    pop = list(eval_batches(data, "test", 16, L, r))
    assert len(uni) == len(pop) and sum(b.size for b in uni) == len(data.instances["test"])
    cand = data.candidates["test_uniform"]
    for bu, bp in zip(uni, pop):
        for name in ("user", "hist_item", "hist_cate", "mask", "length", "time_to_now", "time_from_first",
                     "user_row", "instance"):
            assert np.array_equal(getattr(bu, name).numpy(), getattr(bp, name).numpy()), name
        rows = bu.instance.numpy()
        assert np.array_equal(bu.cand_item.numpy(), data.item_index[cand.item[rows]])
        assert np.array_equal(bu.cand_cate.numpy(), data.cate_index[cand.cate[rows]])
        assert np.array_equal(bu.cand_item[:, 0].numpy(), bp.cand_item[:, 0].numpy())
    assert np.array_equal(data.target_event("test_uniform"), data.target_event("test"))


def test_a_dataset_prepared_without_them_loads(tmp_path, random_df):
    data = build(random_df, split="per_user", test_negatives=12)
    del data.candidates["test_uniform"]
    del data.meta["test_uniform"]
    data.save(tmp_path / "old")
    back = PreparedData.load(tmp_path / "old")
    assert set(back.candidates) == {"valid", "test"}
    assert sum(b.size for b in eval_batches(back, "test", 50, 20, 86400.0)) == len(back.instances["test"])
    assert "test_uniform" not in P.stats(back)
    with pytest.raises(DataError, match=r"no 'test_uniform' candidates.*prepare --dataset t"):
        next(eval_batches(back, "test_uniform", 50, 20, 86400.0))


# ------------------------------------------------------------------------------------------------
# history_items: the full-ranking exclusion sets
# ------------------------------------------------------------------------------------------------
def brute_history_items(df: pd.DataFrame, data: PreparedData, split: str) -> list[list[int]]:
    """Walk each instance's raw sequence: the vocabulary index of every earlier item, oldest first."""
    seqs = brute_sequences(df)
    index = {str(raw): int(data.item_index[c]) for c, raw in enumerate(data.item_ids)}
    out = []
    inst = data.instances[split]
    for u, pos in zip(inst.user, inst.pos):
        seq = seqs[str(data.user_ids[u])]
        out.append([index[item] for _, _, item, _ in seq[: int(pos)]])
    return out


@pytest.mark.parametrize("split", ["train", "valid", "test", "test_uniform"])
def test_history_items_are_every_earlier_item(hand_df, random_df, split):
    for df, cfg in ((hand_df, dict(split="per_user", valid_negatives=1, test_negatives=1)),
                    (random_df, dict(split="time_span", span=3 * 86400, max_len=5))):
        data = build(df, **cfg)
        if split == "test_uniform" and split not in data.candidates:
            continue
        offsets, items = history_items(data, split)
        assert offsets.dtype == items.dtype == np.int64
        expected = brute_history_items(df, data, "test" if split == "test_uniform" else split)
        assert len(offsets) == len(expected) + 1 and offsets[0] == 0
        assert [items[offsets[i]:offsets[i + 1]].tolist() for i in range(len(expected))] == expected
        if df is random_df:  # full histories, not the max_len most recent
            assert max(len(e) for e in expected) > cfg["max_len"]


def test_history_items_on_the_hand_data(hand_df):
    """user 10: a b c a d; per_user: test = d (history a b c a), valid = a@400 (history a b c)."""
    data = build(hand_df, split="per_user", valid_negatives=1, test_negatives=1)
    idx = {str(raw): int(data.item_index[c]) for c, raw in enumerate(data.item_ids)}
    offsets, items = history_items(data, "test")
    rows = {str(data.user_ids[u]): items[offsets[i]:offsets[i + 1]].tolist()
            for i, u in enumerate(data.instances["test"].user)}
    assert rows["10"] == [idx["a"], idx["b"], idx["c"], idx["a"]]
    assert rows["40"] == [idx["a"]]
