"""Batches (docs/protocol.md §5, §3.1): time features, truncation/padding, recent-k, in-batch negatives,
training/evaluation iteration, the shuffle counterfactual and the released row layout.

Reference values come from the worked example of §5.1 and from a plain-Python re-implementation of the
formulas below (loops over raw timestamps), never from the vectorised code's own output."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from clsr.data import batches as B
from conftest import build, make_random_df

TAOBAO_UNIT = 86.4


def ref_features(hist_ts: list[int], T: int, r: float, L: int) -> tuple[list[float], list[float]]:
    """§5.1 in plain Python on the FULL history, then the last L positions, right-padded with 0."""
    n = len(hist_ts)
    clamp = lambda x: math.log(max(x / r, 0.5))  # noqa: E731
    to_now = [clamp(T - t) for t in hist_ts]
    nxt = hist_ts[1:] + [T]
    from_first = [clamp(nxt[i] - hist_ts[0]) for i in range(n)]
    to_now, from_first = to_now[-L:], from_first[-L:]
    pad = [0.0] * (L - len(to_now))
    return to_now + pad, from_first + pad


def one_user_data(ts: list[int], items: list[str] | None = None):
    items = items or [f"i{k}" for k in range(len(ts))]
    df = pd.DataFrame({"user": 1, "item": items, "category": [f"c{k % 2}" for k in range(len(ts))], "ts": ts})
    # a second user so that the vocabulary and candidates have something to work with
    df2 = pd.DataFrame({"user": 2, "item": [f"j{k}" for k in range(12)], "category": "c0", "ts": range(12)})
    return build(pd.concat([df, df2], ignore_index=True), split="per_user", valid_negatives=2, test_negatives=2)


# ------------------------------------------------------------------------------------------------
# time features
# ------------------------------------------------------------------------------------------------
def test_worked_example_taobao_units():
    data = one_user_data([0, 3600, 86400, 90000])
    h = B.history_arrays(data, np.array([0]), np.array([3]), max_len=5, time_unit=TAOBAO_UNIT)
    np.testing.assert_allclose(h["time_to_now"][0, :3], [6.9486, 6.9078, 3.7297], atol=1e-4)
    np.testing.assert_allclose(h["time_from_first"][0, :3], [3.7297, 6.9078, 6.9486], atol=1e-4)
    assert h["time_to_now"][0, 3:].tolist() == [0.0, 0.0]
    assert h["time_from_first"][0, 3:].tolist() == [0.0, 0.0]
    assert h["mask"][0].tolist() == [1, 1, 1, 0, 0]
    assert int(h["length"][0]) == 3


def test_clamp_below_half_unit():
    # gaps shorter than 0.5 r map to ln 0.5; a zero gap (same second) too
    data = one_user_data([1000, 1010, 1010, 1040])
    h = B.history_arrays(data, np.array([0]), np.array([3]), max_len=3, time_unit=TAOBAO_UNIT)
    np.testing.assert_allclose(h["time_to_now"][0], [math.log(0.5)] * 3, atol=1e-6)
    np.testing.assert_allclose(h["time_from_first"][0], [math.log(0.5)] * 3, atol=1e-6)


def test_features_use_full_history_before_truncation():
    ts = [0, 5000, 20000, 86400, 100000, 172800, 200000, 250000, 300000, 400000]
    data = one_user_data(ts)
    L = 3
    h = B.history_arrays(data, np.array([0]), np.array([9]), max_len=L, time_unit=TAOBAO_UNIT)
    # kept: events 6, 7, 8 (the most recent 3); time_from_first measured from event 0 (ts 0), not event 6
    want_first = [math.log((250000 - 0) / 86.4), math.log((300000 - 0) / 86.4), math.log((400000 - 0) / 86.4)]
    np.testing.assert_allclose(h["time_from_first"][0], want_first, rtol=1e-6)
    want_now = [math.log((400000 - t) / 86.4) for t in (200000, 250000, 300000)]
    np.testing.assert_allclose(h["time_to_now"][0], want_now, rtol=1e-6)
    assert h["length"][0] == 3 and h["mask"][0].tolist() == [1, 1, 1]
    # items: the most recent 3 of the history, oldest first
    idx = {str(r): int(i) for r, i in zip(data.item_ids, data.item_index)}
    assert h["hist_item"][0].tolist() == [idx["i6"], idx["i7"], idx["i8"]]


def ref_batch_rows(data, users, pos, L, r, recent_k=None):
    """Plain-Python histories for instances: items/cates as vocab indices, features per ref_features."""
    item_idx = {c: int(i) for c, i in enumerate(data.item_index)}
    cate_idx = {c: int(i) for c, i in enumerate(data.cate_index)}
    rows = []
    for u, p in zip(users, pos):
        start = int(data.user_offsets[u])
        events = list(range(start, start + int(p)))
        if recent_k is not None:
            events = events[-recent_k:]
        T = int(data.event_ts[start + int(p)])
        hts = [int(data.event_ts[e]) for e in events]
        to_now, from_first = ref_features(hts, T, r, L)
        kept = events[-L:]
        pad = [0] * (L - len(kept))
        rows.append({
            "hist_item": [item_idx[int(data.event_item[e])] for e in kept] + pad,
            "hist_cate": [cate_idx[int(data.event_cate[e])] for e in kept] + pad,
            "mask": [1.0] * len(kept) + [0.0] * len(pad),
            "length": len(kept),
            "time_to_now": to_now,
            "time_from_first": from_first,
        })
    return rows


@pytest.mark.parametrize("recent_k", [None, 1, 4])
@pytest.mark.parametrize("L", [3, 8, 60])
def test_history_arrays_match_plain_python(L, recent_k):
    data = build(make_random_df(seed=3), split="per_user")
    users = np.concatenate([data.instances[s].user for s in ("train", "valid", "test")])
    pos = np.concatenate([data.instances[s].pos for s in ("train", "valid", "test")])
    h = B.history_arrays(data, users, pos, max_len=L, time_unit=TAOBAO_UNIT, recent_k=recent_k)
    ref = ref_batch_rows(data, users, pos, L, TAOBAO_UNIT, recent_k)
    assert (pos > L).any() or L == 60  # truncation happens for the small L
    for key in ("hist_item", "hist_cate", "mask", "length"):
        assert np.array_equal(np.asarray(h[key]), np.array([r[key] for r in ref])), key
    for key in ("time_to_now", "time_from_first"):
        np.testing.assert_allclose(h[key], np.array([r[key] for r in ref]), rtol=1e-5, atol=1e-5, err_msg=key)


def test_recent_k_recomputes_features_on_short_history():
    ts = [0, 86400, 172800, 259200, 345600]
    data = one_user_data(ts)
    full = B.history_arrays(data, np.array([0]), np.array([4]), max_len=5, time_unit=TAOBAO_UNIT)
    rec = B.history_arrays(data, np.array([0]), np.array([4]), max_len=5, time_unit=TAOBAO_UNIT, recent_k=2)
    # recent 2 = events at 172800, 259200; first event of the short history = 172800
    assert rec["length"][0] == 2 and rec["mask"][0].tolist() == [1, 1, 0, 0, 0]
    np.testing.assert_allclose(rec["time_from_first"][0, :2], [math.log(86400 / 86.4), math.log(172800 / 86.4)],
                               rtol=1e-6)
    np.testing.assert_allclose(rec["time_to_now"][0, :2], [math.log(172800 / 86.4), math.log(86400 / 86.4)],
                               rtol=1e-6)
    # with the full history, the same positions' from-first is measured from ts 0
    np.testing.assert_allclose(full["time_from_first"][0, 2:4], [math.log(259200 / 86.4), math.log(345600 / 86.4)],
                               rtol=1e-6)
    assert rec["hist_item"][0, :2].tolist() == full["hist_item"][0, 2:4].tolist()


# ------------------------------------------------------------------------------------------------
# in-batch negatives
# ------------------------------------------------------------------------------------------------
def test_in_batch_negatives_never_the_positive():
    rng = np.random.default_rng(0)
    items = rng.integers(0, 4, size=200)  # many repeats: rejections are frequent
    draw = B.in_batch_negatives(items, 4, rng)
    assert draw.shape == (200, 4)
    assert ((draw >= 0) & (draw < 200)).all()
    assert (items[draw] != items[:, None]).all()
    # draws come with replacement from the whole chunk: every instance is drawn by somebody
    assert len(np.unique(draw)) > 150


def test_in_batch_negatives_single_item_chunk_terminates():
    items = np.full(6, 3)
    draw = B.in_batch_negatives(items, 4, np.random.default_rng(0), max_rounds=5)
    assert draw.shape == (6, 4) and ((draw >= 0) & (draw < 6)).all()


def test_in_batch_negatives_distribution_is_uniform_over_other_items():
    # chunk items [0, 1, 1, 2]: for the instance with item 0, negatives are chunk instances 1, 2, 3 uniformly,
    # i.e. item 1 with prob 2/3 and item 2 with prob 1/3
    items = np.array([0, 1, 1, 2])
    counts = Counter()
    rng = np.random.default_rng(4)
    for _ in range(3000):
        d = B.in_batch_negatives(items, 4, rng)
        counts.update(items[d[0]].tolist())
    total = sum(counts.values())
    assert counts[0] == 0
    assert abs(counts[1] / total - 2 / 3) < 0.02


# ------------------------------------------------------------------------------------------------
# training and evaluation iteration
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rdata():
    return build(make_random_df(seed=5), split="per_user", max_len=10)


def batch_key_rows(b: B.Batch):
    return [(int(u), int(n), int(c)) for u, n, c in zip(b.user_row, b.length, b.cand_item[:, 0])]


@pytest.mark.parametrize("batch_size,n_neg", [(50, 4), (7, 4), (5, 4), (64, 2), (3, 4)])
def test_train_batches_chunks_and_drop(rdata, batch_size, n_neg):
    n = len(rdata.instances["train"])
    batches = list(B.train_batches(rdata, batch_size, n_neg, 10, TAOBAO_UNIT, np.random.default_rng(0)))
    # expected chunk sizes, by hand: full chunks of batch_size, the rest only if >= 1 + n_neg
    sizes = [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    sizes = [s for s in sizes if s >= 1 + n_neg]
    assert [b.size for b in batches] == sizes
    assert B.n_train_batches(rdata, batch_size, n_neg) == len(batches)
    for b in batches:
        assert b.n_candidates == 1 + n_neg
        assert (b.instance == -1).all()
        pos = b.cand_item[:, 0]
        # negatives are targets of the chunk, never equal to the row's positive (when the chunk has >1 item)
        assert set(b.cand_item[:, 1:].flatten().tolist()) <= set(pos.tolist())
        if len(set(pos.tolist())) > 1:
            assert (b.cand_item[:, 1:] != pos[:, None]).all()
        # category of a negative = category of the chunk instance it came from
        pairs = set(zip(b.cand_item[:, 0].tolist(), b.cand_cate[:, 0].tolist()))
        for it, ca in zip(b.cand_item[:, 1:].flatten().tolist(), b.cand_cate[:, 1:].flatten().tolist()):
            assert (it, ca) in pairs


def test_train_batches_cover_every_instance_once(rdata):
    n = len(rdata.instances["train"])
    bs = 11
    batches = list(B.train_batches(rdata, bs, 4, 10, TAOBAO_UNIT, np.random.default_rng(1)))
    got = Counter(r for b in batches for r in batch_key_rows(b))
    inst = rdata.instances["train"]
    L = 10
    want = Counter()
    for u, p in zip(inst.user, inst.pos):
        ev = int(rdata.user_offsets[u] + p)
        want[(int(u), min(int(p), L), int(rdata.item_index[rdata.event_item[ev]]))] += 1
    dropped = n % bs if n % bs < 5 else 0
    assert sum(got.values()) == n - dropped
    assert not (got - want), "a batch row is not a training instance"
    if dropped == 0:
        assert got == want


def test_train_batches_deterministic_and_shuffled(rdata):
    def run(seed):
        return list(B.train_batches(rdata, 32, 4, 10, TAOBAO_UNIT, np.random.default_rng(seed)))

    a, b, c = run(9), run(9), run(10)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in ("user", "hist_item", "cand_item", "cand_cate", "time_to_now", "mask"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
    assert any(not torch.equal(x.cand_item, y.cand_item) for x, y in zip(a, c))
    # shuffled: not the stored order
    stored = rdata.instances["train"].user[:32].astype(np.int64)
    assert not np.array_equal(a[0].user_row.numpy(), stored)


def test_eval_batches_return_stored_candidates(rdata):
    for split in ("valid", "test"):
        inst, cand = rdata.instances[split], rdata.candidates[split]
        bs = 13
        batches = list(B.eval_batches(rdata, split, bs, 10, TAOBAO_UNIT))
        assert [b.size for b in batches] == [min(bs, len(inst) - s) for s in range(0, len(inst), bs)]
        ci = torch.cat([b.cand_item for b in batches])
        cc = torch.cat([b.cand_cate for b in batches])
        assert torch.equal(ci, torch.from_numpy(rdata.item_index[cand.item].astype(np.int64)))
        assert torch.equal(cc, torch.from_numpy(rdata.cate_index[cand.cate].astype(np.int64)))
        assert torch.cat([b.instance for b in batches]).tolist() == list(range(len(inst)))
        assert torch.cat([b.user_row for b in batches]).tolist() == inst.user.tolist()
        assert torch.cat([b.user for b in batches]).tolist() == rdata.user_index[inst.user].tolist()


def test_make_batch_dtypes_and_user_index(rdata):
    inst = rdata.instances["test"]
    cand = rdata.candidates["test"]
    b = B.make_batch(rdata, inst.user[:4], inst.pos[:4], cand.item[:4], cand.cate[:4], 10, TAOBAO_UNIT)
    for f in ("user", "hist_item", "hist_cate", "length", "cand_item", "cand_cate", "user_row", "instance"):
        assert getattr(b, f).dtype == torch.int64, f
    for f in ("mask", "time_to_now", "time_from_first"):
        assert getattr(b, f).dtype == torch.float32, f
    assert torch.equal(b.length, b.mask.sum(1).long())


# ------------------------------------------------------------------------------------------------
# counterfactual shuffle and the released row layout
# ------------------------------------------------------------------------------------------------
def test_shuffle_history(rdata):
    batch = next(B.eval_batches(rdata, "test", 40, 10, TAOBAO_UNIT))
    g = torch.Generator().manual_seed(0)
    sh = B.shuffle_history(batch, g)
    moved = 0
    for i in range(batch.size):
        n = int(batch.length[i])
        a, b = batch.hist_item[i].tolist(), sh.hist_item[i].tolist()
        assert sorted(a[:n]) == sorted(b[:n])
        assert b[n:] == [0] * (len(b) - n), "padding must stay at the end"
        # item and category move together
        assert sorted(zip(a[:n], batch.hist_cate[i, :n].tolist())) == sorted(zip(b[:n], sh.hist_cate[i, :n].tolist()))
        moved += a != b
    assert moved > batch.size // 3
    for f in ("mask", "length", "time_to_now", "time_from_first", "cand_item", "cand_cate", "user", "user_row"):
        assert torch.equal(getattr(sh, f), getattr(batch, f)), f
    # a different generator state gives another permutation
    sh2 = B.shuffle_history(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(sh.hist_item, sh2.hist_item)


def test_expand_rows_layout(rdata):
    batch = next(B.eval_batches(rdata, "valid", 6, 10, TAOBAO_UNIT))
    C = batch.n_candidates
    ex = batch.expand_rows()
    assert ex.size == batch.size * C and ex.n_candidates == 1
    for r in range(ex.size):
        i, j = divmod(r, C)
        assert int(ex.cand_item[r, 0]) == int(batch.cand_item[i, j])
        assert int(ex.cand_cate[r, 0]) == int(batch.cand_cate[i, j])
        assert torch.equal(ex.hist_item[r], batch.hist_item[i])
        assert torch.equal(ex.time_to_now[r], batch.time_to_now[i])
        assert int(ex.user[r]) == int(batch.user[i]) and int(ex.instance[r]) == int(batch.instance[i])
