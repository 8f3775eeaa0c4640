"""Command line: ``python -m clsr`` (also installed as ``clsr``).

    clsr prepare --dataset ml100k [--params params.yaml]
    clsr export-official --dataset ml100k --out DIR
    clsr train --dataset ml100k --model clsr [--set model.contrastive=bpr --set train.epochs=3] [--run-dir DIR]
    torchrun --nproc_per_node 2 -m clsr train --dataset ml100k   # data-parallel (clsr.distributed)
    clsr evaluate --run-dir DIR [--split test]
    clsr check-params [--params params.yaml]
    clsr readme                      # copy reports/tables/main.md into the README's results block
    clsr prefill --jobs 4            # train the pipeline's runs side by side, then `dvc repro`
    clsr repro report                # `dvc repro report` with a [stage k/N] line before each stage
    clsr models

Overrides (``--set``) use the syntax of `clsr.runs`: ``train.<key>=value`` or ``model.<key>=value``, values
read as YAML. A mistake a user can make (a bad parameter, a missing or malformed file, a run directory in
use) ends in one line on stderr and exit code 2; ``--debug`` (or CLSR_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _params(path: str) -> dict:
    from clsr.config import load_params

    return load_params(path)


def cmd_prepare(a) -> int:
    from clsr.data.prepare import prepare

    t0 = time.perf_counter()
    data = prepare(a.dataset, _params(a.params), a.raw_dir, a.out_dir)
    print(f"prepared {a.dataset}: {data.n_users} users, {data.n_events} events, "
          + ", ".join(f"{k} {len(v)}" for k, v in data.instances.items())
          + f" -> {Path(a.out_dir) / a.dataset} in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_export(a) -> int:
    from clsr.data.official import export_official
    from clsr.data.prepare import load_prepared

    files = export_official(load_prepared(a.dataset, a.prepared_dir), a.out)
    for f in files:
        print(f)
    return 0


def cmd_train(a) -> int:
    from clsr.data.prepare import load_prepared
    from clsr.runs import resolve_run
    from clsr.train import default_run_dir, fit

    params = _params(a.params)
    if a.dataset not in params["datasets"]:
        from clsr.config import ConfigError, suggest

        raise ConfigError(f"--dataset {a.dataset!r}{suggest(a.dataset, params['datasets'])} is not defined in "
                          f"{a.params}; datasets: {sorted(params['datasets'])}")
    spec = resolve_run(params, a.model, a.set, seed=a.seed)
    data = load_prepared(a.dataset, a.prepared_dir)
    run_dir = Path(a.run_dir) if a.run_dir else default_run_dir(Path(a.runs_dir), a.dataset, spec.name,
                                                               spec.model_cfg, spec.train_cfg)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports (clsr.distributed)
    if main_process:
        print(f"run folder: {run_dir}", flush=True)
    try:
        res = fit(data, spec.model, spec.model_cfg, spec.train_cfg, run_dir=run_dir, resume=not a.no_resume,
                  overwrite=a.overwrite)
    finally:
        from clsr.distributed import shutdown

        shutdown()
    if not main_process:
        return 0
    print(json.dumps({"run_dir": str(run_dir), "test": res.metrics["test"], "best_epoch": res.metrics["best_epoch"],
                      "stop_reason": res.metrics.get("stop_reason")}, indent=2))
    return 0


def cmd_evaluate(a) -> int:
    from clsr.config import ConfigError, from_dict
    from clsr.data.prepare import load_prepared
    from clsr.train import TrainConfig, evaluate, load_trained

    metrics_file = Path(a.run_dir) / "metrics.json"
    if not metrics_file.is_file():
        raise ConfigError(f"--run-dir {a.run_dir}: no metrics.json there, so no finished run to evaluate; "
                          "pass the folder a finished `clsr train` printed")
    try:
        meta = json.loads(metrics_file.read_text())
        dataset, train = meta["dataset"], meta["config"]["train"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{metrics_file}: not a metrics file written by `clsr train` (unreadable or incomplete); "
                          "re-run the training") from None
    data = load_prepared(dataset, a.prepared_dir)
    model = load_trained(a.run_dir, data, allow_other_data=a.allow_other_data)
    print(json.dumps(evaluate(model, data, a.split, from_dict(TrainConfig, train, f"{metrics_file} train")),
                     indent=2))
    return 0


def cmd_check_params(a) -> int:
    _params(a.params)
    print(f"{a.params}: valid")
    if a.out:  # the pipeline's first stage: a stamp written only when every section is valid
        from clsr.data.store import atomic_write_text

        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out, "params valid\n")
    return 0


def cmd_readme(a) -> int:
    from clsr.config import ConfigError
    from clsr.report import update_readme

    table = Path(a.table)
    if not table.is_file():
        raise ConfigError(f"{table} not found: run `make repro` (the report stage writes it) first")
    if not update_readme(a.readme, table.read_text()):
        raise ConfigError(f"{a.readme}: no results markers found; nothing changed")
    print(f"{a.readme}: results block refreshed from {table}")
    return 0


def cmd_prefill(a) -> int:
    from clsr.prefill import prefill

    results = prefill(a.jobs, dry_run=a.dry_run, sweep=a.sweep, only=a.only)
    failed = [r for r in results if r[2].startswith("failed")]
    print(f"prefill: {len(results) - len(failed)} run(s) ready" + (f", {len(failed)} failed" if failed else ""))
    return 0


def cmd_repro(a) -> int:
    from clsr.repro import repro

    return repro(a.targets)


def cmd_models(a) -> int:
    from clsr.models.registry import model_names
    from clsr.runs import MODEL_ALIASES

    print("\n".join(model_names()))
    for alias, (model, over) in MODEL_ALIASES.items():
        print(f"{alias}  (alias: {model} with {', '.join(f'{k}={v}' for k, v in over.items())})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clsr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error (also CLSR_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("prepare", help="load a source, apply the protocol, store arrays + stats.json")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--params", default="params.yaml")
    sp.add_argument("--raw-dir", default="data/raw")
    sp.add_argument("--out-dir", default="data/prepared")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("export-official", help="write our split in the released TSV format")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--prepared-dir", default="data/prepared")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("train", help="train one model (or alias, e.g. clsr_nocon) on one prepared dataset")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--model", default="clsr")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override, e.g. model.recent_k=5, model.fusion=fixed or train.epochs=3 (repeatable)")
    sp.add_argument("--seed", type=int, help="the same as --set train.seed=N")
    sp.add_argument("--run-dir", help="default: <runs-dir>/<dataset>/<model>/<hash of the resolved configuration>")
    sp.add_argument("--runs-dir", default="runs/cli")
    sp.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint of this configuration")
    sp.add_argument("--overwrite", action="store_true",
                    help="replace a finished run of another configuration in --run-dir")
    sp.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sp.add_argument("--prepared-dir", default="data/prepared", help="where prepared datasets live")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="evaluate the best checkpoint of a finished run")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--split", default="test", choices=["valid", "test"])
    sp.add_argument("--prepared-dir", default="data/prepared")
    sp.add_argument("--allow-other-data", action="store_true",
                    help="evaluate even if the prepared data differ from the data the run was trained on")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("check-params", help="validate a params file (every section and key)")
    sp.add_argument("--params", default="params.yaml")
    sp.add_argument("--out", help="write a stamp file there when the file is valid (dvc.yaml's first stage)")
    sp.set_defaults(func=cmd_check_params)

    sp = sub.add_parser("readme", help="refresh the README's results block from reports/tables/main.md")
    sp.add_argument("--table", default="reports/tables/main.md")
    sp.add_argument("--readme", default="README.md")
    sp.set_defaults(func=cmd_readme)

    sp = sub.add_parser("prefill", help="train the pipeline's unfinished runs side by side before `dvc repro`")
    sp.add_argument("--jobs", type=int, default=2, help="worker processes (each uses train.threads threads)")
    sp.add_argument("--dry-run", action="store_true", help="only list the runs that would be trained")
    sp.add_argument("--sweep", action="store_true", help="the generator sweep's runs instead (after dvc repro sweep_data)")
    sp.add_argument("--only", action="append", metavar="PATTERN",
                    help="only the runs of stages whose name matches this shell pattern, e.g. 'train@*-clsr-*' "
                         "or disentanglement (repeatable: any pattern)")
    sp.set_defaults(func=cmd_prefill)

    sp = sub.add_parser("repro", help="`dvc repro TARGETS` with a [stage k/N] line before each stage")
    sp.add_argument("targets", nargs="*", help="DVC stages (default: every stage)")
    sp.set_defaults(func=cmd_repro)

    sp = sub.add_parser("models", help="list the registered models and aliases")
    sp.set_defaults(func=cmd_models)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the input or the setting is wrong', not 'the program is wrong'."""
    from clsr.config import ConfigError
    from clsr.data.sources import DataError
    from clsr.rundir import RunError

    return (ConfigError, DataError, RunError, OSError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CLSR_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"clsr {args.command}: interrupted", file=sys.stderr)
        return 130
    except user_errors() as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
            message = f"{e.filename}: {message}"
        print(f"clsr {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
