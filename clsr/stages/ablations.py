"""Stage ablation_report (notebook 04): a table per ablation axis and the contrastive-loss / k curves.

Reads reports/metrics/ablation/<axis>/<variant>.json (written by the ablation_* training stages) and writes
reports/tables/ablations/ablation_<axis>.md and reports/figures/ablations/*.png.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from clsr import report
from clsr.data.store import atomic_write_text
from clsr.pipeline import Context


def axes(abl: dict) -> dict[str, tuple[str, list[str]]]:
    """axis -> (title, variant names in display order), exactly as dvc.yaml names the variants."""
    return {
        "contrastive": ("Contrastive loss × recent k", [f"{c}_k{k}" for c in abl["contrastive"] for k in abl["k"]]),
        "threshold": ("Length threshold l_t", [f"lt{v}" for v in abl["length_threshold"]]),
        "weight": ("Contrastive weight β", [f"beta{v}" for v in abl["contrastive_weight"]]),
        "fusion": ("Fusion", list(abl["fusion"])),
        "sequence": ("Short-term sequence model", list(abl["sequential_model"])),
        "recloss": ("Recommendation loss", list(abl["rec_loss"])),
    }


@dataclass
class AblationResults:
    tables: dict[str, str] = field(default_factory=dict)  # axis -> markdown
    runs: dict[str, pd.DataFrame] = field(default_factory=dict)  # axis -> one row per run
    missing: list[str] = field(default_factory=list)  # axes without any finished run


def _tiny_runs(ctx: Context) -> None:
    """Tiny mode (the notebook tests): two short runs of the contrastive axis to report on."""
    from clsr.pipeline import pick_dataset
    from clsr.stages import train

    ds = pick_dataset(ctx, "")
    for c in ctx.params["ablations"]["contrastive"]:
        train.run(ctx, ds, "clsr", 0, "contrastive", f"{c}_k3", f"model.contrastive={c}")


def run(ctx: Context) -> AblationResults:
    """Tables and figures of every ablation axis that has runs."""
    tables = ctx.reports_dir / "tables" / "ablations"
    figs = ctx.reports_dir / "figures" / "ablations"
    tables.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    root = ctx.reports_dir / "metrics"
    if ctx.tiny and not (root / "ablation").exists():
        _tiny_runs(ctx)
    out = AblationResults()
    for axis, (title, order) in axes(ctx.params["ablations"]).items():
        df = report.collect(root, f"ablation/{axis}")
        if df.empty:
            out.missing.append(axis)
            continue
        out.runs[axis] = df
        out.tables[axis] = report.ablation_table(df, title, order)
        atomic_write_text(tables / f"ablation_{axis}.md", out.tables[axis])
    _figures(out.runs, figs)
    return out


def _figures(runs: dict[str, pd.DataFrame], figs) -> None:
    if "contrastive" in runs:
        df = runs["contrastive"].copy()
        df[["form", "k"]] = df["variant"].str.extract(r"(\w+?)_k(\d+)")
        df["k"] = df["k"].astype(int)
        ks = sorted(df["k"].unique())
        for metric in ("gauc", "ndcg@2"):
            series = {f: [df[(df.form == f) & (df.k == k)][f"test_{metric}"].mean() for k in ks] for f in df.form.unique()}
            report.line_plot(ks, series, "recent k of the short-term proxy", f"test {metric}", f"{metric} vs k",
                             figs / f"contrastive_k_{metric.replace('@', '')}.png")
    for axis, prefix, label, logx in (("threshold", "lt", "length threshold l_t", False),
                                      ("weight", "beta", "contrastive weight β", True)):
        if axis in runs:
            df = runs[axis].copy()
            df["x"] = df["variant"].str[len(prefix):].astype(float)
            df = df.sort_values("x")
            report.line_plot(df["x"].tolist(), {m: df[f"test_{m}"].tolist() for m in ("gauc", "auc")},
                             label, "test metric", label, figs / f"{axis}.png", logx=logx)
