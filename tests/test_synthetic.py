"""`clsr.data.synthetic`: seeded, and its planted ground truth is what the docstring says it is."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clsr.config import ConfigError
from clsr.data.sources import load_source
from clsr.data.synthetic import SyntheticOptions, generate, write_taobao_csv
from clsr.data.taobao import load_taobao, window_bounds

SMALL = {"n_users": 300, "n_items": 600, "n_categories": 12, "mean_events": 80}


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return generate(SMALL)


def test_same_seed_same_frame_other_seed_differs(df):
    again = generate(SMALL)
    pd.testing.assert_frame_equal(df, again)
    pd.testing.assert_frame_equal(df.attrs["user_profiles"], again.attrs["user_profiles"])
    other = generate({**SMALL, "seed": 1})
    assert not df[["item", "ts"]].equals(other[["item", "ts"]])


def test_columns_and_ranges(df):
    assert list(df.columns) == ["user", "item", "category", "ts", "driver", "topic"]
    assert df["driver"].dtype == np.int8 and set(df["driver"].unique()) == {0, 1}
    for c in ("user", "item", "category", "ts", "topic"):
        assert df[c].dtype == np.int64
    assert df["user"].between(1, 300).all() and df["item"].between(1, 600).all()
    assert df["category"].between(1, 12).all() and df["topic"].between(1, 12).all()
    sizes = df.groupby("user").size()
    assert len(sizes) == 300 and sizes.min() >= 10 and sizes.max() <= 600
    assert abs(sizes.mean() - 80) < 8  # log-normal lengths with mean mean_events


def test_each_item_has_one_category(df):
    assert (df.groupby("item")["category"].nunique() == 1).all()


def test_timestamps_increase_per_user_inside_the_window(df):
    lo, hi = window_bounds("2017-11-25 00:00:00", "2017-12-03 23:59:59", 8)
    assert df["ts"].between(lo, hi).all()
    d = df["ts"].diff()
    same_user = df["user"].eq(df["user"].shift())
    assert (d[same_user] > 0).all()  # strictly increasing inside each user, rows grouped by user
    assert df["user"].is_monotonic_increasing


def test_short_term_events_follow_the_topic(df):
    short = df[df["driver"] == 1]
    assert (short["category"] == short["topic"]).all()
    # the topic jumps to a *different* category, about once every mean_topic_run (8) events
    same_user = df["user"].eq(df["user"].shift())
    change = df["topic"].ne(df["topic"].shift()) & same_user
    assert 1 / 10 < change.sum() / same_user.sum() < 1 / 6.5


def test_long_term_events_follow_the_profile(df):
    prof = df.attrs["user_profiles"]
    assert set(prof.columns) == {"user", "category", "weight"}
    np.testing.assert_allclose(prof.groupby("user")["weight"].sum(), 1.0, rtol=1e-9)
    theta = prof.pivot(index="user", columns="category", values="weight").fillna(0.0)
    long = df[df["driver"] == 0]
    emp = pd.crosstab(long["user"], long["category"], normalize="index").reindex(
        index=theta.index, columns=theta.columns, fill_value=0.0
    )
    r_long = np.corrcoef(theta.values.ravel(), emp.values.ravel())[0, 1]
    assert r_long > 0.85
    # the short-term events are not explained by the profile (the topic process ignores it)
    short = df[df["driver"] == 1]
    emp_s = pd.crosstab(short["user"], short["category"], normalize="index").reindex(
        index=theta.index, columns=theta.columns, fill_value=0.0
    )
    assert np.corrcoef(theta.values.ravel(), emp_s.values.ravel())[0, 1] < 0.3
    # long-term events never use a category outside the profile's support
    support = set(zip(prof["user"], prof["category"]))
    assert all(p in support for p in zip(long["user"], long["category"]))


def test_driver_rate_matches_user_propensity(df):
    params = df.attrs["user_params"]
    assert list(params.columns) == ["user", "p_short", "n_events"]
    assert (params.set_index("user")["n_events"] == df.groupby("user").size()).all()
    rate = df.groupby("user")["driver"].mean()
    assert np.corrcoef(rate.values, params["p_short"].values)[0, 1] > 0.7
    assert abs(df["driver"].mean() - 0.5) < 0.05


def test_options_are_checked():
    with pytest.raises(ConfigError, match="n_categories"):
        generate({"n_categories": 1})
    with pytest.raises(ConfigError, match="unknown key"):
        generate({"users": 10})
    with pytest.raises(ConfigError, match="p_short_mean"):
        generate({"p_short_mean": 1.5})
    assert SyntheticOptions().n_users == 1000


def test_registered_source(tmp_path):
    a = load_source({"name": "synthetic", "n_users": 40, "seed": 3}, tmp_path)
    b = generate({"n_users": 40, "seed": 3})
    pd.testing.assert_frame_equal(a, b)


def test_synthetic_log_passes_the_taobao_window(df):
    lo, hi = window_bounds("2017-11-25 00:00:00", "2017-12-03 23:59:59", 8)
    assert df["ts"].min() >= lo and df["ts"].max() <= hi


def test_taobao_csv_writer(tmp_path):
    path = write_taobao_csv(tmp_path / "UserBehavior.csv", 30_000, seed=1, chunk_rows=7_000, progress=False)
    lines = path.read_text().splitlines()
    assert len(lines) == 30_000
    assert all(len(line.split(",")) == 5 for line in lines[:100])
    assert not list(tmp_path.glob(".*.part"))
    raw = pd.read_csv(path, header=None, names=["user", "item", "category", "behavior", "ts"])
    assert 0.85 < (raw["behavior"] == "pv").mean() < 0.94
    df = load_taobao({"path": str(path), "user_fraction": 1.0}, tmp_path)
    rows = {s["step"]: s["rows"] for s in df.attrs["filter_log"]}
    # every raw filter has something to remove
    order = ["read", "pv", "dedup", "single_category", "window", "sample", "min_item_count", "min_user_count"]
    assert list(rows) == order
    for before, after in zip(order, order[1:]):
        if after != "sample":
            assert rows[after] < rows[before], (before, after, rows)
    assert rows["read"] == 30_000 and len(df) > 3_000
    # same seed, same bytes
    again = write_taobao_csv(tmp_path / "again.csv", 30_000, seed=1, chunk_rows=7_000, progress=False)
    assert again.read_bytes() == path.read_bytes()


def test_topic_chain_matches_sequential_reference():
    """The vectorised fixed point equals the plain sequential chain driven by the same uniforms."""
    from clsr.data.synthetic import _topics, zipf_weights

    rng = np.random.default_rng(5)
    g = zipf_weights(6, 1.0, rng)
    first = np.zeros(400, bool)
    first[[0, 37, 38, 200, 333]] = True
    jump = rng.random(400) < 0.4
    got = _topics(first, jump, g, np.random.default_rng(11))

    r = np.random.default_rng(11).random(int((first | jump).sum()))
    cum = np.cumsum(g)
    cum[-1] = 1.0
    want, k, z = [], -1, None
    for j in range(400):
        if first[j] or jump[j]:
            k += 1
            if first[j]:
                z = int(np.searchsorted(cum, r[k], side="right"))
            else:  # inverse CDF of g without the current topic
                rest = [c for c in range(len(g)) if c != z]
                cdf = np.cumsum(g[rest]) / g[rest].sum()
                z = rest[int(np.searchsorted(cdf, r[k], side="right"))]
        want.append(z)
    np.testing.assert_array_equal(got, want)
