"""Source ``taobao``: the raw Taobao user-behaviour log (``UserBehavior.csv``) filtered as the released code does.

The file (Tianchi data set 649: about 100M rows, 988k users, 4.2M items) has no header and five columns::

    user, item, category, behavior, ts        e.g.  1,2268318,2520377,pv,1511544070

with ``behavior`` one of pv / cart / fav / buy and ``ts`` in Unix seconds. The released preprocessing
(`taobao_main`, docs/protocol.md §1.2) applies, in this order:

1. keep ``behavior == 'pv'``;
2. drop duplicate (user, item) pairs, keeping the first occurrence in file order;
3. drop every item seen with more than one category (on the distinct (item, category) pairs left by 2);
4. keep ``start <= ts <= end`` (both inclusive);
5. keep a random ``user_fraction`` of the distinct users left (the release: 5 %, unseeded; here seeded);
6. keep items with >= ``min_item_count`` rows, then users with >= ``min_user_count`` rows -- one pass
   each, in that order, *not* an iterated k-core, so an item can end below the threshold.

The order matters and is kept exactly: e.g. a pair whose first view lies outside the window loses its
later in-window views too (2 runs before 4), and a non-pv row never shadows a pv row (1 runs before 2).

Scale: the whole log goes through in a few minutes and a few GiB. The CSV is streamed in blocks with
``pyarrow.csv`` (integer columns typed int64, ``behavior`` dictionary-encoded), non-pv rows and unused
columns are dropped per block, and every filter is an integer-key numpy operation (sorts and lookup
tables on combined int64 keys), never a pandas group-by over Python objects.

The result is the interactions table of `clsr.data.sources` (user, item, category, ts as int64, in file
order) plus ``behavior`` (always ``'pv'`` here). ``df.attrs["filter_log"]`` lists the rows left after each
step (and its seconds); ``df.attrs["source_files"]`` maps the file to its sha256.
"""
from __future__ import annotations

import logging
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from clsr.config import ConfigError, from_dict
from clsr.data.download import fetch_to
from clsr.data.sources import DataError, check_interactions, sha256_of
from clsr.data.store import atomic_path

log = logging.getLogger(__name__)

NAMES = ("user", "item", "category", "behavior", "ts")
TYPES = {
    "user": pa.int64(),
    "item": pa.int64(),
    "category": pa.int64(),
    "behavior": pa.dictionary(pa.int32(), pa.string()),
    "ts": pa.int64(),
}
HOW_TO_GET = (
    "Get UserBehavior.csv from https://tianchi.aliyun.com/dataset/649 (free account), unzip it under "
    "data/raw/, and set datasets.<name>.source.path in params.yaml (or url + sha256 of a copy you host)."
)
_FMT = "%Y-%m-%d %H:%M:%S"


@dataclass
class TaobaoOptions:
    """Where UserBehavior.csv is and how it is filtered (defaults = the released code, §1.2)."""

    path: str | None = None  # local UserBehavior.csv (.csv.gz / .csv.bz2 read as they are; a .zip is extracted to raw_dir)
    url: str | None = None  # or download from here (http(s):// or file://) into raw_dir ...
    sha256: str | None = None  # ... checked against this digest (required with url)
    # The released bounds come from datetime(...).timestamp(), i.e. the local time zone of the authors'
    # machine, which was UTC+8 (China): 1511539200..1512316799. Use 0 to get the UTC reading.
    tz_offset_hours: float = 8.0
    start: str = "2017-11-25 00:00:00"  # first second kept (local time at tz_offset_hours), inclusive
    end: str = "2017-12-03 23:59:59"  # last second kept, inclusive
    user_fraction: float = 0.05  # share of distinct users kept (released: 5 %); 1.0 keeps all
    seed: int = 0  # seeds the user sample (the release did not seed it)
    min_item_count: int = 10  # then keep items with at least this many rows ...
    min_user_count: int = 10  # ... then users with at least this many rows (one pass each)
    block_size: int = 64 << 20  # bytes of CSV parsed per streamed block (memory vs. overhead)

    def validate(self, where: str) -> None:
        if not 0.0 < self.user_fraction <= 1.0:
            raise ConfigError(f"{where}.user_fraction: {self.user_fraction} must be in (0, 1]")
        for key in ("min_item_count", "min_user_count"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 1")
        if not -14 <= self.tz_offset_hours <= 14:
            raise ConfigError(f"{where}.tz_offset_hours: {self.tz_offset_hours} must be within [-14, 14]")
        if self.block_size < 1 << 16:
            raise ConfigError(f"{where}.block_size: {self.block_size} is below 65536 bytes")
        lo, hi = window_bounds(self.start, self.end, self.tz_offset_hours, where)
        if lo > hi:
            raise ConfigError(f"{where}: start {self.start!r} is after end {self.end!r}")


def window_bounds(start: str, end: str, tz_offset_hours: float, where: str = "source(taobao)") -> tuple[int, int]:
    """Unix seconds of `start` and `end` ('YYYY-MM-DD HH:MM:SS', local time at UTC+tz_offset_hours)."""
    tz = timezone(timedelta(hours=tz_offset_hours))
    out = []
    for key, value in (("start", start), ("end", end)):
        try:
            out.append(int(datetime.strptime(value, _FMT).replace(tzinfo=tz).timestamp()))
        except ValueError:
            raise ConfigError(f"{where}.{key}: {value!r} is not a time like '2017-11-25 00:00:00'") from None
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------
# integer-key helpers (shared with the Kuaishou source)
# ------------------------------------------------------------------------------------------------
def narrow(a: np.ndarray) -> np.ndarray:
    """`a` as int32 when every value fits (halves memory on real ids), else unchanged."""
    if a.dtype == np.int64 and len(a) and a.min() >= np.iinfo(np.int32).min and a.max() <= np.iinfo(np.int32).max:
        return a.astype(np.int32)
    return a


def codes(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Small non-negative integer codes for the values of `a` (equal values <-> equal codes), and their range.

    Ids in a compact range (the usual case) are shifted by their minimum: O(n), no sort. Ids spread over
    a huge range are ranked with np.unique instead.
    """
    if len(a) == 0:
        return np.zeros(0, np.int64), 0
    lo, hi = int(a.min()), int(a.max())
    span = hi - lo + 1
    if span <= max(4 * len(a), 1 << 24):
        if span < 2**31:  # a - lo fits in a's own dtype (int32 or int64)
            return (a - lo).astype(np.int32, copy=False), span
        return a.astype(np.int64) - lo, span
    uniq, inv = np.unique(a, return_inverse=True)
    return inv.astype(np.int32 if len(uniq) < 2**31 else np.int64), len(uniq)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique(a) through np.sort (SIMD-accelerated; np.unique itself is ~20x slower on large int arrays)."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per (a, b) pair, equal iff both values are equal."""
    ca, _ = codes(a)
    cb, nb = codes(b)
    if len(ca) and (int(ca.max()) + 1) * nb >= 2**63:
        raise DataError(f"pair_key: {int(ca.max()) + 1} x {nb} distinct values overflow an int64 key")
    key = ca.astype(np.int64)
    key *= nb
    key += cb
    return key


def first_occurrence(key: np.ndarray) -> np.ndarray:
    """Boolean mask: True on the first row (in array order) of every distinct key (pandas' keep='first')."""
    n = len(key)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    order = np.argsort(key, kind="stable")  # stable: among equal keys the earliest row comes first
    sk = key[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    del sk
    keep[order[first]] = True
    return keep


def count_mask(a: np.ndarray, min_count: int) -> np.ndarray:
    """Boolean mask of the rows whose value of `a` occurs at least `min_count` times in `a`."""
    c, n = codes(a)
    return np.bincount(c, minlength=n)[c] >= min_count


def member_mask(a: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of `a` whose value is in `values` (a lookup table when ids are compact)."""
    if len(a) == 0 or len(values) == 0:
        return np.zeros(len(a), dtype=bool)
    lo, hi = int(a.min()), int(a.max())
    if hi - lo + 1 <= max(4 * len(a), 1 << 24):
        table = np.zeros(hi - lo + 1, dtype=bool)
        v = values[(values >= lo) & (values <= hi)]
        table[v - lo] = True
        return table[a - lo]
    return np.isin(a, values)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
def _unzip(path: Path, raw_dir: Path) -> Path:
    """Extract the single .csv member of a zip (the Tianchi download) into raw_dir, once."""
    try:
        return _extract_csv(path, raw_dir)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a readable zip file ({e}); download it again, or unzip it by hand and "
                        "set source.path to UserBehavior.csv") from None
    except OSError as e:
        raise DataError(f"{raw_dir}: cannot extract {path.name} here ({e.strerror or e}); check the folder's "
                        "permissions and free space, or unzip it by hand") from None


def _extract_csv(path: Path, raw_dir: Path) -> Path:
    with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if m.filename.lower().endswith(".csv") and not m.is_dir()]
        if len(members) != 1:
            raise DataError(
                f"{path}: expected exactly one .csv file inside the zip, found {[m.filename for m in members]}; "
                "unzip it by hand and set source.path to UserBehavior.csv"
            )
        m = members[0]
        out = raw_dir / Path(m.filename).name
        if out.exists() and out.stat().st_size == m.file_size:
            return out
        with atomic_path(out, suffix=".part") as tmp, z.open(m) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
        return out


_CONVERT = re.compile(r"CSV column #(\d+): Row #(\d+): CSV conversion error to \w+: invalid value '(.*)'", re.S)
_COUNT = re.compile(r"Row #(\d+): Expected (\d+) columns, got (\d+): (.*)", re.S)
_UTF8 = re.compile(r"CSV column #(\d+): Row #(\d+): CSV conversion error to \w+: invalid UTF8", re.S)


def explain_csv_error(path: Path, err: pa.ArrowInvalid, open_single_threaded, names) -> DataError:
    """Turn a pyarrow parse/convert error into a DataError naming file, row and column.

    Multi-threaded pyarrow errors carry no row number, so the file is read again single-threaded
    (only on this error path) to find it.
    """
    msg = str(err)
    try:
        for _ in open_single_threaded():
            pass
    except pa.ArrowInvalid as e:
        msg = str(e)
    if m := _CONVERT.search(msg):
        col, row, value = int(m.group(1)), int(m.group(2)), m.group(3)
        hint = " (a header line? this file must start with data)" if row == 1 else ""
        return DataError(
            f"{path}: row {row}, column {col + 1} ({names[col]!r}): {value!r} is not an integer{hint}; "
            f"expected the columns {list(names)}"
        )
    if m := _UTF8.search(msg):
        col, row = int(m.group(1)), int(m.group(2))
        return DataError(
            f"{path}: row {row}, column {col + 1} ({names[col]!r}) is not valid UTF-8 text; re-encode the file "
            f"as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        )
    if m := _COUNT.search(msg):
        row, want, got, text = (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4))
        return DataError(
            f"{path}: row {row} has {got} columns, expected {want} ({', '.join(names)}): {text.strip()!r}"
        )
    return DataError(f"{path}: cannot be read as a CSV with columns {list(names)}: {' '.join(msg.split())}")


def read_failure(path: Path, err: OSError) -> DataError:
    """An OSError while streaming `path` (a damaged .gz/.bz2, an I/O error) as one line."""
    return DataError(
        f"{path}: cannot be read ({' '.join(str(err).split())}); if it is compressed, check the download "
        "(e.g. `gzip -t`) or decompress it by hand and point source.path at the .csv"
    )


def _open(path: Path, block_size: int, use_threads: bool) -> pacsv.CSVStreamingReader:
    return pacsv.open_csv(
        pa.input_stream(str(path), compression="detect"),
        read_options=pacsv.ReadOptions(column_names=list(NAMES), block_size=block_size, use_threads=use_threads),
        convert_options=pacsv.ConvertOptions(column_types=TYPES, null_values=[""], strings_can_be_null=False),
    )


def read_pv(path: Path, block_size: int = 64 << 20) -> tuple[dict[str, np.ndarray], int]:
    """Stream the raw file; return the pv rows' user, item, category, ts (file order) and the rows read."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected UserBehavior.csv rows {list(NAMES)}")
    keep_cols = ("user", "item", "category", "ts")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in keep_cols}
    n_read = 0
    try:
        reader = _open(path, block_size, use_threads=True)
        for batch in reader:
            for i, name in enumerate(NAMES):
                nulls = batch.column(i).null_count
                if nulls:
                    row = n_read + int(np.flatnonzero(batch.column(i).is_null().to_numpy(zero_copy_only=False))[0]) + 1
                    raise DataError(f"{path}: row {row}, column {i + 1} ({name!r}) is empty; every field is required")
            beh = batch.column(3)
            hit = beh.dictionary.index("pv").as_py()
            if hit >= 0:
                mask = beh.indices.to_numpy(zero_copy_only=False) == hit
                for c in keep_cols:
                    parts[c].append(narrow(batch.column(NAMES.index(c)).to_numpy()[mask]))
            n_read += batch.num_rows
    except pa.ArrowInvalid as e:
        raise explain_csv_error(path, e, lambda: _open(path, block_size, use_threads=False), NAMES) from None
    except OSError as e:
        raise read_failure(path, e) from None
    cols = {}
    for c in keep_cols:  # concatenate one column at a time so the peak is one column, not the table
        cols[c] = np.concatenate(parts.pop(c)) if parts[c] else np.zeros(0, np.int64)
    return cols, n_read


# ------------------------------------------------------------------------------------------------
# filtering
# ------------------------------------------------------------------------------------------------
def filter_taobao(
    cols: dict[str, np.ndarray], opts: TaobaoOptions, where: str, steps: list[dict] | None = None
) -> dict[str, np.ndarray]:
    """Steps 2-6 of the module docstring on pv rows in file order; appends {step, rows, seconds} to steps."""
    steps = [] if steps is None else steps
    lo, hi = window_bounds(opts.start, opts.end, opts.tz_offset_hours)
    what = {
        "dedup": "drop repeated (user, item) pairs",
        "single_category": "drop items seen with more than one category",
        "window": f"keep {opts.start} .. {opts.end} at UTC{opts.tz_offset_hours:+g} = ts in [{lo}, {hi}]",
        "sample": f"keep {opts.user_fraction:g} of the users (seed {opts.seed})",
        "min_item_count": f"keep items with >= {opts.min_item_count} rows",
        "min_user_count": f"keep users with >= {opts.min_user_count} rows",
    }

    def apply(name: str, mask: np.ndarray | None, t0: float) -> None:
        nonlocal cols
        if mask is not None:
            cols = {c: a[mask] for c, a in cols.items()}
        n = len(cols["user"])
        steps.append({"step": name, "rows": n, "seconds": round(time.perf_counter() - t0, 3)})
        log.info("taobao %-16s %12d rows  (%.1f s)", name, n, time.perf_counter() - t0)
        if n == 0:
            raise DataError(
                f"{where}: no rows left after the {name!r} filter ({what[name]}); check the file and the "
                f"source options (rows after each step: {[(s['step'], s['rows']) for s in steps]})"
            )

    t = time.perf_counter()
    key = pair_key(cols["user"], cols["item"])
    keep = first_occurrence(key)
    del key
    apply("dedup", keep, t)

    t = time.perf_counter()
    ic, n_items = codes(cols["item"])
    cc, n_cats = codes(cols["category"])
    pairs = ic.astype(np.int64) * n_cats + cc
    del cc
    pairs = sorted_unique(pairs)  # distinct (item, category) pairs, sorted by item first
    pair_item = pairs // n_cats
    del pairs
    multi = pair_item[1:][pair_item[1:] == pair_item[:-1]]  # items of a 2nd, 3rd... category
    del pair_item
    bad = np.zeros(n_items, dtype=bool)
    bad[multi] = True
    apply("single_category", ~bad[ic], t)
    del ic, bad

    t = time.perf_counter()
    ts = cols["ts"]
    apply("window", (ts >= lo) & (ts <= hi), t)

    t = time.perf_counter()
    if opts.user_fraction < 1.0:
        users = sorted_unique(cols["user"])
        n_keep = round(opts.user_fraction * len(users))  # pandas sample(frac=...) rounds the same way
        chosen = np.random.default_rng(opts.seed).choice(users, size=n_keep, replace=False)
        apply("sample", member_mask(cols["user"], chosen), t)
    else:
        apply("sample", None, t)

    t = time.perf_counter()
    apply("min_item_count", count_mask(cols["item"], opts.min_item_count), t)
    t = time.perf_counter()
    apply("min_user_count", count_mask(cols["user"], opts.min_user_count), t)
    return cols


def load_taobao(options: dict, raw_dir: Path) -> pd.DataFrame:
    """Read and filter a raw UserBehavior.csv (see the module docstring); returns the interactions table."""
    opts = from_dict(TaobaoOptions, options, "source(taobao)")
    path = fetch_to(raw_dir, opts, how_to_get=HOW_TO_GET, where="source(taobao)")
    if path.suffix.lower() == ".zip":
        path = _unzip(path, Path(raw_dir))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: the checksum overlaps the parse
        digest = pool.submit(sha256_of, path) if not opts.sha256 else None
        cols, n_read = read_pv(path, opts.block_size)
        steps = [
            {"step": "read", "rows": n_read, "seconds": None},
            {"step": "pv", "rows": len(cols["user"]), "seconds": round(time.perf_counter() - t0, 3)},
        ]
        if n_read == 0:
            raise DataError(f"{path}: no rows (only empty lines?); expected UserBehavior.csv rows {list(NAMES)}")
        if len(cols["user"]) == 0:
            raise DataError(f"{path}: no rows left after the 'pv' filter: no row has behavior == 'pv'")
        cols = filter_taobao(cols, opts, str(path), steps)
        sha = digest.result() if digest is not None else opts.sha256.lower()
    df = pd.DataFrame({c: cols[c].astype(np.int64, copy=False) for c in ("user", "item", "category", "ts")})
    df["behavior"] = "pv"
    df = check_interactions(df, str(path))
    df.attrs["source_files"] = {str(path): sha}
    df.attrs["filter_log"] = steps
    return df
