"""Process-level settings: the OpenMP wait policy, flush-to-zero for denormal floats, a faster CPU
allocator, and the compute path every run records.

`set_openmp_wait_policy` — why: torch's CPU thread pool (and the C kernels of `clsr.fast.native`) is
libgomp's, whose idle threads by default spin for a while before sleeping. On a machine whose cores are
shared with another CPU-bound process, the spinning threads take the cores from the threads doing the
work, and a run with 2 threads became several times slower than with 1 (benchmarks/bench_train.py
measures it with a competing process: reports/benchmarks/train.md). ``OMP_WAIT_POLICY=PASSIVE`` makes
idle threads sleep at once. libgomp reads it when it is loaded, i.e. when torch is imported, so `clsr`
sets it on import (`clsr/__init__.py`), before anything imports torch; a value already in the
environment is kept (``OMP_WAIT_POLICY=ACTIVE`` restores the spinning).

`flush_denormals` — why: float32 values below 1.2e-38 (denormals) take a slow microcode path on x86
CPUs, 10-100× slower per operation. Training can produce them in bulk: SLi-Rec with the released, unmasked
long-term attention (padding takes part in the softmax) slowed from 28 s to 180 s per synthetic epoch as
training went on, and ran at a flat 18.5 s with the same losses to 4 digits once denormals were flushed.
The released TensorFlow code never meets this: TensorFlow sets flush-to-zero (FTZ) and denormals-are-zero
(DAZ) on its CPU threads. `torch.set_flush_denormal` sets them on the calling thread only, and torch's
OpenMP worker threads copy the setting when they are created, so `clsr` sets it on import
(`clsr/__init__.py`), before torch has run parallel work; `denormal_mode` checks every thread rather than
trusting that. Opt out with ``CLSR_KEEP_DENORMALS=1``. It affects CPU arithmetic only (values that would be
below 1.2e-38 become 0); a CUDA device keeps its own settings.

`compute_path` — what decides a run's float rounding besides its configuration: the device, torch's
CPU thread count (reductions and GEMMs split their work by thread), whether the C kernels of
`clsr.fast.native` or torch ops run, and whether denormals are flushed. The same seed and configuration give
bit-identical results only on the same compute path; runs record it in last.pt and metrics.json, and
`clsr.train.fit` refuses to resume a checkpoint written on another one.

`tune_cpu_allocator` — why: a CLSR training step allocates and frees tensors of 20-40 MB (the
short-term attention over B·C·L = 125k rows). glibc serves every block above its mmap threshold
(at most 32 MB) with a fresh ``mmap`` and returns it with ``munmap`` on free, so every step pays the
page faults of touching that memory again: one (125k × 40) @ (40 × 80) matmul takes 12.7 ms into a
fresh tensor and 2.5 ms into a reused one on the 2-core machine this project is developed on, and a
whole step goes from 294 ms to 256 ms once large blocks are kept (`benchmarks/bench_train.py`).
Raising the mmap and trim thresholds lets freed blocks be reused. The cost: the process keeps its
peak heap instead of returning it to the OS. Opt out with ``CLSR_KEEP_MALLOC=1``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_done: bool | None = None
#: the wait policy in effect for this process's OpenMP threads (None: not decided by clsr: torch was loaded first)
openmp_wait_policy: str | None = None


def set_openmp_wait_policy(default: str = "PASSIVE") -> str | None:
    """Set ``OMP_WAIT_POLICY`` to `default` unless the environment already names one; only effective
    before torch is imported. Returns the policy in effect, or None when torch was imported first (then
    whatever the environment said when it loaded applies)."""
    global openmp_wait_policy
    if "torch" in sys.modules:
        openmp_wait_policy = os.environ.get("OMP_WAIT_POLICY") or None
        return openmp_wait_policy
    openmp_wait_policy = os.environ.setdefault("OMP_WAIT_POLICY", default)
    return openmp_wait_policy


def flush_denormals() -> bool:
    """Turn on flush-to-zero and denormals-are-zero for torch's CPU arithmetic in this thread (and in the
    worker threads torch creates after it), unless ``CLSR_KEEP_DENORMALS`` is set. Imports torch. Returns
    True when the CPU supports it and it was set."""
    if os.environ.get("CLSR_KEEP_DENORMALS"):
        return False
    import torch

    return bool(torch.set_flush_denormal(True))


def denormal_mode() -> str:
    """'flush' when denormals are flushed on every torch CPU thread, 'keep' when on none, 'partial' when only
    on some (torch ran parallel work before `flush_denormals`, e.g. torch was imported and used before clsr).

    Checked by arithmetic, not assumed: the smallest positive denormal (bit pattern 1), multiplied by 1 in
    a tensor large enough that every thread takes a share, gives 0 on a flushing thread and itself elsewhere."""
    import torch

    n = (1 << 16) * max(1, torch.get_num_threads())
    tiny = torch.ones(n, dtype=torch.int32).view(torch.float32)
    kept = int((torch.mul(tiny, 1.0).view(torch.int32) != 0).sum())
    return "flush" if kept == 0 else "keep" if kept == n else "partial"


def tune_cpu_allocator(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 31) -> bool:
    """Ask glibc to serve blocks below `mmap_threshold` bytes from the heap and to keep up to
    `trim_threshold` free bytes instead of returning them. Idempotent; returns True when applied
    (Linux with glibc), False elsewhere or when ``CLSR_KEEP_MALLOC`` is set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("CLSR_KEEP_MALLOC") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)))
    _done = ok
    return ok


def kernel_path(device="cpu") -> str:
    """'native' when the C kernels of `clsr.fast.native` run for float tensors on `device`, else 'torch'."""
    import torch  # here: this module is imported before torch (set_openmp_wait_policy)

    from clsr.fast import native

    return "native" if torch.device(device).type == "cpu" and native.available() else "torch"


def compute_path(device="cpu") -> dict:
    """{"device", "threads", "kernels", "denormals"}: the device, `torch.get_num_threads()`,
    `kernel_path(device)` and `denormal_mode()` (of the CPU threads; a CUDA device has its own)."""
    import torch

    return {"device": str(device), "threads": torch.get_num_threads(), "kernels": kernel_path(device),
            "denormals": denormal_mode()}
