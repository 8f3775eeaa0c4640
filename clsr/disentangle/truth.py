"""Ground truth of the synthetic data (`clsr.data.synthetic`) and the batches that probe the interests.

Each synthetic test target was drawn either from the user's long-term profile θ_u (driver 0) or from the
current short-term topic z (driver 1); the generator records both per event (``event_extra`` 'driver' and
'topic') and writes the profiles to data/prepared/<dataset>/user_profiles.parquet.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from clsr.data import batches as B
from clsr.data.store import PreparedData
from clsr.train import data_settings


@dataclass
class Truth:
    """What the generator knows about each instance of a split, aligned with the split's order."""

    driver: np.ndarray  # (n,) int: 0 = drawn from the long-term profile, 1 = from the short-term topic
    topic: np.ndarray  # (n,) position in `cats` of the current topic at the target (-1: not scorable)
    theta: np.ndarray | None  # (n, K) the user's long-term profile weights on `cats` (None: no profiles)
    cats: np.ndarray  # (K,) category codes scored (seen in train, with a train item)
    rep_items: np.ndarray  # (K,) item code representing each category (its most frequent train target)
    cat_popularity: np.ndarray  # (K,) share of train targets in each category (non-personal reference)


def has_ground_truth(data: PreparedData) -> bool:
    return "driver" in data.event_extra and "topic" in data.event_extra


def representative_items(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(category codes, item codes, popularity): for each category seen in train, its most frequent
    train-target item (ties: lowest code); categories without such an item are left out."""
    tr = data.target_event("train")
    items, cates = data.event_item[tr], data.event_cate[tr]
    ok = (data.item_index[items] > 0) & (data.cate_index[cates] > 0)
    df = pd.DataFrame({"c": cates[ok].astype(np.int64), "i": items[ok].astype(np.int64)})
    if df.empty:
        raise ValueError("representative_items: no train target with an item and category in the vocabulary")
    counts = df.groupby(["c", "i"]).size().reset_index(name="n")
    counts = counts.sort_values(["c", "n", "i"], ascending=[True, False, True]).drop_duplicates("c")
    cats = counts["c"].to_numpy(np.int64)
    pop = df.groupby("c").size().reindex(cats).to_numpy(np.float64)
    return cats, counts["i"].to_numpy(np.int64), pop / pop.sum()


def load_truth(data: PreparedData, profiles: pd.DataFrame | None = None, split: str = "test") -> Truth:
    """Ground truth of `split`. `profiles`: the generator's user_profiles table (user, category,
    weight; raw ids as in the interactions table), e.g. data/prepared/<ds>/user_profiles.parquet."""
    if not has_ground_truth(data):
        raise ValueError(f"dataset {data.name!r} carries no ground truth (event_extra 'driver' and 'topic'); "
                         "set pipeline.disentanglement_dataset to a synthetic dataset")
    target = data.target_event(split)
    driver = data.event_extra["driver"][target].astype(np.int64)
    cats, rep_items, pop = representative_items(data)
    pos_of_code = np.full(len(data.cate_ids), -1, np.int64)
    pos_of_code[cats] = np.arange(len(cats))
    code_of_raw = {raw: i for i, raw in enumerate(np.asarray(data.cate_ids).astype(str))}
    # 'topic' holds the raw category id (like the interactions table's category column)
    topic_raw = np.asarray(data.event_extra["topic"])[target]
    topic_code = np.array([code_of_raw.get(str(t), -1) for t in topic_raw.tolist()], np.int64)
    topic = np.where(topic_code >= 0, pos_of_code[np.maximum(topic_code, 0)], -1)
    theta = None
    if profiles is not None and len(profiles):
        row_of_user = {raw: i for i, raw in enumerate(np.asarray(data.user_ids).astype(str))}
        urow = np.array([row_of_user.get(str(u), -1) for u in profiles["user"].tolist()], np.int64)
        ccode = np.array([code_of_raw.get(str(c), -1) for c in profiles["category"].tolist()], np.int64)
        cpos = np.where(ccode >= 0, pos_of_code[np.maximum(ccode, 0)], -1)
        keep = (urow >= 0) & (cpos >= 0)
        per_user = np.zeros((data.n_users, len(cats)), np.float64)
        np.add.at(per_user, (urow[keep], cpos[keep]), profiles["weight"].to_numpy(np.float64)[keep])
        theta = per_user[data.instances[split].user]
    return Truth(driver=driver, topic=topic, theta=theta, cats=cats, rep_items=rep_items, cat_popularity=pop)


def category_batches(
    data: PreparedData, truth: Truth, split: str = "test", batch_size: int = 500
) -> Iterator[B.Batch]:
    """The instances of `split` with their real histories and, as candidates, the K representative
    items (the same (n, K) code matrix on every row)."""
    max_len, time_unit = data_settings(data)
    inst = data.instances[split]
    for s in range(0, len(inst), batch_size):
        sl = slice(s, s + batch_size)
        n = len(inst.user[sl])
        yield B.make_batch(
            data, inst.user[sl], inst.pos[sl],
            np.broadcast_to(truth.rep_items, (n, len(truth.cats))),
            np.broadcast_to(truth.cats, (n, len(truth.cats))),
            max_len, time_unit, instance=np.arange(s, s + n),
        )


def projection_batch(data: PreparedData, n_users: int = 5, per_user: int = 8, split: str = "test") -> B.Batch:
    """The last `per_user` targets (any split) of the `n_users` test users with the longest sequences,
    each with its own target as the single candidate (the vectors of the 2-D projection figure)."""
    max_len, time_unit = data_settings(data)
    users = np.unique(data.instances[split].user)
    lengths = np.diff(data.user_offsets)[users]
    chosen = users[np.argsort(-lengths, kind="stable")[:n_users]]
    rows, pos = [], []
    for u in chosen:
        n = int(np.diff(data.user_offsets)[u])
        p = np.arange(max(1, n - per_user), n)
        rows.append(np.full(len(p), u))
        pos.append(p)
    rows_a, pos_a = np.concatenate(rows), np.concatenate(pos)
    ev = data.user_offsets[rows_a] + pos_a
    return B.make_batch(
        data, rows_a, pos_a, data.event_item[ev][:, None], data.event_cate[ev][:, None], max_len, time_unit,
        instance=np.arange(len(rows_a)),
    )


def read_profiles(prepared_dir: str | Path, dataset: str) -> pd.DataFrame | None:
    """The generator's user_profiles table of a prepared dataset (None when the source wrote none)."""
    path = Path(prepared_dir) / dataset / "user_profiles.parquet"
    return pd.read_parquet(path) if path.exists() else None
