"""Sources: each turns raw files into one interactions table.

The interactions table (a pandas DataFrame) has one row per event, in the source's file order, with

    user      raw user id      (int64 or str)
    item      raw item id      (int64 or str)
    category  raw category id  (int64 or str)
    ts        timestamp        int64, in the source's own unit (s for MovieLens/Taobao, ms for Kuaishou)

and may carry extra per-event columns (``behavior``; the synthetic generator's ground truth such as
``driver``), which the protocol keeps alongside the events.

A source is a function ``load(options: dict, raw_dir: Path) -> pd.DataFrame`` registered in `SOURCES`.
`options` is the ``source`` mapping of a dataset in params.yaml, without its ``name`` key.
"""
from __future__ import annotations

import codecs
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clsr.config import ConfigError, from_dict

COLUMNS = ("user", "item", "category", "ts")


class DataError(ValueError):
    """Input data is missing, malformed, or empty after filtering. The message names file and column."""


class MissingDataError(DataError, FileNotFoundError):
    """An input file or a prepared dataset is absent; the message says where it was looked for and what to do."""


# cell values that stand for "no value" (pandas' default NA strings, compared case-insensitively after strip)
NA_STRINGS = frozenset(
    ["", "nan", "-nan", "na", "n/a", "#n/a", "#na", "#n/a n/a", "null", "none", "<na>", "-1.#ind", "1.#ind",
     "-1.#qnan", "1.#qnan"]
)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: Path, how_to_get: str) -> Path:
    """`path` when it is a readable file; otherwise a DataError saying what is wrong and what to do."""
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as e:
        raise DataError(f"{path}: cannot be looked up ({e.strerror or e}); check the folders' permissions") from None
    if not exists:
        raise MissingDataError(f"{path} not found (looked in {path.resolve().parent}). {how_to_get}".strip())
    if is_dir:
        raise DataError(
            f"{path} is a folder, expected a file; point the setting at the file itself. {how_to_get}".strip()
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied; make the file readable (chmod u+r) or point at a readable copy")
    return path


def blank_mask(values: pd.Series) -> np.ndarray:
    """True where a cell is missing: NaN/None, or a string that is empty, whitespace or NA-like ('nan', 'NULL', ...)."""
    missing = values.isna().to_numpy(dtype=bool)
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        text = values.astype(str).str.strip().str.lower()
        missing = missing | text.isin(NA_STRINGS).to_numpy(dtype=bool)
    return missing


def _examples(values: pd.Series, limit: int = 3) -> str:
    seen = list(dict.fromkeys(repr(v) for v in values.tolist()))
    return ", ".join(seen[:limit]) + (", ..." if len(seen) > limit else "")


def encoding_error(path: Path, encoding: str = "utf-8", hint: str = "") -> DataError:
    """A DataError naming the first line of `path` that does not decode, and how to fix the file."""
    fix = f"re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.csv`){hint}"
    try:
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    line.decode(encoding)
                except UnicodeDecodeError as e:
                    return DataError(
                        f"{path}: line {lineno} is not valid {encoding} text (byte 0x{line[e.start]:02x} at "
                        f"character {e.start + 1}); {fix}"
                    )
    except OSError:
        pass
    return DataError(f"{path}: not valid {encoding} text; {fix}")


def read_error(path: Path, err: OSError) -> DataError:
    """An OSError while reading `path` as one line (permission, folder, I/O)."""
    return DataError(f"{path}: cannot be read ({err.strerror or err}); check that it is a readable file")


def check_interactions(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate the table contract; name the offending column and file."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the table needs {list(COLUMNS)}")
    if len(df) == 0:
        raise DataError(f"{where}: no interactions left (empty file, or every row was filtered out)")
    for c in ("user", "item", "category", "ts"):
        missing = blank_mask(df[c])
        if missing.any():
            first = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{where}: column {c!r} has {int(missing.sum())} blank or missing value(s) "
                f"({_examples(df[c][missing])}), first at data row {first + 1} (1-based); drop or fill those rows"
            )
    if not pd.api.types.is_integer_dtype(df["ts"]):
        ts = pd.to_numeric(df["ts"], errors="coerce")
        bad = ~np.isfinite(ts.to_numpy(np.float64, na_value=np.nan))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: column 'ts' has {int(bad.sum())} non-numeric value(s), first {df['ts'].iloc[first]!r} at "
                f"data row {first + 1} (1-based); timestamps must be integers (Unix time)"
            )
        df = df.assign(ts=ts.astype(np.int64))
    return df


# ------------------------------------------------------------------------------------------------
# MovieLens-100K (the embedded default)
# ------------------------------------------------------------------------------------------------
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBERS = ("recbole/dataset_example/ml-100k/ml-100k.inter", "recbole/dataset_example/ml-100k/ml-100k.item")
ML100K_SHAPE = {"ratings": 100_000, "users": 943, "items": 1_682}


@dataclass
class ML100KOptions:
    """Where MovieLens-100K comes from. Default: the RecBole 1.2.1 wheel from PyPI (checksummed)."""

    wheel: str | None = None  # a local copy of recbole-1.2.1-py3-none-any.whl; fetched with pip if absent
    fetch: bool = True  # allow `pip download --no-deps recbole==1.2.1` when the files are missing


def fetch_ml100k(raw_dir: Path, wheel: str | None = None, fetch: bool = True) -> Path:
    """Make sure raw_dir/ml-100k/{ml-100k.inter, ml-100k.item} exist, extracted from the RecBole wheel.

    The wheel is verified by sha256 before anything is read from it.
    """
    out = raw_dir / "ml-100k"
    inter, item = out / "ml-100k.inter", out / "ml-100k.item"
    if inter.exists() and item.exists():
        return out
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{raw_dir}: cannot create the raw-data folder ({e.strerror or e}); pass a writable --raw-dir"
        ) from None
    whl = Path(wheel) if wheel else raw_dir / RECBOLE_WHEEL
    if not whl.exists():
        if not fetch:
            raise MissingDataError(
                f"{whl} not found and fetching is off. Get it with "
                f"`pip download --no-deps recbole==1.2.1 -d {raw_dir}`"
            )
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / RECBOLE_WHEEL
            if res.returncode != 0 or not got.exists():
                raise MissingDataError(
                    "could not download the RecBole wheel that carries MovieLens-100K "
                    f"({' '.join(cmd)} said: {res.stderr.strip()[-500:]}). Put {RECBOLE_WHEEL} in {raw_dir} "
                    "by hand, or set datasets.ml100k.source.wheel in params.yaml"
                )
            shutil.move(str(got), whl)
    require_file(whl, "Set datasets.ml100k.source.wheel to the recbole-1.2.1 wheel file.")
    digest = sha256_of(whl)
    if digest != RECBOLE_SHA256:
        raise DataError(f"{whl}: sha256 {digest} does not match the expected {RECBOLE_SHA256}; delete it and retry")
    tmp_out = Path(tempfile.mkdtemp(dir=raw_dir, prefix=".ml-100k.tmp-"))
    try:
        with zipfile.ZipFile(whl) as z:
            for member in ML100K_MEMBERS:
                with z.open(member) as src, open(tmp_out / Path(member).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if out.exists():
            shutil.rmtree(out)
        tmp_out.rename(out)
    except OSError as e:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise DataError(
            f"{out}: cannot extract MovieLens-100K here ({e.strerror or e}); check the folder's permissions and free space"
        ) from None
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    return out


def read_ml100k_file(path: Path, needed: tuple[str, ...]) -> pd.DataFrame:
    """One RecBole atomic file (tab-separated, `name:type` header); damage becomes a DataError naming the file."""
    again = f"delete the folder {path.parent} so that it is extracted again from the wheel"
    try:
        df = pd.read_csv(require_file(path, again), sep="\t")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; {again}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a RecBole tab-separated file ({type(e).__name__}); {again}") from None
    except OSError as e:
        raise read_error(path, e) from None
    df.columns = [str(c).split(":")[0] for c in df.columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (found {list(df.columns)}); {again}")
    return df


def load_ml100k(options: dict, raw_dir: Path) -> pd.DataFrame:
    """Every rating is an interaction; category = the first genre of the item's `class` field."""
    opts = from_dict(ML100KOptions, options, "source(ml100k)")
    folder = fetch_ml100k(raw_dir, opts.wheel, opts.fetch)
    inter = read_ml100k_file(folder / "ml-100k.inter", ("user_id", "item_id", "timestamp"))
    items = read_ml100k_file(folder / "ml-100k.item", ("item_id", "class"))
    items["category"] = items["class"].fillna("unknown").str.split(" ").str[0]
    df = inter.merge(items[["item_id", "category"]], on="item_id", how="left", sort=False)
    df["category"] = df["category"].fillna("unknown")
    again = f"delete the folder {folder} so that it is extracted again from the wheel"
    for column in ("user_id", "item_id", "timestamp"):
        if not pd.api.types.is_integer_dtype(df[column]):
            raise DataError(
                f"{folder / 'ml-100k.inter'}: column {column!r} is not all integers (a damaged copy?); {again}"
            )
    out = pd.DataFrame(
        {
            "user": df["user_id"].astype(np.int64),
            "item": df["item_id"].astype(np.int64),
            "category": df["category"].astype(str),
            "ts": df["timestamp"].astype(np.int64),
        }
    )
    shape = {"ratings": len(out), "users": out["user"].nunique(), "items": out["item"].nunique()}
    if shape != ML100K_SHAPE:
        raise DataError(f"{folder}: MovieLens-100K content check failed: got {shape}, expected {ML100K_SHAPE}; {again}")
    return check_interactions(out, str(folder / "ml-100k.inter"))


# ------------------------------------------------------------------------------------------------
# Any CSV log
# ------------------------------------------------------------------------------------------------
@dataclass
class CSVOptions:
    """A log with user/item/category/timestamp columns, mapped by name (or position when no header)."""

    path: str = ""  # the CSV file (relative paths are read from the project root)
    sep: str = ","
    header: bool = True  # False: columns are addressed by position, "0", "1", ...
    columns: dict = field(default_factory=lambda: {"user": "user", "item": "item", "category": "category", "ts": "ts"})
    ts_format: str = "unix"  # unix (integer) | datetime (any string pandas parses; stored as Unix seconds)
    behavior_column: str | None = None  # optional column with an event type
    keep_behaviors: list[str] | None = None  # keep only these values of behavior_column
    encoding: str = "utf-8"  # the file's text encoding (e.g. latin-1)

    def validate(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path: set the path of the CSV file")
        if not self.sep:
            raise ConfigError(f"{where}.sep: set the field separator (e.g. ',' or '\\t')")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f"{where}.encoding: unknown text encoding {self.encoding!r} (e.g. utf-8, latin-1)"
            ) from None
        for key in COLUMNS:
            if key not in self.columns:
                raise ConfigError(f"{where}.columns: map {key!r} to a column name of your file")
        if self.ts_format not in ("unix", "datetime"):
            raise ConfigError(f"{where}.ts_format: {self.ts_format!r} is not one of ['unix', 'datetime']")


_TOO_MANY_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


def read_csv_cells(path: Path, opts: CSVOptions) -> pd.DataFrame:
    """Every cell of the file as a string ('' when blank), all-blank lines dropped.

    The index is the data-row number (0-based, blank lines counted), so a row's file line is
    ``index + 1 + header`` (for files without line breaks inside quoted values).
    """
    header = 0 if opts.header else None
    try:
        df = pd.read_csv(path, sep=opts.sep, header=header, dtype=str, keep_default_na=False,
                         skip_blank_lines=False, encoding=opts.encoding)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{path}: the file is empty; expected {'a header line, then ' if opts.header else ''}one line per event"
        ) from None
    except pd.errors.ParserError as e:
        if m := _TOO_MANY_FIELDS.search(str(e)):
            want, line, got = m.groups()
            raise DataError(
                f"{path}: line {line} has {got} fields, the lines before it have {want}; fix or remove that line "
                f"(a value containing the separator {opts.sep!r} must be quoted)"
            ) from None
        raise DataError(f"{path}: cannot be parsed as CSV with sep {opts.sep!r}: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise encoding_error(path, opts.encoding, ", or set source.encoding to the file's encoding") from None
    except OSError as e:
        raise read_error(path, e) from None
    if not isinstance(df.index, pd.RangeIndex):  # pandas took the extra first field of every row as an index
        raise DataError(
            f"{path}: the data lines have {df.shape[1] + 1} fields but the header has {df.shape[1]} (from line 2 on); "
            "remove the trailing separators or add the missing column name to the header"
        )
    df.columns = [str(c) for c in df.columns]
    return df[(df != "").any(axis=1)]


def refuse_blank_cells(out: pd.DataFrame, opts: CSVOptions, path: Path) -> None:
    """A DataError for the first of user/item/category/ts with blank or NA-like cells, naming the file line."""
    for key in COLUMNS:
        missing = blank_mask(out[key])
        if missing.any():
            column = opts.columns[key]
            line = int(out.index[np.flatnonzero(missing)[0]]) + 1 + int(opts.header)
            raise DataError(
                f"{path}: column {column!r} ({key}) has {int(missing.sum())} blank or missing value(s) "
                f"({_examples(out[key][missing])}), first at line {line} of the file; drop or fill those rows "
                "(every event needs a user, item, category and timestamp)"
            )


def load_csv(options: dict, raw_dir: Path) -> pd.DataFrame:
    opts = from_dict(CSVOptions, options, "source(csv)")
    path = require_file(Path(opts.path), "Set datasets.<name>.source.path in params.yaml to your log file.")
    df = read_csv_cells(path, opts)
    wanted = dict(opts.columns)
    if opts.behavior_column:
        wanted["behavior"] = opts.behavior_column
    absent = {k: v for k, v in wanted.items() if str(v) not in df.columns}
    if absent:
        how = (
            "source.columns maps each field to a header name" if opts.header
            else "without a header, columns are '0', '1', ..."
        )
        raise DataError(f"{path}: column(s) {absent} not in the file; it has {list(df.columns)} ({how})")
    if len(df) == 0:
        raise DataError(f"{path}: no data rows{' below the header' if opts.header else ''}; the file holds no events")
    out = pd.DataFrame({k: df[str(v)] for k, v in wanted.items()})
    if opts.keep_behaviors is not None:
        out = out[out["behavior"].isin(opts.keep_behaviors)]
    refuse_blank_cells(out, opts, path)
    if opts.ts_format == "datetime":
        ts = pd.to_datetime(out["ts"], errors="coerce", utc=True)
        if ts.isna().any():
            row = out.index[np.flatnonzero(ts.isna().to_numpy())[0]]
            raise DataError(
                f"{path}: column {opts.columns['ts']!r} has {int(ts.isna().sum())} unparseable date(s), first "
                f"{out['ts'].loc[row]!r} at line {int(row) + 1 + int(opts.header)}; use a form like "
                "'2017-11-25 10:00:00', or ts_format: unix for integer timestamps"
            )
        # whole seconds since the epoch, whatever the datetime resolution (pandas 3 parses strings to us)
        out["ts"] = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)
    else:  # name the file's own column and line (check_interactions only knows the internal name 'ts')
        bad = ~np.isfinite(pd.to_numeric(out["ts"], errors="coerce").to_numpy(np.float64, na_value=np.nan))
        if bad.any():
            row = out.index[np.flatnonzero(bad)[0]]
            raise DataError(
                f"{path}: column {opts.columns['ts']!r} has {int(bad.sum())} non-numeric value(s), first "
                f"{out['ts'].loc[row]!r} at line {int(row) + 1 + int(opts.header)}; timestamps must be integers "
                "(Unix time), or set ts_format: datetime"
            )
    return check_interactions(out.reset_index(drop=True), str(path))


# ------------------------------------------------------------------------------------------------
def _lazy(module: str, function: str) -> Callable[[dict, Path], pd.DataFrame]:
    """A loader that imports `module` on first use: those modules import this one (DataError, helpers)."""

    def load(options: dict, raw_dir: Path) -> pd.DataFrame:
        return getattr(importlib.import_module(module), function)(options, raw_dir)

    load.__name__ = load.__qualname__ = function
    load.__doc__ = f"{module}.{function} (imported on first use)"
    return load


SOURCES: dict[str, Callable[[dict, Path], pd.DataFrame]] = {
    "ml100k": load_ml100k,
    "csv": load_csv,
    "taobao": _lazy("clsr.data.taobao", "load_taobao"),  # raw UserBehavior.csv, released filters (§1.2)
    "kuaishou": _lazy("clsr.data.kuaishou", "load_kuaishou"),  # Kuaishou-style CSV, released filters
    "synthetic": _lazy("clsr.data.synthetic", "load_synthetic"),  # planted long/short-term ground truth
    "taobao-released": lambda options, raw_dir: _released_is_not_a_table(),
}


def _released_is_not_a_table() -> pd.DataFrame:
    raise ConfigError(
        "source 'taobao-released' is not an interactions table: the authors' files fix instances and candidates, "
        "so `clsr prepare` (clsr.data.prepare.prepare) reads them directly; set source.folder to the folder that "
        "holds train_data, valid_data and test_data"
    )


def load_source(source: dict, raw_dir: str | Path = "data/raw") -> pd.DataFrame:
    """Dispatch on ``source['name']``; an unknown name lists the known ones."""
    if not isinstance(source, dict) or "name" not in source:
        raise ConfigError(f"source: expected a mapping with a 'name' key (one of {sorted(SOURCES)}), got {source!r}")
    options = {k: v for k, v in source.items() if k != "name"}
    name = source["name"]
    if name not in SOURCES:
        raise ConfigError(f"source.name: unknown source {name!r}; known sources: {sorted(SOURCES)}")
    return SOURCES[name](options, Path(raw_dir))
