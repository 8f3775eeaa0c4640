"""Process-level settings: a faster CPU allocator, and the compute path every run records.

`compute_path` — what decides a run's float rounding besides its configuration: the device, torch's
CPU thread count (reductions and GEMMs split their work by thread) and whether the C kernels of
`clsr.fast.native` or torch ops run. The same seed and configuration give bit-identical results only on
the same compute path; runs record it in last.pt and metrics.json, and `clsr.train.fit` refuses to resume
a checkpoint written on another one.

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

import torch

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_done: bool | None = None


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


def kernel_path(device: torch.device | str = "cpu") -> str:
    """'native' when the C kernels of `clsr.fast.native` run for float tensors on `device`, else 'torch'."""
    from clsr.fast import native  # here: the kernels are not needed to tune the allocator

    return "native" if torch.device(device).type == "cpu" and native.available() else "torch"


def compute_path(device: torch.device | str = "cpu") -> dict:
    """{"device", "threads", "kernels"}: the device, `torch.get_num_threads()` and `kernel_path(device)`."""
    return {"device": str(device), "threads": torch.get_num_threads(), "kernels": kernel_path(device)}
