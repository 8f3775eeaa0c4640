"""`prepare` and the sources: clear errors for bad parameters and bad files, no half-written datasets,
and the MovieLens-100K content when its raw files are already present (never downloaded here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clsr.config import ConfigError
from clsr.data import prepare as prep
from clsr.data import store
from clsr.data.sources import DataError, load_csv, load_ml100k, load_source
from clsr.data.store import PreparedData
from conftest import random_params

ROOT = Path(__file__).resolve().parents[1]


def csv_params(path, **source):
    src = {"name": "csv", "path": str(path), **source}
    proto = {"split": "per_user", "valid_negatives": 2, "test_negatives": 3, "seed": 0}
    return {"datasets": {"log": {"source": src, "protocol": proto}}}


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


GOOD_ROWS = ["user,item,category,ts,behavior"] + [
    f"u{u},i{(u * 7 + k) % 11},c{((u * 7 + k) % 11) % 3},{1000 + 10 * k},{'pv' if k % 4 else 'buy'}"
    for u in range(6) for k in range(8)
]


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------
def test_unknown_dataset_lists_known_ones(tmp_path):
    params = {"datasets": {"ml100k": {"source": {"name": "ml100k"}}, "mine": {"source": {"name": "csv"}}}}
    with pytest.raises(ConfigError) as e:
        prep.prepare("movielens", params, out_dir=tmp_path)
    msg = str(e.value)
    assert "'movielens'" in msg and "ml100k" in msg and "mine" in msg
    assert not any(tmp_path.iterdir())


def test_dataset_config_errors():
    with pytest.raises(ConfigError, match=r"datasets\.d.*unknown key.*'protocl'"):
        prep.dataset_config({"datasets": {"d": {"source": {"name": "csv"}, "protocl": {}}}}, "d")
    with pytest.raises(ConfigError, match=r"datasets\.d.*missing 'source'"):
        prep.dataset_config({"datasets": {"d": {"protocol": {}}}}, "d")
    with pytest.raises(ConfigError, match=r"datasets\.d\.protocol.*'splt'.*allowed"):
        prep.dataset_config({"datasets": {"d": {"source": {"name": "csv"}, "protocol": {"splt": "x"}}}}, "d")
    with pytest.raises(ConfigError, match="missing key 'datasets'"):
        prep.dataset_config({"train": {}}, "d")


def test_unknown_source_lists_known_ones(tmp_path):
    params = {"datasets": {"d": {"source": {"name": "kaggle"}}}}
    with pytest.raises(ConfigError) as e:
        prep.prepare("d", params, raw_dir=tmp_path, out_dir=tmp_path / "out")
    msg = str(e.value)
    assert "'kaggle'" in msg and "'csv'" in msg and "'ml100k'" in msg
    with pytest.raises(ConfigError, match="'name'"):
        load_source({"path": "x.csv"})


def test_unknown_source_option_names_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"source\(csv\).*'pth'.*allowed.*'path'"):
        load_source({"name": "csv", "pth": "x.csv"}, tmp_path)


# ------------------------------------------------------------------------------------------------
# csv source
# ------------------------------------------------------------------------------------------------
def test_csv_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "log.csv"
    with pytest.raises(DataError) as e:
        load_csv({"path": str(missing)}, tmp_path)
    assert str(missing) in str(e.value) and "looked in" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # also what callers catching the built-in expect


def test_csv_missing_path_option(tmp_path):
    with pytest.raises(ConfigError, match="path"):
        load_csv({}, tmp_path)


def test_csv_missing_column_names_it(tmp_path):
    p = write_csv(tmp_path / "log.csv", ["user,item,cat,ts", "1,2,3,4"])
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "'category'" in msg and "cat" in msg


def test_csv_non_numeric_ts_names_column_and_line(tmp_path):
    p = write_csv(tmp_path / "log.csv", ["u,i,c,time", "1,2,3,100", "1,3,3,200", "2,2,3,yesterday", "2,3,3,300"])
    cols = {"user": "u", "item": "i", "category": "c", "ts": "time"}
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p), "columns": cols}, tmp_path)
    msg = str(e.value)
    assert str(p) in msg and "'time'" in msg and "'yesterday'" in msg
    assert "line 4" in msg  # header is line 1, the bad value sits on the 4th line of the file


def test_csv_unparseable_date(tmp_path):
    p = write_csv(tmp_path / "log.csv", ["user,item,category,ts", "1,2,3,2017-11-25 10:00:00", "1,3,3,not a date"])
    with pytest.raises(DataError, match=r"'ts'.*'not a date'"):
        load_csv({"path": str(p), "ts_format": "datetime"}, tmp_path)


def test_csv_empty_after_filtering(tmp_path):
    p = write_csv(tmp_path / "log.csv", GOOD_ROWS)
    with pytest.raises(DataError, match="no interactions"):
        load_csv({"path": str(p), "behavior_column": "behavior", "keep_behaviors": ["cart"]}, tmp_path)
    empty = write_csv(tmp_path / "empty.csv", ["user,item,category,ts"])
    with pytest.raises(DataError, match="no data rows below the header") as e:
        load_csv({"path": str(empty)}, tmp_path)
    assert str(empty) in str(e.value)


def test_csv_reads_and_filters(tmp_path):
    p = write_csv(tmp_path / "log.csv", GOOD_ROWS)
    df = load_csv({"path": str(p), "behavior_column": "behavior", "keep_behaviors": ["pv"]}, tmp_path)
    raw = pd.read_csv(p)
    want = raw[raw["behavior"] == "pv"]
    assert len(df) == len(want) == 36
    assert df["user"].tolist() == want["user"].tolist()
    assert df["ts"].tolist() == want["ts"].tolist() and df["ts"].dtype == np.int64
    # positional columns when there is no header; datetimes become Unix seconds (UTC)
    q = write_csv(tmp_path / "noheader.tsv", ["7\t8\t9\t2017-11-25T00:00:00Z", "7\t9\t9\t2017-11-25T00:01:00Z"])
    cols = {"user": "0", "item": "1", "category": "2", "ts": "3"}
    df2 = load_csv({"path": str(q), "sep": "\t", "header": False, "columns": cols, "ts_format": "datetime"}, tmp_path)
    assert df2["ts"].tolist() == [1511568000, 1511568060]


def test_prepare_from_csv(tmp_path):
    p = write_csv(tmp_path / "log.csv", GOOD_ROWS)
    data = prep.prepare("log", csv_params(p), raw_dir=tmp_path, out_dir=tmp_path / "out")
    assert data.n_users == 6 and data.n_events == 48
    st = json.loads((tmp_path / "out" / "log" / "stats.json").read_text())
    assert st["events"] == 48 and st["source"]["name"] == "csv"
    assert PreparedData.load(tmp_path / "out" / "log").meta["content_sha256"] == st["content_sha256"]


# ------------------------------------------------------------------------------------------------
# no half-written datasets
# ------------------------------------------------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_protocol_failure_writes_nothing(tmp_path, random_df, monkeypatch):
    def boom(*a, **k):
        raise DataError("protocol failed half-way")

    monkeypatch.setattr(prep.P, "sample_negatives", boom)
    out = tmp_path / "out"
    with pytest.raises(DataError, match="half-way"):
        prep.prepare("rand", random_params(), out_dir=out, interactions=random_df)
    assert leftovers(out) == []


def test_failure_while_saving_leaves_no_folder(tmp_path, random_df, monkeypatch):
    out = tmp_path / "out"
    real_dump = json.dump
    calls = []

    def failing_dump(obj, f, *a, **k):
        calls.append(f.name)
        f.write('{"half": ')
        raise OSError("disk full")

    monkeypatch.setattr(store.json, "dump", failing_dump)
    with pytest.raises(DataError, match="disk full") as e:  # one line naming the folder, not a raw OSError
        prep.prepare("rand", random_params(), out_dir=out, interactions=random_df)
    assert str(out / "rand") in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr(store.json, "dump", real_dump)
    assert calls, "the failure was not injected while writing meta.json"
    # arrays.npz had been written in the temporary folder: nothing of it may remain
    assert leftovers(out) == []


def test_failed_resave_keeps_the_previous_dataset(tmp_path, random_df, monkeypatch):
    out = tmp_path / "out"
    first = prep.prepare("rand", random_params(seed=1), out_dir=out, interactions=random_df)
    before = {p.name: p.read_bytes() for p in (out / "rand").iterdir()}

    def failing_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial")
        raise OSError("interrupted")

    monkeypatch.setattr(store.np, "savez", failing_savez)
    with pytest.raises(DataError, match="interrupted.*nothing was changed"):
        prep.prepare("rand", random_params(seed=2), out_dir=out, interactions=random_df)
    assert leftovers(out) == ["rand"]
    assert {p.name: p.read_bytes() for p in (out / "rand").iterdir()} == before
    again = PreparedData.load(out / "rand")
    assert np.array_equal(again.candidates["test"].item, first.candidates["test"].item)


def test_the_same_dataset_prepared_again_later_gives_the_same_bytes(tmp_path, random_df, monkeypatch):
    """DVC hashes data/prepared/<dataset>: preparing it again must not look like a new dataset. A day later on the
    clock and with a slower run (no timings in the folder), every file is byte-identical."""
    import time

    prep.prepare("rand", random_params(seed=1), out_dir=tmp_path / "a", interactions=random_df)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 86400.0)
    slow = time.perf_counter
    monkeypatch.setattr(time, "perf_counter", lambda: slow() * 2.0 + 3600.0)
    prep.prepare("rand", random_params(seed=1), out_dir=tmp_path / "b", interactions=random_df)
    a, b = ({p.name: p.read_bytes() for p in (tmp_path / d / "rand").iterdir()} for d in ("a", "b"))
    assert sorted(a) == sorted(b) == ["arrays.npz", "meta.json", "stats.json"]
    assert a == b


def test_load_of_incomplete_folder_is_a_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "arrays.npz").write_bytes(b"")
    with pytest.raises(DataError, match="meta.json") as e:
        PreparedData.load(tmp_path / "d")
    assert "prepare --dataset d" in str(e.value) and isinstance(e.value, FileNotFoundError)


# ------------------------------------------------------------------------------------------------
# MovieLens-100K (only when already on disk; never downloaded by the tests)
# ------------------------------------------------------------------------------------------------
ML100K = ROOT / "data" / "raw" / "ml-100k"


@pytest.mark.skipif(not ((ML100K / "ml-100k.inter").exists() and (ML100K / "ml-100k.item").exists()),
                    reason="data/raw/ml-100k is absent (run `python -m clsr prepare --dataset ml100k` once)")
def test_ml100k_content():
    df = load_ml100k({"fetch": False}, ROOT / "data" / "raw")
    assert len(df) == 100_000
    assert df["user"].nunique() == 943 and df["item"].nunique() == 1682
    assert list(df.columns) == ["user", "item", "category", "ts"]
    # category = the first genre of the item's `class` field, read independently here
    items = pd.read_csv(ML100K / "ml-100k.item", sep="\t")
    items.columns = [c.split(":")[0] for c in items.columns]
    first_genre = dict(zip(items["item_id"], items["class"].fillna("unknown").str.split(" ").str[0]))
    sample = df.sample(2000, random_state=0)
    assert all(c == first_genre[i] for i, c in zip(sample["item"], sample["category"]))
    inter = pd.read_csv(ML100K / "ml-100k.inter", sep="\t")
    assert df["ts"].tolist()[:1000] == inter.iloc[:1000, 3].tolist()
