"""The released TSV format (docs/protocol.md §4): export, read back, a hand-written fixture, bad files."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from clsr.data import batches as B
from clsr.data.official import FILES, VOCAB_FILES, export_official, load_released
from clsr.data.sources import DataError
from conftest import FIXTURES, brute_sequences

RELEASED = FIXTURES / "released"
SPLITS = ("train", "valid", "test")


def raw_instance_set(data, split):
    inst = data.instances[split]
    return {(str(data.user_ids[u]), int(p)) for u, p in zip(inst.user, inst.pos)}


def raw_instance_list(data, split):
    inst = data.instances[split]
    return [(str(data.user_ids[u]), int(p)) for u, p in zip(inst.user, inst.pos)]


def raw_candidates(data, split):
    c = data.candidates[split]
    return data.item_ids[c.item].astype(str), data.cate_ids[c.cate].astype(str)


def vocab(ids, index):
    return {str(r): int(i) for r, i in zip(ids, index)}


# ------------------------------------------------------------------------------------------------
# export -> files -> load
# ------------------------------------------------------------------------------------------------
def test_export_lines_follow_the_format(prepared_random, random_df, tmp_path):
    data, _ = prepared_random
    export_official(data, tmp_path / "out")
    seqs = brute_sequences(random_df)
    for split in SPLITS:
        lines = (tmp_path / "out" / FILES[split]).read_text().splitlines()
        width = 1 if split == "train" else data.candidates[split].item.shape[1]
        assert len(lines) == len(data.instances[split]) * width
        cand_items, _ = (None, None) if split == "train" else raw_candidates(data, split)
        for k, line in enumerate(lines):
            f = line.split("\t")
            assert len(f) == 8
            i, j = divmod(k, width)
            user, pos = raw_instance_list(data, split)[i]
            seq = seqs[user]
            assert f[0] == ("1" if j == 0 else "0")
            assert f[1] == user
            assert f[4] == str(seq[pos][0])  # every row of a block carries the positive's timestamp
            assert f[5].split(",") == [e[2] for e in seq[:pos]]  # full history, oldest first
            assert f[6].split(",") == [e[3] for e in seq[:pos]]
            assert f[7].split(",") == [str(e[0]) for e in seq[:pos]]
            if j == 0:
                assert (f[2], f[3]) == (seq[pos][2], seq[pos][3])
            else:
                assert f[2] == cand_items[i, j]


def test_round_trip_instances_candidates_vocab(prepared_random, tmp_path):
    data, _ = prepared_random
    export_official(data, tmp_path / "out")
    back = load_released({"folder": str(tmp_path / "out")}, time_unit=86.4, max_len=20)
    for split in SPLITS:
        assert raw_instance_set(back, split) == raw_instance_set(data, split), split
        assert len(back.instances[split]) == len(data.instances[split])
    for split in ("valid", "test"):
        a_i, a_c = raw_candidates(data, split)
        b_i, b_c = raw_candidates(back, split)
        assert np.array_equal(a_i, b_i) and np.array_equal(a_c, b_c), split
    # the rebuilt vocabularies give every raw id the same index
    v_data, v_back = vocab(data.item_ids, data.item_index), vocab(back.item_ids, back.item_index)
    assert {k: v for k, v in v_back.items() if v} == {k: v for k, v in v_data.items() if v}
    assert all(v_data.get(k, 0) == 0 for k, v in v_back.items() if v == 0)
    assert vocab(back.cate_ids, back.cate_index) == {
        k: v for k, v in vocab(data.cate_ids, data.cate_index).items() if k in set(back.cate_ids)}
    assert {k: v for k, v in vocab(back.user_ids, back.user_index).items() if v} == \
        {k: v for k, v in vocab(data.user_ids, data.user_index).items() if v}
    # same batches (histories, time features, candidates as vocab indices) on the test split
    a = next(B.eval_batches(data, "test", 10_000, 20, 86.4))
    b = next(B.eval_batches(back, "test", 10_000, 20, 86.4))
    order_a = np.lexsort((data.instances["test"].pos, data.user_ids[data.instances["test"].user]))
    order_b = np.lexsort((back.instances["test"].pos, back.user_ids[back.instances["test"].user]))
    for f in ("hist_item", "hist_cate", "mask", "time_to_now", "time_from_first", "cand_item", "cand_cate", "user"):
        assert np.array_equal(getattr(a, f).numpy()[order_a], getattr(b, f).numpy()[order_b]), f
    # exporting what was read gives the same files
    export_official(back, tmp_path / "again")
    for fname in FILES.values():
        assert (tmp_path / "again" / fname).read_bytes() == (tmp_path / "out" / fname).read_bytes(), fname


# ------------------------------------------------------------------------------------------------
# the vocabulary pickles: what the released `_create_vocab` builds from the exported train_data
# ------------------------------------------------------------------------------------------------
def create_vocab_by_the_released_rule(train_file: Path) -> dict[str, dict[str, int]]:
    """The released `_create_vocab`, line by line: count the user, the target item and category, then every
    history item and category (a line without history stops after the target); sort each dict by count,
    descending, ties in insertion order (Python's sort is stable); reserve index 0."""
    counts = {"user": {}, "item": {}, "cate": {}}

    def count(kind, key):
        counts[kind][key] = counts[kind].get(key, 0) + 1

    for line in train_file.read_text().splitlines():
        arr = line.split("\t")
        count("user", arr[1])
        count("item", arr[2])
        count("cate", arr[3])
        if len(arr[5]) == 0:
            continue
        for m in arr[5].split(","):
            count("item", m)
        for c in arr[6].split(","):
            count("cate", c)
    out = {}
    for kind, default in (("user", "default_uid"), ("item", "default_mid"), ("cate", "default_cat")):
        vocab = {default: 0}
        for index, (key, _) in enumerate(sorted(counts[kind].items(), key=lambda x: x[1], reverse=True), start=1):
            vocab[key] = index
        out[kind] = vocab
    return out


def read_own_pickle(path: Path) -> dict:
    with open(path, "rb") as f:  # a file this test's own export just wrote
        return pickle.load(f)


@pytest.mark.parametrize("source", ["random_time_span", "random_per_user_keep", "released_fixture"])
def test_exported_vocab_pickles_equal_the_released_rebuild(source, prepared_random, random_df, tmp_path):
    if source == "random_time_span":
        data, _ = prepared_random
    elif source == "random_per_user_keep":
        from conftest import build
        data = build(random_df, split="per_user", train_keep=0.6)
    else:
        data = load_released({"folder": str(RELEASED)}, time_unit=86.4, max_len=3)
    written = export_official(data, tmp_path / "out")
    assert {p.name for p in written} == set(FILES.values()) | set(VOCAB_FILES.values()) | {"README.txt"}
    expected = create_vocab_by_the_released_rule(tmp_path / "out" / "train_data")
    for kind, fname in VOCAB_FILES.items():
        got = read_own_pickle(tmp_path / "out" / fname)
        assert list(got.items()) == list(expected[kind].items()), kind  # same entries, same insertion order
        assert all(type(k) is str and type(v) is int for k, v in got.items())
    readme = (tmp_path / "out" / "README.txt").read_text()
    for fname in [*FILES.values(), *VOCAB_FILES.values()]:
        assert fname in readme
    assert f"test {len(data.instances['test'])}" in readme


# ------------------------------------------------------------------------------------------------
# the hand-written fixture (tests/fixtures/released)
# ------------------------------------------------------------------------------------------------
# user 101: 11@1000 12@2000 13@3000 14@4000 15@5000
# user 102: 12@1500 11@2500 16@3500 13@4500
# user 103: 17@6000 11@6100            (test only: unseen user)
# items -> categories: 11 1, 12 1, 13 2, 14 2, 15 3, 16 3, 17 4, 18 5, 19 6 (18, 19 only as negatives)
@pytest.fixture
def released():
    return load_released({"folder": str(RELEASED)}, time_unit=86.4, max_len=3)


def test_fixture_events(released):
    d = released
    assert d.user_ids.tolist() == ["101", "102", "103"]
    assert d.user_offsets.tolist() == [0, 5, 9, 11]
    assert d.item_ids[d.event_item].tolist() == ["11", "12", "13", "14", "15", "12", "11", "16", "13", "17", "11"]
    assert d.cate_ids[d.event_cate].tolist() == ["1", "1", "2", "2", "3", "1", "1", "3", "2", "4", "1"]
    assert d.event_ts.tolist() == [1000, 2000, 3000, 4000, 5000, 1500, 2500, 3500, 4500, 6000, 6100]


def test_fixture_instances_and_candidates(released):
    d = released
    assert raw_instance_list(d, "train") == [("101", 1), ("101", 2), ("102", 1)]
    assert raw_instance_list(d, "valid") == [("101", 3), ("102", 2)]
    assert raw_instance_list(d, "test") == [("101", 4), ("102", 3), ("103", 1)]
    vi, vc = raw_candidates(d, "valid")
    assert vi.tolist() == [["14", "16", "11"], ["16", "13", "18"]]
    assert vc.tolist() == [["2", "3", "1"], ["3", "2", "5"]]
    ti, tc = raw_candidates(d, "test")
    assert ti.tolist() == [["15", "15", "12"], ["13", "11", "17"], ["11", "12", "19"]]  # positive duplicated
    assert tc.tolist() == [["3", "3", "1"], ["2", "1", "4"], ["1", "1", "6"]]


def test_fixture_vocab(released):
    d = released
    # train lines: (101: 12 | 11), (101: 13 | 11 12), (102: 11 | 12)
    # counts 12: 3, 11: 3, 13: 1; the tie 12/11 keeps the released insertion order (12 is line 1's target)
    assert vocab(d.item_ids, d.item_index) == {"12": 1, "11": 2, "13": 3, "14": 0, "15": 0, "16": 0, "17": 0,
                                               "18": 0, "19": 0}
    # categories: 1 counted 6 times, 2 once
    assert vocab(d.cate_ids, d.cate_index) == {"1": 1, "2": 2, "3": 0, "4": 0, "5": 0, "6": 0}
    assert vocab(d.user_ids, d.user_index) == {"101": 1, "102": 2, "103": 0}


def test_fixture_batches(released):
    d = released
    b = next(B.eval_batches(d, "test", 10, 3, 86.4))
    # candidates as vocab indices: 15 -> 0, 12 -> 1, 13 -> 3, 11 -> 2, 17/19 -> 0
    assert b.cand_item.tolist() == [[0, 0, 1], [3, 2, 0], [2, 1, 0]]
    assert b.user.tolist() == [1, 2, 0]
    # user 101, pos 4, L = 3: kept history 12 13 14 -> 1 3 0; from-first measured from 1000 (event 11)
    assert b.hist_item[0].tolist() == [1, 3, 0]
    np.testing.assert_allclose(b.time_from_first[0].numpy(),
                               np.log(np.array([3000 - 1000, 4000 - 1000, 5000 - 1000]) / 86.4), rtol=1e-6)
    np.testing.assert_allclose(b.time_to_now[0].numpy(),
                               np.log(np.array([5000 - 2000, 5000 - 3000, 5000 - 4000]) / 86.4), rtol=1e-6)
    # user 103: one history event 17 (unseen -> 0), padded
    assert b.hist_item[2].tolist() == [0, 0, 0] and b.mask[2].tolist() == [1, 0, 0]
    assert b.time_to_now[2, 0].item() == pytest.approx(np.log(100 / 86.4), rel=1e-6)


def test_prepare_reads_released_folder(tmp_path):
    from clsr.data.prepare import prepare
    from clsr.data.store import PreparedData

    params = {"datasets": {"tb": {"source": {"name": "taobao-released", "folder": str(RELEASED)},
                                  "protocol": {"time_unit": 86.4, "max_len": 3}}}}
    prepare("tb", params, out_dir=tmp_path)
    d = PreparedData.load(tmp_path / "tb")
    assert raw_instance_list(d, "test") == [("101", 4), ("102", 3), ("103", 1)]
    assert d.meta["time_unit"] == 86.4


# ------------------------------------------------------------------------------------------------
# bad files
# ------------------------------------------------------------------------------------------------
def copy_fixture(tmp_path) -> Path:
    out = tmp_path / "rel"
    shutil.copytree(RELEASED, out)
    return out


def edit(path: Path, fn):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(fn(lines)))


def drop_last_field(line):
    return "\t".join(line.rstrip("\n").split("\t")[:-1]) + "\n"


def set_field(line, k, value):
    f = line.rstrip("\n").split("\t")
    f[k] = value
    return "\t".join(f) + "\n"


BAD = {
    "all_lines_7_columns": ("valid_data", lambda ls: [drop_last_field(x) for x in ls], "columns"),
    "one_short_line": ("test_data", lambda ls: ls[:4] + [drop_last_field(ls[4])] + ls[5:], "line 5"),
    "one_long_line": ("train_data", lambda ls: ls[:2] + [ls[2].rstrip("\n") + "\textra\n"], "line 3"),
    "non_integer_ts": ("test_data", lambda ls: ls[:3] + [set_field(ls[3], 4, "4500.5")] + ls[4:], "ts"),
    "text_ts": ("valid_data", lambda ls: [set_field(ls[0], 4, "yesterday")] + ls[1:], "ts"),
    "no_leading_positive": ("valid_data", lambda ls: ls[1:], "positive"),
    "uneven_blocks": ("test_data", lambda ls: ls[:2] + ls[3:], "same number of negatives"),
    "negative_in_train": ("train_data", lambda ls: [set_field(ls[0], 0, "0")] + ls[1:], "positives only"),
    "bad_label": ("test_data", lambda ls: [set_field(ls[0], 0, "2")] + ls[1:], "label"),
    "empty_file": ("valid_data", lambda ls: [], "empty"),
    "inconsistent_history": ("test_data", lambda ls: [set_field(x, 5, "11,99,13,14") if x.split("\t")[1] == "101"
                                                      else x for x in ls], "sequence"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_released_files_raise_data_error_naming_the_file(tmp_path, case):
    fname, fn, words = BAD[case]
    folder = copy_fixture(tmp_path)
    edit(folder / fname, fn)
    with pytest.raises(DataError) as e:
        load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)
    msg = str(e.value)
    assert str(folder) in msg and (fname in msg or case == "inconsistent_history"), msg
    assert words in msg, msg


def test_missing_released_file_names_it(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "test_data").unlink()
    with pytest.raises(FileNotFoundError, match="test_data"):
        load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)


def test_unknown_released_option():
    from clsr.config import ConfigError

    with pytest.raises(ConfigError, match="folder"):
        load_released({"path": "x"}, time_unit=86.4, max_len=3)


def test_trailing_blank_line_is_tolerated(tmp_path):
    folder = copy_fixture(tmp_path)
    edit(folder / "train_data", lambda ls: ls + ["\n"])
    d = load_released({"folder": str(folder)}, time_unit=86.4, max_len=3)
    assert len(d.instances["train"]) == 3
