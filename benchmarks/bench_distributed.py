"""Benchmark: data-parallel CLSR training (clsr.distributed) on a Kuaishou-sized synthetic log.

    python benchmarks/bench_distributed.py                          # the Kuaishou size, 15 M instances (~4 min here)
    python benchmarks/bench_distributed.py --instances 1500000      # a tenth of it, the Taobao size

1. A synthetic log shaped like Kuaishou (`clsr.data.synthetic.generate`: ~250 events per user, an item
   catalogue of one item per 50 events, 1000 categories) is generated and prepared (`clsr.data.prepare`,
   per-user split, max_len 250 as released for Kuaishou) in a child process: wall time and that child's
   peak resident memory.
2. `torchrun --nproc_per_node P` (gloo, one CPU thread per process) runs the training step of
   `clsr.train.fit` for CLSR with the released batch (500 instances, 1 + 4 candidates) on the memory-mapped
   store, P = 1 and 2: per-process instances/s, the share of the step spent building batches (numpy), the
   bytes DDP all-reduces per step (counted by a communication hook), the time of one gloo all-reduce of
   that size, and each process's resident and proportional memory (``/proc/self/smaps_rollup``: mapped
   pages of the shared store count once in PSS).
3. A projection on paper of the epoch time at the Kuaishou size, from these measurements and the GPU step
   time measured by benchmarks/cuda_check.py (reports/benchmarks/cuda.json); the bandwidths assumed for
   NVLink and the network are constants below, printed with the report.

Writes reports/benchmarks/distributed.json and .md (atomically). The generated and prepared data are kept in
--scratch and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from clsr.data.store import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
KUAISHOU_INSTANCES = 15_000_000  # the paper's Kuaishou log, about
EVENTS_PER_USER, EVENTS_PER_ITEM, CATEGORIES, MAX_LEN = 250, 50, 1000, 250
#: assumptions of the projection (not measured here): all-reduce bus bandwidth in bytes/s
NVLINK_BUS_BW = 150e9  # NCCL all-reduce inside one 8-GPU NVLink machine (H100 SXM, conservative)
NETWORK_BUS_BW = 10e9  # between machines, 100 Gb/s Ethernet/InfiniBand at ~80 % efficiency
CPU_NETWORK_BUS_BW = 1.0e9  # between CPU machines on a 10 Gb/s network


# ---- child: generate + prepare --------------------------------------------------------------------
def child_prepare(folder: str, instances: int) -> None:
    from clsr.data.prepare import prepare
    from clsr.data.synthetic import generate

    n_users = max(instances // (EVENTS_PER_USER - 3), 10)
    opts = {"n_users": n_users, "n_items": max(instances // EVENTS_PER_ITEM, 2 * CATEGORIES),
            "n_categories": CATEGORIES, "mean_events": EVENTS_PER_USER, "min_events": 20, "max_events": 2000,
            "seed": 0}
    t = time.perf_counter()
    df = generate(opts)
    gen_s = time.perf_counter() - t
    params = {"datasets": {"kuaishou_like": {"source": {"name": "synthetic", **opts},
                                              "protocol": {"max_len": MAX_LEN, "test_negatives": 99}}}}
    t = time.perf_counter()
    data = prepare("kuaishou_like", params, Path(folder) / "raw", folder, interactions=df)
    prep_s = time.perf_counter() - t
    print(json.dumps({"generate_seconds": gen_s, "prepare_seconds": prep_s, "events": int(data.n_events),
                      "users": int(data.n_users), "items": int(data.item_vocab_size - 1),
                      "instances": {k: len(v) for k, v in data.instances.items()}}))


def run_prepare(scratch: Path, instances: int) -> dict:
    folder = scratch / f"kuaishou_like-{instances}"
    done = folder / "prepare.json"
    if done.exists() and (folder / "kuaishou_like" / "arrays.npz").exists():
        print(f"[prepare] reusing {folder}", flush=True)
        return json.loads(done.read_text())
    print(f"[prepare] generating and preparing ~{instances:,} instances into {folder} ...", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--_prepare", str(folder), str(instances)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("generating / preparing the synthetic log failed; its error is printed above")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_seconds=time.perf_counter() - t, peak_rss_gib=usage.ru_maxrss * 1024 / 2**30,
               store_gib=(folder / "kuaishou_like" / "arrays.npz").stat().st_size / 2**30)
    atomic_write_text(done, json.dumps(res, indent=2))
    return res


# ---- torchrun worker: timed training steps --------------------------------------------------------
def memory_kib() -> dict:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0])
    return out


def child_worker(folder: str, steps: int, warmup: int) -> None:
    import numpy as np
    import torch
    import torch.distributed as dist

    from clsr import distributed as D
    from clsr.data import batches as B
    from clsr.data.store import PreparedData
    from clsr.models.registry import build_config, build_model
    from clsr.train import clip_per_tensor_, data_settings, make_optimizer, model_sizes

    torch.set_num_threads(1)
    ctx = D.context(torch.device("cpu"))
    t = time.perf_counter()
    data = PreparedData.load(Path(folder) / "kuaishou_like")
    load_s = time.perf_counter() - t
    torch.manual_seed(0)
    model = build_model("clsr", model_sizes(data), build_config("clsr", {}))
    opt = make_optimizer(model, 1e-3)
    counted = {"bytes": 0, "calls": 0}
    step_model = D.wrap(model, ctx)
    if ctx.distributed:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        def counting_allreduce(state, bucket):
            counted["bytes"] += bucket.buffer().numel() * bucket.buffer().element_size()
            counted["calls"] += 1
            return default_hooks.allreduce_hook(None, bucket)

        step_model.register_comm_hook(None, counting_allreduce)
    max_len, time_unit = data_settings(data)
    shard = dict(rank=ctx.rank, world=ctx.world, neg_rng=D.negative_rng(0, 1, ctx.rank)) if ctx.distributed else {}
    it = B.train_batches(data, 500, 4, max_len, time_unit, np.random.default_rng(0), **shard)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    build_s = step_s = 0.0
    n_seen = 0
    for step in range(warmup + steps):
        if step == warmup:
            build_s = step_s = 0.0
            n_seen = 0
            counted.update(bytes=0, calls=0)
            D.barrier(ctx)
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        out = step_model(batch)
        parts = model.compute_loss(batch, out, ctx)  # as clsr.train.fit: each part averages over ranks to the global one
        opt.zero_grad(set_to_none=True)
        parts["total"].backward()
        clip_per_tensor_(params, model.clip_norm)
        opt.step()
        t2 = time.perf_counter()
        build_s += t1 - t0
        step_s += t2 - t1
        n_seen += batch.size
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    allreduce_s = float("nan")
    if ctx.distributed:  # one gloo all-reduce of the gradient's size, alone
        buf = torch.zeros(grad_bytes // 4)
        dist.all_reduce(buf)
        t = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(buf)
        allreduce_s = (time.perf_counter() - t) / 5
    mine = {"rank": ctx.rank, "load_seconds": load_s, "steps": steps, "instances": n_seen,
            "build_seconds": build_s, "step_seconds": step_s,
            "instances_per_s": n_seen / (build_s + step_s),
            "allreduced_bytes_per_step": counted["bytes"] / steps, "allreduce_calls_per_step": counted["calls"] / steps,
            "gradient_bytes": grad_bytes, "allreduce_seconds": allreduce_s, "parameters": model.n_parameters(),
            "memory_kib": memory_kib()}
    parts = D.gather_to_main(mine, ctx)
    if ctx.is_main:
        print("RESULT " + json.dumps(parts), flush=True)
    D.shutdown()


def run_workers(folder: Path, procs: int, steps: int, warmup: int) -> list[dict]:
    print(f"[train] {procs} process(es), {warmup} + {steps} steps ...", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           __file__, "--_worker", str(folder), str(steps), str(warmup)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    line = next(x for x in res.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---- projection -----------------------------------------------------------------------------------
def gpu_step_seconds() -> dict | None:
    """Seconds per CLSR training step on the GPU of reports/benchmarks/cuda.json (ml100k, batch 500)."""
    path = ROOT / "reports/benchmarks/cuda.json"
    ml = ROOT / "data/prepared/ml100k"
    if not path.exists() or not (ml / "arrays.npz").exists():
        return None
    from clsr.data import batches as B
    from clsr.data.store import PreparedData

    cuda = json.loads(path.read_text())
    epochs = [r["seconds_per_epoch"] for r in cuda["runs"]["fused"]]
    data = PreparedData.load(ml)
    steps = B.n_train_batches(data, 500, 4)
    return {"device": cuda["device"], "seconds_per_step": sum(epochs) / len(epochs) / steps, "steps": steps,
            "max_len": int(data.meta.get("max_len", 50))}


def ring_seconds(nbytes: float, world: int, bus_bw: float) -> float:
    """A ring all-reduce: each rank sends and receives 2(W-1)/W of the buffer."""
    return 2 * (world - 1) / world * nbytes / bus_bw if world > 1 else 0.0


def project(results: dict, prep: dict, gpu: dict | None) -> list[dict]:
    """Epoch time at the Kuaishou size (global batch 500) on a few set-ups, from the measurements."""
    steps = KUAISHOU_INSTANCES / 500
    one, two = results[1][0], results[2]
    # the embedding tables grow with the vocabulary, which this log grows with the instances: scale linearly
    grad_bytes = two[0]["allreduced_bytes_per_step"] * max(1.0, KUAISHOU_INSTANCES / prep["instances"]["train"])
    cpu_inst_s = one["instances_per_s"]  # one CPU process, one thread
    build_inst_s = one["instances"] / one["build_seconds"]  # batch building alone, one process
    rows = []
    # CPU machines like this one: 2 processes each (1 thread), measured step and all-reduce times
    per_proc_step = 500 / 2 / min(p["instances_per_s"] for p in two)
    rows.append({"setup": "1 CPU machine (2 cores, 2 processes; measured)", "world": 2,
                 "compute_s": steps * per_proc_step, "comm_s": 0.0,
                 "note": "measured step time of 2 gloo processes, all-reduce included"})
    for machines in (4,):
        world = 2 * machines
        compute = steps * (500 / world) / cpu_inst_s
        comm = steps * ring_seconds(grad_bytes, world, CPU_NETWORK_BUS_BW)
        rows.append({"setup": f"{machines} CPU machines like this one (2 processes each, 10 Gb/s)", "world": world,
                     "compute_s": compute, "comm_s": comm, "note": "1-thread step rate measured here"})
    if gpu:
        # the GPU step is latency-bound at batch 500 (sequential recurrences, kernel launches): a smaller local
        # batch barely shortens it, and max_len 250 lengthens the recurrences over the measured max_len
        t_step = gpu["seconds_per_step"] * MAX_LEN / gpu["max_len"]
        for label, world, comm in (
            ("8 GPUs, one machine (NVLink)", 8, ring_seconds(grad_bytes, 8, NVLINK_BUS_BW)),
            ("4 machines x 8 GPUs (100 Gb/s)", 32,
             ring_seconds(grad_bytes, 8, NVLINK_BUS_BW) + ring_seconds(grad_bytes, 4, NETWORK_BUS_BW)),
        ):
            build = (500 / world) / build_inst_s
            rows.append({"setup": label, "world": world, "compute_s": steps * max(t_step, build), "comm_s": steps * comm,
                         "lower_bound_s": steps * (max(t_step / world, build) + comm),
                         "note": f"GPU step {t_step * 1e3:.0f} ms (measured {gpu['seconds_per_step'] * 1e3:.0f} ms "
                                 f"at max_len {gpu['max_len']} on {gpu['device']}, x {MAX_LEN}/{gpu['max_len']}); "
                                 f"batch building {build * 1e3:.1f} ms/step/rank"})
    for r in rows:
        r["epoch_s"] = r["compute_s"] + r["comm_s"]
    return rows


def to_markdown(meta: dict, prep: dict, results: dict, rows: list[dict], gpu: dict | None) -> str:
    n = meta["instances"]
    scale = KUAISHOU_INSTANCES / prep["instances"]["train"]
    lines = [
        "# Data-parallel training (clsr.distributed) on a Kuaishou-sized synthetic log",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}; {meta['cpus']} CPUs; torch {meta['torch']}; {meta['date']}. Shared CPUs: "
        "timings vary with the machine's load.",
        "",
        f"Measured at {n:,} requested instances (the Kuaishou log has about {KUAISHOU_INSTANCES:,}); "
        + ("sizes below are extrapolated linearly to the Kuaishou size (x "
           f"{scale:.1f}), marked 'extrapolated'." if scale > 1.05 else "no extrapolation."),
        "",
        "## Prepare (generate + protocol + store, one child process)",
        "",
        "| events | users | items | train / valid / test instances | generate s | prepare s | peak RSS GiB | store GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {prep['events']:,} | {prep['users']:,} | {prep['items']:,} | "
        f"{prep['instances']['train']:,} / {prep['instances']['valid']:,} / {prep['instances']['test']:,} | "
        f"{prep['generate_seconds']:.1f} | {prep['prepare_seconds']:.1f} | {prep['peak_rss_gib']:.2f} | "
        f"{prep['store_gib']:.2f} |",
    ]
    if scale > 1.05:
        lines.append(f"| extrapolated x {scale:.1f} (linear; RSS: an upper estimate) | | | {KUAISHOU_INSTANCES:,} train | "
                     f"{prep['generate_seconds'] * scale:.0f} | {prep['prepare_seconds'] * scale:.0f} | "
                     f"{prep['peak_rss_gib'] * scale:.1f} | {prep['store_gib'] * scale:.1f} |")
    lines += [
        "",
        "## Training steps (CLSR, batch 500 = 1 + 4 candidates, max_len "
        f"{MAX_LEN}, gloo, 1 thread per process)",
        "",
        "| processes | rank | instances/s (this process) | batch building share | all-reduced MiB/step | "
        "all-reduce alone ms | RSS MiB | PSS MiB | store load s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for procs, parts in results.items():
        for p in parts:
            share = p["build_seconds"] / (p["build_seconds"] + p["step_seconds"])
            ar = "–" if procs == 1 else f"{p['allreduce_seconds'] * 1e3:.0f}"
            lines.append(
                f"| {procs} | {p['rank']} | {p['instances_per_s']:.0f} | {share:.1%} | "
                f"{p['allreduced_bytes_per_step'] / 2**20:.1f} | {ar} | {p['memory_kib']['rss'] / 1024:.0f} | "
                f"{p['memory_kib']['pss'] / 1024:.0f} | {p['load_seconds']:.2f} |")
    two = results[2]
    lines += [
        "",
        f"CLSR has {two[0]['parameters']:,} parameters ({two[0]['gradient_bytes'] / 2**20:.1f} MiB of float32 "
        f"gradients); DDP all-reduces {two[0]['allreduced_bytes_per_step'] / 2**20:.1f} MiB per step in "
        f"{two[0]['allreduce_calls_per_step']:.0f} bucket(s), the whole gradient: the embedding tables are dense "
        "parameters, so every step sends every row although a batch touches a few thousand.",
        "",
        "## Projected epoch time at the Kuaishou size (on paper)",
        "",
        f"{KUAISHOU_INSTANCES / 500:,.0f} steps of the global batch 500 per epoch. Assumed all-reduce bus "
        f"bandwidths: NVLink {NVLINK_BUS_BW / 1e9:.0f} GB/s, between GPU machines {NETWORK_BUS_BW / 1e9:.0f} GB/s, "
        f"between CPU machines {CPU_NETWORK_BUS_BW / 1e9:.1f} GB/s; ring all-reduce 2(W-1)/W of the gradient per "
        "rank, hierarchical across machines; the all-reduced bytes scaled linearly to the Kuaishou vocabulary "
        "(the tables grow with it).",
        "",
        "GPU rows: the step time is taken as independent of the local batch (latency-bound, see below); the "
        "last column is the bound if it shrank in proportion to the local batch instead.",
        "",
        "| set-up | processes | compute h | all-reduce h | epoch h | epoch h if a step scaled with its share | basis |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        low = f"{r['lower_bound_s'] / 3600:.2f}" if "lower_bound_s" in r else "–"
        lines.append(f"| {r['setup']} | {r['world']} | {r['compute_s'] / 3600:.2f} | {r['comm_s'] / 3600:.2f} | "
                     f"{r['epoch_s'] / 3600:.2f} | {low} | {r['note']} |")
    if gpu is None:
        lines.append("| GPUs | | | | | no reports/benchmarks/cuda.json or data/prepared/ml100k here: not projected |")
    lines += [
        "",
        "## What limits it",
        "",
        "- The global batch stays 500 instances, so an epoch is always "
        f"{KUAISHOU_INSTANCES / 500:,.0f} sequential steps. On GPUs a CLSR step is latency-bound (recurrences "
        "over max_len positions, one kernel chain per position, small matrices): splitting 500 instances over 8 "
        "or 32 GPUs shortens a step little, so more GPUs buy little per epoch. Throughput would need a larger "
        "global batch (with the learning rate re-tuned), which changes the released schedule.",
        "- Every step all-reduces the whole gradient, dominated by the dense embedding tables; between machines "
        "this is the largest cost. Sparse embedding gradients (all-gathering the touched rows) would cut it "
        "by orders of magnitude.",
        "- Batch building (numpy, one core per rank) is a share of each CPU step (table above); on GPUs it runs "
        "beside the GPU only if overlapped (a loader thread), which this trainer does not do.",
        "- The store is memory-mapped: ranks on one machine share its pages (PSS above), so memory grows with "
        "the model and the batch, not with the data, per process.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=KUAISHOU_INSTANCES, help="size of the synthetic log (instances)")
    ap.add_argument("--steps", type=int, default=60, help="timed training steps per configuration")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/distributed.json")
    ap.add_argument("--scratch", type=Path, default=ROOT / "data/raw/bench",
                    help="where the generated and prepared data are kept and reused (git-ignored)")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    meta = {"command": "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "instances": a.instances}
    prep = run_prepare(a.scratch, a.instances)
    folder = a.scratch / f"kuaishou_like-{a.instances}"
    results = {p: run_workers(folder, p, a.steps, a.warmup) for p in (1, 2)}
    gpu = gpu_step_seconds()
    rows = project(results, prep, gpu)
    atomic_write_text(a.out, json.dumps({"meta": meta, "prepare": prep, "train": results, "projection": rows,
                                    "gpu_reference": gpu}, indent=2) + "\n")
    atomic_write_text(a.out.with_suffix(".md"), to_markdown(meta, prep, results, rows, gpu))
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_prepare":
        child_prepare(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        child_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
