"""Stage ablation_report (notebook 04): a table per ablation axis, each variant against the main configuration.

Reads reports/metrics/ablation/<axis>/<variant>_seed<s>.json (+ .npz, written by the ablation_* training stages)
and, as the reference of every axis, the main table's runs of the ablated model on pipeline.ablation_dataset
(reports/metrics/main/<dataset>/<model>_seed<s>.*). Writes reports/tables/ablations/ablation_<axis>.md and
reports/figures/ablations/*.png.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from clsr import report
from clsr.data.store import atomic_write_text
from clsr.pipeline import Context, read_json


def _value(v) -> str:
    """An axis value as dvc.yaml spells it in a variant name (YAML booleans as true/false)."""
    return str(v).lower() if isinstance(v, bool) else str(v)


def axes(abl: dict) -> dict[str, tuple[str, str, list[str]]]:
    """axis -> (title, ablated model, variant names in display order), exactly as dvc.yaml names the variants."""
    return {
        "contrastive": ("Contrastive loss × recent k of the short-term proxy", "clsr",
                        [f"{c}_k{k}" for c in abl["contrastive"] for k in abl["k"]]),
        "threshold": ("Length threshold l_t", "clsr", [f"lt{v}" for v in abl["length_threshold"]]),
        "weight": ("Contrastive weight β", "clsr", [f"beta{_value(v)}" for v in abl["contrastive_weight"]]),
        "normalized": ("Triplet on unit-length vectors (margin per dimension)", "clsr",
                       [f"m{_value(v)}" for v in abl["normalized_margin"]]),
        "fusion": ("Fusion", "clsr", list(abl["fusion"])),
        "sequence": ("Short-term sequence model", "clsr", list(abl["sequential_model"])),
        "recloss": ("Recommendation loss", "clsr", list(abl["rec_loss"])),
        "slirec_mask": ("SLi-Rec long-term attention: padding masked (true) or not (false, released)", "slirec",
                        [f"mask_{_value(v)}" for v in abl["slirec_mask"]]),
    }


@dataclass
class AblationResults:
    tables: dict[str, str] = field(default_factory=dict)  # axis -> markdown
    runs: dict[str, pd.DataFrame] = field(default_factory=dict)  # axis -> one row per run
    missing: list[str] = field(default_factory=list)  # axes without any finished run


def _tiny_runs(ctx: Context) -> None:
    """Tiny mode (the notebook tests): the contrastive axis at k = 3, and the main CLSR run it is compared with."""
    from clsr.pipeline import pick_dataset
    from clsr.stages import train

    ds = pick_dataset(ctx, "")
    train.run(ctx, ds, "clsr", 0, "main", "clsr")
    for c in ctx.params["ablations"]["contrastive"]:
        train.run(ctx, ds, "clsr", 0, "contrastive", f"{c}_k3", f"model.contrastive={c},model.recent_k=3")


def run(ctx: Context) -> AblationResults:
    """Tables and figures of every ablation axis that has runs."""
    tables = ctx.reports_dir / "tables" / "ablations"
    figs = ctx.reports_dir / "figures" / "ablations"
    tables.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    root = ctx.reports_dir / "metrics"
    if ctx.tiny and not (root / "ablation").exists():
        _tiny_runs(ctx)
    dataset = ctx.params["pipeline"]["ablation_dataset"]
    main = report.collect(root, "main")
    out = AblationResults()
    for axis, (title, model, order) in axes(ctx.params["ablations"]).items():
        df = report.collect(root, f"ablation/{axis}")
        if df.empty:
            out.missing.append(axis)
            continue
        default = None
        if not main.empty:
            default = main[(main["dataset"] == dataset) & (main["model"] == model)]
        out.runs[axis] = df
        label = f"main {report.MODEL_LABELS.get(model, model)}"
        out.tables[axis] = report.ablation_table(df, title, order, default, label)
        atomic_write_text(tables / f"ablation_{axis}.md", out.tables[axis])
    _figures(out.runs, figs)
    if "contrastive" in out.runs:
        hist = {}
        for r in out.runs["contrastive"].itertuples():
            if r.variant.startswith("none"):
                continue
            hist.setdefault(r.variant, []).append(read_json(r.file)["history"])
        report.self_supervision_figure(hist, figs / "self_supervision.png")
    return out


def _figures(runs: dict[str, pd.DataFrame], figs) -> None:
    """Metric against k for each contrastive form, and against l_t and β (means over seeds)."""
    if "contrastive" in runs:
        df = runs["contrastive"].copy()
        df[["form", "k"]] = df["variant"].str.extract(r"(\w+?)_k(\d+)")
        df["k"] = df["k"].astype(int)
        ks = sorted(df["k"].unique())
        for metric in ("gauc", "ndcg@2"):
            cells = {f: [df[(df.form == f) & (df.k == k)][f"test_{metric}"] for k in ks] for f in df.form.unique()}
            series = {f: [c.mean() for c in cs] for f, cs in cells.items()}
            spread = {f: [c.std(ddof=1) if len(c) > 1 else 0.0 for c in cs] for f, cs in cells.items()}
            report.line_plot(ks, series, "recent k of the short-term proxy", f"test {metric} (mean ± std over seeds)",
                             f"{metric} vs k", figs / f"contrastive_k_{metric.replace('@', '')}.png", errors=spread)
    for axis, prefix, label, logx in (("threshold", "lt", "length threshold l_t", False),
                                      ("weight", "beta", "contrastive weight β", True)):
        if axis in runs:
            df = runs[axis].copy()
            df["x"] = df["variant"].str[len(prefix):].astype(float)
            means = df.groupby("x")[["test_gauc", "test_auc"]].mean().sort_index()
            report.line_plot(means.index.tolist(), {m: means[f"test_{m}"].tolist() for m in ("gauc", "auc")},
                             label, "test metric (mean over seeds)", label, figs / f"{axis}.png", logx=logx)
