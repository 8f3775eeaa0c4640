"""Figures of the data, protocol and disentanglement notebooks (PNG files are the primary artefact: they
render offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from clsr.data.store import PreparedData  # noqa: E402
from clsr.disentangle.measures import pca_2d  # noqa: E402
from clsr.disentangle.report import label  # noqa: E402

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


# ---- disentanglement (notebook 05) -----------------------------------------------------------------
def alpha_by_driver(alphas: Mapping[str, np.ndarray], driver: np.ndarray, path: str | Path, aucs=None):
    """One panel per model: histograms of the positives' α for long- and short-driven test targets."""
    names = [m for m, a in alphas.items() if np.isfinite(a).all()]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.4), squeeze=False)
    for ax, m in zip(axes[0], names):
        a = alphas[m]
        lo, hi = float(a.min()), float(a.max())  # zoom on the α actually used (often a narrow band)
        pad = max(0.02 * (hi - lo), 0.005)
        lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
        for d, lab, col in ((0, "long-driven", "tab:blue"), (1, "short-driven", "tab:orange")):
            sel = driver == d
            if sel.any():
                ax.hist(a[sel], bins=30, range=(lo, hi), density=True, histtype="stepfilled", alpha=0.45, color=col,
                        label=f"{lab} (n={int(sel.sum())}, mean {a[sel].mean():.3f})")
        t = label(m) + (f"\nα-AUC {aucs[m]:.3f}" if aucs and m in aucs and aucs[m] is not None else "")
        ax.set(title=t, xlabel="α on the positive (weight of the long-term interest)", ylabel="density", xlim=(lo, hi))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def alpha_vs_posterior(alphas: Mapping[str, np.ndarray], long_posterior: np.ndarray, driver: np.ndarray,
                       stats: Mapping[str, Mapping[str, float]], path: str | Path):
    """One panel per model with α: the positives' α against the oracle's posterior long-driven probability
    P(long | c_t, h), one dot per test instance coloured by the true driver, with the correlations."""
    names = [m for m, a in alphas.items() if np.isfinite(a).all()]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.2 * max(1, len(names)), 3.6), squeeze=False)
    for ax, m in zip(axes[0], names):
        for d, lab, col in ((0, "long-driven", "tab:blue"), (1, "short-driven", "tab:orange")):
            sel = driver == d
            ax.scatter(long_posterior[sel], alphas[m][sel], s=5, alpha=0.4, color=col, label=lab)
        st = stats.get(m, {})
        fmt = lambda k: "—" if st.get(k) is None or not np.isfinite(st[k]) else f"{st[k]:.3f}"  # noqa: E731
        ax.set(title=f"{label(m)}\nPearson {fmt('pearson')}, Spearman {fmt('spearman')}",
               xlabel="oracle P(long-driven | history, target category)", ylabel="α on the positive")
        ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def interest_pca(vectors: Mapping[str, Mapping[str, np.ndarray]], path: str | Path):
    """One panel per model: a joint 2-D PCA of u^l (circles) and u^s (crosses), coloured by user; a line
    joins each user's successive u^s."""
    names = list(vectors)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4.4 * max(1, len(names)), 4.0), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], names):
        v = vectors[m]
        n = len(v["u_long"])
        xy, ratio = pca_2d(np.concatenate([v["u_long"], v["u_short"]]))
        users = list(dict.fromkeys(v["user_row"].tolist()))
        for j, u in enumerate(users):
            sel = np.flatnonzero(v["user_row"] == u)
            c = cmap(j % 10)
            ax.scatter(xy[sel, 0], xy[sel, 1], marker="o", s=30, color=c, edgecolor="k", linewidth=0.4)
            ax.scatter(xy[n + sel, 0], xy[n + sel, 1], marker="x", s=34, color=c)
            ax.plot(xy[n + sel, 0], xy[n + sel, 1], color=c, lw=0.6, alpha=0.6)
        ax.set(title=f"{label(m)}\nPC1 {ratio[0]:.0%}, PC2 {ratio[1]:.0%} of variance", xlabel="PC1", ylabel="PC2")
        ax.scatter([], [], marker="o", color="gray", label="u^l (long)")
        ax.scatter([], [], marker="x", color="gray", label="u^s (short)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- generator sweep (clsr.stages.sweep) -------------------------------------------------------------
SWEEP_COLORS = {"oracle": "black", "clsr": "tab:red", "clsr_nocon": "tab:orange", "slirec": "tab:blue"}


def sweep(frame: pd.DataFrame, path: str | Path, comparisons: pd.DataFrame | None = None):
    """One column per p_short_mean, x = mean_topic_run: α-AUC against the true driver (the oracle's dashed:
    the best reachable) and the share of the oracle's GAUC margin over popularity, per model (mean ± std
    over seeds); with `comparisons` (`clsr.stages.sweep.comparisons`) holding CLSR against CLSR w/o
    contrastive, a third row: that difference in α-AUC and GAUC with its 95 % paired-bootstrap interval
    (above 0 where the contrastive loss helps; filled markers where the interval excludes 0)."""
    ps = sorted(frame["p_short_mean"].unique())
    rows = [("alpha_auc", "α-AUC (true driver)"), ("gauc_share", "GAUC share of the oracle's margin")]
    effect = None
    if comparisons is not None and len(comparisons):
        effect = comparisons[(comparisons["model"] == "clsr") & (comparisons["other"] == "clsr_nocon")]
        if len(effect):
            rows.append(("effect", "CLSR − CLSR w/o contrastive"))
    fig, axes = plt.subplots(len(rows), len(ps), figsize=(3.8 * len(ps), 3.2 * len(rows)), squeeze=False,
                             sharey="row")
    for j, p in enumerate(ps):
        sub = frame[frame["p_short_mean"] == p]
        for i, (key, title) in enumerate(rows):
            ax = axes[i, j]
            if key == "effect":
                _contrastive_effect(ax, effect[effect["p_short_mean"] == p])
                ax.set(xlabel="mean_topic_run", ylabel=title if j == 0 else None)
                continue
            for model, d in sub.groupby("model", sort=False):
                g = d.groupby("mean_topic_run")[key].agg(["mean", "std"]).sort_index()
                if g["mean"].isna().all():
                    continue
                style = dict(ls="--", marker="s", mfc="none") if model == "oracle" else dict(marker="o", capsize=3)
                ax.errorbar(g.index, g["mean"], yerr=g["std"].fillna(0.0), color=SWEEP_COLORS.get(model),
                            label="Bayes oracle" if model == "oracle" else label(model), **style)
            if key == "alpha_auc":
                ax.axhline(0.5, color="gray", lw=0.8, ls=":")
            ax.set_xscale("log")
            runs = sorted(sub["mean_topic_run"].unique())
            ax.set_xticks(runs, [f"{r:g}" for r in runs])
            ax.minorticks_off()
            ax.set(title=f"p_short_mean = {p:g}" if i == 0 else None, xlabel="mean_topic_run",
                   ylabel=title if j == 0 else None)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _contrastive_effect(ax, effect: pd.DataFrame) -> None:
    """Δ α-AUC and Δ GAUC (CLSR − CLSR w/o contrastive) against mean_topic_run, with their intervals."""
    for i, (q, name, color) in enumerate((("alpha_auc", "Δ α-AUC", "tab:purple"), ("gauc", "Δ GAUC", "tab:green"))):
        d = effect[effect["quantity"] == q].sort_values("mean_topic_run")
        if d.empty:
            continue
        x = d["mean_topic_run"].to_numpy(float) * (1.04 if i else 1 / 1.04)  # side by side on the log axis
        y = d["difference"].to_numpy(float)
        err = np.vstack([y - d["low"].to_numpy(float), d["high"].to_numpy(float) - y])
        ax.errorbar(x, y, yerr=err, ls="-", marker="none", capsize=3, color=color, label=name)
        decided = d["winner"].notna().to_numpy()
        ax.scatter(x[decided], y[decided], color=color, zorder=3)
        ax.scatter(x[~decided], y[~decided], facecolor="white", edgecolor=color, zorder=3)
    ax.axhline(0.0, color="gray", lw=0.8, ls=":")
    ax.set_xscale("log")
    runs = sorted(effect["mean_topic_run"].unique())
    ax.set_xticks(runs, [f"{r:g}" for r in runs])
    ax.minorticks_off()
    ax.legend(fontsize=7)
