"""Training and evaluation speed on MovieLens-100K (default configuration), written to reports/benchmarks/.

Measures, on this machine (the load average before and after is written down: run it on an idle machine):
- the machine's speed at bench time (`machine_reference`: a 2048³ GEMM and a 256 MB copy), to compare
  runs made on different days;
- CLSR: one full training epoch and scoring the whole 1 + 99 test set (seconds);
- every registered model: one epoch with 2 and 1 torch threads (extrapolated from --steps steps), the
  FLOPs of a step and the GFLOP/s they imply next to the machine's GEMM reference at that thread count,
  and a profile excerpt (the five most expensive ops);
- what each group of C kernels adds over the best torch path (the fast twins turned off one group at a
  time, `clsr.fast.only` / `native.disabled`), with the compiler and flags they were built with, and
  `torch.compile` (inductor) on the batch norm + ReLU tail of CLSR's largest scorer;
- 1 vs 2 threads while another CPU-bound process runs, with the OpenMP wait policy clsr sets
  (PASSIVE, `clsr.runtime`) and with libgomp's default (spinning).

    python benchmarks/bench_train.py [--out reports/benchmarks] [--steps 30] [--skip-epoch]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clsr  # noqa: E402,F401 - first: it sets the OpenMP wait policy before torch loads (clsr.runtime)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from clsr import fast  # noqa: E402
from clsr.data import batches as B  # noqa: E402
from clsr.data.prepare import load_prepared, prepare  # noqa: E402
from clsr.data.store import atomic_write_json, atomic_write_text  # noqa: E402
from clsr.fast import native  # noqa: E402
from clsr.models.registry import build_model, model_names  # noqa: E402
from clsr.runtime import tune_cpu_allocator  # noqa: E402
from clsr.train import clip_per_tensor_, data_settings, make_optimizer, model_sizes  # noqa: E402


def get_data():
    try:
        return load_prepared("ml100k", ROOT / "data" / "prepared")
    except FileNotFoundError:
        params = {"datasets": {"ml100k": {"source": {"name": "ml100k"}, "protocol": {}}}}
        return prepare("ml100k", params, ROOT / "data" / "raw", ROOT / "data" / "prepared")


def make_model(name, data, **cfg):
    torch.manual_seed(0)
    model = build_model(name, model_sizes(data), cfg)
    if hasattr(model, "attach_data"):
        model.attach_data(data)
    return model


def train_steps(model, batches, measure_flops=False):
    """Run optimisation steps; returns (seconds, instances, flops of the first step or None)."""
    opt = make_optimizer(model, 1e-3)  # the trainer's optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    flops = None
    n = 0
    t0 = None
    for i, batch in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()  # the first step warms up allocators and is not timed
        ctx = FlopCounterMode(display=False) if (measure_flops and i == 0) else None
        if ctx:
            ctx.__enter__()
        out = model(batch)
        loss = model.compute_loss(batch, out)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if ctx:
            ctx.__exit__(None, None, None)
            flops = ctx.get_total_flops()
        if model.clip_norm:
            clip_per_tensor_(params, model.clip_norm)
        opt.step()
        if i >= 1:
            n += batch.size
    return time.perf_counter() - t0, n, flops


def gemm_gflops(threads: int) -> float:
    """A 2048³ float32 GEMM with `threads` torch threads, GFLOP/s."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        for _ in range(3):
            a @ b
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        return 10 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(old)


def machine_reference() -> dict:
    """Two fixed measurements of this machine's speed at bench time, so that runs on different days (shared
    cloud CPUs vary by tens of percent) can be compared: a 2048³ float32 GEMM (compute) and a 256 MB
    tensor copy into a reused buffer (memory bandwidth, bytes read + written)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, y = torch.randn(32 << 20), torch.empty(32 << 20)
    for _ in range(3):
        a @ b
        y.copy_(x)
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    gemm = 10 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    copy = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9
    return {"gemm_gflops": gemm, "copy_gb_per_s": copy}



TWIN_GROUPS = {  # what to turn off, and how: (fast twins allowed, C kernels on)
    "all fast twins, C kernels on (default)": (None, True),
    "C kernels off: the same twins with torch-op steps / reference tails": (None, False),
    "C only in the recurrence steps (no fused BN + ReLU tails, no DIN C scorers)":
        (("packed_rnn", "packed_gru_pair", "augru_shared_inputs", "din_valid_only"), True),
    "no fast twin at all (the reference blocks of clsr/models)": ((), True),
}


def _paths(allowed, kernels_on):
    stack = contextlib.ExitStack()
    if allowed is not None:
        stack.enter_context(fast.only(*allowed) if allowed else fast.disabled())
    if not kernels_on:
        stack.enter_context(native.disabled())
    return stack


def epoch_seconds(name, data, batches, threads, n_train, **cfg):
    """(extrapolated epoch seconds, instances/s, FLOPs per instance) for `name` at `threads` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sec, n, flops = train_steps(make_model(name, data, **cfg), batches, measure_flops=True)
    finally:
        torch.set_num_threads(old)
    return sec * n_train / n, n / sec, flops / batches[0].size


def profile_excerpt(name, data, batches, top: int = 5) -> list[tuple[str, float, float]]:
    """(op, self CPU ms per step, share of the step) of the `top` ops by self CPU time over a few steps."""
    from torch.profiler import ProfilerActivity, profile

    model = make_model(name, data)
    train_steps(model, batches[:2])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_steps(model, batches[:4])
    ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ev) or 1.0
    steps = 4
    return [(e.key, e.self_cpu_time_total / 1000 / steps, e.self_cpu_time_total / total) for e in ev[:top]]


def compile_check(data, batches) -> dict:
    """torch.compile (inductor, CPU) of the reference batch norm + ReLU tail of CLSR's short-term scorer on
    a real batch's first-layer output, forward + backward, against eager torch and the fused C kernels."""
    model = make_model("clsr", data)
    mlp = model.short_att.mlp
    g = torch.Generator().manual_seed(0)
    n_rows = batches[0].size * batches[0].n_candidates * batches[0].hist_item.shape[1]
    z = torch.randn(n_rows, mlp.sizes[0], generator=g)

    def run(fn, reps=5):
        zz = z.clone().requires_grad_()
        fn(zz).sum().backward()
        t0 = time.perf_counter()
        for _ in range(reps):
            zz = z.clone().requires_grad_()
            fn(zz).sum().backward()
        return (time.perf_counter() - t0) / reps * 1000

    reference = fast.reference(type(mlp).tail)
    res = {"rows": n_rows}
    with fast.disabled():
        res["eager_ms"] = run(lambda x: reference(mlp, x))
    res["c_kernels_ms"] = run(lambda x: mlp.tail(x))
    try:
        t0 = time.perf_counter()
        compiled = torch.compile(lambda x: reference(mlp, x), dynamic=False)
        with fast.disabled():
            compiled(z.clone().requires_grad_()).sum().backward()
            res["compile_seconds"] = time.perf_counter() - t0
            res["compiled_ms"] = run(compiled)
    except Exception as e:  # noqa: BLE001 - recorded in the report, whatever it is
        res["compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return res


def contention(steps: int) -> dict:
    """CLSR instances/s with 1 and 2 threads while one busy-looping process shares the cores, under the
    OpenMP wait policy clsr sets (PASSIVE) and libgomp's default (ACTIVE: idle threads spin)."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = {}
        for policy in ("PASSIVE", "ACTIVE"):
            for threads in (1, 2):
                env = dict(os.environ, OMP_WAIT_POLICY=policy)
                cmd = [sys.executable, __file__, "--child-steps", str(steps), "--threads", str(threads)]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                out[f"{policy} {threads}"] = json.loads(r.stdout.strip().splitlines()[-1])["instances_per_s"]
        return out
    finally:
        hog.kill()
        hog.wait()


def child(steps: int) -> None:
    data = get_data()
    L, r = data_settings(data)
    batches = list(B.train_batches(data, 500, 4, L, r, np.random.default_rng(0)))[: steps + 1]
    sec, n, _ = train_steps(make_model("clsr", data), batches)
    print(json.dumps({"instances_per_s": n / sec}))


def compiler() -> str:
    cc = os.environ.get("CC", "cc")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = "unknown"
    return f"`{cc}` ({version}), flags `{native.build_flags()}`"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model and setting")
    ap.add_argument("--skip-epoch", action="store_true", help="extrapolate CLSR's epoch too")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--child-steps", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child_steps:
        return child(a.child_steps)
    from clsr import runtime

    load_before = os.getloadavg()
    allocator_tuned = tune_cpu_allocator()  # as clsr.train.fit does
    data = get_data()
    L, r = data_settings(data)
    n_train = len(data.instances["train"])
    threads = torch.get_num_threads()
    res = {
        "machine": {"cpu_threads": threads, "glibc_large_blocks_kept": allocator_tuned,
                    "native": native.status().replace(str(Path.home()), "~"), "compiler": compiler(), "torch": torch.__version__,
                    "python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "omp_wait_policy": runtime.openmp_wait_policy, "load_before": load_before},
        "dataset": {"train_instances": n_train, "test_instances": len(data.instances["test"]), "max_len": L},
    }
    ref = res["machine"]["reference"] = machine_reference()
    gemm = {t: gemm_gflops(t) for t in (1, 2)}
    res["machine"]["gemm_gflops_by_threads"] = {str(t): v for t, v in gemm.items()}
    print(f"GEMM {gemm[1]:.0f} / {gemm[2]:.0f} GFLOP/s (1 / 2 threads), copy {ref['copy_gb_per_s']:.1f} GB/s", flush=True)

    rng = np.random.default_rng(0)
    all_batches = list(B.train_batches(data, 500, 4, L, r, rng))
    batches = all_batches[: a.steps + 1]

    # CLSR: one full epoch at the default thread count
    model = make_model("clsr", data)
    sec, n, flops = train_steps(model, all_batches if not a.skip_epoch else batches, measure_flops=True)
    res["clsr_epoch"] = {"seconds": sec * n_train / n, "measured_instances": n, "extrapolated": bool(a.skip_epoch),
                         "threads": threads}
    print(f"CLSR epoch: {res['clsr_epoch']['seconds']:.1f} s", flush=True)

    # CLSR test scoring (1 + 99)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for b in B.eval_batches(data, "test", 500, L, r):
            model(b)
        res["clsr_test_seconds"] = time.perf_counter() - t0
    print(f"CLSR test scoring: {res['clsr_test_seconds']:.2f} s", flush=True)

    # every model, 2 and 1 threads
    res["models"] = {}
    for name in model_names():
        row = {}
        for t in (2, 1):
            ep, ips, fl = epoch_seconds(name, data, batches, t, n_train)
            row[f"threads_{t}"] = {"epoch_seconds": ep, "instances_per_s": ips, "gflops": fl * ips / 1e9}
            row["mflop_per_instance"] = fl / 1e6
        row["profile"] = profile_excerpt(name, data, batches)
        res["models"][name] = row
        print(f"{name:9s} epoch {row['threads_2']['epoch_seconds']:6.1f} s (2 threads)  "
              f"{row['threads_1']['epoch_seconds']:6.1f} s (1 thread)",
              flush=True)

    # what each group of C kernels adds, per model that uses them
    res["c_groups"] = {}
    for name in ("clsr", "din", "slirec"):
        res["c_groups"][name] = {}
        for label, (allowed, kernels_on) in TWIN_GROUPS.items():
            with _paths(allowed, kernels_on):
                res["c_groups"][name][label] = epoch_seconds(name, data, batches, threads, n_train)[0]
        print(name, {k[:30]: round(v, 1) for k, v in res["c_groups"][name].items()}, flush=True)
    res["compile"] = compile_check(data, batches)
    print("torch.compile:", res["compile"], flush=True)
    res["contention"] = contention(min(a.steps, 15))
    print("contention:", res["contention"], flush=True)
    res["machine"]["load_after"] = os.getloadavg()
    write_reports(res, a, Path(a.out))


def write_reports(res, a, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train.json", res)
    m = res["machine"]
    gemm = {int(t): v for t, v in m["gemm_gflops_by_threads"].items()}
    lb, la = m["load_before"], m["load_after"]
    cmd = f"python benchmarks/bench_train.py --steps {a.steps}{' --skip-epoch' if a.skip_epoch else ''}"
    lines = [
        "# Training and evaluation speed (ml100k, default configuration)", "",
        f"Command: `{cmd}` (`make bench`). torch {m['torch']}, {m['cpu_threads']} torch threads by default, "
        f"OpenMP wait policy {m['omp_wait_policy']} (clsr.runtime), glibc large blocks kept: "
        f"{m['glibc_large_blocks_kept']}. C kernels: {m['native']}; built with {m['compiler']}.",
        f"Machine reference at bench time: 2048³ float32 GEMM **{gemm[1]:.0f} GFLOP/s with 1 thread, "
        f"{gemm[2]:.0f} with 2**; 256 MB copy {m['reference']['copy_gb_per_s']:.1f} GB/s. Load average "
        f"(1 min) {lb[0]:.2f} before, {la[0]:.2f} after (2 cores: above ~0.5 another process shared them).", "",
        f"CLSR, one training epoch ({res['dataset']['train_instances']} instances, 1 + 4 candidates, "
        f"{res['clsr_epoch']['threads']} threads): **{res['clsr_epoch']['seconds']:.1f} s**"
        f"{' (extrapolated)' if res['clsr_epoch']['extrapolated'] else ' (measured, whole epoch)'}; scoring the "
        f"1 + 99 test set: **{res['clsr_test_seconds']:.2f} s**.", "",
        f"## Every model: one epoch (extrapolated from {a.steps} steps of 500 instances)", "",
        "| model | epoch, 2 threads (s) | GFLOP/s (% of GEMM, 2 thr.) | epoch, 1 thread (s) | GFLOP/s (% of GEMM, 1 thr.) "
        "| 2-thread speed-up | MFLOP / instance |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in res["models"].items():
        two, one = row["threads_2"], row["threads_1"]
        lines.append(
            f"| {name} | {two['epoch_seconds']:.1f} | {two['gflops']:.1f} ({100 * two['gflops'] / gemm[2]:.0f} %) | "
            f"{one['epoch_seconds']:.1f} | {one['gflops']:.1f} ({100 * one['gflops'] / gemm[1]:.0f} %) | "
            f"{one['epoch_seconds'] / two['epoch_seconds']:.2f}× | {row['mflop_per_instance']:.1f} |")
    lines += ["", "## What limits each model: the five ops with the most self CPU time (ms per training step, share)", ""]
    for name, row in res["models"].items():
        ops = "; ".join(f"{op} {ms:.1f} ms ({100 * share:.0f} %)" for op, ms, share in row["profile"])
        lines.append(f"- **{name}**: {ops}")
    lines += ["", "## What the C kernels add (epoch seconds, extrapolated; the default thread count)", "",
              "A C kernel stays where it beats the best torch path by ≥ 1.2× on the whole epoch.", "",
              "| configuration | " + " | ".join(res["c_groups"]) + " |", "|---|" + "---|" * len(res["c_groups"])]
    labels = list(next(iter(res["c_groups"].values())))
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(f"{res['c_groups'][n][label]:.1f}" for n in res["c_groups"]) + " |")
    c = res["compile"]
    lines += ["", f"`torch.compile` (inductor, CPU) of the reference batch norm + ReLU tail of CLSR's short-term scorer, "
              f"{c['rows']} rows, forward + backward: eager {c['eager_ms']:.1f} ms, fused C kernels {c['c_kernels_ms']:.1f} ms, "
              + (f"compiled {c['compiled_ms']:.1f} ms (compiling took {c['compile_seconds']:.0f} s)."
                 if "compiled_ms" in c else f"compile failed: {c['compile_error']}.")]
    ct = res["contention"]
    lines += ["", "## A busy machine: CLSR instances/s while one busy-looping process shares the 2 cores", "",
              "| OpenMP wait policy | 1 thread | 2 threads |", "|---|---|---|",
              f"| PASSIVE (clsr's default, clsr.runtime) | {ct['PASSIVE 1']:.0f} | {ct['PASSIVE 2']:.0f} |",
              f"| ACTIVE (libgomp's default: idle threads spin) | {ct['ACTIVE 1']:.0f} | {ct['ACTIVE 2']:.0f} |"]
    atomic_write_text(out / "train.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'train.md'}")


if __name__ == "__main__":
    main()
