"""Stages train@<dataset>-<model>-<seed> and ablation_*@<variant> (notebook 03): one run, its metrics copied to
reports/metrics/ where the report stages read them."""
from __future__ import annotations

from typing import Any

from clsr.pipeline import Context, run_paths
from clsr.stages.protocol import ensure_prepared


def run(ctx: Context, dataset: str, model: str, seed: int, group: str, variant: str, overrides: Any = None):
    """Fit `model` (a registered name or an alias) with `overrides` (see clsr.runs) on `dataset`.

    The run folder belongs to DVC (it re-runs the stage when a parameter changes), so a finished run of an
    older configuration there is replaced (`overwrite=True`); an unchanged one resumes or is kept."""
    from clsr.data.store import atomic_write_json
    from clsr.runs import resolve_run
    from clsr.train import fit

    spec = resolve_run(ctx.params, model, overrides, seed=seed)
    data = ensure_prepared(ctx, dataset)
    run_dir, metrics_file = run_paths(ctx, group, dataset, variant)
    res = fit(data, spec.model, spec.model_cfg, spec.train_cfg, run_dir=run_dir, overwrite=True)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    res.metrics["variant"] = variant
    res.metrics["group"] = group
    res.metrics["overrides"] = dict(spec.overrides)
    res.metrics["history"] = res.history  # the report draws training curves from committed files
    atomic_write_json(metrics_file, res.metrics)
    return res
