"""The evaluation protocol: split, instances, vocabularies and fixed candidates (docs/protocol.md §1.3–§3).

    interactions table --(sort per user by time)--> events (CSR)
        --(split rule)--> a split label per event
        --(history expansion)--> instances: every event after a user's first, history = all earlier events
        --(vocab from train)--> indices, 0 = padding and unseen
        --(seeded sampling)--> 1 + N candidates for valid and test, positive first
        --(second stream)--> "test_uniform": the test instances with N negatives drawn uniformly

Every random step draws from one `numpy.random.Generator` seeded by `ProtocolConfig.seed`, in a fixed
order, so the same seed gives byte-identical arrays. The uniform test candidates draw from a generator of
their own (seeded by ``[seed, UNIFORM_STREAM]``), so adding them left every other array as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clsr.config import ConfigError
from clsr.data.sources import DataError, check_interactions
from clsr.data.store import Candidates, Instances, PreparedData

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
#: second entropy word of the uniform test candidates' generator: default_rng([protocol seed, UNIFORM_STREAM])
UNIFORM_STREAM = 1


@dataclass
class ProtocolConfig:
    """How a dataset is split and evaluated. Defaults fit MovieLens-100K; the released Taobao setting is
    split=time_span, span=86400, valid_keep=test_keep=0.15, time_unit=86.4."""

    split: str = "per_user"  # per_user: each user's last event -> test, the one before -> valid
    #                          time_span: global cut, last `span` -> test, the `span` before -> valid (released)
    #                          time_fraction: global cut at the time quantiles of the events
    span: float = 86400.0  # time_span: period length in ts units (Taobao 1 day = 86400 s; Kuaishou 12 h = 43200000 ms)
    valid_fraction: float = 0.1  # time_fraction: share of (time-ordered) events in valid
    test_fraction: float = 0.1  # time_fraction: share of (time-ordered) events in test
    train_keep: float = 1.0  # keep-rate of train instances (released Kuaishou ≈ 0.05)
    valid_keep: float = 1.0  # keep-rate of valid instances (released: Taobao ≈ 0.15, Kuaishou ≈ 0.05)
    test_keep: float = 1.0  # keep-rate of test instances (same as valid in the released code)
    valid_negatives: int = 4  # N for valid candidates (1 + N per instance)
    test_negatives: int = 99  # N for test candidates
    negative_sampling: str = "popularity"  # popularity: pool = every event's item, with repeats (released) | uniform
    exclude_positive: bool = True  # False reproduces the released guard bug: the positive may be its own negative
    max_len: int = 50  # L, most recent events kept in a history (released Taobao 50, Kuaishou 250)
    time_unit: float = 86400.0  # r, the time-feature unit in ts units (released Taobao 86.4 s, Kuaishou 1 day in ms)
    min_history: int = 1  # instances need at least this many earlier events (released min_seq_length 1)
    seed: int = 0  # seeds every random step of the protocol

    def validate(self, where: str = "protocol") -> None:
        allowed = {
            "split": ("per_user", "time_span", "time_fraction"),
            "negative_sampling": ("popularity", "uniform"),
        }
        for key, values in allowed.items():
            if getattr(self, key) not in values:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)!r} is not one of {list(values)}")
        for key in ("train_keep", "valid_keep", "test_keep"):
            v = getattr(self, key)
            if not 0.0 < v <= 1.0:
                raise ConfigError(f"{where}.{key}: {v} must be in (0, 1]")
        self._validate_fractions(where)
        for key in ("valid_negatives", "test_negatives", "max_len", "min_history"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 1")
        for key in ("span", "time_unit"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{where}.{key}: {v} must be a positive number (in the source's ts units)")
        if self.seed < 0:
            raise ConfigError(f"{where}.seed: {self.seed} must be >= 0")

    def _validate_fractions(self, where: str) -> None:
        """valid_fraction and test_fraction: shares in [0, 1) leaving events for training; both > 0 when
        split is time_fraction, since a zero share would leave that split empty."""
        both = f"valid_fraction + test_fraction = {self.valid_fraction} + {self.test_fraction}"
        for key in ("valid_fraction", "test_fraction"):
            v = getattr(self, key)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"{where}.{key}: {v} must be in [0, 1) ({both})")
            if v == 0.0 and self.split == "time_fraction":
                raise ConfigError(
                    f"{where}.{key}: 0 leaves the {key.split('_')[0]} split empty with split: time_fraction; "
                    "set a share in (0, 1), e.g. 0.1"
                )
        if not self.valid_fraction + self.test_fraction < 1.0:
            raise ConfigError(f"{where}: {both} must be < 1 to leave events for training")


# ------------------------------------------------------------------------------------------------
def sort_events(df: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """Group by user in order of first appearance, stable-sort each user's events by time (§1.3).

    Returns the sorted frame with integer codes, the CSR offsets, and the raw-id tables.
    """
    user_code, user_ids = pd.factorize(df["user"], sort=False)
    item_code, item_ids = pd.factorize(df["item"], sort=False)
    cate_code, cate_ids = pd.factorize(df["category"], sort=False)
    ts = df["ts"].to_numpy(np.int64)
    order = np.lexsort((ts, user_code))  # stable: ties keep file order
    counts = np.bincount(user_code, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    extra = {}
    for c in df.columns:
        if c in ("user", "item", "category", "ts"):
            continue
        col = df[c]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            extra[c] = col.to_numpy()[order]
        elif pd.api.types.is_bool_dtype(col):
            extra[c] = col.to_numpy().astype(np.int8)[order]
    events = {
        "item": item_code[order].astype(np.int32),
        "cate": cate_code[order].astype(np.int32),
        "ts": ts[order],
    }
    ids = {
        "user": np.asarray(user_ids).astype(str),
        "item": np.asarray(item_ids).astype(str),
        "cate": np.asarray(cate_ids).astype(str),
    }
    return events, offsets, ids, extra


def positions(offsets: np.ndarray) -> np.ndarray:
    """Position of every event within its user's list (0 for the first)."""
    n = offsets[-1]
    return np.arange(n, dtype=np.int64) - np.repeat(offsets[:-1], np.diff(offsets))


def split_labels(ts: np.ndarray, offsets: np.ndarray, cfg: ProtocolConfig) -> np.ndarray:
    """0 train, 1 valid, 2 test for every event."""
    n = len(ts)
    label = np.zeros(n, dtype=np.int8)
    if cfg.split == "per_user":
        lengths = np.diff(offsets)
        last = offsets[1:] - 1
        has_test = lengths >= 2  # the test target needs at least one earlier event
        has_valid = lengths >= 3
        label[last[has_test]] = 2
        label[last[has_valid] - 1] = 1
    elif cfg.split == "time_span":
        t_max = ts.max()
        label[ts >= t_max - 2 * cfg.span] = 1
        label[ts >= t_max - cfg.span] = 2
    else:  # time_fraction: cut the time-ordered events at quantiles
        t_sorted = np.sort(ts, kind="stable")
        t_test = t_sorted[int(np.floor(n * (1 - cfg.test_fraction)))]
        t_valid = t_sorted[int(np.floor(n * (1 - cfg.test_fraction - cfg.valid_fraction)))]
        label[ts >= t_valid] = 1
        label[ts >= t_test] = 2
    return label


def build_vocab(counts_per_code: np.ndarray, first_seen: np.ndarray) -> np.ndarray:
    """Vocab index per code: sorted by count descending, ties by `first_seen` ascending (the released
    dict-insertion order, see `first_insert`); index 0 reserved; codes never counted in training map to 0 (§2.4)."""
    index = np.zeros(len(counts_per_code), dtype=np.int32)
    used = np.flatnonzero(counts_per_code > 0)
    order = used[np.lexsort((first_seen[used], -counts_per_code[used]))]
    index[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return index


def train_counts(
    event_codes: np.ndarray, offsets: np.ndarray, is_train_target: np.ndarray, n_codes: int
) -> np.ndarray:
    """How often each code occurs in the train instances, as the released vocab counts it:
    once per train target, plus once per train instance whose (full) history contains the event."""
    # per event: number of later train targets of the same user (= train histories it appears in)
    t = is_train_target.astype(np.int64)
    csum = np.concatenate([[0], np.cumsum(t)])
    user_end = np.repeat(offsets[1:], np.diff(offsets))
    later = csum[user_end] - csum[np.arange(len(t)) + 1]
    weight = later + t
    return np.bincount(event_codes, weights=weight, minlength=n_codes).astype(np.int64)


def first_insert(
    event_codes: np.ndarray, offsets: np.ndarray, is_train_target: np.ndarray, n_codes: int
) -> np.ndarray:
    """When the released `_create_vocab` first meets each code, i.e. its tie order (§2.4): it walks the
    train lines in file order (users in row order, targets in time order) and, in each line, counts the
    target first and then the history oldest first. Codes never met get int64 max."""
    n = len(event_codes)
    ev = np.arange(n, dtype=np.int64)
    # the first train target at or after each event, in the same user (that line is where it is met first)
    nxt = np.minimum.accumulate(np.where(is_train_target, ev, n)[::-1])[::-1]
    user_end = np.repeat(offsets[1:], np.diff(offsets))
    met = nxt < user_end
    line = np.cumsum(is_train_target.astype(np.int64)) - 1  # train line of each train target
    pos = positions(offsets)
    within = np.where(nxt == ev, 0, 1 + pos)  # the target first, then history position 0, 1, ...
    key = line[np.minimum(nxt, n - 1)] * (int(pos.max(initial=0)) + 2) + within
    first = np.full(n_codes, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, event_codes[met], key[met])
    return first


def sample_negatives(
    positives: np.ndarray,
    n_neg: int,
    pool: np.ndarray,
    rng: np.random.Generator,
    exclude_positive: bool = True,
) -> np.ndarray:
    """N distinct negatives per row, each the first N distinct draws of an i.i.d. stream from `pool`
    (a pool with repeats samples proportionally to popularity), as the released rejection loop does.

    Rows whose stream has not yet produced N distinct usable values get more draws appended, so the
    result is exactly "the first N distinct of the stream" (no restart bias).
    """
    m = len(positives)
    n_distinct = int(np.count_nonzero(np.bincount(pool)))  # codes are small non-negative ints
    if n_distinct - int(exclude_positive) < n_neg:
        raise DataError(
            f"cannot sample {n_neg} distinct negatives from {n_distinct} distinct items; "
            "lower the number of negatives in params.yaml (protocol.valid_negatives / test_negatives)"
        )
    out = np.empty((m, n_neg), dtype=np.int64)
    todo = np.arange(m)
    stream = np.empty((m, 0), dtype=np.int64)
    k = 2 * n_neg + 8
    while todo.size:
        new = pool[rng.integers(0, len(pool), size=(todo.size, k))]
        stream = np.concatenate([stream, new], axis=1) if stream.shape[1] else new
        usable = np.ones(stream.shape, dtype=bool)
        if exclude_positive:
            usable &= stream != positives[todo, None]
        order = np.argsort(stream, axis=1, kind="stable")
        s = np.take_along_axis(stream, order, 1)
        first = np.ones_like(s, dtype=bool)
        first[:, 1:] = s[:, 1:] != s[:, :-1]
        keep = np.empty_like(first)
        np.put_along_axis(keep, order, first, 1)
        keep &= usable
        cnt = np.cumsum(keep, axis=1)
        done = cnt[:, -1] >= n_neg
        if done.any():
            sel = keep[done] & (cnt[done] <= n_neg)
            out[todo[done]] = stream[done][sel].reshape(-1, n_neg)
        todo, stream = todo[~done], stream[~done]
        k *= 2
    return out


def require_instances(
    instances: dict[str, Instances], cfg: ProtocolConfig, name: str, splits: tuple[str, ...] = tuple(SPLIT_CODES)
) -> None:
    """A DataError naming the protocol keys to change when one of `splits` has no instances. `build` needs
    train; `prepare` needs all three, so an empty valid or test split fails there, not after an epoch."""
    why, keys = {
        "per_user": ("per_user: a user's last event is test, the one before valid; users need >= 3 events",
                     "protocol.split"),
        "time_span": (f"time_span: the last span = {cfg.span:g} ts units are test, the span before valid",
                      "protocol.span (in the source's ts units)"),
        "time_fraction": (f"time_fraction: the last test_fraction = {cfg.test_fraction:g} of the events are test, "
                          f"the valid_fraction = {cfg.valid_fraction:g} before them valid",
                          "protocol.valid_fraction / test_fraction"),
    }[cfg.split]
    for split in splits:
        if len(instances[split]) == 0:
            label = "training" if split == "train" else split
            raise DataError(
                f"dataset {name!r}: the split left no {label} instances ({why}); check {keys}, protocol.{split}_keep "
                f"= {getattr(cfg, f'{split}_keep'):g} and protocol.min_history = {cfg.min_history}"
            )


def build(df: pd.DataFrame, cfg: ProtocolConfig, name: str = "dataset") -> PreparedData:
    """Interactions table -> PreparedData (events, instances, vocabularies, candidates)."""
    df = check_interactions(df, f"dataset {name!r}")
    events, offsets, ids, extra = sort_events(df)
    rng = np.random.default_rng(cfg.seed)
    pos = positions(offsets)
    label = split_labels(events["ts"], offsets, cfg)

    # history expansion: every event after a user's first (with >= min_history earlier events)
    eligible = pos >= cfg.min_history
    keep_rate = np.array([cfg.train_keep, cfg.valid_keep, cfg.test_keep])
    u = rng.random(len(pos))  # one draw per event, always, so keep-rates do not shift other draws
    kept = eligible & (u < keep_rate[label])
    user_of = np.repeat(np.arange(len(offsets) - 1, dtype=np.int32), np.diff(offsets))
    instances = {}
    for split, code in SPLIT_CODES.items():
        ev = np.flatnonzero(kept & (label == code))
        instances[split] = Instances(user=user_of[ev], pos=pos[ev].astype(np.int32))
    require_instances(instances, cfg, name, splits=("train",))

    # vocabularies from train (§2.4)
    is_train_target = np.zeros(len(pos), dtype=bool)
    is_train_target[offsets[instances["train"].user] + instances["train"].pos] = True
    n_items, n_cates, n_users = len(ids["item"]), len(ids["cate"]), len(ids["user"])
    item_index = build_vocab(
        train_counts(events["item"], offsets, is_train_target, n_items),
        first_insert(events["item"], offsets, is_train_target, n_items),
    )
    cate_index = build_vocab(
        train_counts(events["cate"], offsets, is_train_target, n_cates),
        first_insert(events["cate"], offsets, is_train_target, n_cates),
    )
    user_train = np.bincount(instances["train"].user, minlength=n_users)
    user_index = build_vocab(user_train, np.arange(n_users))

    # fixed evaluation candidates
    if cfg.negative_sampling == "popularity":
        pool = events["item"].astype(np.int64)  # every event's item, with repeats (§3.2)
    else:
        pool = np.arange(n_items, dtype=np.int64)
    item_cate = np.zeros(n_items, dtype=np.int32)
    item_cate[events["item"]] = events["cate"]  # the last category seen for an item, like a dict rebuilt in order
    candidates = {}
    for split, n_neg in (("valid", cfg.valid_negatives), ("test", cfg.test_negatives)):
        inst = instances[split]
        tgt = offsets[inst.user] + inst.pos
        pos_item = events["item"][tgt].astype(np.int64)
        neg = sample_negatives(pos_item, n_neg, pool, rng, cfg.exclude_positive) if len(inst) else np.zeros((0, n_neg), np.int64)
        cand_item = np.concatenate([pos_item[:, None], neg], axis=1).astype(np.int32)
        cand_cate = item_cate[cand_item]
        cand_cate[:, 0] = events["cate"][tgt]
        candidates[split] = Candidates(item=cand_item, cate=cand_cate.astype(np.int32))

    data = PreparedData(
        name=name,
        user_offsets=offsets,
        event_item=events["item"],
        event_cate=events["cate"],
        event_ts=events["ts"],
        user_ids=ids["user"],
        item_ids=ids["item"],
        cate_ids=ids["cate"],
        user_index=user_index,
        item_index=item_index,
        cate_index=cate_index,
        instances=instances,
        candidates=candidates,
        meta={"protocol": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "time_unit": cfg.time_unit, "max_len": cfg.max_len},
        event_extra=extra,
    )
    add_uniform_test_candidates(data, cfg.seed)
    return data


def item_categories(data: PreparedData) -> np.ndarray:
    """Category code per item code: the last category an event shows for the item (0 for items without events)."""
    item_cate = np.zeros(len(data.item_ids), dtype=np.int32)
    item_cate[data.event_item] = data.event_cate
    return item_cate


def uniform_test_candidates(data: PreparedData, seed: int) -> tuple[Candidates | None, dict]:
    """The test instances' positives with N negatives drawn uniformly from the item vocabulary.

    N is the width of the popularity candidates ``candidates["test"]`` minus one; the pool is every item
    code with a vocabulary index > 0 (seen in training; padding and unseen items never enter), each once,
    so the negatives of a row are a uniformly random N-subset of the vocabulary without the positive
    (`sample_negatives` keeps the first N distinct draws of an i.i.d. uniform stream). Column 0 is copied
    from ``candidates["test"]``. Returns (candidates, description); candidates is None, with the reason in
    the description, when the vocabulary holds fewer than N + 1 items.
    """
    test = data.candidates["test"]
    n_neg = test.item.shape[1] - 1
    pool = np.flatnonzero(data.item_index > 0).astype(np.int64)
    info = {"negatives": n_neg, "pool": "item vocabulary (index > 0), uniform, positive excluded",
            "pool_size": len(pool), "seed": [int(seed), UNIFORM_STREAM]}
    if len(pool) < n_neg + 1:
        info["absent"] = f"the item vocabulary holds {len(pool)} items, fewer than 1 + {n_neg}"
        return None, info
    positives = test.item[:, 0].astype(np.int64)
    rng = np.random.default_rng([int(seed), UNIFORM_STREAM])
    neg = sample_negatives(positives, n_neg, pool, rng, exclude_positive=True) if len(positives) else (
        np.zeros((0, n_neg), np.int64))
    item = np.concatenate([positives[:, None], neg], axis=1).astype(np.int32)
    cate = item_categories(data)[item]
    cate[:, 0] = test.cate[:, 0]
    return Candidates(item=item, cate=cate.astype(np.int32)), info


def add_uniform_test_candidates(data: PreparedData, seed: int) -> None:
    """Store `uniform_test_candidates` as ``data.candidates["test_uniform"]`` (when the vocabulary allows)
    and their description as ``data.meta["test_uniform"]``."""
    cand, info = uniform_test_candidates(data, seed)
    if cand is not None:
        data.candidates["test_uniform"] = cand
    data.meta["test_uniform"] = info


def stats(data: PreparedData) -> dict:
    """Dataset statistics for stats.json: sizes, instances per split, unseen shares, history lengths."""
    out = {
        "name": data.name,
        "users": data.n_users,
        "items": len(data.item_ids),
        "categories": len(data.cate_ids),
        "events": data.n_events,
        "vocab": {"users": data.user_vocab_size, "items": data.item_vocab_size, "categories": data.cate_vocab_size},
        "time_range": [int(data.event_ts.min()), int(data.event_ts.max())],
        "splits": {},
    }
    L = int(data.meta.get("max_len", 50))
    for split, inst in data.instances.items():
        tgt = data.target_event(split)
        n = inst.pos.astype(np.int64)
        s = {
            "instances": len(inst),
            "users": int(np.count_nonzero(np.bincount(inst.user))) if len(inst) else 0,
            "unseen_user_share": float(np.mean(data.user_index[inst.user] == 0)) if len(inst) else 0.0,
            "unseen_item_share": float(np.mean(data.item_index[data.event_item[tgt]] == 0)) if len(inst) else 0.0,
            "history_length_quantiles": (
                {str(q): float(np.quantile(n, q)) for q in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)} if len(inst) else {}
            ),
            "truncated_share": float(np.mean(n > L)) if len(inst) else 0.0,
        }
        if split in data.candidates:
            s["candidates_shape"] = list(data.candidates[split].item.shape)
        out["splits"][split] = s
    if "test_uniform" in data.candidates or "test_uniform" in data.meta:
        u = dict(data.meta.get("test_uniform", {}))
        if "test_uniform" in data.candidates:
            u["candidates_shape"] = list(data.candidates["test_uniform"].item.shape)
        out["test_uniform"] = u
    return out
