"""Trainer reliability: safe checkpoints, run directories that cannot collide, the compute path recorded
and checked, settings refused before the first epoch, the data fingerprint of a finished run."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from copy import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import clsr.train as T
from clsr.config import ConfigError, from_dict
from clsr.data.sources import DataError
from clsr.data.store import Instances
from clsr.runtime import compute_path, kernel_path
from clsr.rundir import RunError, run_lock, save_checkpoint
from clsr.train import TrainConfig, default_run_dir, fit, load_trained
from conftest import build, make_random_df

TESTS = Path(__file__).resolve().parent
TRAIN = {"epochs": 2, "patience": 2, "batch_size": 64, "progress": False, "threads": 1}


@pytest.fixture(scope="module")
def tiny():
    """50 users, per-user split, histories of at most 20 events (tests/conftest.py)."""
    return build(make_random_df(), max_len=20)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished two-epoch CLSR run; tests work on copies of its folder."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    fit(tiny, "clsr", {}, TRAIN, run_dir=run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


class CreatesFile:
    """Unpickling this object opens (so creates) `path`: a stand-in for code a crafted checkpoint runs."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_crafted(path: Path, marker: Path, as_torch_file: bool) -> None:
    payload = {"model": CreatesFile(marker), "epoch": 1}
    if as_torch_file:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)


def test_crafted_payload_really_runs_code_when_unpickled(tmp_path):
    """The payload the next tests plant is live: plain unpickling creates the marker file."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(CreatesFile(marker)))
    assert marker.exists()


@pytest.mark.parametrize("as_torch_file", [True, False], ids=["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("name", ["best.pt", "last.pt"])
def test_crafted_checkpoint_is_refused_and_never_runs(run_copy, tiny, tmp_path, name, as_torch_file):
    """A torch file names the global it would call; a raw pickle stops at its first opcode the safe loader lacks."""
    marker = tmp_path / "marker"
    write_crafted(run_copy / name, marker, as_torch_file)
    why = r"refused: it holds io\.open, .*could run code" if as_torch_file else r"unreadable checkpoint \(not only"
    with pytest.raises(RunError, match=rf"{run_copy / name}: {why}"):
        fit(tiny, "clsr", {}, TRAIN, run_dir=run_copy)  # resumes: reads last.pt, then checks best.pt
    if name == "best.pt":
        with pytest.raises(RunError, match=rf"{run_copy / name}: {why}"):
            load_trained(run_copy, tiny)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_corrupt_last_checkpoint_is_one_clear_error(run_copy, tiny, damage):
    path = run_copy / "last.pt"
    blob = path.read_bytes()
    path.write_bytes({"truncated": blob[: len(blob) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    with pytest.raises(RunError, match=r"last\.pt: unreadable checkpoint .*delete it, or pass --no-resume"):
        fit(tiny, "clsr", {}, TRAIN, run_dir=run_copy)


def test_corrupt_best_checkpoint_is_one_clear_error(run_copy, tiny):
    path = run_copy / "best.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RunError, match=rf"{path}: unreadable checkpoint .*train the run again"):
        load_trained(run_copy, tiny)


def test_no_resume_trains_afresh_over_a_corrupt_checkpoint(tiny, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r", stop_after_epochs=1)
    (tmp_path / "r" / "last.pt").write_bytes(b"")
    res = fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r", resume=False)
    assert [r["epoch"] for r in res.history] == [1, 2]
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["epoch"] == 2


def test_checkpoints_load_with_weights_only(finished):
    """Everything a checkpoint holds (numpy RNG state, history, config dicts) is plain data."""
    last = torch.load(finished / "last.pt", weights_only=True)
    best = torch.load(finished / "best.pt", weights_only=True)
    assert last["numpy_rng"]["bit_generator"] == "PCG64"
    assert [r["epoch"] for r in last["history"]] == [1, 2]
    assert last["config"]["model"] == "clsr" and best["epoch"] == last["best_epoch"]


def test_failed_checkpoint_write_keeps_the_previous_file(finished, tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    shutil.copy(finished / "last.pt", path)
    before = path.read_bytes()

    def half_write(obj, f):
        Path(f).write_bytes(before[:50])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


# ------------------------------------------------------------------------------------------------
# run directories
# ------------------------------------------------------------------------------------------------
def test_finished_run_of_another_configuration_is_refused_and_kept(run_copy, tiny):
    before = {name: (run_copy / name).read_bytes() for name in ("metrics.json", "best.pt", "last.pt")}
    old_hash = json.loads(before["metrics.json"])["config_hash"]
    with pytest.raises(RunError) as err:
        fit(tiny, "clsr", {"contrastive": "bpr"}, TRAIN, run_dir=run_copy)
    msg = str(err.value)
    assert str(run_copy) in msg and old_hash in msg and "--overwrite" in msg and "--run-dir" in msg
    new_hash = msg.split("this run is configuration ")[1].split()[0]
    assert new_hash != old_hash and len(new_hash) == 12
    assert {name: (run_copy / name).read_bytes() for name in before} == before


def test_overwrite_replaces_a_finished_run_of_another_configuration(run_copy, tiny):
    res = fit(tiny, "clsr", {"contrastive": "bpr"}, dict(TRAIN, epochs=1), run_dir=run_copy, overwrite=True)
    written = json.loads((run_copy / "metrics.json").read_text())
    assert written["config_hash"] == res.metrics["config_hash"]
    assert written["config"]["model_config"]["contrastive"] == "bpr"
    assert [r["epoch"] for r in res.history] == [1]  # trained afresh, not resumed from the other run


def test_finished_run_of_the_same_configuration_resumes_without_training(run_copy, tiny):
    before = json.loads((run_copy / "metrics.json").read_text())
    res = fit(tiny, "clsr", {}, TRAIN, run_dir=run_copy)
    assert res.metrics["test"] == before["test"] and len(res.history) == before["epochs_run"]


def test_default_run_dir_is_keyed_by_configuration(tiny):
    cfg = from_dict(TrainConfig, TRAIN)
    a = default_run_dir("runs", "ml", "clsr", {}, cfg)
    assert a.parent == Path("runs") / "ml" / "clsr" and len(a.name) == 12
    assert default_run_dir("runs", "ml", "clsr", {}, dict(TRAIN, progress=True)) == a  # display only
    others = [
        default_run_dir("runs", "ml", "clsr", {"contrastive": "bpr"}, cfg),
        default_run_dir("runs", "ml", "clsr", {}, dict(TRAIN, seed=1)),
        default_run_dir("runs", "ml", "clsr", {}, dict(TRAIN, lr=2e-3)),
    ]
    assert len({a, *others}) == 4


def test_a_held_run_directory_is_refused_at_once(tiny, tmp_path):
    run_dir = tmp_path / "r"
    with run_lock(run_dir):
        t0 = time.perf_counter()
        with pytest.raises(RunError, match=rf"{run_dir}: another training run \(pid {os.getpid()}\)"):
            fit(tiny, "clsr", {}, TRAIN, run_dir=run_dir)
        assert time.perf_counter() - t0 < 5
    assert not (run_dir / "last.pt").exists()


def test_lock_is_released_when_a_run_is_interrupted(tiny, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r", stop_after_epochs=1)
    with run_lock(tmp_path / "r"):
        pass


RACER = """
import os, sys, time
sys.path.insert(0, {tests!r})
from conftest import build, make_random_df
import clsr.train as T
from clsr.rundir import RunError

role, run_dir, gate = sys.argv[1:4]
data = build(make_random_df(), max_len=20)
if role == "holder":  # keep the lock until the other process has tried to take it
    real = T.evaluate
    def gated(*a, **k):
        deadline = time.time() + 120
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        return real(*a, **k)
    T.evaluate = gated
t0 = time.perf_counter()
try:
    T.fit(data, "clsr", {{}}, {train!r}, run_dir=run_dir)
except RunError as e:
    print(f"REFUSED after {{time.perf_counter() - t0:.3f}} s: {{e}}", flush=True)
    open(gate, "w").close()
    sys.exit(3)
print("TRAINED", flush=True)
"""


def test_two_processes_on_one_run_directory(tiny, tmp_path):
    """Exactly one trains; the other fails at once naming the directory and the holder's pid; the finished
    run's files are intact and loadable."""
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(tests=str(TESTS), train=TRAIN))
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    cwd = TESTS.parent
    holder = subprocess.Popen([sys.executable, str(script), "holder", str(run_dir), str(gate)], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and holder.poll() is None:
            lock = run_dir / ".lock"
            if lock.exists() and lock.read_text().strip() == str(holder.pid):
                break
            time.sleep(0.05)
        assert holder.poll() is None, holder.communicate()[0]
        other = subprocess.run([sys.executable, str(script), "contender", str(run_dir), str(gate)], cwd=cwd,
                               capture_output=True, text=True, timeout=120)
        out, _ = holder.communicate(timeout=300)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert other.returncode == 3, other.stdout + other.stderr
    refused = other.stdout.strip().splitlines()[-1]
    assert f"{run_dir}: another training run (pid {holder.pid})" in refused
    assert float(refused.split("REFUSED after ")[1].split()[0]) < 2.0
    assert holder.returncode == 0 and "TRAINED" in out, out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    model = load_trained(run_dir, tiny, device="cpu")
    assert T.evaluate(model, tiny, "test", from_dict(TrainConfig, TRAIN)) == metrics["test"]
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# the compute path: recorded, checked on resume, and what it changes
# ------------------------------------------------------------------------------------------------
def test_compute_path_is_recorded(finished):
    metrics = json.loads((finished / "metrics.json").read_text())
    last = torch.load(finished / "last.pt", weights_only=True)
    expected = {"device": "cpu", "threads": 1, "kernels": kernel_path("cpu"), "denormals": "flush"}
    assert metrics["compute"] == expected and last["compute"] == expected
    assert kernel_path("cpu") in ("native", "torch") and kernel_path("meta") == "torch"


def test_resume_on_another_thread_count_is_refused(tiny, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r", stop_after_epochs=1)
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    ckpt["compute"]["threads"] = 7  # as written by a run with train.threads = 7
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    with pytest.raises(RunError, match=r"last\.pt: written with threads=7, this process has threads=1 .*--no-resume"):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r")


def test_resume_on_another_kernel_path_is_refused(tiny, tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r", stop_after_epochs=1)
    other = "torch" if kernel_path("cpu") == "native" else "native"
    monkeypatch.setattr(T, "compute_path", lambda device: {**compute_path(device), "kernels": other})
    with pytest.raises(RunError, match=rf"written with kernels={kernel_path('cpu')}, this process has kernels={other}"):
        fit(tiny, "clsr", {}, TRAIN, run_dir=tmp_path / "r")


def test_thread_count_changes_results_by_less_than_the_seed_spread(tiny):
    """Same seed, threads and kernel path: bit-identical. 1 vs 2 threads: other float rounding (torch's
    parallel reductions split work by thread), which after one epoch moves the metrics by less than the
    spread of three seeds. The difference grows with training (Adam turns rounding noise in near-zero
    gradients into full-size steps), so runs on other thread counts agree in distribution, like seeds."""
    cfg = dict(TRAIN, epochs=1)
    try:
        two = [fit(tiny, "clsr", {}, dict(cfg, threads=2)) for _ in range(2)]
        one = [fit(tiny, "clsr", {}, dict(cfg, threads=1, seed=s)) for s in range(3)]
    finally:
        torch.set_num_threads(1)
    assert two[0].metrics["compute"] == two[1].metrics["compute"]
    assert two[0].metrics["test"] == two[1].metrics["test"]
    assert [r["loss_total"] for r in two[0].history] == [r["loss_total"] for r in two[1].history]
    for key in ("auc", "gauc", "mrr"):
        seeds = [r.metrics["test"][key] for r in one]
        spread = max(seeds) - min(seeds)
        threads_diff = abs(one[0].metrics["test"][key] - two[0].metrics["test"][key])
        assert threads_diff < spread, (key, threads_diff, seeds)


# ------------------------------------------------------------------------------------------------
# settings refused before the first epoch
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [("eval_batch_size", 0), ("lr", 0.0), ("lr", -1e-3), ("lr", float("nan")), ("lr", float("inf")),
     ("threads", -1), ("seed", -1), ("device", "gpu"), ("device", "cuda:x"), ("ks", [0, 5]),
     ("max_train_instances", -1)],
)
def test_bad_train_settings_are_named(key, value):
    with pytest.raises(ConfigError, match=rf"^train\.{key}: "):
        from_dict(TrainConfig, {key: value}, "train")


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_names_accepted(device):
    from_dict(TrainConfig, {"device": device}, "train")


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_empty_split_is_refused_before_building_the_model(tiny, split, monkeypatch):
    data = copy(tiny)
    data.instances = {**tiny.instances, split: Instances(np.zeros(0, np.int32), np.zeros(0, np.int32))}
    monkeypatch.setattr(T, "build_model", lambda *a, **k: pytest.fail("built a model for void data"))
    with pytest.raises(DataError, match=rf"the {split} split has no instances; change datasets\.t\.protocol"):
        fit(data, "clsr", {}, TRAIN)


def test_recent_k_reaching_max_len_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(T, "build_model", lambda *a, **k: pytest.fail("built a model for a void task"))
    with pytest.raises(ConfigError, match=r"models\.clsr\.recent_k: 20 ≥ datasets\.t\.protocol\.max_len = 20"):
        fit(tiny, "clsr", {"recent_k": 20}, TRAIN)
    from clsr.models.registry import build_config

    build_config("clsr", {"recent_k": 20, "contrastive": "none"}).check_data(20)  # no contrastive task: fine
    build_config("clsr", {"recent_k": 19}).check_data(20)
    build_config("din", {}).check_data(1)  # models without such a setting accept any length


# ------------------------------------------------------------------------------------------------
# the data a finished run is loaded with
# ------------------------------------------------------------------------------------------------
def test_load_trained_checks_the_data_fingerprint(finished, tiny, capsys):
    load_trained(finished, tiny)  # the data it was trained on
    other = copy(tiny)
    other.meta = {**tiny.meta, "protocol": {**tiny.meta["protocol"], "seed": 5}, "content_sha256": "ab12"}
    with pytest.raises(RunError) as err:
        load_trained(finished, other)
    msg = str(err.value)
    assert str(finished) in msg and "--allow-other-data" in msg
    assert "content sha256 None (run) vs ab12 (given)" in msg
    assert f"protocol.seed {tiny.meta['protocol']['seed']} (run) vs 5 (given)" in msg
    model = load_trained(finished, other, allow_other_data=True)
    assert "WARNING" in capsys.readouterr().err and not model.training


def test_load_trained_of_an_unfinished_run_says_so(tiny, tmp_path):
    with pytest.raises(RunError, match=r"metrics\.json: not found; the run has not finished"):
        load_trained(tmp_path, tiny)


# ------------------------------------------------------------------------------------------------
# why a run stopped
# ------------------------------------------------------------------------------------------------
def test_stop_reason_cap(tiny):
    res = fit(tiny, "clsr", {}, dict(TRAIN, epochs=1, patience=5))
    assert (res.metrics["stop_reason"], res.metrics["epochs_run"], res.metrics["best_epoch"]) == ("cap", 1, 1)


def test_stop_reason_patience(tiny, monkeypatch):
    """Validation GAUC falls after epoch 1: with patience 1 the run stops after epoch 2 of at most 4."""
    real = T.evaluate
    falling = iter([0.9, 0.8, 0.7, 0.6])

    def valid_falls(model, data, split, cfg, device=None):
        out = real(model, data, split, cfg, device)
        return {**out, "gauc": next(falling)} if split == "valid" else out

    monkeypatch.setattr(T, "evaluate", valid_falls)
    res = fit(tiny, "clsr", {}, dict(TRAIN, epochs=4, patience=1))
    assert (res.metrics["stop_reason"], res.metrics["epochs_run"], res.metrics["best_epoch"]) == ("patience", 2, 1)
    assert math.isclose(res.metrics["valid"]["gauc"], 0.9)
