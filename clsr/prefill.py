"""Train the pipeline's runs side by side before `dvc repro`, on machines with more cores than one run uses.

    python -m clsr prefill --jobs 4            # then: dvc repro  (make repro JOBS=4 does both)
    python -m clsr prefill --sweep --jobs 4    # the generator sweep's runs (after `dvc repro sweep_data`; make sweep)
    python -m clsr prefill --jobs 2 --only 'train@*-clsr-*' --only disentanglement   # some stages' runs only

`dvc repro` runs its stages one after another. Every training stage (train@…, ablation_*@…) trains into a run
folder keyed by its canonical configuration (clsr/stages/train.py), and a stage whose run is already finished
only copies its metrics. So the runs can be trained beforehand, several at a time: `prefill` asks DVC for the
training stages as it renders them (the same -p parameters the notebooks receive), drops the ones whose run is
finished and the duplicates (stages that share one configuration), and trains the rest in `jobs` worker
processes. It writes only run folders, never a DVC output; `dvc repro` afterwards records everything as usual.

Each run uses `train.threads` torch threads (params.yaml), so jobs × threads should not exceed the cores;
with `train.threads: 0` (PyTorch's default: every core) more than one job is refused.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import multiprocessing as mp
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from clsr.config import ConfigError

TRAINING_STAGES = ("train@", "ablation_")


@dataclass(frozen=True)
class PlannedRun:
    stage: str  # the DVC stage that asks for it (the first, when several share the run)
    dataset: str  # a prepared dataset, or a sweep cell (`sweep`)
    model: str
    seed: int
    overrides: str
    sweep: bool = False  # a run of the generator sweep (clsr.stages.sweep): runs/sweep/<cell>/<model>_seed<seed>


def notebook_parameters(cmd: str) -> dict[str, str]:
    """The ``-p key value`` pairs of a papermill command line (after its notebooks; `mkdir -p` comes before)."""
    words = shlex.split(cmd)
    start = max(i for i, w in enumerate(words) if w.endswith(".ipynb"))
    return {words[i + 1]: words[i + 2] for i in range(start, len(words) - 2) if words[i] == "-p"}


def rendered_stages(root: str | Path = ".") -> list[tuple[str, str]]:
    """(name, command) of every stage of dvc.yaml, as DVC renders it from params.yaml."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return [(st.addressing, st.cmd) for st in repo.index.stages]


def training_stages(root: str | Path = ".") -> list[PlannedRun]:
    """Every training stage of dvc.yaml (a papermill run of notebook 03)."""
    runs = []
    for name, cmd in rendered_stages(root):
        if name.startswith(TRAINING_STAGES) and not name.endswith("_report"):
            p = notebook_parameters(cmd)
            runs.append(PlannedRun(name, p["dataset"], p["model"], int(p["seed"]), p.get("overrides", "")))
    return runs


def sweep_stages(root: str | Path = ".") -> list[PlannedRun]:
    """Every sweep_train@ stage of dvc.yaml (``python -m clsr.stages.sweep train CELL MODEL SEED``)."""
    runs = []
    for name, cmd in rendered_stages(root):
        if name.startswith("sweep_train@"):
            words = shlex.split(cmd)
            i = words.index("train")
            runs.append(PlannedRun(name, words[i + 1], words[i + 2], int(words[i + 3]), "", sweep=True))
    return runs


def study_runs(params) -> list[PlannedRun]:
    """The runs that only the disentanglement stage trains (aliases such as clsr_nocon, `clsr.runs`), so that
    they too are trained side by side instead of one after another inside that stage."""
    from clsr.stages.disentanglement import required_runs

    return [PlannedRun("disentanglement", ds, name, seed, "") for ds, name, seed in required_runs(params)]


def select(stages: list[PlannedRun], patterns: list[str]) -> list[PlannedRun]:
    """The stages whose name matches any of the shell patterns (`fnmatch`, e.g. ``train@*-clsr-*``; the runs
    that only the disentanglement stage trains are the stage ``disentanglement``). A pattern that matches no
    stage is a ConfigError naming it, not a silent no-op."""
    hits = {p: {st.stage for st in stages if fnmatch.fnmatchcase(st.stage, p)} for p in patterns}
    unmatched = [p for p, names in hits.items() if not names]
    if unmatched:
        families = sorted({st.stage.split("@")[0] + ("@…" if "@" in st.stage else "") for st in stages})
        raise ConfigError(f"--only {' '.join(unmatched)}: matches no training stage; the stages are named "
                          f"{', '.join(families)} (`dvc stage list` shows every name)")
    picked = set().union(*hits.values())
    return [st for st in stages if st.stage in picked]


def plan(ctx, stages: list[PlannedRun]) -> list[tuple[PlannedRun, Path]]:
    """The runs still to train: one per run folder, finished ones left out."""
    from clsr.data.prepare import load_prepared
    from clsr.runs import resolve_run
    from clsr.stages.train import run_folder
    from clsr.train import finished_result

    from clsr.stages import sweep

    todo, seen, data = [], set(), {}
    for st in stages:
        if st.sweep:
            spec, run_dir = sweep.cell_run(ctx, st.dataset, st.model, st.seed)
        else:
            spec = resolve_run(ctx.params, st.model, st.overrides, seed=st.seed)
            run_dir = run_folder(ctx, st.dataset, spec)
        if run_dir in seen:
            continue
        seen.add(run_dir)
        if st.dataset not in data:
            data[st.dataset] = (sweep.load_cell(ctx, st.dataset) if st.sweep
                                else load_prepared(st.dataset, ctx.prepared_dir))
        if finished_result(run_dir, data[st.dataset], spec.model, spec.model_cfg, spec.train_cfg) is None:
            todo.append((st, run_dir))
    return todo


class LinePrefix(io.TextIOBase):
    """A text stream that writes `prefix` at the start of every line to `stream`: runs trained side by side
    print their epochs to one terminal, and the prefix says which run a line belongs to."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.at_line_start = stream, prefix, True

    def write(self, text: str) -> int:
        for part in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.prefix)
            self.stream.write(part)
            self.at_line_start = part.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def run_label(st: PlannedRun) -> str:
    """`dataset model seed N [overrides]`, the prefix of a side-by-side run's lines."""
    return f"{st.dataset} {st.model} seed {st.seed}" + (f" {st.overrides}" if st.overrides else "")


def _train_one(args: tuple[PlannedRun, str]) -> tuple[str, float, str]:
    """Worker: train one planned run into its folder (the stage's own fit, without writing DVC outputs); its
    printed lines start with the run's label."""
    st, root = args
    with contextlib.redirect_stdout(LinePrefix(sys.stdout, f"({run_label(st)}) ")):
        return _train(st, root)


def _train(st: PlannedRun, root: str) -> tuple[str, float, str]:
    os.chdir(root)
    from clsr import pipeline
    from clsr.data.prepare import load_prepared
    from clsr.runs import resolve_run
    from clsr.stages.train import fit_or_reuse

    ctx = pipeline.context(tiny=False)
    t0 = time.perf_counter()
    try:
        if st.sweep:
            from clsr.stages.sweep import fit_cell_run

            fit_cell_run(ctx, st.dataset, st.model, st.seed)
        else:
            spec = resolve_run(ctx.params, st.model, st.overrides, seed=st.seed)
            fit_or_reuse(ctx, st.dataset, spec, load_prepared(st.dataset, ctx.prepared_dir))
    except Exception as e:  # reported, not fatal: `dvc repro` trains that stage itself and shows the error
        return st.stage, time.perf_counter() - t0, f"failed: {' '.join(str(e).split())}"
    return st.stage, time.perf_counter() - t0, "done"


def prefill(jobs: int, root: str | Path = ".", dry_run: bool = False, sweep: bool = False,
            only: list[str] | None = None) -> list[tuple[str, float, str]]:
    """Train every unfinished training run of the pipeline (`sweep`: of the generator sweep instead; `only`: of
    the stages matching these patterns, `select`) in `jobs` processes; returns (stage, seconds, status)."""
    from clsr import pipeline

    if jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {jobs}")
    ctx = pipeline.context(tiny=False)
    threads = ctx.params["train"]["threads"]
    if jobs > 1 and threads == 0:
        raise ConfigError(f"--jobs {jobs} with train.threads: 0 (every core per run) would oversubscribe the CPU; "
                          f"set train.threads in params.yaml (e.g. {max(1, (os.cpu_count() or 1) // jobs)})")
    if sweep:
        from clsr.stages.sweep import cells, data_dir

        missing = [c for c in cells(ctx.params) if not (data_dir(ctx) / c / "meta.json").exists()]
        if missing:
            raise ConfigError(f"sweep cells not prepared yet: {missing}; run `dvc repro sweep_data` first")
        stages = sweep_stages(ctx.root)
    else:
        missing = [d for d in ctx.params["pipeline"]["datasets"] if not (ctx.prepared_dir / d / "meta.json").exists()]
        if missing:
            raise ConfigError(f"datasets not prepared yet: {missing}; run `dvc repro protocol` first")
        stages = training_stages(ctx.root) + study_runs(ctx.params)
    if only:
        stages = select(stages, only)
    todo = plan(ctx, stages)
    print(f"prefill: {len(todo)} run(s) to train in {jobs} process(es) × {threads or 'all'} thread(s)", flush=True)
    if dry_run or not todo:
        for st, run_dir in todo:
            print(f"prefill: planned {st.stage} ({st.dataset} {st.model} seed {st.seed}"
                  f"{' ' + st.overrides if st.overrides else ''}) -> {run_dir}", flush=True)
        return [(st.stage, 0.0, "planned") for st, _ in todo]
    args = [(st, str(ctx.root)) for st, _ in todo]
    results = []
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(jobs) as pool:
        for stage, seconds, status in pool.imap_unordered(_train_one, args):
            results.append((stage, seconds, status))
            print(f"prefill: [{len(results)}/{len(todo)}] {stage} {status} in {seconds:.0f} s "
                  f"({(time.perf_counter() - t0) / 60:.0f} min elapsed)", flush=True)
    return results
