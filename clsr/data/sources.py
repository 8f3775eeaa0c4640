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

import hashlib
import importlib
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


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def require_file(path: Path, how_to_get: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (looked in {path.resolve().parent}). {how_to_get}")
    return path


def check_interactions(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Validate the table contract; name the offending column and file."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the table needs {list(COLUMNS)}")
    if len(df) == 0:
        raise DataError(f"{where}: no interactions left (empty file, or every row was filtered out)")
    if not pd.api.types.is_integer_dtype(df["ts"]):
        ts = pd.to_numeric(df["ts"], errors="coerce")
        bad = ts.isna()
        if bad.any():
            first = df.loc[bad, "ts"].iloc[0]
            raise DataError(
                f"{where}: column 'ts' has {int(bad.sum())} non-numeric value(s), first {first!r} at row "
                f"{int(np.flatnonzero(bad.to_numpy())[0])}; timestamps must be integers (Unix time)"
            )
        df = df.assign(ts=ts.astype(np.int64))
    for c in ("user", "item", "category"):
        if df[c].isna().any():
            raise DataError(f"{where}: column {c!r} has {int(df[c].isna().sum())} empty value(s)")
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
    raw_dir.mkdir(parents=True, exist_ok=True)
    whl = Path(wheel) if wheel else raw_dir / RECBOLE_WHEEL
    if not whl.exists():
        if not fetch:
            raise FileNotFoundError(
                f"{whl} not found and fetching is off. Get it with "
                f"`pip download --no-deps recbole==1.2.1 -d {raw_dir}`"
            )
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "recbole==1.2.1", "-d", tmp]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = Path(tmp) / RECBOLE_WHEEL
            if res.returncode != 0 or not got.exists():
                raise FileNotFoundError(
                    "could not download the RecBole wheel that carries MovieLens-100K "
                    f"({' '.join(cmd)} said: {res.stderr.strip()[-500:]}). Put {RECBOLE_WHEEL} in {raw_dir} "
                    "by hand, or set datasets.ml100k.source.wheel in params.yaml"
                )
            shutil.move(str(got), whl)
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
    except BaseException:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    return out


def load_ml100k(options: dict, raw_dir: Path) -> pd.DataFrame:
    """Every rating is an interaction; category = the first genre of the item's `class` field."""
    opts = from_dict(ML100KOptions, options, "source(ml100k)")
    folder = fetch_ml100k(raw_dir, opts.wheel, opts.fetch)
    inter = pd.read_csv(folder / "ml-100k.inter", sep="\t")
    items = pd.read_csv(folder / "ml-100k.item", sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    items.columns = [c.split(":")[0] for c in items.columns]
    items["category"] = items["class"].fillna("unknown").str.split(" ").str[0]
    df = inter.merge(items[["item_id", "category"]], on="item_id", how="left", sort=False)
    df["category"] = df["category"].fillna("unknown")
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
        raise DataError(f"{folder}: MovieLens-100K content check failed: got {shape}, expected {ML100K_SHAPE}")
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

    def validate(self, where: str) -> None:
        if not self.path:
            raise ConfigError(f"{where}.path: set the path of the CSV file")
        for key in COLUMNS:
            if key not in self.columns:
                raise ConfigError(f"{where}.columns: map {key!r} to a column name of your file")
        if self.ts_format not in ("unix", "datetime"):
            raise ConfigError(f"{where}.ts_format: {self.ts_format!r} is not one of ['unix', 'datetime']")


def load_csv(options: dict, raw_dir: Path) -> pd.DataFrame:
    opts = from_dict(CSVOptions, options, "source(csv)")
    path = require_file(Path(opts.path), "Set datasets.<name>.source.path in params.yaml to your log file.")
    df = pd.read_csv(path, sep=opts.sep, header=0 if opts.header else None, dtype=str, keep_default_na=False)
    df.columns = [str(c) for c in df.columns]
    wanted = dict(opts.columns)
    if opts.behavior_column:
        wanted["behavior"] = opts.behavior_column
    absent = {k: v for k, v in wanted.items() if str(v) not in df.columns}
    if absent:
        raise DataError(f"{path}: column(s) {absent} not in the file; it has {list(df.columns)}")
    out = pd.DataFrame({k: df[str(v)] for k, v in wanted.items()})
    if opts.keep_behaviors is not None:
        out = out[out["behavior"].isin(opts.keep_behaviors)]
    if opts.ts_format == "datetime":
        ts = pd.to_datetime(out["ts"], errors="coerce", utc=True)
        if ts.isna().any():
            bad = out["ts"][ts.isna()].iloc[0]
            raise DataError(f"{path}: column {opts.columns['ts']!r} has an unparseable date {bad!r}")
        # whole seconds since the epoch, whatever the datetime resolution (pandas 3 parses strings to us)
        out["ts"] = ((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(np.int64)
    else:  # name the file's own column and line (check_interactions only knows the internal name 'ts')
        bad = pd.to_numeric(out["ts"], errors="coerce").isna()
        if bad.any():
            row = out.index[np.flatnonzero(bad.to_numpy())[0]]
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
