"""Raw-file sources (taobao, kuaishou): the released filters, row by row, and errors a person can act on.

The fixtures and the expected rows after each filter are explained in tests/fixtures/README.md.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clsr.config import ConfigError
from clsr.data.kuaishou import load_kuaishou
from clsr.data.sources import DataError, load_source, sha256_of
from clsr.data.taobao import load_taobao, window_bounds

FIX = Path(__file__).parent / "fixtures"
TAOBAO = FIX / "taobao_raw.csv"
KUAISHOU = FIX / "kuaishou.csv"
T0 = 1511800000


def core_ts(user: int, item: int) -> int:
    return T0 + 1000 * user + 10 * (item - 100)


def taobao(tmp_path, **opts) -> pd.DataFrame:
    return load_taobao({"path": str(TAOBAO), "user_fraction": 1.0, **opts}, tmp_path)


def pairs(df: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(df["user"].tolist(), df["item"].tolist()))


# ------------------------------------------------------------------------------------------------
# taobao
# ------------------------------------------------------------------------------------------------
def test_window_bounds_are_the_released_utc8_values():
    assert window_bounds("2017-11-25 00:00:00", "2017-12-03 23:59:59", 8) == (1511539200, 1512316799)
    assert window_bounds("2017-11-25 00:00:00", "2017-12-03 23:59:59", 0) == (1511568000, 1512345599)


def test_taobao_rows_after_each_filter(tmp_path):
    df = taobao(tmp_path)
    log = [(s["step"], s["rows"]) for s in df.attrs["filter_log"]]
    assert log == [
        ("read", 163), ("pv", 160), ("dedup", 157), ("single_category", 154), ("window", 151),
        ("sample", 151), ("min_item_count", 139), ("min_user_count", 129),
    ]


def test_taobao_surviving_rows(tmp_path):
    df = taobao(tmp_path)
    expected = {(u, i) for u in range(1, 12) for i in range(101, 112)} - {(4, 104)}
    expected |= {(u, 601) for u in range(1, 10)}
    assert pairs(df) == expected
    assert len(df) == len(expected)  # no repeated pair survives
    assert list(df.columns) == ["user", "item", "category", "ts", "behavior"]
    for c in ("user", "item", "category", "ts"):
        assert df[c].dtype == np.int64
    assert (df["behavior"] == "pv").all()
    # file order is kept: users appear in file order, each user's rows in file order
    assert df["user"].is_monotonic_increasing
    assert df[df["user"] == 1]["item"].tolist() == list(range(101, 112)) + [601]
    assert df.attrs["source_files"] == {str(TAOBAO): sha256_of(TAOBAO)}


def test_taobao_dedup_keeps_first_in_file_order(tmp_path):
    df = taobao(tmp_path)
    row = df[(df["user"] == 3) & (df["item"] == 103)]
    assert row["ts"].tolist() == [core_ts(3, 103)]  # not the later-in-file row with the earlier ts
    # (4,104): the first occurrence is outside the window, so the pair is gone although a later
    # in-window view exists (dedup runs before the window filter)
    assert not ((df["user"] == 4) & (df["item"] == 104)).any()
    # (5,102): the earlier fav row does not shadow the pv row (pv filter runs before dedup)
    assert ((df["user"] == 5) & (df["item"] == 102)).sum() == 1


def test_taobao_single_category_uses_deduplicated_pairs(tmp_path):
    df = taobao(tmp_path, min_item_count=1, min_user_count=1)
    assert 401 not in set(df["item"])  # listed under categories 40 and 41
    # 402's second category only appears on a repeated (user, item) pair, which dedup removed first
    assert df[df["item"] == 402][["user", "category"]].values.tolist() == [[9, 42]]
    assert 301 not in set(df["item"])  # buy only


def test_taobao_window_edges_at_utc8_and_utc(tmp_path):
    edge = {501, 502, 503, 504}
    df8 = taobao(tmp_path, min_item_count=1, min_user_count=1)
    assert set(df8["item"]) & edge == {501, 503}
    assert [s["rows"] for s in df8.attrs["filter_log"] if s["step"] == "window"] == [151]
    df0 = taobao(tmp_path, min_item_count=1, min_user_count=1, tz_offset_hours=0)
    assert set(df0["item"]) & edge == {503, 504}


def test_taobao_min_counts_are_one_pass_not_a_k_core(tmp_path):
    df = taobao(tmp_path)
    counts = df.groupby("item").size()
    assert counts[601] == 9  # had 10 rows at the item filter; user 12 left at the user filter
    assert 602 not in counts.index  # 9 rows at the item filter
    assert not set(df["user"]) & {12, 13}
    # an iterated 10-core would also drop 601
    assert (counts < 10).sum() == 1


def test_taobao_user_sample_seeded(tmp_path):
    def users(seed, frac=0.5):
        d = taobao(tmp_path, user_fraction=frac, seed=seed, min_item_count=1, min_user_count=1)
        return sorted(set(d["user"]))

    a, b = users(0), users(0)
    assert a == b
    assert len(a) == 6  # 13 users after the window filter; pandas' sample(frac=0.5) takes round(6.5) = 6
    assert any(users(s) != a for s in range(1, 6))


def test_taobao_through_registry_and_compressed_inputs(tmp_path):
    df = load_source({"name": "taobao", "path": str(TAOBAO), "user_fraction": 1.0}, tmp_path)
    assert len(df) == 129
    gz = tmp_path / "UserBehavior.csv.gz"
    gz.write_bytes(gzip.compress(TAOBAO.read_bytes()))
    assert len(load_taobao({"path": str(gz), "user_fraction": 1.0}, tmp_path)) == 129
    zp = tmp_path / "UserBehavior.csv.zip"
    with zipfile.ZipFile(zp, "w") as z:
        z.write(TAOBAO, "UserBehavior.csv")
    raw = tmp_path / "raw"
    assert len(load_taobao({"path": str(zp), "user_fraction": 1.0}, raw)) == 129
    assert (raw / "UserBehavior.csv").read_bytes() == TAOBAO.read_bytes()


def test_taobao_url_source(tmp_path):
    sha = sha256_of(TAOBAO)
    df = load_taobao({"url": TAOBAO.resolve().as_uri(), "sha256": sha, "user_fraction": 1.0}, tmp_path)
    assert len(df) == 129
    assert (tmp_path / "taobao_raw.csv").exists()
    assert df.attrs["source_files"] == {str(tmp_path / "taobao_raw.csv"): sha}


def test_taobao_small_blocks_same_result(tmp_path):
    a = taobao(tmp_path)
    b = taobao(tmp_path, block_size=1 << 16)
    pd.testing.assert_frame_equal(a, b)


# ---- bad input ---------------------------------------------------------------------------------
def write(tmp_path, text: str, name: str = "UserBehavior.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_taobao_missing_file_names_path_and_where_to_get_it(tmp_path):
    missing = tmp_path / "nope" / "UserBehavior.csv"
    with pytest.raises(FileNotFoundError, match="UserBehavior.csv") as e:
        load_taobao({"path": str(missing)}, tmp_path)
    assert str(missing) in str(e.value) and "tianchi" in str(e.value).lower()


def test_taobao_needs_a_location(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        load_taobao({}, tmp_path)
    with pytest.raises(ConfigError, match="sha256"):
        load_taobao({"url": "https://example.org/UserBehavior.csv"}, tmp_path)
    with pytest.raises(ConfigError, match="user_fraction"):
        load_taobao({"path": str(TAOBAO), "user_fraction": 0}, tmp_path)
    with pytest.raises(ConfigError, match="start"):
        load_taobao({"path": str(TAOBAO), "start": "25/11/2017"}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_taobao({"path": str(TAOBAO), "min_count": 5}, tmp_path)


def test_taobao_wrong_column_count(tmp_path):
    p = write(tmp_path, "1,2,3,pv,1511600000\n1,3,3,pv,1511600001\n1,4,3,pv\n")
    with pytest.raises(DataError) as e:
        load_taobao({"path": str(p)}, tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "row 3" in msg and "4 columns" in msg and "expected 5" in msg


def test_taobao_non_numeric_ts(tmp_path):
    p = write(tmp_path, "1,2,3,pv,1511600000\n1,3,3,pv,2017-11-26\n")
    with pytest.raises(DataError) as e:
        load_taobao({"path": str(p)}, tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "row 2" in msg and "'ts'" in msg and "2017-11-26" in msg


def test_taobao_header_line_is_explained(tmp_path):
    p = write(tmp_path, "user,item,category,behavior,ts\n1,2,3,pv,1511600000\n")
    with pytest.raises(DataError, match="row 1.*'user'.*header"):
        load_taobao({"path": str(p)}, tmp_path)


def test_taobao_empty_field(tmp_path):
    p = write(tmp_path, "1,2,3,pv,1511600000\n1,,3,pv,1511600001\n")
    with pytest.raises(DataError, match=r"row 2, column 2 \('item'\) is empty"):
        load_taobao({"path": str(p)}, tmp_path)


def test_taobao_empty_file(tmp_path):
    p = write(tmp_path, "")
    with pytest.raises(DataError, match="empty"):
        load_taobao({"path": str(p)}, tmp_path)


def test_taobao_empty_after_filtering_names_the_filter(tmp_path):
    p = write(tmp_path, "1,2,3,buy,1511600000\n1,3,3,cart,1511600001\n")
    with pytest.raises(DataError, match="'pv' filter"):
        load_taobao({"path": str(p)}, tmp_path)
    p = write(tmp_path, "1,2,3,pv,1500000000\n1,3,3,pv,1600000000\n")
    with pytest.raises(DataError) as e:
        load_taobao({"path": str(p)}, tmp_path)
    assert "'window' filter" in str(e.value) and "1511539200" in str(e.value)
    with pytest.raises(DataError, match="'min_user_count' filter"):
        taobao(tmp_path, min_user_count=100)


# ------------------------------------------------------------------------------------------------
# kuaishou
# ------------------------------------------------------------------------------------------------
def kuaishou(tmp_path, path=KUAISHOU, **opts) -> pd.DataFrame:
    return load_kuaishou({"path": str(path), "min_item_count": 3, "min_user_count": 3, **opts}, tmp_path)


def test_kuaishou_rows_after_each_filter(tmp_path):
    df = kuaishou(tmp_path)
    assert [(s["step"], s["rows"]) for s in df.attrs["filter_log"]] == [
        ("read", 21), ("dedup", 19), ("min_item_count", 17), ("min_user_count", 14), ("effective_view", 12),
    ]


def test_kuaishou_surviving_rows(tmp_path):
    df = kuaishou(tmp_path)
    assert list(df.columns) == ["user", "item", "category", "ts"]
    assert df.values.tolist() == [
        [1, 10, 100, 1000], [1, 11, 100, 2000], [1, 12, 101, 3000],
        [2, 10, 100, 2500], [2, 12, 101, 3500], [2, 13, 103, 4500],
        [3, 10, 100, 1100], [3, 11, 100, 2100], [3, 12, 101, 3100],
        [5, 10, 100, 2300], [5, 11, 100, 3300], [5, 12, 101, 4300],
    ]
    # (2,11): its first view was not effective, so dedup kept that one and the last filter removed it
    assert not ((df["user"] == 2) & (df["item"] == 11)).any()
    assert df.attrs["source_files"] == {str(KUAISHOU): sha256_of(KUAISHOU)}


def test_kuaishou_via_registry_with_defaults(tmp_path):
    with pytest.raises(DataError, match="'min_item_count' filter"):  # 10 rows per item: nothing is left
        load_source({"name": "kuaishou", "path": str(KUAISHOU)}, tmp_path)


def test_kuaishou_missing_column(tmp_path):
    p = write(tmp_path, "user_id,photo_id,time_ms,photo_kmeans_cluster_id\n1,2,3,4\n", "ks.csv")
    with pytest.raises(DataError) as e:
        kuaishou(tmp_path, p)
    assert str(p) in str(e.value) and "'effective_view'" in str(e.value)


def test_kuaishou_bad_values(tmp_path):
    header = "user_id,photo_id,time_ms,photo_kmeans_cluster_id,effective_view\n"
    p = write(tmp_path, header + "1,2,1000,4,1\n1,3,soon,4,1\n", "ks.csv")
    with pytest.raises(DataError, match=r"row 3, column 3 \('time_ms'\).*'soon'"):
        kuaishou(tmp_path, p)
    p = write(tmp_path, header + "1,2,1000,4,1\n1,3,2000,4,2\n", "ks.csv")
    with pytest.raises(DataError, match="'effective_view' must be 0 or 1; line 3 has 2"):
        kuaishou(tmp_path, p)
    p = write(tmp_path, header + "1,2,1000,4,1\n1,3,2000,,1\n", "ks.csv")
    with pytest.raises(DataError, match="line 3, column 'photo_kmeans_cluster_id' is empty"):
        kuaishou(tmp_path, p)
    p = write(tmp_path, header, "ks.csv")
    with pytest.raises(DataError, match="no data rows"):
        kuaishou(tmp_path, p)
