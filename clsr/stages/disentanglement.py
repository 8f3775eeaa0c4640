"""Stage disentanglement (notebook 05): every model of ``disentanglement.models`` × seed of ``pipeline.seeds``
× counterfactual set × readout on each dataset of ``pipeline.counterfactual_datasets``, and the ground-truth
measures on ``pipeline.disentanglement_dataset`` (`clsr.disentangle`); CLSR against each other model by paired
bootstraps over test users pooled across the seeds (`clsr.disentangle.verdicts`).

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
from clsr.disentangle import figures as seed_figures
from clsr.disentangle import measures, verdicts
from clsr.disentangle.counterfactual import SETS
from clsr.disentangle.evaluate import (ceilings, counterfactual_eval, counterfactual_users, ground_truth_eval,
                                      ground_truth_instances, interest_vectors, oracle_eval, positive_alpha)
from clsr.disentangle.report import markdown_report
from clsr.disentangle.truth import Truth, load_truth, projection_batch, read_profiles
from clsr.pipeline import Context, main_run_dir, run_paths
from clsr.stages.protocol import ensure_prepared


def results_path(ctx: Context) -> Path:
    return ctx.reports_dir / "metrics" / "disentanglement.json"


def figure_dir(ctx: Context) -> Path:
    return ctx.reports_dir / "figures" / "disentanglement"


def study_datasets(params: Mapping[str, Any]) -> list[str]:
    """The datasets of the study: ``pipeline.counterfactual_datasets``, then the disentanglement dataset."""
    pipe = params["pipeline"]
    cf_ds, gt_ds = list(pipe["counterfactual_datasets"]), pipe["disentanglement_dataset"]
    return cf_ds + ([gt_ds] if gt_ds not in cf_ds else [])


def study_seeds(params: Mapping[str, Any]) -> list[int]:
    """The seeds of the study: the main table's, ``pipeline.seeds``."""
    return [int(s) for s in params["pipeline"]["seeds"]]


def required_runs(params: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """(dataset, name, seed) of every run the study reads that only this stage trains: the names of
    ``disentanglement.models`` that are not registered models (aliases such as clsr_nocon, `clsr.runs`),
    on every study dataset and seed. Registered models are read from the main runs (`obtain_model`)."""
    from clsr.runs import registered_name

    names = [n for n in params["disentanglement"]["models"] if registered_name(n) != n]
    return [(ds, n, s) for ds in study_datasets(params) for n in names for s in study_seeds(params)]


def obtain_model(ctx: Context, dataset: str, name: str, data: PreparedData, seed: int):
    """(model, run folder) of `name` (a registered model or an alias, `clsr.runs`) on `dataset`, trained with
    `seed`.

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


def seed_mean(entries: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean over seeds of the per-seed results: nested dicts key by key (keys every seed holds), numbers
    averaged, a value equal in every seed (a count) kept as is, other values that differ (the run folders)
    left out. Per-seed bootstrap bounds (keys ending in ``_lo`` / ``_hi``) are left out too: averaged over
    seeds they bound nothing (each seed's own interval stays in its entry; the comparisons between models
    are `clsr.disentangle.verdicts`')."""
    out: dict[str, Any] = {}
    for k in entries[0]:
        if not all(k in e for e in entries) or (isinstance(k, str) and k.endswith(("_lo", "_hi"))):
            continue
        vals = [e[k] for e in entries]
        if all(isinstance(v, Mapping) for v in vals):
            out[k] = seed_mean(vals)
        elif all(v == vals[0] for v in vals):
            out[k] = vals[0]
        elif all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals):
            out[k] = float(np.mean(vals))
    return out


def _evaluate_run(ctx: Context, ds: str, name: str, seed: int, data: PreparedData, sets: tuple[str, ...],
                  truth: Truth | None, oracle: Mapping[str, Any] | None, long_posterior: np.ndarray | None,
                  boot_reps: int, projection: tuple[int, int] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One model and seed through the study: (its results entry, its per-user / per-instance arrays and
    figure inputs: 'users' (`counterfactual_users`), and with a ground truth 'instances'
    (`ground_truth_instances`), 'alpha' and, when `projection` = (users, targets per user) is given, the
    'vectors' of the 2-D projection figure)."""
    settings, train = ctx.params["disentanglement"], ctx.params["train"]
    model, run_dir = obtain_model(ctx, ds, name, data, seed)
    print(f"[disentanglement] {ds} / {name} / seed {seed}: {ctx.shown(run_dir)}", flush=True)
    cf, raw = counterfactual_eval(model, data, "test", sets, settings["recent_k"], settings["shuffle_seed"],
                                  train["eval_batch_size"], train["ties"])
    entry: dict[str, Any] = dict(cf)
    entry["indices"] = measures.counterfactual_indices(cf)
    entry["run"] = str(run_dir.relative_to(ctx.work)) if run_dir.is_relative_to(ctx.work) else str(run_dir)
    arrays: dict[str, Any] = {"users": counterfactual_users(raw)}
    if truth is not None:
        gt, scores = ground_truth_eval(model, data, truth, raw["original"], "test", train["eval_batch_size"],
                                       train["ties"], boot_reps)
        entry["ground_truth"] = gt
        arrays["instances"] = ground_truth_instances(scores["original"], scores["categories"], truth)
        arrays["alpha"] = positive_alpha(scores["original"])
        if projection is not None:
            arrays["vectors"] = interest_vectors(model, projection_batch(data, *projection))
        if oracle is not None:
            entry["ceiling"] = ceilings(cf["original"], oracle, arrays["alpha"], long_posterior, boot_reps)
    return entry, arrays


def run(ctx: Context, boot_reps: int = 200, n_pca_users: int = 5, per_user: int = 8,
        verdict_reps: int = 1000) -> dict[str, Any]:
    """The study on every dataset and seed; writes the JSON, the table and the figures and returns the results
    as written to the JSON:

        {dataset: {model: {set: metrics, 'indices', 'ground_truth', 'ceiling' (seed means, `seed_mean`),
                           'seeds': {seed: {set: metrics, 'indices', 'run', 'ground_truth', 'ceiling'}}},
                   '_comparisons': {other model: {quantity: CLSR − other (`verdicts.summary`)}},
                   '_reference': chance and popularity levels, '_oracle': the Bayes oracle's measures},
         '_settings': ...}

    `boot_reps`: replicates of each seed's own intervals; `verdict_reps`: of the paired comparisons."""
    settings_in = ctx.params["disentanglement"]
    pipe, train = ctx.params["pipeline"], ctx.params["train"]
    models = settings_in["models"]
    gt_ds, cf_ds = pipe["disentanglement_dataset"], pipe["counterfactual_datasets"]
    seeds = study_seeds(ctx.params)
    if train["threads"] > 0:
        torch.set_num_threads(train["threads"])
    settings = {"recent_k": settings_in["recent_k"], "shuffle_seed": settings_in["shuffle_seed"], "models": models,
                "seeds": seeds, "counterfactual_datasets": cf_ds, "disentanglement_dataset": gt_ds,
                "bootstrap_reps": boot_reps, "verdict_reps": verdict_reps}

    results: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    for ds in study_datasets(ctx.params):
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
        users: dict[str, dict[int, Any]] = {}
        instances: dict[str, dict[int, Any]] = {}
        alphas, vectors = {}, {}
        for name in models:
            entries, users[name], instances[name], alpha_runs = {}, {}, {}, []
            for seed in seeds:
                first = seed == seeds[0]  # the projection figure shows the first seed's models
                entries[seed], arrays = _evaluate_run(ctx, ds, name, seed, data, sets, truth, oracle, long_posterior,
                                                      boot_reps, (n_pca_users, per_user) if first else None)
                users[name][seed] = arrays["users"]
                if truth is not None:
                    instances[name][seed] = arrays["instances"]
                    alpha_runs.append(arrays["alpha"])
                    if first:
                        vectors[name] = arrays["vectors"]
            per_model[name] = {**seed_mean(list(entries.values())), "seeds": entries}
            if truth is not None:
                alphas[name] = np.concatenate(alpha_runs)  # pooled over the seeds
        comparisons = {}
        if ds in cf_ds:
            comparisons = verdicts.counterfactual_comparisons(users, verdict_reps)
        if truth is not None:
            for other, res in verdicts.ground_truth_comparisons(instances, truth.driver, verdict_reps).items():
                comparisons.setdefault(other, {}).update(res)
        per_model["_comparisons"] = comparisons
        results[ds] = per_model
        if truth is not None:
            aucs = {m: per_model[m]["ground_truth"].get("alpha_auc") for m in models}
            figures[ds] = {"alphas": alphas, "aucs": aucs, "vectors": vectors,
                           "driver": np.tile(truth.driver, len(seeds)),
                           "long_posterior": None if long_posterior is None else np.tile(long_posterior, len(seeds))}

    results = _clean(results)
    results_out = {**results, "_settings": _clean(settings)}
    atomic_write_json(results_path(ctx), results_out)
    atomic_write_text(ctx.table("disentanglement.md"), markdown_report(results, settings))
    write_figures(ctx, results, figures, models)
    return results_out


def write_figures(ctx: Context, results: Mapping[str, Any], figures: Mapping[str, Any], models: list[str]) -> None:
    """reports/figures/disentanglement/: the counterfactual GAUCs of every dataset (bars = seed means, dots =
    seeds), and per ground-truth dataset α by driver and α against the posterior (pooled over the seeds), the
    2-D projection of the interests (the first seed's models) and the interest match (bars = seed means,
    dots = seeds)."""
    out = figure_dir(ctx)
    out.mkdir(parents=True, exist_ok=True)
    seed_figures.counterfactual_gauc(results, models, out / "counterfactual_gauc.png")
    for ds, f in figures.items():
        plots.alpha_by_driver(f["alphas"], f["driver"], out / f"alpha_by_driver_{ds}.png", f["aucs"])
        plots.interest_pca(f["vectors"], out / f"interest_pca_{ds}.png")
        present = [m for m in models if "ground_truth" in results[ds].get(m, {})]
        seed_figures.interest_match({m: results[ds][m] for m in present}, results[ds].get("_reference", {}),
                                    out / f"interest_match_{ds}.png")
        if f.get("long_posterior") is not None:
            stats = {m: results[ds][m].get("ceiling", {}).get("alpha_vs_posterior", {}) for m in f["alphas"]}
            plots.alpha_vs_posterior(f["alphas"], f["long_posterior"], f["driver"], stats,
                                     out / f"alpha_vs_posterior_{ds}.png")
