"""A run folder: its lock, its checkpoints and result files, and the checks that keep runs apart.

    run_dir/.lock                   held by the process that trains into the folder (`run_lock`)
    run_dir/last.pt, best.pt        checkpoints, written atomically and read with ``weights_only=True``
    run_dir/metrics.json, history.json, test_per_instance.npz   the finished run's result

Errors a user can cause are `RunError` (a ValueError): one line naming the file and what to do.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from clsr.data.store import PreparedData, atomic_path


class RunError(ValueError):
    """A run directory cannot be used as asked: an unsafe or unreadable checkpoint, another run's finished
    result, a run in progress, a checkpoint written on another compute path, or other data."""


LAST_REMEDY = "delete it, or pass --no-resume (resume=False) to start afresh"
BEST_REMEDY = "delete it, or pass --no-resume (resume=False) to train afresh"


def save_checkpoint(obj: Any, path: Path) -> None:
    """torch.save into a unique temporary sibling, then rename: readers never see half a checkpoint."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, device: torch.device | str, remedy: str) -> dict:
    """A checkpoint read with ``weights_only=True`` (tensors and plain data only, never arbitrary objects).

    A file that holds other objects, or that cannot be read, raises `RunError` naming it and `remedy`.
    """
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        if unsafe:
            raise RunError(
                f"{path}: refused: it holds {unsafe.group(1)}, not only tensors and plain data, and loading it "
                f"could run code; {remedy}"
            ) from None
        detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip() or str(e)
        raise RunError(
            f"{path}: unreadable checkpoint (not only tensors and plain data: {_first_line(detail)}); {remedy}"
        ) from None
    except Exception as e:  # truncated, empty or not a checkpoint at all
        raise RunError(f"{path}: unreadable checkpoint ({type(e).__name__}: {_first_line(e)}); {remedy}") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise RunError(f"{path}: not a clsr checkpoint (no 'model' entry); {remedy}")
    return ck


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "empty file or no details"


def read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f"{path}: not found; the run has not finished (train it to the end first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunError(f"{path}: unreadable ({e}); delete the run directory and train again") from None


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir/.lock`` for the block (released when it ends, however it ends).

    Non-blocking: a second process (or a second `fit` in this one) fails at once with `RunError` naming the
    directory and the holder's pid, instead of both writing the same checkpoints.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise RunError(
                f"{run_dir}: another training run (pid {holder}) is using this directory; wait for it to end "
                "or pick another --run-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield
    finally:
        f.close()  # closing the file releases the lock


def guard_finished_run(run_dir: Path, chash: str, code_hash: str, overwrite: bool) -> None:
    """A finished run (metrics.json) of another configuration or training code is refused, unless
    `overwrite`, which removes its result files now. A finished run of this very configuration stays
    until this run writes its own result."""
    path = run_dir / "metrics.json"
    if not path.exists():
        return
    try:
        done = read_metrics(run_dir)
    except RunError:
        if not overwrite:
            raise
        done = {}  # unreadable: replaced below
    if done.get("config_hash") == chash and done.get("code_hash") == code_hash:
        return
    if overwrite:
        for name in ("metrics.json", "history.json", PER_INSTANCE):
            (run_dir / name).unlink(missing_ok=True)
        return
    raise RunError(
        f"{run_dir}: holds a finished run of configuration {done.get('config_hash')} (code "
        f"{done.get('code_hash')}), this run is configuration {chash} (code {code_hash}); pick another "
        "--run-dir, or pass --overwrite (overwrite=True) to replace it"
    )


def check_same_compute_path(path: Path, written: Mapping[str, Any] | None, now: Mapping[str, Any]) -> None:
    """Refuse to continue a checkpoint written on another device, thread count or kernel path: the float
    rounding differs, so the resumed run would match neither an uninterrupted run of the old nor the new.

    The world size (processes of a data-parallel run) may change: a run moved to more or fewer processes
    continues (printed) from the same weights, optimiser state and permutation stream, and is then an
    uninterrupted run of neither size. (A checkpoint without a world size was written by one process.)"""
    written = {"world": 1, **dict(written or {})}
    if written["world"] != now.get("world", 1):
        print(f"{path}: written by {written['world']} process(es), continued by {now.get('world', 1)}: same weights, "
              "optimiser and permutation stream; negatives, batch-norm statistics and rounding follow the new "
              "world size", flush=True)
    diff = [k for k in now if k != "world" and written.get(k) != now[k]]
    if diff:
        was = ", ".join(f"{k}={written.get(k)}" for k in diff)
        is_ = ", ".join(f"{k}={now[k]}" for k in diff)
        raise RunError(
            f"{path}: written with {was}, this process has {is_} (torch threads: train.threads, kernels: "
            "CLSR_NATIVE, denormals: CLSR_KEEP_DENORMALS, device: train.device); run with the checkpoint's "
            "settings, or pass --no-resume (resume=False) to start afresh"
        )


#: the per-instance test values of a run (``<protocol>/<name>`` arrays), beside its metrics.json
PER_INSTANCE = "test_per_instance.npz"


def save_per_instance(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_per_instance(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_best(run_dir: Path, device, chash: str, code_hash: str, best_epoch: int) -> dict:
    """best.pt of this run: written at `best_epoch` by this configuration and code, else `RunError`."""
    path = run_dir / "best.pt"
    if not path.exists():
        raise RunError(f"{path}: missing, but last.pt says epoch {best_epoch} was the best; {BEST_REMEDY}")
    ck = load_checkpoint(path, device, BEST_REMEDY)
    if (ck.get("config_hash"), ck.get("code_hash"), ck.get("epoch")) != (chash, code_hash, best_epoch):
        raise RunError(
            f"{path}: written by another run (configuration {ck.get('config_hash')}, epoch {ck.get('epoch')}; "
            f"expected {chash}, epoch {best_epoch}); {BEST_REMEDY}"
        )
    return ck


def check_same_data(run_dir: Path, cfg: Mapping[str, Any], data: PreparedData, allow_other_data: bool) -> None:
    """The data's fingerprint (content sha256, protocol) must be the one recorded with the run."""
    diffs = []
    sha_run, sha_given = cfg.get("dataset_sha256"), data.meta.get("content_sha256")
    if sha_run != sha_given:
        diffs.append(f"content sha256 {sha_run} (run) vs {sha_given} (given)")
    proto_run, proto_given = _plain(cfg.get("protocol")) or {}, _plain(data.meta.get("protocol")) or {}
    for key in sorted(set(proto_run) | set(proto_given)):
        if proto_run.get(key) != proto_given.get(key):
            diffs.append(f"protocol.{key} {proto_run.get(key)} (run) vs {proto_given.get(key)} (given)")
    if not diffs:
        return
    msg = f"{run_dir}: trained on other data than given ({'; '.join(diffs)})"
    if not allow_other_data:
        raise RunError(
            msg + "; load the dataset the run was trained on, or pass --allow-other-data (allow_other_data=True) "
            "to use this data anyway"
        )
    print(f"WARNING: {msg}; going on with the given data as asked (--allow-other-data)", file=sys.stderr, flush=True)


def _plain(obj: Any) -> Any:
    """`obj` as metrics.json holds it (tuples become lists, numpy scalars numbers), so recorded and live
    values compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
