"""Shared fixtures for the data-layer and metric tests.

- `hand_df`: a tiny interactions table written by hand (4 users, timestamps chosen so every split,
  history and vocabulary count can be worked out on paper; rows deliberately not in time order and one
  timestamp tie to exercise the stable sort).
- `random_df`: a seeded random log (50 users, 3..45 events each, popularity-skewed items, one category
  per item, some timestamp ties).
- `prepared_random`: `random_df` run through `clsr.data.prepare.prepare` into `tmp_path`.
- helpers: `brute_sequences` (each user's events sorted by (ts, file order), in plain Python).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clsr.data import protocol as P

FIXTURES = Path(__file__).parent / "fixtures"


# ------------------------------------------------------------------------------------------------
# hand-made data
# ------------------------------------------------------------------------------------------------
# user 10: events (ts): a@100, b@200, c@300, a@400, d@500   (given out of order below)
# user 20: events: b@150, e@250, b@250 (tie with e: file order e then b), c@600
# user 30: single event c@50 (never a target)
# user 40: two events: a@700, b@800
# items -> categories: a->x, b->x, c->y, d->y, e->z
HAND_ROWS = [
    # user, item, category, ts   (file order)
    (10, "c", "y", 300),
    (20, "b", "x", 150),
    (10, "a", "x", 100),
    (30, "c", "y", 50),
    (10, "b", "x", 200),
    (20, "e", "z", 250),
    (10, "d", "y", 500),
    (20, "b", "x", 250),
    (10, "a", "x", 400),
    (40, "a", "x", 700),
    (20, "c", "y", 600),
    (40, "b", "x", 800),
]


@pytest.fixture
def hand_df() -> pd.DataFrame:
    return pd.DataFrame(HAND_ROWS, columns=["user", "item", "category", "ts"])


def make_random_df(seed: int = 7, n_users: int = 50, n_items: int = 60, n_cates: int = 7,
                   min_len: int = 3, max_len: int = 45, t_range: int = 30 * 86400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    item_cate = rng.integers(0, n_cates, size=n_items)
    rows = []
    for u in range(n_users):
        n = int(rng.integers(min_len, max_len + 1))
        items = rng.choice(n_items, size=n, p=popularity)
        # coarse timestamps (multiples of 600 s) so that ties occur
        ts = rng.integers(0, t_range // 600, size=n) * 600 + 1_500_000_000
        for i, t in zip(items, ts):
            rows.append((1000 + u, 500 + int(i), 900 + int(item_cate[i]), int(t)))
    order = rng.permutation(len(rows))  # users interleaved, events not in time order
    df = pd.DataFrame([rows[i] for i in order], columns=["user", "item", "category", "ts"])
    return df


@pytest.fixture
def random_df() -> pd.DataFrame:
    return make_random_df()


def random_params(**protocol) -> dict:
    proto = {"split": "time_span", "span": 3 * 86400, "valid_negatives": 4, "test_negatives": 9,
             "max_len": 20, "time_unit": 86.4, "seed": 3}
    proto.update(protocol)
    return {"datasets": {"rand": {"source": {"name": "csv", "path": "unused.csv"}, "protocol": proto}}}


@pytest.fixture
def prepared_random(tmp_path, random_df):
    """(PreparedData, folder) for `random_df` prepared with a time_span split into tmp_path."""
    from clsr.data.prepare import prepare

    data = prepare("rand", random_params(), raw_dir=tmp_path / "raw", out_dir=tmp_path / "prepared",
                   interactions=random_df)
    return data, tmp_path / "prepared" / "rand"


# ------------------------------------------------------------------------------------------------
# brute-force helpers (plain Python, independent of the vectorised code)
# ------------------------------------------------------------------------------------------------
def brute_sequences(df: pd.DataFrame) -> dict[str, list[tuple[int, int, str, str]]]:
    """raw user id (as str) -> that user's events as (ts, file_row, item, category), sorted by (ts, file_row)."""
    seqs: dict[str, list] = {}
    for row, (u, i, c, t) in enumerate(df[["user", "item", "category", "ts"]].itertuples(index=False)):
        seqs.setdefault(str(u), []).append((int(t), row, str(i), str(c)))
    for u in seqs:
        seqs[u].sort(key=lambda e: (e[0], e[1]))
    return seqs


def build(df: pd.DataFrame, **cfg) -> "P.PreparedData":
    """protocol.build with small default candidate counts (the random data has 60 items)."""
    cfg = {"valid_negatives": 4, "test_negatives": 9, **cfg}
    return P.build(df, P.ProtocolConfig(**cfg), name="t")
