"""The study's figures that compare models over seeds: a bar per model is the mean over seeds, a dot per seed
shows the spread. Input: the results dict of `clsr.stages.disentanglement.run` (per model the seed means
and ``seeds``: {seed: that seed's numbers}). The figures of one model at a time are in `clsr.plots`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clsr.disentangle.counterfactual import SETS  # noqa: E402
from clsr.disentangle.measures import READOUTS, SUFFIX  # noqa: E402
from clsr.disentangle.report import READOUT_LABELS, SET_LABELS, label  # noqa: E402


def seed_values(entry: Mapping[str, Any], path: tuple[str, ...]) -> list[float]:
    """The value at `path` (e.g. ('original', 'gauc')) in each seed of a model's entry (NaN where absent)."""
    out = []
    for seed_entry in entry.get("seeds", {}).values():
        v: Any = seed_entry
        for p in path:
            v = v.get(p) if isinstance(v, Mapping) else None
        out.append(np.nan if v is None else float(v))
    return out


def _bars_with_seeds(ax, x: np.ndarray, means: list[float], per_seed: list[list[float]], width: float, **bar) -> None:
    """Bars at `x` (the seed means) with one black dot per seed on each."""
    ax.bar(x, [np.nan if m is None else m for m in means], width=width, **bar)
    for xi, vals in zip(x, per_seed):
        if len(vals) > 1:
            ax.scatter(np.full(len(vals), xi), vals, s=9, color="k", zorder=3)


def counterfactual_gauc(results: Mapping[str, Any], models: list[str], path: str | Path) -> None:
    """GAUC per counterfactual set: one row per dataset, one column per readout, bars grouped by model
    (the seed mean, a dot per seed)."""
    datasets = [d for d in results if not d.startswith("_") and any(m in results[d] for m in models)]
    if not datasets:
        return
    fig, axes = plt.subplots(len(datasets), len(READOUTS), figsize=(4.2 * len(READOUTS), 3.2 * len(datasets)),
                             squeeze=False)
    colors = {"original": "tab:gray", "recent": "tab:blue", "shuffled": "tab:orange"}
    for i, ds in enumerate(datasets):
        present = [m for m in models if m in results[ds]]
        sets = [s for s in SETS if s in results[ds][present[0]]]
        for j, r in enumerate(READOUTS):
            ax = axes[i][j]
            w = 0.8 / len(sets)
            vals = []
            for si, s in enumerate(sets):
                key = f"gauc{SUFFIX[r]}"
                means = [results[ds][m][s].get(key) for m in present]
                per_seed = [seed_values(results[ds][m], (s, key)) for m in present]
                vals += [v for v in means if v is not None] + [v for p in per_seed for v in p]
                _bars_with_seeds(ax, np.arange(len(present)) + (si - (len(sets) - 1) / 2) * w, means, per_seed, w,
                                 color=colors[s], label=SET_LABELS[s])
            ax.set_xticks(range(len(present)), [label(m) for m in present], fontsize=8)
            finite = [v for v in vals if np.isfinite(v)]
            if finite:
                ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.03))
            ax.axhline(0.5, color="k", lw=0.6, ls=":")
            ax.set_title(f"{ds}: GAUC, {READOUT_LABELS[r]}", fontsize=9)
            if i == 0 and j == 0:
                if any(len(seed_values(results[ds][m], ("original", "gauc"))) > 1 for m in present):
                    ax.scatter([], [], s=9, color="k", label="each seed")
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def interest_match(entries: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Mapping[str, float]],
                   path: str | Path) -> None:
    """Bars: profile ρ and topic MRR of the α = 1 and α = 0 readouts per model (the seed mean, a dot per
    seed), chance dashed, popularity dotted. `entries`: {model: its results entry with 'ground_truth'}."""
    panels = [("profile_rho", "profile ρ (Spearman)"), ("topic_mrr", "topic MRR")]
    panels = [p for p in panels if any(f"{p[0]}_long" in e.get("ground_truth", {}) for e in entries.values())]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    names = list(entries)
    for ax, (key, title) in zip(axes[0], panels):
        for k_, (r, col) in enumerate((("long", "tab:blue"), ("short", "tab:orange"))):
            q = f"{key}_{r}"
            means = [entries[m]["ground_truth"].get(q) for m in names]
            per_seed = [seed_values(entries[m], ("ground_truth", q)) for m in names]
            _bars_with_seeds(ax, np.arange(len(names)) + (k_ - 0.5) * 0.38, means, per_seed, 0.38, color=col,
                             label=READOUT_LABELS[r])
        if key in ref.get("chance", {}):
            ax.axhline(ref["chance"][key], color="k", ls="--", lw=0.8, label="chance")
        if key in ref.get("popularity", {}):
            ax.axhline(ref["popularity"][key], color="gray", ls=":", lw=0.8, label="popularity")
        if any(len(entries[m].get("seeds", {})) > 1 for m in names):
            ax.scatter([], [], s=9, color="k", label="each seed")
        ax.set_xticks(range(len(names)), [label(m) for m in names], fontsize=8)
        ax.set_title(title)
        y0, y1 = ax.get_ylim()
        ax.set_ylim(y0, y1 + 0.35 * (y1 - y0))  # room for the legend above the bars
        ax.legend(fontsize=7, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
