"""Every data mistake a person can make ends in one DataError (or ConfigError) line naming the culprit.

Covers the csv source cell by cell, the other file-reading sources (taobao, kuaishou, the released
files, MovieLens-100K), damaged prepared datasets, unwritable output folders, the protocol values that
can be refused from params.yaml alone, and splits that come out empty.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clsr.config import ConfigError, from_dict
from clsr.data import prepare as prep
from clsr.data import protocol as P
from clsr.data import store
from clsr.data.kuaishou import load_kuaishou
from clsr.data.official import load_released
from clsr.data.sources import DataError, MissingDataError, check_interactions, load_csv, load_ml100k, load_source
from clsr.data.store import PreparedData
from clsr.data.taobao import load_taobao
from conftest import FIXTURES, random_params

HEADER = "user,item,category,ts"


def rows(n_users: int = 4, per_user: int = 5) -> list[str]:
    """A clean log body: every user sees `per_user` distinct items at increasing times."""
    return [f"u{u},i{(u + k) % 7},c{(u + k) % 3},{1000 + 10 * k}" for u in range(n_users) for k in range(per_user)]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def csv_params(path: Path, **protocol) -> dict:
    proto = {"split": "per_user", "valid_negatives": 1, "test_negatives": 2, **protocol}
    return {"datasets": {"log": {"source": {"name": "csv", "path": str(path)}, "protocol": proto}}}


# ------------------------------------------------------------------------------------------------
# csv source: cells
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "NaN", "nan", "NA", "null", "NULL", "None", "   ", " n/a "])
@pytest.mark.parametrize("column", ["user", "item", "category"])
def test_csv_blank_or_na_id_is_refused(tmp_path, column, value):
    body = rows()
    fields = HEADER.split(",")
    bad_rows = (2, 7)  # 0-based positions in the body
    for r in bad_rows:
        cells = body[r].split(",")
        cells[fields.index(column)] = value
        body[r] = ",".join(cells)
    p = write(tmp_path / "log.csv", [HEADER] + body)
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = one_line(e)
    first_line = bad_rows[0] + 2  # the header is line 1, body row 0 is line 2
    assert str(p) in msg and f"column {column!r}" in msg and f"line {first_line} of the file" in msg, msg
    assert "2 blank or missing" in msg and "drop or fill" in msg, msg


def test_csv_blank_id_names_the_files_own_column(tmp_path):
    p = write(tmp_path / "log.csv", ["uid,iid,cat,time", "1,2,3,100", "1,,3,200"])
    cols = {"user": "uid", "item": "iid", "category": "cat", "ts": "time"}
    with pytest.raises(DataError, match=r"column 'iid' \(item\) has 1 blank.*line 3 of the file"):
        load_csv({"path": str(p), "columns": cols}, tmp_path)


def test_csv_line_numbers_count_blank_lines_and_headerless_files(tmp_path):
    p = write(tmp_path / "log.csv", [HEADER, "1,2,3,100", "", "1,3,3,200", "2,NaN,3,300"])
    with pytest.raises(DataError, match="line 5 of the file"):
        load_csv({"path": str(p)}, tmp_path)
    q = write(tmp_path / "noheader.csv", ["1,2,3,100", "1,3,null,200"])
    cols = {"user": "0", "item": "1", "category": "2", "ts": "3"}
    with pytest.raises(DataError, match=r"column '2' \(category\).*line 2 of the file"):
        load_csv({"path": str(q), "header": False, "columns": cols}, tmp_path)


def test_csv_blank_lines_alone_are_skipped(tmp_path):
    p = write(tmp_path / "log.csv", [HEADER, "1,2,3,100", "", "1,3,3,200", "", ""])
    df = load_csv({"path": str(p)}, tmp_path)
    assert df["item"].tolist() == ["2", "3"] and df["ts"].tolist() == [100, 200]


@pytest.mark.parametrize("value", ["", "NaN", "null", "  "])
def test_csv_missing_timestamp(tmp_path, value):
    p = write(tmp_path / "log.csv", [HEADER, "1,2,3,100", f"1,3,3,{value}", "2,3,3,300"])
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = one_line(e)
    assert str(p) in msg and "column 'ts'" in msg and "line 3 of the file" in msg and "1 blank" in msg, msg
    with pytest.raises(DataError, match="column 'ts'.*line 3 of the file"):
        load_csv({"path": str(p), "ts_format": "datetime"}, tmp_path)


def test_csv_unparseable_timestamps_name_the_line(tmp_path):
    p = write(tmp_path / "log.csv", [HEADER, "1,2,3,100", "1,3,3,inf", "2,3,3,1.5e3"])
    with pytest.raises(DataError, match=r"column 'ts' has 1 non-numeric value\(s\), first 'inf' at line 3"):
        load_csv({"path": str(p)}, tmp_path)
    q = write(tmp_path / "dates.csv", [HEADER, "1,2,3,2017-11-25 10:00:00", "1,3,3,2017-11-25 11:00:00", "2,3,3,soon"])
    with pytest.raises(DataError, match=r"column 'ts' has 1 unparseable date\(s\), first 'soon' at line 4"):
        load_csv({"path": str(q), "ts_format": "datetime"}, tmp_path)


def test_interactions_table_with_missing_ids(hand_df, tmp_path):
    """Tables handed to `prepare` directly (notebooks) get the same check, by data row."""
    for value in (None, np.nan, "nan", " "):
        df = hand_df.astype({"item": object})
        df.loc[3, "item"] = value
        with pytest.raises(DataError, match=r"column 'item' has 1 blank or missing value\(s\).*data row 4"):
            check_interactions(df, "table")
    df = hand_df.astype({"ts": float})
    df.loc[5, "ts"] = np.nan
    with pytest.raises(DataError, match=r"'ts'.*data row 6"):
        prep.prepare("log", csv_params(tmp_path / "unused.csv"), out_dir=tmp_path / "out", interactions=df)
    assert not (tmp_path / "out" / "log").exists()


# ------------------------------------------------------------------------------------------------
# csv source: files
# ------------------------------------------------------------------------------------------------
def test_csv_zero_bytes_and_header_only(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="the file is empty") as e:
        load_csv({"path": str(empty)}, tmp_path)
    assert str(empty) in one_line(e)
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match="the file is empty"):
        load_csv({"path": str(blank)}, tmp_path)
    header = write(tmp_path / "header.csv", [HEADER])
    with pytest.raises(DataError, match="no data rows below the header") as e:
        load_csv({"path": str(header)}, tmp_path)
    assert str(header) in str(e.value)


def test_csv_not_utf8_names_line_and_suggests_reencoding(tmp_path):
    p = tmp_path / "latin.csv"
    p.write_bytes("\n".join([HEADER, "1,2,3,100", "1,café,3,200", ""]).encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = one_line(e)
    assert str(p) in msg and "line 3" in msg and "0xe9" in msg and "re-encode the file as UTF-8" in msg, msg
    assert "source.encoding" in msg
    df = load_csv({"path": str(p), "encoding": "latin-1"}, tmp_path)  # the suggested fix works
    assert df["item"].tolist() == ["2", "café"]
    with pytest.raises(ConfigError, match=r"encoding.*'latin-9000'"):
        load_csv({"path": str(p), "encoding": "latin-9000"}, tmp_path)


def test_csv_folder_missing_file_and_unreadable_file(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="is a folder, expected a file") as e:
        load_csv({"path": str(tmp_path)}, tmp_path)
    assert str(tmp_path) in one_line(e)
    missing = tmp_path / "sub" / "log.csv"
    with pytest.raises(MissingDataError) as e:
        load_source({"name": "csv", "path": str(missing)}, tmp_path)
    assert str(missing) in str(e.value) and f"looked in {missing.parent}" in str(e.value)
    p = write(tmp_path / "log.csv", [HEADER] + rows())
    monkeypatch.setattr(os, "access", lambda path, mode, **k: False)  # what a chmod 000 file reports
    with pytest.raises(DataError, match="permission denied") as e:
        load_csv({"path": str(p)}, tmp_path)
    assert str(p) in str(e.value)


def test_csv_ragged_rows(tmp_path):
    p = write(tmp_path / "log.csv", [HEADER, "1,2,3,100", "1,3,3,200,extra", "2,3,3,300"])
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = one_line(e)
    assert str(p) in msg and "line 3 has 5 fields" in msg and "4" in msg, msg
    # every data line one field longer (trailing separators): pandas would silently shift the columns
    q = write(tmp_path / "trailing.csv", [HEADER, "1,2,3,100,", "1,3,3,200,"])
    with pytest.raises(DataError, match="data lines have 5 fields but the header has 4"):
        load_csv({"path": str(q)}, tmp_path)
    # a short line leaves its last columns blank, which names the line
    r = write(tmp_path / "short.csv", [HEADER, "1,2,3,100", "1,3,3"])
    with pytest.raises(DataError, match="column 'ts'.*line 3 of the file"):
        load_csv({"path": str(r)}, tmp_path)


def test_csv_missing_column_lists_found_ones(tmp_path):
    p = write(tmp_path / "log.csv", ["user,item,time", "1,2,100"])
    with pytest.raises(DataError) as e:
        load_csv({"path": str(p)}, tmp_path)
    msg = one_line(e)
    assert "'category'" in msg and "'ts'" in msg and "['user', 'item', 'time']" in msg, msg


# ------------------------------------------------------------------------------------------------
# the other file-reading sources
# ------------------------------------------------------------------------------------------------
def test_taobao_folder_missing_bad_zip_bad_gzip_and_encoding(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load_taobao({"path": str(tmp_path)}, tmp_path)
    with pytest.raises(MissingDataError, match="tianchi"):
        load_taobao({"path": str(tmp_path / "UserBehavior.csv")}, tmp_path)
    bad_zip = tmp_path / "UserBehavior.zip"
    bad_zip.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match="not a readable zip file") as e:
        load_taobao({"path": str(bad_zip)}, tmp_path / "raw")
    assert str(bad_zip) in str(e.value)
    bad_gz = tmp_path / "UserBehavior.csv.gz"
    bad_gz.write_bytes(gzip.compress(b"1,2,3,pv,1511600000\n" * 50)[:30])
    with pytest.raises(DataError, match="cannot be read") as e:
        load_taobao({"path": str(bad_gz)}, tmp_path)
    assert str(bad_gz) in one_line(e)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("1,2,3,pv,1511600000\n1,3,3,pvé,1511600001\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"row 2, column 4 \('behavior'\) is not valid UTF-8.*re-encode"):
        load_taobao({"path": str(latin)}, tmp_path)


def test_kuaishou_folder_missing_empty_and_encoding(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        load_kuaishou({"path": str(tmp_path)}, tmp_path)
    with pytest.raises(MissingDataError, match="never released"):
        load_kuaishou({"path": str(tmp_path / "ks.csv")}, tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="the file is empty") as e:
        load_kuaishou({"path": str(empty)}, tmp_path)
    assert str(empty) in str(e.value)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,photo_id,time_ms,photo_kmeans_cluster_id,effective_view,légende\n1,2,3,4,1,x\n"
                      .encode("latin-1"))
    with pytest.raises(DataError, match="header line is not valid UTF-8") as e:
        load_kuaishou({"path": str(latin)}, tmp_path)
    assert str(latin) in str(e.value)


def released_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "released"
    shutil.copytree(FIXTURES / "released", folder)
    return folder


def test_released_files_folder_missing_empty_and_encoding(tmp_path):
    folder = released_copy(tmp_path)
    with pytest.raises(MissingDataError, match="train_data"):
        load_released({"folder": str(tmp_path / "nowhere")}, time_unit=86.4, max_len=3)
    (folder / "valid_data").unlink()
    (folder / "valid_data").mkdir()
    with pytest.raises(DataError, match="valid_data is a folder"):
        load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)
    folder = released_copy(tmp_path / "b")
    (folder / "test_data").write_bytes(b"")
    with pytest.raises(DataError, match="test_data: the file is empty"):
        load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)
    folder = released_copy(tmp_path / "c")
    text = (folder / "train_data").read_bytes()
    (folder / "train_data").write_bytes(text.replace(b"\t", b"\xe9\t", 1))
    with pytest.raises(DataError, match=r"train_data: line 1 is not valid utf-8.*re-encode"):
        load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)


def test_ml100k_missing_wheel_and_damaged_files(tmp_path):
    raw = tmp_path / "raw"
    with pytest.raises(MissingDataError, match="fetching is off") as e:
        load_ml100k({"fetch": False}, raw)
    assert "recbole-1.2.1-py3-none-any.whl" in str(e.value)
    with pytest.raises(DataError, match="is a folder"):
        load_ml100k({"fetch": False, "wheel": str(tmp_path)}, raw)
    folder = raw / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "ml-100k.inter").write_bytes(b"")
    (folder / "ml-100k.item").write_text("item_id:token\tclass:token_seq\n1\tAction\n")
    with pytest.raises(DataError, match=r"ml-100k.inter: the file is empty; delete the folder"):
        load_ml100k({"fetch": False}, raw)
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['timestamp'\]"):
        load_ml100k({"fetch": False}, raw)
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-100k.inter").write_text(header + "1\t1\t4\t100\n1\t1\t4\n")
    with pytest.raises(DataError, match="'timestamp' is not all integers"):
        load_ml100k({"fetch": False}, raw)
    (folder / "ml-100k.inter").write_text(header + "1\t1\t4\t100\n")
    with pytest.raises(DataError, match="content check failed.*delete the folder"):
        load_ml100k({"fetch": False}, raw)


# ------------------------------------------------------------------------------------------------
# damaged prepared datasets
# ------------------------------------------------------------------------------------------------
def assert_rerun_hint(msg: str, name: str = "rand") -> None:
    assert f"re-run `python -m clsr prepare --dataset {name}`" in msg and f"dvc repro protocol@{name}" in msg, msg


def test_truncated_or_foreign_arrays(prepared_random):
    _, folder = prepared_random
    npz = folder / "arrays.npz"
    full = npz.read_bytes()
    for damaged in (full[: len(full) // 2], full[:100], b"not a zip at all"):
        npz.write_bytes(damaged)
        with pytest.raises(DataError) as e:
            prep.load_prepared("rand", folder.parent)
        msg = one_line(e)
        assert str(npz) in msg and "truncated or corrupt" in msg, msg
        assert_rerun_hint(msg)


def test_arrays_that_do_not_match_meta(prepared_random):
    _, folder = prepared_random
    meta = json.loads((folder / "meta.json").read_text())
    meta["splits"] = meta["splits"] + ["extra_split"]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="do not match meta.json") as e:
        PreparedData.load(folder)
    assert_rerun_hint(str(e.value))


@pytest.mark.parametrize("text", ['{"name": "rand", "spl', "", "[1, 2]", '{"name": "rand"}'])
def test_corrupt_meta(prepared_random, text):
    _, folder = prepared_random
    (folder / "meta.json").write_text(text)
    with pytest.raises(DataError) as e:
        PreparedData.load(folder)
    msg = one_line(e)
    assert str(folder / "meta.json") in msg
    assert_rerun_hint(msg)


def test_missing_meta_or_folder(prepared_random, tmp_path):
    _, folder = prepared_random
    (folder / "meta.json").unlink()
    with pytest.raises(MissingDataError, match="no meta.json") as e:
        PreparedData.load(folder)
    assert str(folder) in str(e.value)
    assert_rerun_hint(str(e.value))
    with pytest.raises(DataError, match="no arrays.npz or meta.json") as e:
        prep.load_prepared("ml100k", tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "ml100k") in str(e.value)
    assert_rerun_hint(str(e.value), "ml100k")


# ------------------------------------------------------------------------------------------------
# unwritable output
# ------------------------------------------------------------------------------------------------
def test_output_under_a_file_fails_before_reading(tmp_path):
    blocker = tmp_path / "prepared"
    blocker.write_text("a file where the output folder should be")
    params = csv_params(tmp_path / "absent.csv")  # reading would fail differently: the output check comes first
    with pytest.raises(DataError) as e:
        prep.prepare("log", params, out_dir=blocker / "sub")
    msg = one_line(e)
    assert str(blocker / "sub") in msg and "cannot write" in msg, msg


def test_unwritable_output_folder(tmp_path, random_df, monkeypatch):
    out = tmp_path / "out"

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store.tempfile, "mkstemp", denied)
    with pytest.raises(DataError) as e:
        prep.prepare("rand", random_params(), out_dir=out, interactions=random_df)
    msg = one_line(e)
    assert str(out) in msg and "Permission denied" in msg and "--out-dir" in msg, msg
    assert not (out / "rand").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(tmp_path, random_df):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(DataError, match="cannot write") as e:
            prep.prepare("rand", random_params(), out_dir=out, interactions=random_df)
        assert str(out) in str(e.value)
    finally:
        out.chmod(0o755)


def test_failed_final_rename_restores_the_previous_dataset(tmp_path, random_df, monkeypatch):
    out = tmp_path / "out"
    prep.prepare("rand", random_params(seed=1), out_dir=out, interactions=random_df)
    before = {p.name: p.read_bytes() for p in (out / "rand").iterdir()}
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(src).name.startswith(".rand.tmp-"):  # the finished new folder moving into place
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", failing_replace)
    with pytest.raises(DataError, match="No space left on device.*nothing was changed"):
        prep.prepare("rand", random_params(seed=2), out_dir=out, interactions=random_df)
    monkeypatch.setattr(store.os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == ["rand"]  # no temporary or set-aside folder left
    assert {p.name: p.read_bytes() for p in (out / "rand").iterdir()} == before


def test_failure_in_an_extra_file_writes_nothing(tmp_path, hand_df, monkeypatch):
    """The last file of a save (stats.json) failing: the dataset folder never appears."""
    out = tmp_path / "out"

    def failing_json(path, obj):
        Path(path).write_text('{"half":')
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(prep, "atomic_write_json", failing_json)
    params = csv_params(tmp_path / "unused.csv", split="time_span", span=100)
    with pytest.raises(DataError, match="Input/output error"):
        prep.prepare("log", params, out_dir=out, interactions=hand_df)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# protocol values and empty splits
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values, key",
    [
        ({"split": "time_fraction", "valid_fraction": 0}, "valid_fraction"),
        ({"split": "time_fraction", "test_fraction": 0}, "test_fraction"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"test_fraction": -0.2}, "test_fraction"),
        ({"valid_fraction": math.nan}, "valid_fraction"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "valid_fraction + test_fraction"),
        ({"valid_negatives": 0}, "valid_negatives"),
        ({"test_negatives": -3}, "test_negatives"),
        ({"max_len": 0}, "max_len"),
        ({"min_history": 0}, "min_history"),
        ({"time_unit": 0}, "time_unit"),
        ({"time_unit": -86.4}, "time_unit"),
        ({"time_unit": math.nan}, "time_unit"),
        ({"time_unit": math.inf}, "time_unit"),
        ({"span": math.nan}, "span"),
        ({"span": 0}, "span"),
        ({"seed": -1}, "seed"),
        ({"valid_keep": math.nan}, "valid_keep"),
        ({"train_keep": 1.5}, "train_keep"),
    ],
)
def test_degenerate_protocol_values(values, key):
    with pytest.raises(ConfigError) as e:
        from_dict(P.ProtocolConfig, values, "datasets.d.protocol")
    assert key in one_line(e) and "datasets.d.protocol" in str(e.value)


def test_zero_valid_fraction_fails_before_reading_data(tmp_path):
    params = csv_params(tmp_path / "absent.csv", split="time_fraction", valid_fraction=0)
    with pytest.raises(ConfigError, match=r"datasets\.log\.protocol\.valid_fraction: 0 leaves the valid split empty"):
        prep.prepare("log", params, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert from_dict(P.ProtocolConfig, {"split": "per_user", "valid_fraction": 0}).valid_fraction == 0


def test_empty_valid_split_fails_at_prepare(tmp_path):
    # test period ts >= 950 holds user 2's second event; the valid period [900, 950) holds nothing
    df = pd.DataFrame(
        [(1, "a", "x", 100), (1, "b", "x", 200), (1, "c", "y", 300), (1, "d", "y", 400), (2, "a", "x", 150),
         (2, "c", "y", 1000)],
        columns=["user", "item", "category", "ts"],
    )
    out = tmp_path / "out"
    params = csv_params(tmp_path / "unused.csv", split="time_span", span=50)
    with pytest.raises(DataError) as e:
        prep.prepare("log", params, out_dir=out, interactions=df)
    msg = one_line(e)
    assert "no valid instances" in msg and "protocol.span" in msg and "protocol.valid_keep" in msg, msg
    assert list(out.iterdir()) == []
    # the same data and protocol still build (build itself only needs train): the check is prepare's
    data = P.build(df, from_dict(P.ProtocolConfig, params["datasets"]["log"]["protocol"]), name="log")
    assert len(data.instances["valid"]) == 0 and len(data.instances["test"]) == 1


def test_empty_test_split_fails_at_prepare(tmp_path):
    # user 1's events fall in train/valid; the test period (ts >= 950) holds only user 2's first event,
    # which has no history and so is never a target
    df = pd.DataFrame(
        [(1, "a", "x", 100), (1, "b", "x", 200), (1, "c", "y", 300), (1, "a", "x", 920), (2, "b", "x", 1000)],
        columns=["user", "item", "category", "ts"],
    )
    params = csv_params(tmp_path / "unused.csv", split="time_span", span=50)
    with pytest.raises(DataError) as e:
        prep.prepare("log", params, out_dir=tmp_path / "out", interactions=df)
    msg = one_line(e)
    assert "no test instances" in msg and "protocol.span" in msg and "protocol.test_keep" in msg, msg


def test_empty_train_split_names_the_keys(tmp_path, hand_df):
    params = csv_params(tmp_path / "unused.csv", split="time_span", span=10_000)
    with pytest.raises(DataError) as e:
        prep.prepare("log", params, out_dir=tmp_path / "out", interactions=hand_df)
    msg = one_line(e)
    assert "no training instances" in msg and "protocol.span" in msg and "span = 10000" in msg, msg
