"""The evaluation protocol (docs/protocol.md §1.3–§3): split, history expansion, keep-rates, vocabularies,
fixed candidates and seeding. Every expectation is either worked out by hand on `hand_df` or recomputed
by a plain-Python loop over the raw DataFrame."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clsr.config import ConfigError, from_dict
from clsr.data import protocol as P
from clsr.data.sources import DataError
from clsr.data.store import PreparedData
from conftest import brute_sequences, build, make_random_df, random_params

SPLITS = ("train", "valid", "test")


def raw_instances(data: PreparedData, split: str) -> list[tuple[str, int]]:
    inst = data.instances[split]
    return [(str(data.user_ids[u]), int(p)) for u, p in zip(inst.user, inst.pos)]


def raw_target(data: PreparedData, split: str, i: int) -> tuple[str, str, int]:
    ev = int(data.user_offsets[data.instances[split].user[i]] + data.instances[split].pos[i])
    return str(data.item_ids[data.event_item[ev]]), str(data.cate_ids[data.event_cate[ev]]), int(data.event_ts[ev])


# ------------------------------------------------------------------------------------------------
# histories: exactly the user's earlier events, in time order
# ------------------------------------------------------------------------------------------------
CONFIGS = [
    dict(split="per_user"),
    dict(split="time_span", span=3 * 86400, valid_keep=0.5, test_keep=0.5),
    dict(split="time_fraction", valid_fraction=0.15, test_fraction=0.2, train_keep=0.7),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["split"])
def test_history_is_exactly_the_earlier_events(random_df, cfg):
    data = build(random_df, valid_negatives=3, test_negatives=5, **cfg)
    seqs = brute_sequences(random_df)
    checked = 0
    for split in SPLITS:
        inst = data.instances[split]
        for i in range(len(inst)):
            u, pos = str(data.user_ids[inst.user[i]]), int(inst.pos[i])
            seq = seqs[u]
            assert 1 <= pos < len(seq)
            start = int(data.user_offsets[inst.user[i]])
            hist = range(start, start + pos)
            h_items = [str(data.item_ids[data.event_item[e]]) for e in hist]
            h_cates = [str(data.cate_ids[data.event_cate[e]]) for e in hist]
            h_ts = [int(data.event_ts[e]) for e in hist]
            # brute force: the user's events before the target, sorted by (ts, file order)
            assert h_items == [e[2] for e in seq[:pos]]
            assert h_cates == [e[3] for e in seq[:pos]]
            assert h_ts == [e[0] for e in seq[:pos]]
            item, cate, ts = raw_target(data, split, i)
            assert (ts, item, cate) == (seq[pos][0], seq[pos][2], seq[pos][3])
            assert all(t <= ts for t in h_ts), "a history holds an event later than its target"
            assert h_ts == sorted(h_ts)
            checked += 1
    assert checked > 100


def test_store_holds_each_users_events_sorted(random_df):
    data = build(random_df)
    seqs = brute_sequences(random_df)
    assert data.n_users == len(seqs) == random_df["user"].nunique()
    assert data.n_events == len(random_df)
    # users in order of first appearance in the file
    assert list(data.user_ids) == [str(u) for u in pd.unique(random_df["user"])]
    for r, u in enumerate(data.user_ids):
        s, e = data.user_offsets[r], data.user_offsets[r + 1]
        assert [str(x) for x in data.item_ids[data.event_item[s:e]]] == [ev[2] for ev in seqs[u]]
        assert list(data.event_ts[s:e]) == [ev[0] for ev in seqs[u]]


# ------------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------------
def test_per_user_split_hand(hand_df):
    data = build(hand_df, split="per_user", valid_negatives=1, test_negatives=1)
    # user 10: a@100 b@200 c@300 a@400 d@500 ; user 20: b@150 e@250 b@250 c@600 ; 30: c@50 ; 40: a@700 b@800
    assert raw_instances(data, "train") == [("10", 1), ("10", 2), ("20", 1)]
    assert raw_instances(data, "valid") == [("10", 3), ("20", 2)]
    assert raw_instances(data, "test") == [("10", 4), ("20", 3), ("40", 1)]
    assert [raw_target(data, "test", i)[0] for i in range(3)] == ["d", "c", "b"]
    assert [raw_target(data, "valid", i)[0] for i in range(2)] == ["a", "b"]  # b@250 after e@250 (file order)
    assert [raw_target(data, "train", i)[0] for i in range(3)] == ["b", "c", "e"]


def test_per_user_split_random(random_df):
    data = build(random_df, split="per_user")
    seqs = brute_sequences(random_df)
    want = {s: set() for s in SPLITS}
    for u, seq in seqs.items():
        n = len(seq)
        if n >= 2:
            want["test"].add((u, n - 1))
        if n >= 3:
            want["valid"].add((u, n - 2))
        for p in range(1, n - 2):
            want["train"].add((u, p))
    for s in SPLITS:
        got = raw_instances(data, s)
        assert len(got) == len(set(got))
        assert set(got) == want[s], s


def test_time_span_split_hand(hand_df):
    # T_max = 800, span 100: test = ts >= 700, valid = 600 <= ts < 700 (both boundaries inclusive below)
    data = build(hand_df, split="time_span", span=100, valid_negatives=1, test_negatives=1)
    assert raw_instances(data, "test") == [("40", 1)]  # b@800; a@700 is user 40's first event
    assert raw_instances(data, "valid") == [("20", 3)]  # c@600 sits exactly on T_max - 2 span
    assert raw_instances(data, "train") == [("10", 1), ("10", 2), ("10", 3), ("10", 4), ("20", 1), ("20", 2)]
    # the test history crosses the boundaries (§2.1)
    lab = P.split_labels(data.event_ts, data.user_offsets, P.ProtocolConfig(split="time_span", span=100))
    assert dict(zip(data.event_ts.tolist(), lab.tolist()))[700] == 2
    assert dict(zip(data.event_ts.tolist(), lab.tolist()))[600] == 1


def test_time_span_split_random(random_df):
    span = 3 * 86400
    data = build(random_df, split="time_span", span=span, valid_negatives=2, test_negatives=2)
    t_max = int(random_df["ts"].max())
    seqs = brute_sequences(random_df)
    want = {s: set() for s in SPLITS}
    for u, seq in seqs.items():
        for p in range(1, len(seq)):
            t = seq[p][0]
            s = "test" if t >= t_max - span else ("valid" if t >= t_max - 2 * span else "train")
            want[s].add((u, p))
    for s in SPLITS:
        assert set(raw_instances(data, s)) == want[s]
    assert all(len(want[s]) > 10 for s in SPLITS)
    tts = {s: [raw_target(data, s, i)[2] for i in range(len(data.instances[s]))] for s in SPLITS}
    assert max(tts["train"]) < min(tts["valid"]) <= max(tts["valid"]) < min(tts["test"])


def test_time_fraction_split_is_time_ordered(random_df):
    data = build(random_df, split="time_fraction", valid_fraction=0.2, test_fraction=0.1)
    lab = P.split_labels(data.event_ts, data.user_offsets, P.ProtocolConfig(split="time_fraction",
                                                                            valid_fraction=0.2, test_fraction=0.1))
    ts = data.event_ts
    assert ts[lab == 0].max() < ts[lab == 1].min() <= ts[lab == 1].max() < ts[lab == 2].min()
    # shares close to the requested fractions (ties at the cut can move a few events)
    n = len(ts)
    assert abs((lab == 2).mean() - 0.1) < 0.03 and abs((lab == 1).mean() - 0.2) < 0.03
    # brute force on the event times: the test cut is the time at sorted position floor(n * 0.9)
    srt = sorted(ts.tolist())
    assert ts[lab == 2].min() == srt[int(np.floor(n * 0.9))]
    tts = {s: [raw_target(data, s, i)[2] for i in range(len(data.instances[s]))] for s in SPLITS}
    assert max(tts["train"]) < min(tts["valid"]) <= max(tts["valid"]) < min(tts["test"])


def test_time_fraction_split_hand(hand_df):
    # sorted ts: 50 100 150 200 250 250 300 400 500 600 700 800 ; n = 12
    cfg = P.ProtocolConfig(split="time_fraction", valid_fraction=0.25, test_fraction=0.25)
    data = build(hand_df, split="time_fraction", valid_fraction=0.25, test_fraction=0.25,
                 valid_negatives=1, test_negatives=1)
    lab = P.split_labels(data.event_ts, data.user_offsets, cfg)
    got = {s: sorted(data.event_ts[lab == c].tolist()) for s, c in P.SPLIT_CODES.items()}
    assert got["test"] == [600, 700, 800]
    assert got["valid"] == [300, 400, 500]
    assert got["train"] == [50, 100, 150, 200, 250, 250]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["split"])
def test_first_event_never_a_target(random_df, hand_df, cfg):
    for df in (random_df, hand_df):
        c = dict(cfg, span=100) if (df is hand_df and "span" in cfg) else cfg
        data = build(df, valid_negatives=1, test_negatives=1, **c)
        for s in SPLITS:
            assert (data.instances[s].pos >= 1).all()
        # user 30 of hand_df has a single event: never an instance
        if df is hand_df:
            assert all(u != "30" for s in SPLITS for u, _ in raw_instances(data, s))


def test_min_history(random_df):
    data = build(random_df, split="per_user", min_history=4)
    seqs = brute_sequences(random_df)
    for s in SPLITS:
        assert (data.instances[s].pos >= 4).all()
    want_test = {(u, len(q) - 1) for u, q in seqs.items() if len(q) - 1 >= 4}
    assert set(raw_instances(data, "test")) == want_test


# ------------------------------------------------------------------------------------------------
# keep-rates
# ------------------------------------------------------------------------------------------------
def test_keep_rates_respected_and_deterministic():
    df = make_random_df(seed=11, n_users=300, min_len=20, max_len=60)
    keep = dict(train_keep=0.5, valid_keep=0.3, test_keep=0.15)
    cfg = dict(split="time_fraction", valid_fraction=0.2, test_fraction=0.2, valid_negatives=2, test_negatives=2)
    full = build(df, **cfg)
    part = build(df, **cfg, **keep)
    for s, rate in zip(SPLITS, keep.values()):
        n_all, n_kept = len(full.instances[s]), len(part.instances[s])
        assert n_all > 1000
        assert abs(n_kept / n_all - rate) < 0.05, (s, n_kept / n_all, rate)
        # kept instances are a subset of the eligible ones
        assert set(raw_instances(part, s)) <= set(raw_instances(full, s))
    again = build(df, **cfg, **keep)
    other = build(df, **cfg, **keep, seed=1)
    for s in SPLITS:
        assert raw_instances(again, s) == raw_instances(part, s)
    assert any(raw_instances(other, s) != raw_instances(part, s) for s in SPLITS)


# ------------------------------------------------------------------------------------------------
# candidates
# ------------------------------------------------------------------------------------------------
def item_category(df) -> dict[str, str]:
    out = {}
    for i, c in zip(df["item"], df["category"]):
        out[str(i)] = str(c)
    return out


@pytest.mark.parametrize("sampling", ["popularity", "uniform"])
def test_candidates_positive_first_and_distinct_negatives(random_df, sampling):
    data = build(random_df, split="per_user", valid_negatives=4, test_negatives=12, negative_sampling=sampling)
    cat_of = item_category(random_df)
    for split, n_neg in (("valid", 4), ("test", 12)):
        cand = data.candidates[split]
        assert cand.item.shape == (len(data.instances[split]), 1 + n_neg)
        for i in range(len(cand.item)):
            item, cate, _ = raw_target(data, split, i)
            row = [str(x) for x in data.item_ids[cand.item[i]]]
            assert row[0] == item
            assert str(data.cate_ids[cand.cate[i, 0]]) == cate
            assert len(set(row[1:])) == n_neg, "negatives must be distinct"
            assert item not in row[1:], "positive excluded by default"
            assert [str(c) for c in data.cate_ids[cand.cate[i, 1:]]] == [cat_of[x] for x in row[1:]]


def test_positive_can_be_its_own_negative_when_not_excluded():
    # three distinct items, three negatives: with the released guard bug the positive must be among them
    df = pd.DataFrame({"user": [1, 1, 1, 1, 2, 2, 2, 2], "item": [7, 8, 9, 7, 9, 8, 7, 8], "category": [0] * 8,
                       "ts": [1, 2, 3, 4, 1, 2, 3, 4]})
    data = build(df, split="per_user", valid_negatives=3, test_negatives=3, exclude_positive=False)
    for split in ("valid", "test"):
        cand = data.candidates[split]
        for row in cand.item:
            assert row[0] in row[1:]
            assert sorted(row[1:]) == sorted(set(row[1:]))
    with pytest.raises(DataError, match="distinct"):
        build(df, split="per_user", valid_negatives=3, test_negatives=3, exclude_positive=True)


def test_sample_negatives_direct_properties():
    rng = np.random.default_rng(0)
    pool = np.array([0, 1, 2])
    out = P.sample_negatives(np.array([0, 1, 2] * 50), 3, pool, rng, exclude_positive=False)
    assert all(sorted(r) == [0, 1, 2] for r in out.tolist())
    out = P.sample_negatives(np.array([0, 1, 2] * 50), 2, pool, rng, exclude_positive=True)
    for p, r in zip([0, 1, 2] * 50, out.tolist()):
        assert sorted(r) == sorted({0, 1, 2} - {p})


def chi2(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def test_popularity_sampling_follows_event_popularity():
    # pool with repeats = every event's item: frequency 40:25:15:10:6:4 (%); one negative per row, the
    # positive (item 99) is not in the pool, so each negative is a single draw from the pool.
    counts = np.array([40, 25, 15, 10, 6, 4])
    pool = np.repeat(np.arange(6), counts)
    rng = np.random.default_rng(123)
    m = 20000
    neg = P.sample_negatives(np.full(m, 99), 1, pool, rng)
    obs = np.bincount(neg.ravel(), minlength=6)
    exp = m * counts / counts.sum()
    assert chi2(obs, exp) < 30  # 5 dof: p < 1e-5 would be > 30
    # the uniform pool (distinct items) gives flat frequencies
    neg_u = P.sample_negatives(np.full(m, 99), 1, np.arange(6), rng)
    obs_u = np.bincount(neg_u.ravel(), minlength=6)
    assert chi2(obs_u, np.full(6, m / 6)) < 30
    assert chi2(obs_u, exp) > 1000  # and is clearly not the popularity distribution


def test_first_distinct_draws_distribution():
    # two distinct negatives from pool p = (0.7, 0.2, 0.1), positive excluded = item 0:
    # the remaining items 1, 2 must both appear -> every row is {1, 2}; the order follows the stream:
    # P(first = 1) = 0.2 / 0.3.
    pool = np.repeat(np.arange(3), [70, 20, 10])
    neg = P.sample_negatives(np.zeros(30000, dtype=np.int64), 2, pool, np.random.default_rng(5))
    assert (np.sort(neg, axis=1) == [1, 2]).all()
    assert abs((neg[:, 0] == 1).mean() - 2 / 3) < 0.02
    # without exclusion, with 2 negatives from 3 items: P(set = {1, 2}) follows from the first-two-distinct
    # rule. P(first two distinct are {1,2}) = p1*p2/(1-p1) + p2*p1/(1-p2) = 0.2*0.1/0.8 + 0.1*0.2/0.9
    neg = P.sample_negatives(np.full(30000, 9), 2, pool, np.random.default_rng(6), exclude_positive=False)
    share = (np.sort(neg, axis=1) == [1, 2]).all(axis=1).mean()
    assert abs(share - (0.02 / 0.8 + 0.02 / 0.9)) < 0.006


@pytest.mark.parametrize("sampling", ["popularity", "uniform"])
def test_build_uses_the_requested_pool(sampling):
    # item 0 is in 60 % of the events, items 1..20 share the rest
    rng = np.random.default_rng(2)
    rows = []
    for u in range(300):
        for t in range(6):
            it = 0 if rng.random() < 0.6 else int(rng.integers(1, 21))
            rows.append((u, it, it % 3, t))
    df = pd.DataFrame(rows, columns=["user", "item", "category", "ts"])
    data = build(df, split="per_user", valid_negatives=1, test_negatives=1, negative_sampling=sampling)
    negs = np.concatenate([data.candidates[s].item[:, 1] for s in ("valid", "test")])
    pos = np.concatenate([data.candidates[s].item[:, 0] for s in ("valid", "test")])
    # rows whose positive is not item 0 may draw item 0 as their negative:
    # popularity -> P(item 0) = 0.6 (one draw from the event pool); uniform -> 1 / 21
    eligible = data.item_ids[pos] != "0"
    assert eligible.sum() > 150
    share0 = np.mean(data.item_ids[negs[eligible]] == "0")
    if sampling == "popularity":
        assert 0.5 < share0 < 0.7
    else:
        assert share0 < 0.2


# ------------------------------------------------------------------------------------------------
# seeding
# ------------------------------------------------------------------------------------------------
def test_same_seed_identical_files_different_seed_different_candidates(tmp_path, random_df):
    from clsr.data.prepare import prepare

    prepare("rand", random_params(seed=5), out_dir=tmp_path / "a", interactions=random_df)
    prepare("rand", random_params(seed=5), out_dir=tmp_path / "b", interactions=random_df)
    prepare("rand", random_params(seed=6), out_dir=tmp_path / "c", interactions=random_df)
    a = (tmp_path / "a" / "rand" / "arrays.npz").read_bytes()
    b = (tmp_path / "b" / "rand" / "arrays.npz").read_bytes()
    assert a == b
    da, dc = PreparedData.load(tmp_path / "a" / "rand"), PreparedData.load(tmp_path / "c" / "rand")
    assert not np.array_equal(da.candidates["test"].item, dc.candidates["test"].item)
    # the events themselves do not depend on the seed
    assert np.array_equal(da.event_item, dc.event_item) and np.array_equal(da.event_ts, dc.event_ts)


def test_save_load_round_trip(prepared_random):
    data, folder = prepared_random
    back = PreparedData.load(folder)
    for name in ("user_offsets", "event_item", "event_cate", "event_ts", "user_ids", "item_ids", "cate_ids",
                 "user_index", "item_index", "cate_index"):
        assert np.array_equal(getattr(back, name), getattr(data, name)), name
    for s in SPLITS:
        assert np.array_equal(back.instances[s].user, data.instances[s].user)
        assert np.array_equal(back.instances[s].pos, data.instances[s].pos)
    for s in ("valid", "test"):
        assert np.array_equal(back.candidates[s].item, data.candidates[s].item)
        assert np.array_equal(back.candidates[s].cate, data.candidates[s].cate)


# ------------------------------------------------------------------------------------------------
# vocabularies
# ------------------------------------------------------------------------------------------------
def test_vocab_hand(hand_df):
    data = build(hand_df, split="per_user", valid_negatives=1, test_negatives=1)
    item = {str(data.item_ids[c]): int(data.item_index[c]) for c in range(len(data.item_ids))}
    cate = {str(data.cate_ids[c]): int(data.cate_index[c]) for c in range(len(data.cate_ids))}
    user = {str(data.user_ids[c]): int(data.user_index[c]) for c in range(len(data.user_ids))}
    # train lines: (10: b | a), (10: c | a b), (20: e | b)
    # counts: b 3, a 2, c 1, e 1 (c first seen before e), d 0 (valid/test only)
    assert item == {"b": 1, "a": 2, "c": 3, "e": 4, "d": 0}
    assert cate == {"x": 1, "y": 2, "z": 3}  # x = a + b = 5, y = c 1, z = e 1
    assert user == {"10": 1, "20": 2, "30": 0, "40": 0}
    assert (data.item_vocab_size, data.cate_vocab_size, data.user_vocab_size) == (5, 4, 3)


def released_create_vocab(lines: list[tuple[str, str, str, list[str], list[str]]]) -> dict[str, dict[str, int]]:
    """The released `_create_vocab` (sequential_reviews.py), re-typed: lines are (user, item, cate,
    hist_items, hist_cates) in train_data order; dict insertion order breaks count ties."""
    user_d, item_d, cat_d = {}, {}, {}
    for uid, mid, cat, mids, cats in lines:
        user_d[uid] = user_d.get(uid, 0) + 1
        item_d[mid] = item_d.get(mid, 0) + 1
        cat_d[cat] = cat_d.get(cat, 0) + 1
        for m in mids:
            item_d[m] = item_d.get(m, 0) + 1
        for c in cats:
            cat_d[c] = cat_d.get(c, 0) + 1
    out = {}
    for name, d in (("user", user_d), ("item", item_d), ("cate", cat_d)):
        ranked = sorted(d.items(), key=lambda x: x[1], reverse=True)
        out[name] = {k: i + 1 for i, (k, _) in enumerate(ranked)}  # 0 = default_* (global split)
    return out


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c["split"])
def test_vocab_follows_the_released_create_vocab(random_df, cfg):
    data = build(random_df, valid_negatives=2, test_negatives=2, **cfg)
    seqs = brute_sequences(random_df)
    train = set(raw_instances(data, "train"))
    # train_data as the released code writes it: users in order of first appearance, targets in time order
    lines = []
    for u in pd.unique(random_df["user"]).astype(str):
        seq = seqs[u]
        for p in range(1, len(seq)):
            if (u, p) in train:
                lines.append((u, seq[p][2], seq[p][3], [e[2] for e in seq[:p]], [e[3] for e in seq[:p]]))
    assert len(lines) == len(train)
    want = released_create_vocab(lines)
    for kind, ids, index in (("item", data.item_ids, data.item_index), ("cate", data.cate_ids, data.cate_index),
                             ("user", data.user_ids, data.user_index)):
        got = {str(r): int(i) for r, i in zip(ids, index)}
        assert {r: i for r, i in got.items() if i > 0} == want[kind], kind
        assert all(got[r] == 0 for r in got if r not in want[kind]), kind
        assert sorted(want[kind].values()) == list(range(1, len(want[kind]) + 1))


def test_vocab_ties_follow_released_insertion_order():
    # one user, train lines: (b | a), (c | a b), (d | a b c): counts a 3, b 3, c 2, d 1.
    # Released insertion order meets b (line 1's target) before a (line 1's history): b -> 1, a -> 2,
    # although a happens earlier in time.
    df = pd.DataFrame({"user": [1] * 6, "item": list("abcdef"), "category": list("xyzxyz"), "ts": range(6)})
    data = build(df, split="per_user", valid_negatives=1, test_negatives=1)
    item = {str(r): int(i) for r, i in zip(data.item_ids, data.item_index)}
    assert item == {"b": 1, "a": 2, "c": 3, "d": 4, "e": 0, "f": 0}
    cate = {str(r): int(i) for r, i in zip(data.cate_ids, data.cate_index)}
    # x: a(3) + d(1) = 4, y: b 3, z: c 2
    assert cate == {"x": 1, "y": 2, "z": 3}


def test_stats_json_fields(prepared_random):
    data, folder = prepared_random
    st = json.loads((folder / "stats.json").read_text())
    for key in ("name", "users", "items", "categories", "events", "vocab", "time_range", "splits", "seed",
                "source", "content_sha256"):
        assert key in st, key
    assert "seconds" not in st  # no timings in the dataset folder: the same data give the same bytes
    assert st["users"] == data.n_users == 50
    assert st["events"] == data.n_events
    assert st["seed"] == 3
    for s in SPLITS:
        sp = st["splits"][s]
        assert sp["instances"] == len(data.instances[s])
        for key in ("users", "unseen_user_share", "unseen_item_share", "history_length_quantiles", "truncated_share"):
            assert key in sp, (s, key)
    assert st["splits"]["test"]["candidates_shape"] == [len(data.instances["test"]), 10]
    # the share of test targets unseen in train, brute force
    tgt_items = [raw_target(data, "test", i)[0] for i in range(len(data.instances["test"]))]
    idx = {str(r): int(i) for r, i in zip(data.item_ids, data.item_index)}
    assert st["splits"]["test"]["unseen_item_share"] == pytest.approx(np.mean([idx[t] == 0 for t in tgt_items]))


# ------------------------------------------------------------------------------------------------
# configuration of the protocol
# ------------------------------------------------------------------------------------------------
def test_protocol_config_validation():
    with pytest.raises(ConfigError, match="split"):
        from_dict(P.ProtocolConfig, {"split": "leave_one_out"})
    with pytest.raises(ConfigError, match="valid_keep"):
        from_dict(P.ProtocolConfig, {"valid_keep": 0})
    with pytest.raises(ConfigError, match="negative_sampling"):
        from_dict(P.ProtocolConfig, {"negative_sampling": "hard"})
    for bad in ({"test_fraction": 0.0}, {"valid_fraction": -0.1, "test_fraction": 0.3},
                {"valid_fraction": 0.6, "test_fraction": 0.4}):
        with pytest.raises(ConfigError, match="test_fraction"):
            from_dict(P.ProtocolConfig, {"split": "time_fraction", **bad})
    assert from_dict(P.ProtocolConfig, {"valid_fraction": 0.0, "test_fraction": 0.2}).valid_fraction == 0.0
    cfg = from_dict(P.ProtocolConfig, {"time_unit": "86.4", "valid_keep": "0.15"})
    assert cfg.time_unit == 86.4 and cfg.valid_keep == 0.15


def test_no_train_instances_is_an_error(hand_df):
    # span so large that everything falls into valid/test
    with pytest.raises(DataError, match="no training instances"):
        build(hand_df, split="time_span", span=10_000, valid_negatives=1, test_negatives=1)
