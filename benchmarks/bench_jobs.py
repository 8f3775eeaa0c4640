"""Runs side by side or threads per run? Training throughput of the pipeline's two choices on this machine.

`make repro` trains JOBS runs side by side, each with `train.threads` torch threads (clsr.prefill). On C cores
that is either one run with C threads at a time, or C runs with one thread each. This measures both, per model:
instances/s of one run with C threads, of one run with 1 thread alone, and the summed instances/s of C
single-thread runs at once (each timed over the same steps of ml100k, 1 + 4 candidates, batch 500, the first
step untimed). Run it on an otherwise idle machine (the load average is written down).

    python benchmarks/bench_jobs.py [--models clsr slirec din] [--steps 20] [--out reports/benchmarks]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(model: str, threads: int, steps: int) -> None:
    """One timed run: prints {"instances_per_s": ...} as its last line."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import get_data, make_model, train_steps

    from clsr.data import batches as B
    from clsr.train import data_settings

    torch.set_num_threads(threads)
    data = get_data()
    L, r = data_settings(data)
    batches = []
    for b in B.train_batches(data, 500, 4, L, r, np.random.default_rng(0)):
        batches.append(b)
        if len(batches) > steps:
            break
    sec, n, _ = train_steps(make_model(model, data), batches)
    print(json.dumps({"instances_per_s": n / sec}))


def timed(model: str, threads: int, steps: int, copies: int = 1) -> list[float]:
    """instances/s of `copies` runs started together, each with `threads` threads."""
    cmd = [sys.executable, __file__, "--child", model, "--threads", str(threads), "--steps", str(steps)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1])["instances_per_s"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["clsr", "slirec", "din"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child, a.threads, a.steps)

    import clsr  # noqa: F401 - sets the OpenMP wait policy, as in a pipeline run
    from clsr.data.store import atomic_write_json, atomic_write_text

    c = a.cores
    load_before = os.getloadavg()
    rows = {}
    for m in a.models:
        one_c = timed(m, c, a.steps)[0]
        one_1 = timed(m, 1, a.steps)[0]
        side = timed(m, 1, a.steps, copies=c)
        rows[m] = {"one_run_all_threads": one_c, "one_run_one_thread": one_1, "side_by_side_each": side,
                   "side_by_side_total": sum(side), "gain": sum(side) / one_c}
        print(f"{m}: 1 run x {c} threads {one_c:.0f}/s; 1 x 1 {one_1:.0f}/s; {c} x 1 side by side "
              f"{sum(side):.0f}/s in all ({sum(side) / one_c:.2f}x)", flush=True)
    res = {"cores": c, "steps": a.steps, "load_before": load_before, "load_after": os.getloadavg(), "models": rows,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    out = Path(a.out)
    atomic_write_json(out / "jobs.json", res)
    lines = [
        "# Runs side by side or threads per run (ml100k training steps)",
        "",
        f"Command: `python benchmarks/bench_jobs.py --steps {a.steps}`. {c} cores; load average before "
        f"{load_before[0]:.2f}, after {res['load_after'][0]:.2f}. Instances/s over {a.steps} timed steps of 500 "
        "instances (1 + 4 candidates), the first step untimed.",
        "",
        f"| model | 1 run × {c} threads | 1 run × 1 thread | {c} runs × 1 thread, in all | gain of side by side |",
        "|---|---|---|---|---|",
    ]
    for m, r in rows.items():
        lines.append(f"| {m} | {r['one_run_all_threads']:.0f} | {r['one_run_one_thread']:.0f} | "
                     f"{r['side_by_side_total']:.0f} | {r['gain']:.2f}× |")
    atomic_write_text(out / "jobs.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
