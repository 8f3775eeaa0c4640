"""Batches: histories, masks, time features and candidates sliced from the store, vectorised.

A `Batch` holds B *instances*; each has one history and C candidates (column 0 is the positive). The
released code repeats the history on every candidate row; here it is stored once per instance and the
model broadcasts it, which is exact (docs/design.md, "Compute candidate-independent parts once").
`Batch.expand_rows()` gives the released row layout (B*C instances with one candidate each) for checks.

Time features follow docs/protocol.md §5.1, computed from the *full* history before truncation:

    time_to_now[i]      = ln max((T - t_i) / r, 0.5)
    time_from_first[i]  = ln max((t_{i+1} - t_0) / r, 0.5),   with t_n = T (the target's time)

then only the most recent L events are kept, left-aligned and right-padded with zeros.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from clsr.data.sources import DataError
from clsr.data.store import PreparedData, instance_split, rerun_hint
from clsr.distributed import local_share

TIME_CLAMP = 0.5


@dataclass
class Batch:
    user: torch.Tensor  # (B,) long, user vocab index (0 = unseen in train)
    hist_item: torch.Tensor  # (B, L) long, item vocab index, 0 = padding
    hist_cate: torch.Tensor  # (B, L) long
    mask: torch.Tensor  # (B, L) float, 1 on valid positions
    length: torch.Tensor  # (B,) long, valid length after truncation (= mask.sum(1))
    time_to_now: torch.Tensor  # (B, L) float
    time_from_first: torch.Tensor  # (B, L) float
    cand_item: torch.Tensor  # (B, C) long, column 0 = positive
    cand_cate: torch.Tensor  # (B, C) long
    user_row: torch.Tensor  # (B,) long, the user's row in the store (true identity)
    instance: torch.Tensor  # (B,) long, instance index within its split (-1 for training)

    @property
    def size(self) -> int:
        return self.user.shape[0]

    @property
    def n_candidates(self) -> int:
        return self.cand_item.shape[1]

    def to(self, device) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def expand_rows(self) -> "Batch":
        """The released layout: every candidate on its own row with a copy of the history (B*C rows)."""
        C = self.n_candidates

        def rep(t):
            return t.repeat_interleave(C, dim=0)

        kw = {f.name: rep(getattr(self, f.name)) for f in fields(self) if f.name not in ("cand_item", "cand_cate")}
        return Batch(cand_item=self.cand_item.reshape(-1, 1), cand_cate=self.cand_cate.reshape(-1, 1), **kw)


def history_arrays(
    data: PreparedData,
    users: np.ndarray,
    pos: np.ndarray,
    max_len: int,
    time_unit: float,
    recent_k: int | None = None,
) -> dict[str, np.ndarray]:
    """Histories for instances (user row, target position) as padded numpy arrays.

    `recent_k` keeps only the last k events *before* the time features are computed (the
    counterfactual "recent-only" history of docs/protocol.md §10).
    """
    users = np.asarray(users, dtype=np.int64)
    pos = np.asarray(pos, dtype=np.int64)
    start = data.user_offsets[users]
    full_start = start if recent_k is None else start + np.maximum(pos - recent_k, 0)
    target = start + pos
    n_full = target - full_start
    n = np.minimum(n_full, max_len)
    steps = np.arange(max_len, dtype=np.int64)
    valid = steps[None, :] < n[:, None]
    idx = np.where(valid, (target - n)[:, None] + steps[None, :], 0)
    nxt = np.where(valid, idx + 1, 0)

    ts = data.event_ts
    T = ts[target].astype(np.float64)[:, None]
    t0 = ts[full_start].astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        to_now = np.log(np.maximum((T - ts[idx]) / time_unit, TIME_CLAMP))
        from_first = np.log(np.maximum((ts[nxt] - t0) / time_unit, TIME_CLAMP))
    return {
        "hist_item": np.where(valid, data.item_index[data.event_item[idx]], 0),
        "hist_cate": np.where(valid, data.cate_index[data.event_cate[idx]], 0),
        "mask": valid.astype(np.float32),
        "length": n,
        "time_to_now": np.where(valid, to_now, 0.0).astype(np.float32),
        "time_from_first": np.where(valid, from_first, 0.0).astype(np.float32),
    }


def make_batch(
    data: PreparedData,
    users: np.ndarray,
    pos: np.ndarray,
    cand_item_codes: np.ndarray,
    cand_cate_codes: np.ndarray,
    max_len: int,
    time_unit: float,
    instance: np.ndarray | None = None,
    recent_k: int | None = None,
) -> Batch:
    h = history_arrays(data, users, pos, max_len, time_unit, recent_k=recent_k)
    users = np.asarray(users, dtype=np.int64)
    inst = np.full(len(users), -1, dtype=np.int64) if instance is None else np.asarray(instance)
    t = torch.from_numpy
    return Batch(
        user=t(data.user_index[users].astype(np.int64)),
        hist_item=t(h["hist_item"].astype(np.int64)),
        hist_cate=t(h["hist_cate"].astype(np.int64)),
        mask=t(h["mask"]),
        length=t(h["length"].astype(np.int64)),
        time_to_now=t(h["time_to_now"]),
        time_from_first=t(h["time_from_first"]),
        cand_item=t(data.item_index[cand_item_codes].astype(np.int64)),
        cand_cate=t(data.cate_index[cand_cate_codes].astype(np.int64)),
        user_row=t(users),
        instance=t(inst.astype(np.int64)),
    )


def in_batch_negatives(
    target_items: np.ndarray, n_neg: int, rng: np.random.Generator, max_rounds: int = 100
) -> np.ndarray:
    """Column indices into the chunk for each instance's negatives (docs/protocol.md §3.1).

    Each negative is the target of a random instance of the same chunk (with replacement, possibly the
    same instance twice), rejected and redrawn while its item equals the instance's own positive.
    If a chunk holds a single distinct item no valid negative exists; after `max_rounds` the
    remaining draws are kept as they are (documented; never happens on real data of useful size).
    """
    B = len(target_items)
    draw = rng.integers(0, B, size=(B, n_neg))
    for _ in range(max_rounds):
        bad = target_items[draw] == target_items[:, None]
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        draw[bad] = rng.integers(0, B, size=n_bad)
    return draw


def train_batches(
    data: PreparedData,
    batch_size: int,
    n_neg: int,
    max_len: int,
    time_unit: float,
    rng: np.random.Generator,
    split: str = "train",
    rank: int = 0,
    world: int = 1,
    neg_rng: np.random.Generator | None = None,
) -> Iterator[Batch]:
    """One epoch of shuffled training batches with fresh in-batch negatives (1 + n_neg candidates).

    As released, a final chunk with fewer than 1 + n_neg instances is dropped. With `world` > 1 (data-parallel
    training, `clsr.distributed`) every rank draws the same permutation from `rng`, takes its share of each
    global batch of `batch_size` and draws the negatives from its share with `neg_rng`; a final chunk is kept
    when every share has 1 + n_neg instances. With world 1 and no `neg_rng`, `rng` serves both.
    """
    inst = data.instances[split]
    order = rng.permutation(len(inst))
    target = data.target_event(split)
    neg_rng = rng if neg_rng is None else neg_rng
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        if len(chunk) // world < 1 + n_neg:
            break
        idx = local_share(chunk, rank, world)
        t_ev = target[idx]
        items = data.event_item[t_ev]
        cates = data.event_cate[t_ev]
        draw = in_batch_negatives(items, n_neg, neg_rng)
        cand_item = np.concatenate([items[:, None], items[draw]], axis=1)
        cand_cate = np.concatenate([cates[:, None], cates[draw]], axis=1)
        yield make_batch(data, inst.user[idx], inst.pos[idx], cand_item, cand_cate, max_len, time_unit)


def n_train_batches(data: PreparedData, batch_size: int, n_neg: int, split: str = "train", world: int = 1) -> int:
    n = len(data.instances[split])
    if batch_size // world < 1 + n_neg:  # every share is smaller than 1 + n_neg: train_batches yields nothing
        return 0
    full, rest = divmod(n, batch_size)
    return full + (1 if rest // world >= 1 + n_neg else 0)


def eval_batches(
    data: PreparedData,
    split: str,
    batch_size: int,
    max_len: int,
    time_unit: float,
    recent_k: int | None = None,
    block: range | None = None,
) -> Iterator[Batch]:
    """Instances of `split` in stored order with their fixed candidates.

    `split` is valid, test, or a candidate set of another split's instances: "test_uniform" = the test
    instances with uniformly sampled negatives (`clsr.data.protocol.uniform_test_candidates`). `block`: only
    these batch numbers (one rank's share of a distributed evaluation, `clsr.distributed.shard_range`).
    """
    inst = data.instances[instance_split(split)]
    cand = candidates(data, split)
    starts = range(0, len(inst), batch_size)
    for s in (starts if block is None else starts[block.start : block.stop]):
        sl = slice(s, s + batch_size)
        yield make_batch(
            data,
            inst.user[sl],
            inst.pos[sl],
            cand.item[sl],
            cand.cate[sl],
            max_len,
            time_unit,
            instance=np.arange(s, min(s + batch_size, len(inst))),
            recent_k=recent_k,
        )


def n_eval_batches(data: PreparedData, split: str, batch_size: int) -> int:
    """How many batches `eval_batches` yields for `split`."""
    return -(-len(data.instances[instance_split(split)]) // batch_size)


def candidates(data: PreparedData, split: str):
    """The fixed candidates of `split`; a DataError naming the dataset when it has none by that name."""
    if split not in data.candidates:
        raise DataError(
            f"dataset {data.name!r} has no {split!r} candidates (it has {sorted(data.candidates)}); it was prepared "
            f"by an older version: {rerun_hint(Path(data.name))}"
        )
    return data.candidates[split]


def history_items(data: PreparedData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every earlier item of each instance of `split`, as CSR (offsets (n+1,) int64, items int64).

    Row i holds the item vocabulary indices of the user's events before the target, oldest first, all of
    them (not truncated to max_len), repeats kept, 0 for items unseen in training: the exclusion set of the
    full-ranking metrics (`clsr.metrics.full_ranking_per_instance(..., exclude=(offsets, items))`).
    """
    inst = data.instances[instance_split(split)]
    start = data.user_offsets[inst.user].astype(np.int64)
    n = inst.pos.astype(np.int64)
    offsets = np.zeros(len(n) + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    event = np.repeat(start - offsets[:-1], n) + np.arange(offsets[-1], dtype=np.int64)
    return offsets, data.item_index[data.event_item[event]].astype(np.int64)


def shuffle_history(batch: Batch, generator: torch.Generator) -> Batch:
    """Counterfactual: permute each history's items and categories among its valid positions.

    Timestamps (and so the time features) stay where they were, as in the released
    ShuffleSASequentialIterator; padding stays at the end. Candidates are untouched.
    """
    B, L = batch.hist_item.shape
    keys = torch.rand(B, L, generator=generator)
    keys = torch.where(batch.mask > 0, keys, torch.full_like(keys, 2.0))  # padding sorts last
    perm = keys.argsort(dim=1)
    return replace(
        batch,
        hist_item=batch.hist_item.gather(1, perm),
        hist_cate=batch.hist_cate.gather(1, perm),
    )
