"""Tables and figures built from the metrics files only (never from a hand-typed number).

Metrics files are the `metrics.json` of each run, copied by the train stage to
``reports/metrics/<group>/<dataset>/<variant>.json`` (main) or ``reports/metrics/ablation/<axis>/<variant>.json``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

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


def flatten_run(m: dict) -> dict:
    row = {
        "dataset": m["dataset"],
        "model": m["model"],
        "seed": m["seed"],
        "best_epoch": m["best_epoch"],
        "epochs_run": m["epochs_run"],
        "seconds_per_epoch": m["seconds_per_epoch"],
        "train_instances_per_s": m.get("train_instances_per_s"),
        "parameters": m.get("parameters"),
    }
    row.update({f"test_{k}": v for k, v in m["test"].items()})
    row.update({f"valid_{k}": v for k, v in m["valid"].items()})
    return row


def read_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for p in sorted(Path(x) for x in paths):
        with open(p) as f:
            m = json.load(f)
        row = flatten_run(m)
        row["variant"] = p.stem
        row["file"] = str(p)
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


def main_table(df: pd.DataFrame, datasets: list[str], models: list[str]) -> tuple[str, pd.DataFrame]:
    """Markdown: rows = models grouped long / short / long+short; per dataset AUC, GAUC, MRR, NDCG@2
    (mean ± std over seeds; best mean in bold) and seconds per epoch."""
    metric_cols = [f"test_{k}" for k, _ in MAIN_METRICS]
    summ = summarise(df, ["dataset", "model"], metric_cols + ["seconds_per_epoch"])
    header = ["group", "model"]
    for ds in datasets:
        header += [f"{ds} {label}" for _, label in MAIN_METRICS] + [f"{ds} s/epoch"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {}
    for ds in datasets:
        sub = summ[(summ["dataset"] == ds) & (summ["model"].isin(models))]
        for c in metric_cols:
            best[(ds, c)] = sub[f"{c}_mean"].max() if len(sub) else np.nan
    def cells_for(model: str) -> list[str]:
        cells = [MODEL_LABELS.get(model, model)]
        for ds in datasets:
            r = summ[(summ["dataset"] == ds) & (summ["model"] == model)]
            if r.empty:
                cells += ["—"] * (len(MAIN_METRICS) + 1)
                continue
            r = r.iloc[0]
            for c in metric_cols:
                mean = r[f"{c}_mean"]
                cells.append(_fmt(mean, r[f"{c}_std"], int(r[f"{c}_count"]), np.isclose(mean, best[(ds, c)])))
            cells.append(f"{r['seconds_per_epoch_mean']:.1f}")
        return cells

    grouped = {g: [m for m in members if m in models] for g, members in MODEL_GROUPS.items()}
    grouped["other"] = [m for m in models if not any(m in g for g in MODEL_GROUPS.values())]
    for group, members in grouped.items():
        for model in members:
            lines.append("| " + " | ".join([group] + cells_for(model)) + " |")
    return "\n".join(lines) + "\n", summ


def ablation_table(df: pd.DataFrame, title: str, order: list[str] | None = None) -> str:
    """Markdown: one row per variant, test AUC / GAUC / MRR / NDCG@2 and the epoch chosen."""
    cols = [f"test_{k}" for k, _ in MAIN_METRICS]
    if order:
        df = df.set_index("variant").loc[[v for v in order if v in set(df["variant"])]].reset_index()
    best = {c: df[c].max() for c in cols}
    lines = [f"### {title}", "", "| variant | " + " | ".join(l for _, l in MAIN_METRICS) + " | best epoch |",
             "|---|" + "---|" * (len(MAIN_METRICS) + 1)]
    for _, r in df.iterrows():
        cells = [str(r["variant"])] + [
            (f"**{r[c]:.4f}**" if np.isclose(r[c], best[c]) else f"{r[c]:.4f}") for c in cols
        ] + [str(int(r["best_epoch"]))]
        lines.append("| " + " | ".join(cells) + " |")
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


def line_plot(xs, series: dict[str, list[float]], xlabel: str, ylabel: str, title: str, path: str | Path, logx=False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in series.items():
        ax.plot(xs, ys, marker="o", label=name)
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


def training_curves(histories: dict[str, list[dict]], path: str | Path, metric: str = "valid_gauc"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, hist in histories.items():
        ep = [r["epoch"] for r in hist]
        axes[0].plot(ep, [r["loss_total"] for r in hist], marker=".", label=name)
        axes[1].plot(ep, [r[metric] for r in hist], marker=".", label=name)
    axes[0].set_title("training loss (total)")
    axes[1].set_title(metric.replace("_", " "))
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def verdict(summ: pd.DataFrame, datasets: list[str], model: str = "clsr") -> pd.DataFrame:
    """Per dataset and metric: the best model, and `model`'s margin over the best other model."""
    rows = []
    for ds in datasets:
        sub = summ[summ["dataset"] == ds].set_index("model")
        if model not in sub.index or len(sub) < 2:
            continue
        for key, label in MAIN_METRICS:
            col = f"test_{key}_mean"
            others = sub.drop(index=model)[col]
            best_other = others.idxmax()
            margin = sub.loc[model, col] - others.max()
            rows.append({
                "dataset": ds,
                "metric": label,
                "best model": MODEL_LABELS.get(sub[col].idxmax(), sub[col].idxmax()),
                f"{model}": round(float(sub.loc[model, col]), 4),
                "best other": f"{MODEL_LABELS.get(best_other, best_other)} {others.max():.4f}",
                "margin": round(float(margin), 4),
                f"{model} seed std": round(float(sub.loc[model, f"test_{key}_std"]), 4),
                "wins": bool(margin > 0),
            })
    return pd.DataFrame(rows)


def alpha_distributions(ctx, datasets: list[str], path: str | Path, seed: int = 0) -> pd.DataFrame:
    """α of the CLSR run of each dataset on the test positives: a histogram and summary rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clsr.data.prepare import load_prepared
    from clsr.data.batches import eval_batches
    from clsr.scoring import score_batches
    from clsr.train import data_settings, load_trained

    rows = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for ds in datasets:
        run = Path(ctx.runs_dir) / "main" / ds / f"clsr_seed{seed}"
        if not (run / "best.pt").exists():
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


README_START = "<!-- results:start (written by the report stage from reports/tables/main.md; do not edit) -->"
README_END = "<!-- results:end -->"


def update_readme(readme: str | Path, table_md: str, note: str = "") -> bool:
    """Replace the README's results block with the generated table. Returns False if no markers."""
    readme = Path(readme)
    if not readme.exists():
        return False
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
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
