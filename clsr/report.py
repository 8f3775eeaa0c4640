"""Tables and figures built from the metrics files only (never from a hand-typed number).

Metrics files are the `metrics.json` of each run, copied by the train stage to
``reports/metrics/<group>/<dataset>/<variant>.json`` (main) or ``reports/metrics/ablation/<axis>/<variant>.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

#: how the paper groups the models (the main table's row blocks)
MODEL_GROUPS: dict[str, list[str]] = {
    "long-term": ["ncf", "lightgcn", "din"],
    "short-term": ["gru4rec", "caser", "dien", "sasrec", "surge"],
    "long + short": ["slirec", "clsr"],
}
MODEL_LABELS = {
    "ncf": "NCF", "lightgcn": "LightGCN", "din": "DIN", "gru4rec": "GRU4Rec", "caser": "Caser",
    "dien": "DIEN", "sasrec": "SASRec", "surge": "SURGE", "slirec": "SLi-Rec", "clsr": "CLSR",
}
MAIN_METRICS = [("auc", "AUC"), ("gauc", "GAUC"), ("mrr", "MRR"), ("ndcg@2", "NDCG@2")]


#: the test protocols a run reports (clsr.evaluation), their metrics-file key and the columns a table shows
PROTOCOLS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "sampled": ("test", MAIN_METRICS),
    "uniform": ("test_uniform", [("auc", "AUC"), ("gauc", "GAUC"), ("mrr", "MRR"), ("ndcg@10", "NDCG@10")]),
    "full": ("test_full", [("hit@10", "HR@10"), ("hit@20", "HR@20"), ("ndcg@10", "NDCG@10"),
                           ("ndcg@20", "NDCG@20"), ("mrr", "MRR")]),
}


def flatten_run(m: dict) -> dict:
    row = {
        "dataset": m["dataset"],
        "model": m.get("name", m["model"]),
        "seed": m["seed"],
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "stop_reason": m.get("stop_reason", "unknown"),
        "max_train_instances": m.get("config", {}).get("train", {}).get("max_train_instances"),
        "seconds_per_epoch": m["seconds_per_epoch"],
        "train_instances_per_s": m.get("train_instances_per_s"),
        "parameters": m.get("parameters"),
    }
    for protocol, (key, _) in PROTOCOLS.items():
        prefix = "test" if protocol == "sampled" else f"test_{protocol}"
        row.update({f"{prefix}_{k}": v for k, v in (m.get(key) or {}).items()})
    row.update({f"valid_{k}": v for k, v in m["valid"].items()})
    return row


def read_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for p in sorted(Path(x) for x in paths):
        with open(p) as f:
            m = json.load(f)
        row = flatten_run(m)
        row["variant"] = m.get("variant", p.stem)
        row["file"] = str(p)
        npz = p.with_suffix(".npz")
        row["npz"] = str(npz) if npz.exists() else None
        rows.append(row)
    return pd.DataFrame(rows)


def collect(metrics_root: str | Path, group: str) -> pd.DataFrame:
    """All runs of `group` ('main' or 'ablation/<axis>')."""
    root = Path(metrics_root) / group
    return read_metrics(root.rglob("*.json")) if root.exists() else pd.DataFrame()


def summarise(df: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Mean and std (ddof=1, 0 for a single seed) of each metric over seeds."""
    agg = df.groupby(by, sort=False)[metrics].agg(["mean", "std", "count"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    for m in metrics:
        agg[f"{m}_std"] = agg[f"{m}_std"].fillna(0.0)
    return agg.reset_index()


def _fmt(mean: float, std: float, n: int, bold: bool) -> str:
    s = f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}"
    return f"**{s}**" if bold else s


def _grouped(models: list[str]) -> list[tuple[str, str]]:
    """(group, model) in the paper's order: long-term, short-term, long + short, then any other."""
    out = [(g, m) for g, members in MODEL_GROUPS.items() for m in members if m in models]
    return out + [("other", m) for m in models if not any(m in g for g in MODEL_GROUPS.values())]


def _stopping(sub: pd.DataFrame) -> str:
    """Best epoch over seeds (mean, or the one value), flagged when a run stopped at the epoch cap."""
    be = sub["best_epoch"]
    text = f"{be.mean():.1f}" if be.nunique() > 1 else f"{int(be.iloc[0])}"
    return text + (" (cap!)" if (sub["stop_reason"] == "cap").any() else "")


def main_table(df: pd.DataFrame, datasets: list[str], models: list[str], protocol: str = "sampled",
               extra_rows: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> tuple[str, pd.DataFrame]:
    """Markdown: rows = models grouped long / short / long+short; per dataset the metrics of `protocol`
    (mean ± std over seeds; best mean in bold), the best epoch ("(cap!)": a run stopped at the epoch cap, not
    by patience) and, for the sampled protocol, seconds per epoch. `extra_rows` {label: {dataset: metrics}}
    adds reference rows (e.g. the Bayes oracle of the synthetic data), not counted for bold."""
    key, metrics = PROTOCOLS[protocol]
    prefix = "test" if protocol == "sampled" else f"test_{protocol}"
    metric_cols = [f"{prefix}_{k}" for k, _ in metrics if f"{prefix}_{k}" in df]
    labels = [label for k, label in metrics if f"{prefix}_{k}" in df]
    summ = summarise(df, ["dataset", "model"], metric_cols + ["seconds_per_epoch"])
    timing = protocol == "sampled"
    header = ["group", "model"]
    for ds in datasets:
        header += [f"{ds} {label}" for label in labels] + [f"{ds} best epoch"] + ([f"{ds} s/epoch"] if timing else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {(ds, c): summ[(summ["dataset"] == ds) & summ["model"].isin(models)][f"{c}_mean"].max()
            for ds in datasets for c in metric_cols}
    for group, model in _grouped(models):
        cells = [group, MODEL_LABELS.get(model, model)]
        for ds in datasets:
            r = summ[(summ["dataset"] == ds) & (summ["model"] == model)]
            if r.empty:
                cells += ["—"] * (len(metric_cols) + 1 + timing)
                continue
            r = r.iloc[0]
            for c in metric_cols:
                mean = r[f"{c}_mean"]
                cells.append(_fmt(mean, r[f"{c}_std"], int(r[f"{c}_count"]), np.isclose(mean, best[(ds, c)])))
            cells.append(_stopping(df[(df["dataset"] == ds) & (df["model"] == model)]))
            if timing:
                cells.append(f"{r['seconds_per_epoch_mean']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    for label, per_ds in (extra_rows or {}).items():
        cells = ["reference", label]
        for ds in datasets:
            m = (per_ds.get(ds) or {}).get(key) or {}
            cells += [f"{m[k]:.4f}" if k in m else "—" for k, _ in metrics if f"{prefix}_{k}" in df]
            cells += ["—"] * (1 + timing)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n", summ


def paired_table(runs: pd.DataFrame, datasets: list[str], models: list[str], reference: str = "clsr",
                 metrics: tuple[str, ...] = ("GAUC", "MRR", "full NDCG@10")) -> pd.DataFrame:
    """`reference` against every other model, per dataset and metric: the mean paired difference
    (reference − other) over seeds, its 95 % interval over test users, and the verdict (clsr.compare)."""
    from clsr import compare

    rows = []
    have = runs[runs["npz"].notna()]
    for ds in datasets:
        sub = have[have["dataset"] == ds]
        ref = {int(r.seed): r.npz for r in sub[sub["model"] == reference].itertuples()}
        if not ref:
            continue
        for other in models:
            if other == reference:
                continue
            oth = {int(r.seed): r.npz for r in sub[sub["model"] == other].itertuples()}
            for metric in metrics:
                c = compare.compare(oth, ref, metric)
                if c is None:
                    continue
                a, b = MODEL_LABELS.get(other, other), MODEL_LABELS.get(reference, reference)
                rows.append({"dataset": ds, "baseline": a, "metric": metric, **compare.row(c, a, b)})
    return pd.DataFrame(rows)


def agreement_table(runs: pd.DataFrame, datasets: list[str], models: list[str]) -> pd.DataFrame:
    """Do the three test protocols order the models alike? Kendall τ-b between the orderings by MRR (mean
    over seeds) of each pair of protocols, per dataset (1 = the same order, −1 = reversed)."""
    from clsr.stats import kendall_tau

    cols = {"sampled": "test_mrr", "uniform": "test_uniform_mrr", "full": "test_full_mrr"}
    rows = []
    for ds in datasets:
        sub = runs[(runs["dataset"] == ds) & runs["model"].isin(models)]
        means = {p: sub.groupby("model")[c].mean().dropna().to_dict() for p, c in cols.items() if c in sub}
        names = list(means)
        for i, p in enumerate(names):
            for q in names[i + 1:]:
                common = sorted(set(means[p]) & set(means[q]))
                if len(common) < 3:
                    continue
                t = kendall_tau({m: means[p][m] for m in common}, {m: means[q][m] for m in common})
                rows.append({"dataset": ds, "protocols": f"{p} vs {q}", "models": len(common),
                             "Kendall τ (MRR order)": round(t.tau, 3), "p-value": round(t.p_value, 4)})
    return pd.DataFrame(rows)


def frame_md(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (no index)."""
    if df.empty:
        return "_none_\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def ablation_table(df: pd.DataFrame, title: str, order: list[str] | None = None,
                   default: pd.DataFrame | None = None, default_label: str = "main configuration") -> str:
    """Markdown: one row per variant (mean ± std over its seeds), test AUC / GAUC / MRR / NDCG@2, the best
    epoch ("(cap!)" where a run stopped at the epoch cap) and the seeds; with `default` (the main table's
    CLSR runs), the paired GAUC difference of each variant against them over the same seeds, its 95 %
    interval over test users and the verdict (clsr.compare)."""
    from clsr import compare

    cols = [f"test_{k}" for k, _ in MAIN_METRICS]
    variants = [v for v in (order or []) if v in set(df["variant"])] + sorted(set(df["variant"]) - set(order or []))
    summ = summarise(df, ["variant"], cols).set_index("variant")
    best = {c: summ[f"{c}_mean"].max() for c in cols}
    head = ["variant"] + [l for _, l in MAIN_METRICS] + ["best epoch", "seeds"]
    if default is not None:
        head += ["GAUC − main (95% interval)", "verdict"]
    one_seed = df.groupby("variant")["seed"].nunique().max() == 1
    lines = [f"### {title}", ""]
    if one_seed:
        lines += ["Single seed: differences below the main table's seed spread are noise.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = {} if default is None else {int(r.seed): r.npz for r in default.itertuples() if pd.notna(r.npz)}
    words: dict[str, list[str]] = {"better than": [], "worse than": [], "no detectable difference from": []}
    for v in variants:
        r, runs = summ.loc[v], df[df["variant"] == v]
        cells = [str(v)] + [_fmt(r[f"{c}_mean"], r[f"{c}_std"], int(r[f"{c}_count"]), np.isclose(r[f"{c}_mean"], best[c]))
                            for c in cols]
        cells += [_stopping(runs), ", ".join(str(s) for s in sorted(runs["seed"]))]
        if default is not None:
            mine = {int(x.seed): x.npz for x in runs.itertuples() if pd.notna(x.npz)}
            c = compare.compare(ref, mine, "GAUC") if ref and mine else None
            cells += (["—", "—"] if c is None else
                      [f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]", compare.verdict(c, default_label, str(v))])
            if c is not None and c.seeds:
                key = "better than" if c.low > 0 else "worse than" if c.high < 0 else "no detectable difference from"
                words[key].append(f"{v} ({c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}], {len(c.seeds)} "
                                  f"seed{'s' if len(c.seeds) != 1 else ''})")
        lines.append("| " + " | ".join(cells) + " |")
    said = [f"{key} the {default_label}: {', '.join(vs)}" for key, vs in words.items() if vs]
    if said:
        lines += ["", "In words (test GAUC, variant − " + default_label + ", 95 % paired interval; a variant is better or "
                  "worse only where the interval excludes 0): " + "; ".join(said) + "."]
    return "\n".join(lines) + "\n"


def results_json(summ: pd.DataFrame) -> dict:
    """{dataset: {model: {metric: mean, metric_std: std, seeds: n}}} for `dvc metrics show`."""
    out: dict = {}
    for _, r in summ.iterrows():
        d = out.setdefault(r["dataset"], {}).setdefault(r["model"], {})
        for k, _ in MAIN_METRICS:
            d[k] = round(float(r[f"test_{k}_mean"]), 4)
            d[f"{k}_std"] = round(float(r[f"test_{k}_std"]), 4)
        d["seeds"] = int(r[f"test_{MAIN_METRICS[0][0]}_count"])
        d["s_per_epoch"] = round(float(r["seconds_per_epoch_mean"]), 2)
    return out


# ---- figures -------------------------------------------------------------------------------------
def bar_chart(summ: pd.DataFrame, datasets: list[str], models: list[str], metric: str, path: str | Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = summ[summ["dataset"] == ds].set_index("model")
        names = [m for m in models if m in sub.index]
        means = [sub.loc[m, f"test_{metric}_mean"] for m in names]
        stds = [sub.loc[m, f"test_{metric}_std"] for m in names]
        colors = ["tab:red" if m == "clsr" else "tab:blue" if m == "slirec" else "tab:gray" for m in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)), [MODEL_LABELS.get(m, m) for m in names], rotation=45, ha="right")
        lo = min(means) - 2 * max(stds + [0.005]) if means else 0
        ax.set_ylim(max(0.0, lo), None)
        ax.set_title(f"{ds}: test {metric.upper()} (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def line_plot(xs, series: dict[str, list[float]], xlabel: str, ylabel: str, title: str, path: str | Path, logx=False,
              errors: dict[str, list[float]] | None = None):
    """One line per series; `errors` {series: half-widths} draws error bars (e.g. the std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in series.items():
        yerr = (errors or {}).get(name)
        ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3 if yerr is not None else 0, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def convergence(histories: Mapping[str, list[list[dict]]], path: str | Path, best_epochs=None) -> None:
    """Validation GAUC by epoch for every model: the mean over seeds (a line while every seed still runs) with
    the band from the lowest to the highest seed, and each seed's selected epoch marked; beside it the
    recommendation loss (not the total, which CLSR's constant triplet term would flatten) the same way.
    `histories` {model: [history of each seed]}, `best_epochs` {model: [best epoch of each seed]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, runs) in enumerate(histories.items()):
        color = f"C{i % 10}"
        for ax, key in zip(axes, ("valid_gauc", "loss_rec")):
            n = min(len(h) for h in runs)
            if n == 0:
                continue
            vals = np.array([[r[key] for r in h[:n]] for h in runs])
            ep = np.arange(1, n + 1)
            ax.plot(ep, vals.mean(0), color=color, label=MODEL_LABELS.get(name, name))
            if len(runs) > 1:
                ax.fill_between(ep, vals.min(0), vals.max(0), color=color, alpha=0.15, lw=0)
        for h, be in zip(runs, (best_epochs or {}).get(name, [])):
            row = next((r for r in h if r["epoch"] == be), None)
            if row is not None:
                axes[0].plot([be], [row["valid_gauc"]], marker="*", color=color, ms=8, ls="")
    axes[0].set_title("validation GAUC (mean over seeds, band: min–max; ★ epoch kept)")
    axes[1].set_title("training loss: recommendation part")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def self_supervision_figure(histories: Mapping[str, list[list[dict]]], path: str | Path) -> bool:
    """What CLSR's contrastive term does per epoch (clsr.diagnostics): the term's value, the share of active
    triplet hinges, its gradient norm relative to the recommendation loss's, cos(u^l, p^l). One line per
    run (label: variant, seed). False when no run logged diagnostics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss_contrastive", "contrastive term (β-weighted)"), ("diag_hinge_active", "share of active hinges"),
              ("diag_grad_ratio_contrastive", "‖∇ contrastive‖ / ‖∇ rec‖ (encoders)"),
              ("diag_cos_long", "cos(u^l, p^l)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.3))
    drawn = False
    for i, (name, runs) in enumerate(histories.items()):
        for j, h in enumerate(runs):
            for ax, (key, _) in zip(axes, panels):
                xs = [r["epoch"] for r in h if key in r]
                if xs:
                    drawn = True
                    ax.plot(xs, [r[key] for r in h if key in r], color=f"C{i % 10}", alpha=0.8,
                            label=name if j == 0 else None)
    for ax, (key, title) in zip(axes, panels):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if drawn:
        axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


def verdict(paired: pd.DataFrame, model: str = "CLSR") -> pd.DataFrame:
    """Per dataset and metric: against how many baselines `model` is better, worse, or not detectably
    different (95 % paired intervals of `paired_table`), and which baselines beat it."""
    rows = []
    if paired.empty:
        return pd.DataFrame(rows)
    for (ds, metric), sub in paired.groupby(["dataset", "metric"], sort=False):
        wins = sub["verdict"] == f"{model} better"
        losses = sub["verdict"].str.endswith(" better") & ~wins
        rows.append({"dataset": ds, "metric": metric, "baselines": len(sub), f"{model} better": int(wins.sum()),
                     f"{model} worse": int(losses.sum()), "no detectable difference": int((~wins & ~losses).sum()),
                     f"better than {model}": ", ".join(sub.loc[losses, "baseline"]) or "—"})
    return pd.DataFrame(rows)


def verdict_sentences(paired: pd.DataFrame, model: str = "CLSR") -> list[str]:
    """The paired comparison in words, one sentence per dataset and metric: the baselines `model` beats, those
    that beat it and those it cannot be told from, each with its mean difference and 95 % interval (`paired_table`).
    Every word is computed from the table: a winner only where the interval excludes 0."""
    out = []
    if paired.empty:
        return out
    for (ds, metric), sub in paired.groupby(["dataset", "metric"], sort=False):
        def listing(rows: pd.DataFrame) -> str:
            return ", ".join(f"{b} ({d:+.4f} {i})" for b, d, i in
                             zip(rows["baseline"], rows["difference"], rows["95% interval"]))

        wins = sub[sub["verdict"] == f"{model} better"]
        losses = sub[sub["verdict"].str.endswith(" better") & (sub["verdict"] != f"{model} better")]
        ties = sub.drop(wins.index).drop(losses.index)
        seeds = int(sub["seeds"].max())
        parts = []
        if len(wins):
            parts.append(f"better than {listing(wins)}")
        if len(losses):
            parts.append(f"worse than {listing(losses)}")
        if len(ties):
            parts.append(f"no detectable difference from {listing(ties)}")
        out.append(f"- {ds}, {metric} ({seeds} seed{'s' if seeds != 1 else ''}; {model} − baseline, 95 % interval): "
                   f"{model} is " + "; ".join(parts) + ".")
    return out


def alpha_distributions(ctx, datasets: list[str], path: str | Path, seed: int = 0) -> pd.DataFrame:
    """α of the CLSR run of each dataset on the test positives: a histogram and summary rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clsr.data.prepare import load_prepared
    from clsr.pipeline import main_run_dir
    from clsr.data.batches import eval_batches
    from clsr.scoring import score_batches
    from clsr.train import data_settings, load_trained

    rows = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for ds in datasets:
        run = main_run_dir(ctx, ds, f"clsr_seed{seed}")
        if run is None or not (run / "best.pt").exists():
            continue
        data = load_prepared(ds, ctx.prepared_dir)
        model = load_trained(run, data)
        scores = score_batches(model, eval_batches(data, "test", 500, *data_settings(data)), keep=("alpha",))
        a_pos = scores.outputs["alpha"][:, 0]
        ax.hist(a_pos, bins=40, range=(0, 1), histtype="step", density=True, label=ds)
        rows.append({"dataset": ds, "mean α (positives)": float(a_pos.mean()), "std": float(a_pos.std()),
                     "q10": float(np.quantile(a_pos, 0.1)), "q90": float(np.quantile(a_pos, 0.9))})
    ax.set(xlabel="α (weight of the long-term interest)", ylabel="density", title="CLSR fusion weight on test positives")
    if rows:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return pd.DataFrame(rows)


README_START = "<!-- results:start (copied from reports/tables/main.md by `make readme`; do not edit) -->"
README_END = "<!-- results:end -->"
_START_PREFIX = "<!-- results:start"


def update_readme(readme: str | Path, table_md: str, note: str = "") -> bool:
    """Replace the README's results block (from a line starting ``<!-- results:start`` to ``<!-- results:end -->``)
    with the generated table. Returns False if either marker is missing."""
    readme = Path(readme)
    if not readme.exists():
        return False
    text = readme.read_text()
    head, found, rest = text.partition(_START_PREFIX)
    if not found or README_END not in rest:
        return False
    _, tail = rest.split(README_END, 1)
    block = f"{README_START}\n{note}{table_md}{README_END}"
    new = head + block + tail
    if new != text:
        from clsr.data.store import atomic_write_text

        atomic_write_text(readme, new)
    return True


def run_curves(history: list[dict], best_epoch: int, path: str | Path | None = None):
    """One run: training losses (total and recommendation) and validation GAUC by epoch, the kept epoch dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
    ax[0].plot(epochs, [r["loss_total"] for r in history], marker="o", label="total")
    ax[0].plot(epochs, [r["loss_rec"] for r in history], marker=".", label="recommendation")
    ax[0].set(title="training loss", xlabel="epoch")
    ax[0].legend()
    ax[1].plot(epochs, [r["valid_gauc"] for r in history], marker="o")
    ax[1].axvline(best_epoch, color="k", ls="--", lw=1)
    ax[1].set(title="validation GAUC (dashed: epoch kept)", xlabel="epoch")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
