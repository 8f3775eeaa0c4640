"""Source ``kuaishou``: a Kuaishou-style video log filtered as the released code does (docs/protocol.md §1.2).

The file is a CSV with a header; the columns used are (other columns are ignored)::

    user_id, photo_id, time_ms, photo_kmeans_cluster_id, effective_view

``time_ms`` is Unix time in milliseconds, ``photo_kmeans_cluster_id`` serves as the category, and
``effective_view`` is 0/1. The authors never released this data set (issues #6, #10, #19 of the
official repository); this source reads any file with these columns. `kuaishou_main` applies, in order:

1. drop duplicate (user, item) pairs, keeping the first occurrence in file order;
2. keep items with >= ``min_item_count`` rows -- rows of both ``effective_view`` values count;
3. keep users with >= ``min_user_count`` rows that have ``effective_view == 1``;
4. keep only the rows with ``effective_view == 1``.

There is no behaviour filter, no multi-category filter, no time window and no user sampling. The
result is the interactions table (user, item, category, ts in ms; int64; file order), with
``df.attrs["filter_log"]`` (rows after each step) and ``df.attrs["source_files"]`` (file -> sha256).
The file is streamed with ``pyarrow.csv`` and filtered with integer-key numpy operations, like the
Taobao source.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from clsr.config import ConfigError, from_dict
from clsr.data.download import fetch_to
from clsr.data.sources import DataError, check_interactions, sha256_of
from clsr.data.taobao import codes, count_mask, explain_csv_error, first_occurrence, narrow, pair_key, read_failure

COLUMNS = {  # file column -> table column
    "user_id": "user",
    "photo_id": "item",
    "time_ms": "ts",
    "photo_kmeans_cluster_id": "category",
    "effective_view": "effective_view",
}
HOW_TO_GET = (
    "The Kuaishou data set of the paper was never released; point datasets.<name>.source.path at a CSV "
    f"with a header and the columns {list(COLUMNS)}."
)


@dataclass
class KuaishouOptions:
    """Where the Kuaishou-style CSV is and its thresholds (defaults = the released code)."""

    path: str | None = None  # local CSV with a header (.csv.gz / .csv.bz2 read as they are)
    url: str | None = None  # or download from here (http(s):// or file://) into raw_dir ...
    sha256: str | None = None  # ... checked against this digest (required with url)
    min_item_count: int = 10  # keep items with at least this many rows (either effective_view) ...
    min_user_count: int = 10  # ... then users with at least this many effective_view == 1 rows
    block_size: int = 64 << 20  # bytes of CSV parsed per streamed block

    def validate(self, where: str) -> None:
        for key in ("min_item_count", "min_user_count"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{where}.{key}: {getattr(self, key)} must be >= 1")
        if self.block_size < 1 << 16:
            raise ConfigError(f"{where}.block_size: {self.block_size} is below 65536 bytes")


def _open(path: Path, block_size: int, use_threads: bool, names: list[str] | None = None) -> pacsv.CSVStreamingReader:
    if names is None:  # probe: just the header
        return pacsv.open_csv(pa.input_stream(str(path), compression="detect"),
                              read_options=pacsv.ReadOptions(block_size=1 << 16))
    return pacsv.open_csv(
        pa.input_stream(str(path), compression="detect"),
        read_options=pacsv.ReadOptions(block_size=block_size, use_threads=use_threads),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(COLUMNS), column_types={c: pa.int64() for c in COLUMNS}, null_values=[""]
        ),
    )


def read_kuaishou(path: Path, block_size: int = 64 << 20) -> tuple[dict[str, np.ndarray], int]:
    """Stream the used columns of the file; return them as numpy arrays (file order) and the row count."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header with the columns {list(COLUMNS)}")
    try:
        header = _open(path, block_size, False).schema.names
    except UnicodeDecodeError:
        raise DataError(f"{path}: the header line is not valid UTF-8 text; re-encode the file as UTF-8 "
                        "(e.g. `iconv -f latin1 -t utf-8`)") from None
    except pa.ArrowInvalid as e:
        if "UTF8" in str(e):
            raise DataError(f"{path}: the header line is not valid UTF-8 text; re-encode the file as UTF-8 "
                            "(e.g. `iconv -f latin1 -t utf-8`)") from None
        raise DataError(f"{path}: cannot read the CSV header: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise read_failure(path, e) from None
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {header}, the source needs {list(COLUMNS)}")
    parts: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
    n_read = 0
    try:
        for batch in _open(path, block_size, True, header):
            for name in COLUMNS:
                col = batch.column(name)
                if col.null_count:
                    row = n_read + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0]) + 2
                    raise DataError(f"{path}: line {row}, column {name!r} is empty; every field is required")
                parts[name].append(narrow(col.to_numpy()))
            n_read += batch.num_rows
    except pa.ArrowInvalid as e:
        err = explain_csv_error(path, e, lambda: _open(path, block_size, False, header), header)
        raise DataError(f"{err} (rows are counted from the header, which is row 1)") from None
    except OSError as e:
        raise read_failure(path, e) from None
    cols = {COLUMNS[c]: (np.concatenate(parts.pop(c)) if parts[c] else np.zeros(0, np.int64)) for c in list(COLUMNS)}
    bad = (cols["effective_view"] != 0) & (cols["effective_view"] != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column 'effective_view' must be 0 or 1; line {i + 2} has {int(cols['effective_view'][i])}"
        )
    return cols, n_read


def filter_kuaishou(cols: dict[str, np.ndarray], opts: KuaishouOptions, where: str, steps: list[dict]) -> dict[str, np.ndarray]:
    """Steps 1-4 of the module docstring; appends {step, rows, seconds} to steps."""
    what = {
        "dedup": "drop repeated (user, item) pairs",
        "min_item_count": f"keep items with >= {opts.min_item_count} rows",
        "min_user_count": f"keep users with >= {opts.min_user_count} effective views",
        "effective_view": "keep rows with effective_view == 1",
    }

    def apply(name: str, mask: np.ndarray, t0: float) -> None:
        nonlocal cols
        cols = {c: a[mask] for c, a in cols.items()}
        steps.append({"step": name, "rows": len(cols["user"]), "seconds": round(time.perf_counter() - t0, 3)})
        if len(cols["user"]) == 0:
            raise DataError(
                f"{where}: no rows left after the {name!r} filter ({what[name]}); rows after each step: "
                f"{[(s['step'], s['rows']) for s in steps]}"
            )

    t = time.perf_counter()
    apply("dedup", first_occurrence(pair_key(cols["user"], cols["item"])), t)
    t = time.perf_counter()
    apply("min_item_count", count_mask(cols["item"], opts.min_item_count), t)
    t = time.perf_counter()
    uc, n_users = codes(cols["user"])
    n_eff = np.bincount(uc, weights=cols["effective_view"] == 1, minlength=n_users)  # effective views per user
    apply("min_user_count", n_eff[uc] >= opts.min_user_count, t)
    t = time.perf_counter()
    apply("effective_view", cols["effective_view"] == 1, t)
    return cols


def load_kuaishou(options: dict, raw_dir: Path) -> pd.DataFrame:
    """Read and filter a Kuaishou-style CSV (see the module docstring); returns the interactions table."""
    opts = from_dict(KuaishouOptions, options, "source(kuaishou)")
    path = fetch_to(raw_dir, opts, how_to_get=HOW_TO_GET, where="source(kuaishou)")
    t0 = time.perf_counter()
    cols, n_read = read_kuaishou(path, opts.block_size)
    steps = [{"step": "read", "rows": n_read, "seconds": round(time.perf_counter() - t0, 3)}]
    if n_read == 0:
        raise DataError(f"{path}: no data rows below the header")
    cols = filter_kuaishou(cols, opts, str(path), steps)
    df = pd.DataFrame({c: cols[c].astype(np.int64, copy=False) for c in ("user", "item", "category", "ts")})
    df = check_interactions(df, str(path))
    df.attrs["source_files"] = {str(path): opts.sha256.lower() if opts.sha256 else sha256_of(path)}
    df.attrs["filter_log"] = steps
    return df
