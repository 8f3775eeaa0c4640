"""Stage data@<dataset> (notebook 01): a source -> data/interim/<dataset>/interactions.parquet."""
from __future__ import annotations

import shutil

import pandas as pd

from clsr.pipeline import Context, read_json


def run(ctx: Context, dataset: str) -> pd.DataFrame:
    """Load the dataset's source into one interactions table (+ ground-truth sidecars), written atomically:
    the folder appears complete or not at all."""
    from clsr.data.prepare import RELEASED, dataset_config
    from clsr.data.sources import load_source
    from clsr.data.store import atomic_write_json

    source, _ = dataset_config(ctx.params, dataset)
    out = ctx.interim_dir / dataset
    tmp = out.with_name(f".{dataset}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if source.get("name") == RELEASED:  # the released files are read as they are by the protocol stage
        df = pd.DataFrame(columns=["user", "item", "category", "ts"])
        atomic_write_json(tmp / "source.json", {"source": source, "released_files": True})
    else:
        df = load_source(source, ctx.raw_dir)
        table = df.copy(deep=False)
        table.attrs = {}  # pandas would try to store attrs (DataFrames inside) as parquet JSON metadata
        table.to_parquet(tmp / "interactions.parquet", index=False)
        profiles = df.attrs.get("user_profiles")
        if isinstance(profiles, pd.DataFrame):
            profiles.to_parquet(tmp / "user_profiles.parquet", index=False)
        atomic_write_json(tmp / "source.json", {"source": source, "source_files": df.attrs.get("source_files", {})})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return df


def read_interactions(ctx: Context, dataset: str) -> pd.DataFrame | None:
    """The table `run` wrote (None for the released files, which the protocol stage reads itself)."""
    folder = ctx.interim_dir / dataset
    meta = read_json(folder / "source.json")
    if meta.get("released_files"):
        return None
    df = pd.read_parquet(folder / "interactions.parquet")
    df.attrs["source_files"] = meta.get("source_files", {})
    if (folder / "user_profiles.parquet").exists():
        df.attrs["user_profiles"] = pd.read_parquet(folder / "user_profiles.parquet")
    return df


def summary(df: pd.DataFrame) -> pd.Series:
    """Size and shape of an interactions table."""
    return pd.Series({
        "events": len(df), "users": df.user.nunique(), "items": df.item.nunique(),
        "categories": df.category.nunique(),
        "events per user (median)": df.groupby("user").size().median(),
        "first event (ts)": df.ts.min(), "last event (ts)": df.ts.max(),
    })


def figures(ctx: Context, dataset: str, df: pd.DataFrame):
    """reports/figures/data/<dataset>/overview.png (nothing to draw for the released files)."""
    from clsr import plots

    fig_dir = ctx.reports_dir / "figures" / "data" / dataset
    fig_dir.mkdir(parents=True, exist_ok=True)
    if not len(df):
        (fig_dir / "README.md").write_text("released files: see the protocol stage figures\n")
        return None
    return plots.data_overview(df, f"{dataset}: interactions", fig_dir / "overview.png")
