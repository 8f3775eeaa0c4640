"""`prepare`: source -> protocol -> stored dataset + stats.json, for one dataset of params.yaml.

    datasets:
      ml100k:
        source:   {name: ml100k}          # see clsr.data.sources.SOURCES for the names and their options
        protocol: {split: per_user, ...}  # clsr.data.protocol.ProtocolConfig

The notebooks (01_data, 02_protocol) and the CLI (`python -m clsr prepare`) call the same functions.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from clsr.config import ConfigError, from_dict, section
from clsr.data import protocol as P
from clsr.data.official import load_released
from clsr.data.sources import load_source
from clsr.data.store import PreparedData, atomic_write_json, ensure_writable_dir


RELEASED = "taobao-released"


def dataset_config(params: Mapping[str, Any], name: str) -> tuple[dict, P.ProtocolConfig]:
    datasets = section(params, "datasets")
    if name not in datasets:
        raise ConfigError(f"params.yaml: unknown dataset {name!r}; datasets defined: {sorted(datasets)}")
    ds = datasets[name] or {}
    unknown = sorted(set(ds) - {"source", "protocol"})
    if unknown:
        raise ConfigError(f"params.yaml datasets.{name}: unknown key(s) {unknown}; allowed: ['protocol', 'source']")
    if "source" not in ds:
        raise ConfigError(f"params.yaml datasets.{name}: missing 'source' (e.g. {{name: ml100k}})")
    cfg = from_dict(P.ProtocolConfig, ds.get("protocol") or {}, f"datasets.{name}.protocol")
    return dict(ds["source"]), cfg


def content_sha256(data: PreparedData) -> str:
    """Checksum of the stored events (order, items, categories, times): identifies the input content."""
    h = hashlib.sha256()
    for a in (data.user_offsets, data.event_item, data.event_cate, data.event_ts):
        h.update(np.ascontiguousarray(a).tobytes())
    for a in (data.user_ids, data.item_ids, data.cate_ids):
        h.update("\x1f".join(a.tolist()).encode())
    return h.hexdigest()


def prepare(
    name: str,
    params: Mapping[str, Any],
    raw_dir: str | Path = "data/raw",
    out_dir: str | Path = "data/prepared",
    interactions: pd.DataFrame | None = None,
) -> PreparedData:
    """Build and store dataset `name`; returns it. `interactions` skips the source (notebooks, tests).

    Bad parameters and an unwritable `out_dir` fail before any data is read; the dataset folder is
    written all at once at the end, so a failure anywhere leaves the previous content (or nothing). The folder
    holds no timings: the same source and protocol give the same bytes, so DVC sees an unchanged dataset.
    """
    source, cfg = dataset_config(params, name)
    ensure_writable_dir(out_dir)
    if source.get("name") == RELEASED and interactions is None:
        # the authors' files already fix instances and candidates: read them as they are
        data = load_released({k: v for k, v in source.items() if k != "name"}, cfg.time_unit, cfg.max_len, name)
        data.meta["protocol"] = {"released_files": True, "max_len": cfg.max_len, "time_unit": cfg.time_unit,
                                 "seed": cfg.seed}
        P.add_uniform_test_candidates(data, cfg.seed)  # the files fix the popularity candidates only
        df = pd.DataFrame()
    else:
        df = load_source(source, raw_dir) if interactions is None else interactions
        data = P.build(df, cfg, name=name)
        P.require_instances(data.instances, cfg, name)  # valid and test too: fail now, not after an epoch
    data.meta["source"] = source
    data.meta["source_files"] = dict(df.attrs.get("source_files", {}))
    data.meta["content_sha256"] = content_sha256(data)
    folder = Path(out_dir) / name
    st = P.stats(data)
    st["seed"] = cfg.seed
    st["source"] = source
    st["source_files"] = data.meta["source_files"]
    st["content_sha256"] = data.meta["content_sha256"]
    extra = {"stats.json": lambda p: atomic_write_json(p, st)}
    profiles = df.attrs.get("user_profiles")
    if isinstance(profiles, pd.DataFrame):
        extra["user_profiles.parquet"] = lambda p: profiles.to_parquet(p, index=False)
    data.save(folder, extra_files=extra)  # everything lands together, or nothing does
    return data


def load_prepared(name: str, out_dir: str | Path = "data/prepared") -> PreparedData:
    return PreparedData.load(Path(out_dir) / name)
