"""Figures of the data and protocol notebooks (PNG files are the primary artefact: they render offline)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clsr.data.store import PreparedData  # noqa: E402

SPLIT_COLORS = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:red"}


def data_overview(df: pd.DataFrame, title: str, path: str | Path) -> plt.Figure:
    """Events per user, item popularity (rank-frequency), category shares, events over time."""
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    per_user = df.groupby("user", sort=False).size()
    ax[0, 0].hist(per_user, bins=50, log=True, color="tab:blue")
    ax[0, 0].set(title=f"events per user (median {per_user.median():.0f})", xlabel="events", ylabel="users")
    pop = df["item"].value_counts().to_numpy()
    ax[0, 1].loglog(np.arange(1, len(pop) + 1), pop, color="tab:green")
    ax[0, 1].set(title="item popularity (rank-frequency)", xlabel="rank", ylabel="events")
    cats = df["category"].value_counts()
    top = cats.head(20)
    ax[1, 0].barh([str(c) for c in top.index[::-1]], top.to_numpy()[::-1] / len(df), color="tab:purple")
    ax[1, 0].set(title=f"category shares (top {len(top)} of {len(cats)})", xlabel="share of events")
    ts = pd.to_datetime(df["ts"], unit="s") if df["ts"].max() < 10**11 else pd.to_datetime(df["ts"], unit="ms")
    counts = ts.dt.floor("D").value_counts().sort_index()
    ax[1, 1].plot(counts.index, counts.to_numpy(), color="tab:gray")
    ax[1, 1].set(title="events per day", ylabel="events")
    ax[1, 1].tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def history_lengths(data: PreparedData, path: str | Path) -> plt.Figure:
    """Distribution of (untruncated) history lengths per split, with the truncation length L."""
    L = int(data.meta.get("max_len", 50))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for split, inst in data.instances.items():
        if len(inst):
            ax.hist(inst.pos, bins=60, histtype="step", density=True, label=f"{split} ({len(inst)})",
                    color=SPLIT_COLORS.get(split))
    ax.axvline(L, color="k", ls="--", lw=1, label=f"L = {L}")
    ax.set(xlabel="history length (events before the target)", ylabel="density", yscale="log",
           title=f"{data.name}: history lengths per split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def user_timeline(data: PreparedData, user_row: int, path: str | Path, max_len: int | None = None) -> plt.Figure:
    """One user's events through the protocol: split of each event, the history window (last L) of
    the test target, and the test candidates (positive first)."""
    L = max_len or int(data.meta.get("max_len", 50))
    s, e = int(data.user_offsets[user_row]), int(data.user_offsets[user_row + 1])
    ts = data.event_ts[s:e]
    t_days = (ts - ts[0]) / 86400.0 if ts.max() < 10**11 else (ts - ts[0]) / 86_400_000.0
    split_of = np.full(e - s, "none", dtype=object)
    for split, inst in data.instances.items():
        split_of[inst.pos[inst.user == user_row]] = split
    fig, ax = plt.subplots(2, 1, figsize=(11, 5), gridspec_kw={"height_ratios": [2, 1]})
    for split, color in SPLIT_COLORS.items():
        m = split_of == split
        ax[0].scatter(np.flatnonzero(m), t_days[m], s=10, color=color, label=f"{split} target")
    m = split_of == "none"
    ax[0].scatter(np.flatnonzero(m), t_days[m], s=10, color="lightgray", label="history only")
    test = data.instances.get("test")
    if test is not None and (test.user == user_row).any():
        i = int(np.flatnonzero(test.user == user_row)[0])
        pos = int(test.pos[i])
        ax[0].axvspan(max(0, pos - L) - 0.5, pos - 0.5, color="tab:red", alpha=0.08, label=f"test history window (last {L})")
        cand = data.candidates["test"].item[i]
        pop = np.bincount(data.event_item, minlength=len(data.item_ids))[cand]
        ax[1].bar(np.arange(len(cand)), pop, color=["tab:red"] + ["tab:gray"] * (len(cand) - 1))
        ax[1].set(title="test candidates: positive (red) and sampled negatives, by item popularity",
                  xlabel="candidate column", ylabel="events of the item")
    ax[0].set(xlabel="event number", ylabel="days since first event",
              title=f"{data.name}: user {data.user_ids[user_row]} — split, history expansion, candidates")
    ax[0].legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig
