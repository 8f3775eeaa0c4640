"""Command line: ``python -m clsr`` (also installed as ``clsr``).

    clsr prepare --dataset ml100k [--params params.yaml]
    clsr export-official --dataset ml100k --out DIR
    clsr train --dataset ml100k --model clsr [--set model.contrastive=bpr --set train.epochs=3] [--run-dir DIR]
    clsr evaluate --run-dir DIR [--split test]
    clsr models

The notebooks call the same functions (clsr.data.prepare, clsr.runs, clsr.train).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _params(path: str) -> dict:
    from clsr.config import load_params

    return load_params(path)


def cmd_prepare(a) -> int:
    from clsr.data.prepare import prepare

    data = prepare(a.dataset, _params(a.params), a.raw_dir, a.out_dir)
    print(f"prepared {a.dataset}: {data.n_users} users, {data.n_events} events, "
          + ", ".join(f"{k} {len(v)}" for k, v in data.instances.items())
          + f" -> {Path(a.out_dir) / a.dataset}")
    return 0


def cmd_export(a) -> int:
    from clsr.data.official import export_official
    from clsr.data.prepare import load_prepared

    files = export_official(load_prepared(a.dataset, a.prepared_dir), a.out)
    for f in files:
        print(f)
    return 0


def cmd_train(a) -> int:
    from clsr.config import parse_set_args
    from clsr.runs import run

    overrides = parse_set_args(a.set)
    if a.seed is not None:
        overrides["train.seed"] = a.seed
    run_dir = a.run_dir or f"runs/{a.dataset}/{a.model}/cli"
    res = run(_params(a.params), a.dataset, a.model, run_dir, overrides, a.prepared_dir, resume=not a.no_resume)
    print(json.dumps({"test": res.metrics["test"], "best_epoch": res.metrics["best_epoch"]}, indent=2))
    return 0


def cmd_evaluate(a) -> int:
    from clsr.data.prepare import load_prepared
    from clsr.train import TrainConfig, evaluate, load_trained

    meta = json.loads((Path(a.run_dir) / "metrics.json").read_text())
    data = load_prepared(meta["dataset"], a.prepared_dir)
    model = load_trained(a.run_dir, data)
    cfg = TrainConfig(**meta["config"]["train"])
    print(json.dumps(evaluate(model, data, a.split, cfg), indent=2))
    return 0


def cmd_models(a) -> int:
    from clsr.models.registry import model_names

    print("\n".join(model_names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clsr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        sp.add_argument("--prepared-dir", default="data/prepared", help="where prepared datasets live")

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

    sp = sub.add_parser("train", help="train one model on one prepared dataset")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--model", default="clsr")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. model.k=5 or train.epochs=3")
    sp.add_argument("--seed", type=int)
    sp.add_argument("--run-dir")
    sp.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="evaluate the best checkpoint of a run")
    sp.add_argument("--run-dir", required=True)
    sp.add_argument("--split", default="test", choices=["valid", "test"])
    sp.add_argument("--prepared-dir", default="data/prepared")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("models", help="list the registered models")
    sp.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clsr.config import ConfigError
    from clsr.data.sources import DataError

    try:
        return args.func(args)
    except (ConfigError, DataError, FileNotFoundError, KeyError) as e:
        print(f"clsr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
