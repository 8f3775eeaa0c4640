"""The released TSV format (docs/protocol.md §4): export ours, and read the authors' files.

One line per row, tab-separated:

    label  user  item  category  ts  hist_items  hist_categories  hist_ts

with comma-separated, oldest-first, full-length histories. ``train_data`` holds positives only;
``valid_data`` / ``test_data`` hold blocks of one positive followed by its N negatives, which share the
positive's user, timestamp and history.

`export_official` writes a prepared dataset in that format, together with the vocabulary pickles the
released script loads (``user_vocab.pkl``, ``item_vocab.pkl``, ``category_vocab.pkl``, the dicts its
`_create_vocab` builds from the exported train_data) and a README.txt, so the original TensorFlow code can
be run as it is on exactly our instances and candidates. `load_released` reads the authors' (or our
exported) files back into a `PreparedData` *as they are*: the same instances and the same candidates,
vocabularies rebuilt from train_data by the released rule. Nothing downloaded is ever unpickled.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from clsr.config import from_dict
from clsr.data import protocol as P
from clsr.data.sources import DataError, encoding_error, read_error, require_file
from clsr.data.store import Candidates, Instances, PreparedData, atomic_path, atomic_write_text

FILES = {"train": "train_data", "valid": "valid_data", "test": "test_data"}
N_COLUMNS = 8
#: the released vocabulary files and the key each reserves for index 0 (padding and unseen ids)
VOCAB_FILES = {"user": "user_vocab.pkl", "item": "item_vocab.pkl", "cate": "category_vocab.pkl"}
VOCAB_DEFAULT_KEYS = {"user": "default_uid", "item": "default_mid", "cate": "default_cat"}
#: pickle protocol of the vocabulary files: readable by every Python the released code runs on (2.7, 3.x)
PICKLE_PROTOCOL = 2

EXPORT_README = """\
Files in the layout of the CLSR release (one folder per dataset), written by `python -m clsr export-official`.

train_data          training instances, positives only: one line per instance, grouped by user, in time order
valid_data          validation: blocks of 1 positive line followed by its {valid_neg} negative lines
test_data           test: blocks of 1 positive line followed by its {test_neg} negative lines
user_vocab.pkl      pickled dict raw user id -> index, built from train_data as the released
item_vocab.pkl      `_create_vocab` builds it: "default_uid" / "default_mid" / "default_cat" -> 0,
category_vocab.pkl  then the ids by count over train lines (target and full history), descending,
                    ties in the order the ids are first met (line order, target before history)

Every line has 8 tab-separated columns: label (1 positive, 0 negative), user, item, category, timestamp,
history items, history categories, history timestamps (comma-separated, oldest first, full length).
The negatives of a block share the positive's user, timestamp and history.

Dataset: {name}; instances: train {n_train}, valid {n_valid}, test {n_test}.
Use this folder as the released script's data folder (its --data_path joined with the --dataset name): it
runs its own preprocessing only when train_data is missing, so with these files it trains and evaluates on
exactly these instances and candidates, with these vocabularies.
"""


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def export_official(data: PreparedData, out: str | Path) -> list[Path]:
    """Write train_data / valid_data / test_data in the released format, the three vocabulary pickles
    (`released_vocabularies`) and README.txt. Returns the file paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    item_raw, cate_raw, user_raw = data.item_ids, data.cate_ids, data.user_ids
    ts_raw = data.event_ts.astype(str)
    written = []
    for split, fname in FILES.items():
        inst = data.instances[split]
        cand = data.candidates.get(split)
        path = out / fname
        tmp = path.with_name(f".{fname}.tmp")
        with open(tmp, "w") as f:
            for i in range(len(inst)):
                start = int(data.user_offsets[inst.user[i]])
                tgt = start + int(inst.pos[i])
                hist = slice(start, tgt)
                h_items = ",".join(item_raw[data.event_item[hist]])
                h_cates = ",".join(cate_raw[data.event_cate[hist]])
                h_ts = ",".join(ts_raw[hist])
                head = f"{user_raw[inst.user[i]]}"
                tail = f"{ts_raw[tgt]}\t{h_items}\t{h_cates}\t{h_ts}\n"
                if cand is None:
                    f.write(f"1\t{head}\t{item_raw[data.event_item[tgt]]}\t{cate_raw[data.event_cate[tgt]]}\t{tail}")
                else:
                    for j in range(cand.item.shape[1]):
                        label = 1 if j == 0 else 0
                        f.write(f"{label}\t{head}\t{item_raw[cand.item[i, j]]}\t{cate_raw[cand.cate[i, j]]}\t{tail}")
        tmp.replace(path)
        written.append(path)
    for kind, vocab in released_vocabularies(data).items():
        path = out / VOCAB_FILES[kind]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(vocab, f, protocol=PICKLE_PROTOCOL)
        written.append(path)
    widths = {s: data.candidates[s].item.shape[1] - 1 if s in data.candidates else 0 for s in ("valid", "test")}
    readme = EXPORT_README.format(
        valid_neg=widths["valid"], test_neg=widths["test"], name=data.name,
        **{f"n_{s}": len(data.instances[s]) for s in FILES},
    )
    atomic_write_text(out / "README.txt", readme)
    written.append(out / "README.txt")
    return written


def released_vocabularies(data: PreparedData) -> dict[str, dict[str, int]]:
    """The user / item / category dicts the released `_create_vocab` builds from the exported train_data.

    Our vocabulary indices follow the released rule (docs/protocol.md §2.4: counts over train targets and
    full histories, descending, ties in first-met order, index 0 reserved), so each dict is the reserved
    key -> 0 followed by every raw id with an index > 0, in index order (the released insertion order).
    """
    tables = {"user": (data.user_ids, data.user_index), "item": (data.item_ids, data.item_index),
              "cate": (data.cate_ids, data.cate_index)}
    out = {}
    for kind, (ids, index) in tables.items():
        used = np.flatnonzero(index > 0)
        used = used[np.argsort(index[used], kind="stable")]
        vocab = {VOCAB_DEFAULT_KEYS[kind]: 0}
        vocab.update((str(ids[c]), int(index[c])) for c in used)
        out[kind] = vocab
    return out


# ------------------------------------------------------------------------------------------------
# read the released files
# ------------------------------------------------------------------------------------------------
@dataclass
class ReleasedOptions:
    """The authors' preprocessed files (Google-Drive Taobao release), used as they are."""

    folder: str = "data/raw/taobao-released"  # holds train_data, valid_data, test_data


def _check_field_counts(path: Path) -> None:
    """Every non-blank line must hold exactly N_COLUMNS tab-separated fields. pandas pads a short line
    with empty strings silently, so count the tabs (one fast pass; a line scan only when they do not add up)."""
    tabs = newlines = 0
    last = b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            tabs += chunk.count(b"\t")
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
    if tabs == (N_COLUMNS - 1) * (newlines + (last != b"\n")):
        return
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip(b"\r\n") == b"":
                continue
            n = line.count(b"\t") + 1
            if n != N_COLUMNS:
                raise DataError(
                    f"{path}: line {lineno} has {n} tab-separated columns, expected {N_COLUMNS} (label, user, item, "
                    "category, ts, hist_items, hist_categories, hist_ts)"
                )


def _read(path: Path) -> pd.DataFrame:
    try:
        _check_field_counts(path)
        df = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False, quoting=3)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; download the authors' files again") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: not in the released tab-separated format: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise encoding_error(path) from None
    except OSError as e:
        raise read_error(path, e) from None
    if df.shape[1] != N_COLUMNS:
        raise DataError(
            f"{path}: expected {N_COLUMNS} tab-separated columns (label, user, item, category, ts, hist_items, "
            f"hist_categories, hist_ts), found {df.shape[1]}"
        )
    df.columns = ["label", "user", "item", "cate", "ts", "h_item", "h_cate", "h_ts"]
    bad = ~df["ts"].str.fullmatch(r"-?\d+")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{path}: column 5 (ts) is not an integer at line {row + 1}: {df['ts'].iloc[row]!r}")
    if not df["label"].isin(["0", "1"]).all():
        row = int(np.flatnonzero(~df["label"].isin(["0", "1"]).to_numpy())[0])
        raise DataError(f"{path}: column 1 (label) must be 0 or 1, line {row + 1} has {df['label'].iloc[row]!r}")
    return df


def _split_list(s: str) -> list[str]:
    return s.split(",") if s else []


def load_released(options: dict, time_unit: float, max_len: int, name: str = "taobao-released") -> PreparedData:
    """Parse the three files into the store, keeping every instance and candidate exactly."""
    opts = from_dict(ReleasedOptions, options, "source(taobao-released)")
    folder = Path(opts.folder)
    frames = {}
    for split, fname in FILES.items():
        frames[split] = _read(require_file(folder / fname, "Download the authors' Taobao files (see README) into this folder."))
    tr = frames["train"]
    if (tr["label"] != "1").any():
        raise DataError(f"{folder / 'train_data'}: train_data must hold positives only (label 1)")

    # positives of every split; each user's full known sequence = the longest history + its target
    pos_rows = []
    for split, df in frames.items():
        if split == "train":
            p = df.assign(split=split, block=np.arange(len(df)))
        else:
            starts = np.flatnonzero(df["label"].to_numpy() == "1")
            if len(starts) == 0 or starts[0] != 0:
                raise DataError(f"{folder / FILES[split]}: rows must come in blocks starting with a positive (label 1)")
            sizes = np.diff(np.append(starts, len(df)))
            if (sizes != sizes[0]).any():
                raise DataError(f"{folder / FILES[split]}: every positive must be followed by the same number of negatives")
            p = df.iloc[starts].assign(split=split, block=np.arange(len(starts)))
        pos_rows.append(p)
    pos = pd.concat(pos_rows, ignore_index=True)
    pos["n_hist"] = pos["h_item"].str.count(",") + (pos["h_item"] != "").astype(int)
    longest = pos.loc[pos.groupby("user", sort=False)["n_hist"].idxmax()]

    users, ev_item, ev_cate, ev_ts, offsets = [], [], [], [], [0]
    for row in longest.itertuples(index=False):
        items = _split_list(row.h_item) + [row.item]
        cates = _split_list(row.h_cate) + [row.cate]
        tss = _split_list(row.h_ts) + [row.ts]
        if not (len(items) == len(cates) == len(tss)):
            raise DataError(f"{folder}: user {row.user}: history columns have different lengths")
        users.append(row.user)
        ev_item += items
        ev_cate += cates
        ev_ts += tss
        offsets.append(offsets[-1] + len(items))
    item_code, item_ids = pd.factorize(pd.Series(ev_item, dtype=str), sort=False)
    cate_code, cate_ids = pd.factorize(pd.Series(ev_cate, dtype=str), sort=False)
    user_ids = np.asarray(users, dtype=str)
    user_row = {u: i for i, u in enumerate(users)}
    offsets = np.asarray(offsets, dtype=np.int64)
    event_ts = np.asarray(ev_ts, dtype=np.int64)

    # instances: (user row, pos = history length), checked against the reconstructed sequence
    instances, candidates = {}, {}
    item_lookup = {v: i for i, v in enumerate(item_ids)}
    cate_lookup = {v: i for i, v in enumerate(cate_ids)}
    extra_items, extra_cates = [], []

    def code(value, lookup, extra, base):
        c = lookup.get(value)
        if c is None:  # a candidate item/category that never occurs in any sequence
            c = base + len(extra)
            lookup[value] = c
            extra.append(value)
        return c

    for split in FILES:
        p = pos[pos["split"] == split]
        u = p["user"].map(user_row).to_numpy(np.int64)
        n = p["n_hist"].to_numpy(np.int64)
        tgt = offsets[u] + n
        target_items = np.asarray(item_ids)[item_code[tgt]]
        if (target_items != p["item"].to_numpy(str)).any() or (event_ts[tgt] != p["ts"].astype(np.int64).to_numpy()).any():
            bad = int(np.flatnonzero(target_items != p["item"].to_numpy(str))[0]) if (target_items != p["item"].to_numpy(str)).any() else 0
            raise DataError(
                f"{folder / FILES[split]}: the history of user {p['user'].iloc[bad]} at line of block {bad} does not "
                "continue the user's sequence seen elsewhere; the files are inconsistent"
            )
        instances[split] = Instances(user=u.astype(np.int32), pos=n.astype(np.int32))
        if split != "train":
            df = frames[split]
            width = len(df) // len(p)
            ci = np.array([code(v, item_lookup, extra_items, len(item_ids)) for v in df["item"]], dtype=np.int32)
            cc = np.array([code(v, cate_lookup, extra_cates, len(cate_ids)) for v in df["cate"]], dtype=np.int32)
            candidates[split] = Candidates(item=ci.reshape(-1, width), cate=cc.reshape(-1, width))

    all_item_ids = np.concatenate([np.asarray(item_ids, dtype=str), np.asarray(extra_items, dtype=str)])
    all_cate_ids = np.concatenate([np.asarray(cate_ids, dtype=str), np.asarray(extra_cates, dtype=str)])
    ev_item_code = item_code.astype(np.int32)
    ev_cate_code = cate_code.astype(np.int32)

    # vocabularies from train_data, by the released rule (counts over targets and full histories)
    is_train_target = np.zeros(len(ev_item_code), dtype=bool)
    is_train_target[offsets[instances["train"].user] + instances["train"].pos] = True
    n_items, n_cates, n_users = len(all_item_ids), len(all_cate_ids), len(user_ids)
    item_index = P.build_vocab(
        P.train_counts(ev_item_code, offsets, is_train_target, n_items),
        P.first_insert(ev_item_code, offsets, is_train_target, n_items),
    )
    cate_index = P.build_vocab(
        P.train_counts(ev_cate_code, offsets, is_train_target, n_cates),
        P.first_insert(ev_cate_code, offsets, is_train_target, n_cates),
    )
    user_index = P.build_vocab(np.bincount(instances["train"].user, minlength=n_users), np.arange(n_users))
    return PreparedData(
        name=name,
        user_offsets=offsets,
        event_item=ev_item_code,
        event_cate=ev_cate_code,
        event_ts=event_ts,
        user_ids=user_ids,
        item_ids=all_item_ids,
        cate_ids=all_cate_ids,
        user_index=user_index,
        item_index=item_index,
        cate_index=cate_index,
        instances=instances,
        candidates=candidates,
        meta={"time_unit": time_unit, "max_len": max_len, "released_files": str(folder)},
    )
