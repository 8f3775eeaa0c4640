"""Stage disentanglement (notebook 05): every model of ``disentanglement.models`` × counterfactual set ×
readout on each dataset of ``pipeline.counterfactual_datasets``, and the ground-truth measures on
``pipeline.disentanglement_dataset`` (`clsr.disentangle`).

Writes reports/metrics/disentanglement.json (the results), reports/tables/disentanglement.md and
reports/figures/disentanglement/*.png.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from clsr import plots
from clsr.data.store import PreparedData, atomic_write_json, atomic_write_text
from clsr.disentangle import measures
from clsr.disentangle.counterfactual import SETS
from clsr.disentangle.evaluate import (ceilings, counterfactual_eval, ground_truth_eval, interest_vectors,
                                      oracle_eval, positive_alpha)
from clsr.disentangle.report import markdown_report
from clsr.disentangle.truth import Truth, load_truth, projection_batch, read_profiles
from clsr.pipeline import Context, main_run_dir, run_paths
from clsr.stages.protocol import ensure_prepared

#: the seed of the main runs the study reads
SEED = 0


def results_path(ctx: Context) -> Path:
    return ctx.reports_dir / "metrics" / "disentanglement.json"


def figure_dir(ctx: Context) -> Path:
    return ctx.reports_dir / "figures" / "disentanglement"


def obtain_model(ctx: Context, dataset: str, name: str, data: PreparedData, seed: int = SEED):
    """(model, run folder) of `name` (a registered model or an alias, `clsr.runs`) on `dataset`.

    The main run behind reports/metrics/main/<dataset>/<name>_seed<seed>.json when it is finished. Otherwise a
    name that is not a registered model itself (an alias such as clsr_nocon), or any name in tiny mode, is
    read from — or trained into — its run folder keyed by its configuration (`clsr.train.default_run_dir`,
    shared with the training stages: clsr_nocon on the ablation dataset is the contrastive ablation's run)."""
    from clsr.runs import resolve_run
    from clsr.stages.train import fit_or_reuse
    from clsr.train import load_trained

    spec = resolve_run(ctx.params, name, seed=seed)
    variant = f"{name}_seed{seed}"
    main_dir = main_run_dir(ctx, dataset, variant)
    if main_dir is not None and (main_dir / "metrics.json").exists() and (main_dir / "best.pt").exists():
        return load_trained(main_dir, data), main_dir
    if spec.name == spec.model and not ctx.tiny:
        raise FileNotFoundError(
            f"{run_paths(ctx, 'main', dataset, variant)}: no finished run; the disentanglement stage reads the "
            "main runs of registered models: "
            f"run `dvc repro train` with {dataset} in pipeline.datasets and {name} in pipeline.models"
        )
    _, run_dir = fit_or_reuse(ctx, dataset, spec, data)
    return load_trained(run_dir, data), run_dir


def ground_truth(ctx: Context, dataset: str, data: PreparedData | None = None) -> Truth:
    """The test split's ground truth of a prepared synthetic dataset (with the generator's profiles)."""
    data = data if data is not None else ensure_prepared(ctx, dataset)
    return load_truth(data, read_profiles(ctx.prepared_dir, dataset), "test")


def measure_checks(ctx: Context) -> pd.DataFrame:
    """`measures.known_answers` on the ground truth of ``pipeline.disentanglement_dataset``: one row per
    check, the measured value beside the expected one."""
    truth = ground_truth(ctx, ctx.params["pipeline"]["disentanglement_dataset"])
    rows = measures.known_answers(truth)
    return pd.DataFrame([{"check": k, "measured": v, "expected": e} for k, (v, e) in rows.items()]).set_index("check")


def _round(x: float, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _clean(obj: Any) -> Any:
    """`obj` as plain JSON values: str keys, Python numbers, floats rounded to 4 places (NaN -> null)."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _round(float(obj))
    return obj


def run(ctx: Context, boot_reps: int = 200, n_pca_users: int = 5, per_user: int = 8) -> dict[str, Any]:
    """The study on every dataset; writes the JSON, the table and the figures and returns the results
    (as written to the JSON: {dataset: {model: {set: metrics, 'indices', 'run', 'ground_truth'},
    '_reference': chance and popularity levels, '_oracle': the Bayes oracle's measures (synthetic source;
    each model then carries 'ceiling': its margin shares and α against the posterior)}, '_settings': ...})."""
    settings_in = ctx.params["disentanglement"]
    pipe, train = ctx.params["pipeline"], ctx.params["train"]
    recent_k, shuffle_seed, models = settings_in["recent_k"], settings_in["shuffle_seed"], settings_in["models"]
    gt_ds, cf_ds = pipe["disentanglement_dataset"], pipe["counterfactual_datasets"]
    datasets = cf_ds + ([gt_ds] if gt_ds not in cf_ds else [])
    if train["threads"] > 0:
        torch.set_num_threads(train["threads"])
    settings = {"recent_k": recent_k, "shuffle_seed": shuffle_seed, "models": models,
                "counterfactual_datasets": cf_ds, "disentanglement_dataset": gt_ds, "bootstrap_reps": boot_reps}

    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    for ds in datasets:
        data = ensure_prepared(ctx, ds)
        per_model: dict[str, Any] = {}
        truth, oracle, long_posterior = None, None, None
        if ds == gt_ds:
            truth = ground_truth(ctx, ds, data)
            per_model["_reference"] = measures.reference_levels(truth, data.candidates["test"].item.shape[1])
            if (data.meta.get("source") or {}).get("name") == "synthetic":
                oracle, long_posterior = oracle_eval(data, truth, "test", train["ties"], boot_reps)
                per_model["_oracle"] = oracle
        sets = SETS if ds in cf_ds else ("original",)
        alphas, aucs, vectors = {}, {}, {}
        for name in models:
            model, run_dir = obtain_model(ctx, ds, name, data)
            print(f"[disentanglement] {ds} / {name}: {run_dir}", flush=True)
            cf, raw = counterfactual_eval(model, data, "test", sets, recent_k, shuffle_seed,
                                          train["eval_batch_size"], train["ties"])
            entry: dict[str, Any] = dict(cf)
            entry["indices"] = measures.counterfactual_indices(cf)
            entry["run"] = str(run_dir.relative_to(ctx.work)) if run_dir.is_relative_to(ctx.work) else str(run_dir)
            if truth is not None:
                gt, scores = ground_truth_eval(model, data, truth, raw["original"], "test", train["eval_batch_size"],
                                               train["ties"], boot_reps)
                entry["ground_truth"] = gt
                vectors[name] = interest_vectors(model, projection_batch(data, n_pca_users, per_user))
                alphas[name] = positive_alpha(scores["original"])
                aucs[name] = gt.get("alpha_auc")
                if oracle is not None:
                    entry["ceiling"] = ceilings(cf["original"], oracle, alphas[name], long_posterior, boot_reps)
            per_model[name] = entry
        results[ds] = per_model
        if truth is not None:
            figures[ds] = {"alphas": alphas, "aucs": aucs, "vectors": vectors, "driver": truth.driver,
                           "long_posterior": long_posterior}

    results = _clean(results)
    results_out = {**results, "_settings": _clean(settings)}
    atomic_write_json(results_path(ctx), results_out)
    atomic_write_text(ctx.table("disentanglement.md"), markdown_report(results, settings))
    write_figures(ctx, results, figures, models)
    return results_out


def write_figures(ctx: Context, results: Mapping[str, Any], figures: Mapping[str, Any], models: list[str]) -> None:
    """reports/figures/disentanglement/: the counterfactual GAUCs of every dataset, and per ground-truth
    dataset α by driver, the 2-D projection of the interests and the interest match."""
    out = figure_dir(ctx)
    out.mkdir(parents=True, exist_ok=True)
    plots.counterfactual_gauc(results, models, out / "counterfactual_gauc.png")
    for ds, f in figures.items():
        plots.alpha_by_driver(f["alphas"], f["driver"], out / f"alpha_by_driver_{ds}.png", f["aucs"])
        plots.interest_pca(f["vectors"], out / f"interest_pca_{ds}.png")
        gts = {m: results[ds][m]["ground_truth"] for m in models if "ground_truth" in results[ds].get(m, {})}
        plots.interest_match(gts, results[ds].get("_reference", {}), out / f"interest_match_{ds}.png")
        if f.get("long_posterior") is not None:
            stats = {m: results[ds][m].get("ceiling", {}).get("alpha_vs_posterior", {}) for m in f["alphas"]}
            plots.alpha_vs_posterior(f["alphas"], f["long_posterior"], f["driver"], stats,
                                     out / f"alpha_vs_posterior_{ds}.png")
