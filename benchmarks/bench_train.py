"""Training and evaluation speed on MovieLens-100K (default configuration), written to reports/benchmarks/.

Measures, on this machine:
- the machine's speed at bench time (`machine_reference`: a 2048³ GEMM and a 256 MB copy), to compare
  runs made on different days;
- batch building: training batches/s of the data layer alone (it must not be the bottleneck);
- CLSR, shared-encoder path: one full training epoch (wall seconds, instances/s) and scoring the whole
  1 + 99 test set (seconds, candidates/s);
- CLSR's three recurrent nets, forward + backward on one batch: the packed recurrences with and without the
  C step kernels, and the cells stepped under autograd;
- CLSR, shared-encoder path with the torch ops instead of the C kernels (`CLSR_NATIVE=0`): a few steps,
  extrapolated;
- CLSR, naive per-row path (`shared_encoders: false`, the released layout): a few steps, extrapolated;
- FLOPs of one training step (forward + backward) and one test batch, counted by
  torch.utils.flop_counter, and the GFLOP/s they imply;
- every registered baseline: training instances/s over a few steps.

    python benchmarks/bench_train.py [--out reports/benchmarks] [--steps 20] [--skip-epoch]
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clsr.data import batches as B  # noqa: E402
from clsr.data.prepare import load_prepared, prepare  # noqa: E402
from clsr.data.store import atomic_write_json, atomic_write_text  # noqa: E402
from clsr.models import native  # noqa: E402
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


def recurrence_timing(model, batch, repeats: int = 5) -> dict:
    """Milliseconds for forward + backward of CLSR's three recurrent nets on one training batch, through the
    model's own methods with ``fused_recurrences`` on (packed, hand-written backward; its steps in the C
    kernels of native, then in torch ops) and off (the cells stepped under autograd)."""
    X, _, _, e_short = model.embed(batch)
    X, e_short = X.detach().requires_grad_(), e_short.detach().requires_grad_()
    t_first, t_now = batch.time_from_first.to(X.dtype), batch.time_to_now.to(X.dtype)
    n = int(batch.length.max())

    def once():
        h_s, h_c = model.intention_and_fusion_states(X, batch.length, e_short, n)
        O = model.sequence(X, batch.length, t_first, t_now, n)
        (h_s.sum() + h_c.sum() + O.sum()).backward()

    out, setting = {}, model.cfg.fused_recurrences
    variants = (("fused_ms", True, True), ("fused_torch_ops_ms", True, False), ("autograd_ms", False, True))
    try:
        for key, fused, kernels_on in variants:
            model.cfg.fused_recurrences = fused
            with contextlib.nullcontext() if kernels_on else native.disabled():
                once()
                t0 = time.perf_counter()
                for _ in range(repeats):
                    once()
            out[key] = (time.perf_counter() - t0) / repeats * 1000
    finally:
        model.cfg.fused_recurrences = setting
    return out


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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks"))
    ap.add_argument("--steps", type=int, default=20, help="timed steps per baseline")
    ap.add_argument("--skip-epoch", action="store_true", help="skip the full-epoch CLSR timing")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    allocator_tuned = tune_cpu_allocator()  # as clsr.train.fit does
    data = get_data()
    L, r = data_settings(data)
    res = {
        "machine": {"cpu_threads": torch.get_num_threads(), "glibc_large_blocks_kept": allocator_tuned, "native_rnn": "loaded" if native.available() else native.status(), "torch": torch.__version__, "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
        "dataset": {"train_instances": len(data.instances["train"]), "test_instances": len(data.instances["test"]),
                    "max_len": L},
    }

    res["machine"]["reference"] = ref = machine_reference()
    print(f"machine reference: GEMM {ref['gemm_gflops']:.0f} GFLOP/s, copy {ref['copy_gb_per_s']:.1f} GB/s", flush=True)

    # data layer alone
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    nb = sum(1 for _ in B.train_batches(data, 500, 4, L, r, rng))
    dt = time.perf_counter() - t0
    res["batches"] = {"train_batches": nb, "seconds": dt, "batches_per_s": nb / dt}
    print(f"batch building: {nb / dt:.0f} batches/s", flush=True)

    # CLSR shared path: full epoch + FLOPs
    rng = np.random.default_rng(0)
    model = make_model("clsr", data)
    first = list(B.train_batches(data, 500, 4, L, r, rng))
    if a.skip_epoch:
        first = first[: a.steps + 1]
    sec, n, flops = train_steps(model, first, measure_flops=True)
    per_inst_flops = flops / 500
    epoch_s = sec * len(data.instances["train"]) / max(n, 1)
    res["clsr_shared"] = {
        "timed_instances": n, "seconds": sec, "instances_per_s": n / sec,
        "epoch_seconds": epoch_s if a.skip_epoch else sec, "epoch_extrapolated": bool(a.skip_epoch),
        "train_flops_per_instance": per_inst_flops, "achieved_gflops": per_inst_flops * n / sec / 1e9,
    }
    print(f"CLSR shared: {n / sec:.0f} inst/s, epoch {res['clsr_shared']['epoch_seconds']:.1f}s, "
          f"{per_inst_flops / 1e6:.1f} MFLOP/instance, {res['clsr_shared']['achieved_gflops']:.1f} GFLOP/s", flush=True)

    # CLSR test scoring (1 + 99)
    model.eval()
    with torch.no_grad():
        tb = next(B.eval_batches(data, "test", 500, L, r))
        with FlopCounterMode(display=False) as fc:
            model(tb)
        test_flops = fc.get_total_flops() / tb.size
        t0 = time.perf_counter()
        cands = 0
        for b in B.eval_batches(data, "test", 500, L, r):
            model(b)
            cands += b.size * b.n_candidates
        dt = time.perf_counter() - t0
    res["clsr_test"] = {"seconds": dt, "candidates_per_s": cands / dt, "flops_per_instance": test_flops,
                        "achieved_gflops": test_flops * len(data.instances["test"]) / dt / 1e9}
    print(f"CLSR test set: {dt:.2f}s, {cands / dt:.0f} candidates/s, {test_flops / 1e6:.1f} MFLOP/instance", flush=True)

    # CLSR's recurrences alone (intention + fusion GRU, Time4LSTM), forward + backward on a real batch:
    # the packed hand-written-backward path (default) vs stepping the cells under autograd
    res["clsr_recurrences"] = recurrence_timing(model, first[1])
    rr = res["clsr_recurrences"]
    print(f"CLSR recurrences fwd+bwd: fused {rr['fused_ms']:.1f} ms ({native.status()}), fused with torch-op "
          f"steps {rr['fused_torch_ops_ms']:.1f} ms, autograd loop {rr['autograd_ms']:.1f} ms", flush=True)

    # CLSR shared path with the torch ops instead of the C kernels (CLSR_NATIVE=0): what the kernels add
    with native.disabled():
        ops_model = make_model("clsr", data)
        sec, n, _ = train_steps(ops_model, first[: a.steps + 1])
    res["clsr_torch_ops"] = {"timed_instances": n, "seconds": sec, "instances_per_s": n / sec,
                             "epoch_seconds_extrapolated": sec * len(data.instances["train"]) / n}
    print(f"CLSR shared, torch ops only: {n / sec:.0f} inst/s, epoch ≈ "
          f"{res['clsr_torch_ops']['epoch_seconds_extrapolated']:.1f}s", flush=True)

    # CLSR naive per-row path
    naive = make_model("clsr", data, shared_encoders=False)
    sec, n, nflops = train_steps(naive, first[: min(6, len(first))], measure_flops=True)
    res["clsr_naive"] = {"timed_instances": n, "seconds": sec, "instances_per_s": n / sec,
                         "epoch_seconds_extrapolated": sec * len(data.instances["train"]) / n,
                         "train_flops_per_instance": nflops / 500}
    print(f"CLSR naive: {n / sec:.0f} inst/s (epoch ≈ {res['clsr_naive']['epoch_seconds_extrapolated']:.0f}s)", flush=True)
    with torch.no_grad():
        naive.eval()
        t0 = time.perf_counter()
        naive(tb)
        dt = time.perf_counter() - t0
    res["clsr_naive"]["test_seconds_extrapolated"] = dt * len(data.instances["test"]) / tb.size

    # every model
    res["models"] = {}
    for name in model_names():
        m = make_model(name, data)
        sec, n, fl = train_steps(m, first[: a.steps + 1], measure_flops=True)
        res["models"][name] = {"instances_per_s": n / sec, "epoch_seconds_extrapolated": sec * len(data.instances["train"]) / n,
                               "train_flops_per_instance": fl / 500, "parameters": m.n_parameters()}
        print(f"{name:10s} {n / sec:8.0f} inst/s  epoch ≈ {res['models'][name]['epoch_seconds_extrapolated']:.1f}s", flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "train.json", res)
    lines = [
        "# Training and evaluation speed (ml100k, default configuration)", "",
        f"Machine: {res['machine']['cpu_threads']} torch threads, torch {res['machine']['torch']}, glibc large blocks "
        f"kept (clsr.runtime): {res['machine']['glibc_large_blocks_kept']}. "
        f"Command: `python benchmarks/bench_train.py{' --skip-epoch' if a.skip_epoch else ''}`. "
        f"Machine speed at bench time (shared CPUs vary from day to day; compare runs by these): 2048³ GEMM "
        f"{res['machine']['reference']['gemm_gflops']:.0f} GFLOP/s, 256 MB copy "
        f"{res['machine']['reference']['copy_gb_per_s']:.1f} GB/s, batch building (below, pure Python/numpy).", "",
        "| measurement | value |", "|---|---|",
        f"| batch building | {res['batches']['batches_per_s']:.0f} batches/s |",
        f"| CLSR training, shared encoders | {res['clsr_shared']['instances_per_s']:.0f} instances/s; epoch "
        f"{res['clsr_shared']['epoch_seconds']:.1f} s{' (extrapolated)' if a.skip_epoch else ''} "
        f"({res['dataset']['train_instances']} instances; 78,000 instances, the issue's estimate of an epoch, "
        f"take {78000 / res['clsr_shared']['instances_per_s']:.1f} s; target ≤ 30 s) |",
        f"| CLSR training, shared encoders, torch ops instead of the C kernels (`CLSR_NATIVE=0`) | "
        f"{res['clsr_torch_ops']['instances_per_s']:.0f} instances/s; epoch ≈ "
        f"{res['clsr_torch_ops']['epoch_seconds_extrapolated']:.1f} s (extrapolated from {a.steps} steps) |",
        f"| CLSR training, naive per-row | {res['clsr_naive']['instances_per_s']:.0f} instances/s; epoch ≈ "
        f"{res['clsr_naive']['epoch_seconds_extrapolated']:.0f} s (extrapolated) |",
        f"| CLSR FLOPs per training instance (fwd+bwd, 1+4) | {res['clsr_shared']['train_flops_per_instance'] / 1e6:.1f} M "
        f"(naive {res['clsr_naive']['train_flops_per_instance'] / 1e6:.1f} M) |",
        f"| CLSR achieved training throughput | {res['clsr_shared']['achieved_gflops']:.1f} GFLOP/s |",
        f"| CLSR's three recurrent nets, forward + backward, one batch | packed, hand-written backward "
        f"{res['clsr_recurrences']['fused_ms']:.1f} ms with the C step kernels ({res['machine']['native_rnn']}); "
        f"{res['clsr_recurrences']['fused_torch_ops_ms']:.1f} ms with torch-op steps (`CLSR_NATIVE=0`); "
        f"cells stepped under autograd {res['clsr_recurrences']['autograd_ms']:.1f} ms |",
        f"| CLSR scoring the 1+99 test set | {res['clsr_test']['seconds']:.2f} s ({res['clsr_test']['candidates_per_s']:.0f} candidates/s; "
        f"naive ≈ {res['clsr_naive']['test_seconds_extrapolated']:.1f} s) |",
        f"| CLSR FLOPs per test instance (1+99) | {res['clsr_test']['flops_per_instance'] / 1e6:.1f} M |",
        "", "| model | train instances/s | epoch (s, extrapolated) | MFLOP / instance | parameters |", "|---|---|---|---|---|",
    ]
    for name, m in res["models"].items():
        lines.append(f"| {name} | {m['instances_per_s']:.0f} | {m['epoch_seconds_extrapolated']:.1f} | "
                     f"{m['train_flops_per_instance'] / 1e6:.1f} | {m['parameters']} |")
    atomic_write_text(out / "train.md", "\n".join(lines) + "\n")
    print(f"wrote {out / 'train.md'}")


if __name__ == "__main__":
    main()
