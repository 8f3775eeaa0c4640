"""Stages train@<dataset>-<model>-<seed> and ablation_*@<variant>-<seed> (notebook 03): one run, its metrics and
per-instance test values copied to reports/metrics/ where the report stages read them.

Run folders are keyed by the run's canonical configuration (`clsr.train.default_run_dir` under runs/): two stages
that ask for the same run — an ablation variant equal to the main configuration, or `contrastive: none` with
any k — share one folder, and whichever comes second reads the finished result instead of training again.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from clsr.pipeline import Context, run_paths
from clsr.stages.protocol import ensure_prepared


def run_folder(ctx: Context, dataset: str, spec) -> Path:
    """The run folder of a resolved run (`clsr.runs.RunSpec`): keyed by its canonical configuration."""
    from clsr.train import default_run_dir

    return default_run_dir(ctx.runs_dir, dataset, spec.model, spec.model_cfg, spec.train_cfg)


def fit_or_reuse(ctx: Context, dataset: str, spec, data, run_dir: str | Path | None = None) -> tuple[Any, Path]:
    """(result, run folder) of a resolved run: the finished run of the same configuration and code when its
    folder (`run_folder`, or `run_dir`) holds one, else trained there. DVC re-runs a stage when a parameter
    changes, so an older configuration's run in the folder is replaced (`overwrite`)."""
    from clsr.train import finished_result, fit

    run_dir = run_folder(ctx, dataset, spec) if run_dir is None else Path(run_dir)
    res = finished_result(run_dir, data, spec.model, spec.model_cfg, spec.train_cfg)
    if res is not None:
        print(f"[{spec.name}] the same run is finished in {ctx.shown(run_dir)}; reusing it", flush=True)
        return res, run_dir
    return fit(data, spec.model, spec.model_cfg, spec.train_cfg, run_dir=run_dir, overwrite=True), run_dir


def run(ctx: Context, dataset: str, model: str, seed: int, group: str, variant: str, overrides: Any = None):
    """Fit `model` (a registered name or an alias) with `overrides` (see clsr.runs) on `dataset`, or reuse
    the finished run of the same configuration. `variant` names the configuration in its group (the model for
    the main table, the axis value for an ablation); the metrics file is ``<variant>_seed<seed>.json``."""
    from clsr.data.store import atomic_path, atomic_write_json
    from clsr.runs import resolve_run
    from clsr.rundir import PER_INSTANCE

    spec = resolve_run(ctx.params, model, overrides, seed=seed)
    res, run_dir = fit_or_reuse(ctx, dataset, spec, ensure_prepared(ctx, dataset))
    metrics_file = run_paths(ctx, group, dataset, f"{variant}_seed{seed}")
    metrics = dict(res.metrics)
    metrics.update(variant=variant, group=group, name=model, overrides=dict(spec.overrides),
                   run_dir=Path(run_dir).relative_to(ctx.work).as_posix(), history=res.history)
    atomic_write_json(metrics_file, metrics)  # the report draws training curves from committed files
    with atomic_path(metrics_file.with_suffix(".npz"), suffix=".npz") as tmp:
        shutil.copyfile(run_dir / PER_INSTANCE, tmp)
    return res
