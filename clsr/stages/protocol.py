"""Stage protocol@<dataset> (notebook 02): interactions -> data/prepared/<dataset> + reports/data/<dataset>/stats.json."""
from __future__ import annotations

import time

from clsr.data.store import PreparedData, atomic_write_json
from clsr.pipeline import Context, read_json
from clsr.stages import data as data_stage


def run(ctx: Context, dataset: str) -> PreparedData:
    """Split, expand histories, sample the fixed candidates and store the dataset (clsr.data.prepare); the
    report's copy of its stats.json adds the seconds this took (the dataset folder holds no timings)."""
    from clsr.data.prepare import prepare

    t0 = time.perf_counter()
    df = data_stage.read_interactions(ctx, dataset)
    data = prepare(dataset, ctx.params, ctx.raw_dir, ctx.prepared_dir, interactions=df)
    stats = read_json(ctx.prepared_dir / dataset / "stats.json")
    stats["seconds"] = {"prepare": round(time.perf_counter() - t0, 3)}
    dst = ctx.reports_dir / "data" / dataset
    dst.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dst / "stats.json", stats)
    return data


def ensure_prepared(ctx: Context, dataset: str) -> PreparedData:
    """The prepared dataset; in tiny mode it is built on the spot when missing."""
    from clsr.data.prepare import load_prepared

    if ctx.tiny and not (ctx.prepared_dir / dataset / "meta.json").exists():
        if not (ctx.interim_dir / dataset / "source.json").exists():
            data_stage.run(ctx, dataset)
        run(ctx, dataset)
    return load_prepared(dataset, ctx.prepared_dir)


def split_table(ctx: Context, dataset: str):
    """The scalar statistics of each split from reports/data/<dataset>/stats.json, one column per split."""
    import pandas as pd

    from clsr.pipeline import read_json

    stats = read_json(ctx.reports_dir / "data" / dataset / "stats.json")
    return pd.DataFrame({s: {k: v for k, v in d.items() if not isinstance(v, (dict, list))}
                         for s, d in stats["splits"].items()})


def figures(ctx: Context, dataset: str, data: PreparedData) -> None:
    """History lengths and one typical user's timeline, in reports/figures/protocol/<dataset>/."""
    import numpy as np

    from clsr import plots

    fig_dir = ctx.reports_dir / "figures" / "protocol" / dataset
    fig_dir.mkdir(parents=True, exist_ok=True)
    plots.history_lengths(data, fig_dir / "history_lengths.png")
    lengths = np.diff(data.user_offsets)
    typical = int(np.argsort(lengths)[len(lengths) // 2])
    plots.user_timeline(data, typical, fig_dir / "user_timeline.png")
