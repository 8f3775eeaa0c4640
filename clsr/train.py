"""Training and evaluation: fit with early stopping, checkpoints and resume, seeds, device.

The schedule is the released one (docs/protocol.md §7.5): Adam (lr 1e-3), 500 instances per step with
1 + 4 in-batch candidates, per-tensor gradient clipping for CLSR, one validation pass per epoch,
early stopping on validation GAUC (strictly better = improvement, patience 5, at most 100 epochs), then
one test evaluation of the best checkpoint. Selection never looks at the test split.

Checkpoints (``run_dir/last.pt``) hold model, optimiser, epoch, best score, history, the random states
of the data sampler and of torch, the resolved config and the compute path (device, torch threads,
kernels: `clsr.runtime.compute_path`): a killed run restarted with ``resume=True`` on the same compute
path continues after its last finished epoch and ends exactly where an uninterrupted run would; on
another compute path it is refused (the float rounding differs). Other thread counts give other bits,
and the difference grows with training like a change of seed.

Safety: checkpoints are read with ``weights_only=True`` and written through unique temporary files;
a run directory is locked for the whole run; a finished run of another configuration is never
replaced without ``overwrite``; `load_trained` checks that the data is the one the run was trained on.
Errors a user can cause are `RunError` (a ValueError), one line naming the file and what to do.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm import tqdm  # the plain text bar: tqdm.auto would ask papermill kernels for ipywidgets

from clsr import diagnostics
from clsr import distributed as D
from clsr import metrics as M
from clsr.config import ConfigError, config_hash, from_dict
from clsr.data import batches as B
from clsr.data.sources import DataError
from clsr.data.store import PreparedData, atomic_write_json
from clsr.evaluation import data_settings, test_report
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.registry import build_config, build_model
from clsr.rundir import (
    LAST_REMEDY, PER_INSTANCE, check_same_compute_path, check_same_data, guard_finished_run, load_best,
    load_checkpoint, load_per_instance, read_metrics, run_lock, save_checkpoint, save_per_instance,
)
from clsr.runtime import compute_path, tune_cpu_allocator


#: device names `TrainConfig.device` accepts
DEVICE_NAME = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")


@dataclass
class TrainConfig:
    """Optimisation and evaluation settings (defaults = the released CLI)."""

    epochs: int = 100  # maximum number of epochs
    patience: int = 5  # stop when epoch - best_epoch >= patience (validation GAUC, strict improvement)
    batch_size: int = 500  # instances per step (each with 1 + n_neg candidates)
    n_neg: int = 4  # in-batch training negatives per instance
    lr: float = 1.0e-3  # Adam learning rate (β = (0.9, 0.999), ε = 1e-8 as TF)
    eval_batch_size: int = 500  # instances per evaluation step
    seed: int = 0  # model init, batch order and negatives
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda | cuda:N | mps
    threads: int = 0  # torch CPU threads; 0 = leave PyTorch's default
    max_train_instances: int = 0  # > 0: use a fixed, seeded subset of train instances (quick runs)
    select_metric: str = "gauc"  # validation metric for early stopping (released: wauc = gauc)
    ties: str = "mean"  # ranking metrics' ties: mean (expected rank over tie orders) | pessimistic (= released) | optimistic
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 6, 10])  # cut-offs for ndcg@k / hit@k
    progress: bool = True  # tqdm bars (one summary line per epoch is always printed)
    full_ranking_max_items: int = 5000  # test full ranking when the item vocabulary is at most this large (0 = off)

    def validate(self, where: str = "train") -> None:
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1 or self.n_neg < 1:
            raise ConfigError(f"{where}: epochs, patience, batch_size and n_neg must be >= 1")
        if self.batch_size < 1 + self.n_neg:
            raise ConfigError(
                f"{where}.batch_size: {self.batch_size} is smaller than 1 + n_neg = {1 + self.n_neg}; "
                "in-batch negatives need that many instances per batch"
            )
        if self.ties not in M.TIE_MODES:
            raise ConfigError(f"{where}.ties: {self.ties!r} is not one of {list(M.TIE_MODES)}")
        if self.select_metric not in ("gauc", "auc", "mrr"):
            raise ConfigError(f"{where}.select_metric: {self.select_metric!r} is not one of ['gauc', 'auc', 'mrr']")
        if self.eval_batch_size < 1:
            raise ConfigError(f"{where}.eval_batch_size: must be >= 1, got {self.eval_batch_size}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"{where}.lr: must be a finite number > 0, got {self.lr}")
        for key in ("threads", "seed", "max_train_instances", "full_ranking_max_items"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}.{key}: must be >= 0, got {getattr(self, key)}")
        if not DEVICE_NAME.fullmatch(self.device):
            raise ConfigError(f"{where}.device: {self.device!r} is not a device name; use auto, cpu, cuda, cuda:N or mps")
        if any(k < 1 for k in self.ks):
            raise ConfigError(f"{where}.ks: cut-offs must be >= 1, got {self.ks}")

    def result_settings(self) -> dict:
        """The settings that can change what a run computes (all but `progress`): hashed into the run's
        configuration, so showing or hiding progress bars never makes a checkpoint "another configuration"."""
        return {k: v for k, v in asdict(self).items() if k != "progress"}


#: package files whose content decides what `fit` computes (relative to clsr/); a checkpoint written by other
#: code is not resumed, so a fixed bug or a changed model takes effect on the next `dvc repro`
TRAINING_CODE = ("models", "fast", "runtime.py", "train.py", "scoring.py", "evaluation.py", "diagnostics.py",
                 "losses.py", "metrics.py", "data/batches.py", "distributed.py")


def source_for_hash(path: Path) -> bytes:
    """What of a training-code file decides what it computes: a Python file's syntax tree without its
    docstrings (comments are not in the tree), so editing prose never retrains a run; any other file's bytes."""
    if path.suffix != ".py":
        return path.read_bytes()
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def code_fingerprint() -> str:
    """Short sha256 over the names and the code (`source_for_hash`) of the `TRAINING_CODE` files."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in TRAINING_CODE:
        path = root / rel
        files = sorted(f for f in path.rglob("*") if f.suffix in (".py", ".c")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(source_for_hash(f))
    return h.hexdigest()[:12]


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available here; use 'auto' or 'cpu'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: 'mps' asked for, but MPS is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


def model_sizes(data: PreparedData) -> ModelSizes:
    return ModelSizes(n_users=data.user_vocab_size, n_items=data.item_vocab_size, n_cates=data.cate_vocab_size)


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Adam:
    """Adam (β = 0.9, 0.999, ε = 1e-8, as released), as torch's fused kernel on CPU and CUDA: the same
    update, one pass per tensor instead of about ten ops (≈ 1.2 ms of a CLSR step on 2 cores)."""
    dev = next(model.parameters()).device.type
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=dev in ("cpu", "cuda"))


def clip_per_tensor_(params: list[torch.Tensor], max_norm: float) -> None:
    """TF clip_by_norm on each gradient separately: g <- g · max_norm / max(‖g‖, max_norm)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / torch.clamp(n, min=max_norm), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


# ------------------------------------------------------------------------------------------------
def evaluate(model: Recommender, data: PreparedData, split: str, cfg: TrainConfig, device=None) -> dict[str, float] | None:
    """Ranking metrics (clsr.metrics) of the model as trained on the fixed candidates of `split`.

    In a distributed run every rank scores its share of the batches and rank 0 gets the metrics (None on the
    other ranks): the same numbers as one process scoring every batch (`clsr.distributed.score_sharded`)."""
    scores = D.score_sharded(
        model, lambda block: B.eval_batches(data, split, cfg.eval_batch_size, *data_settings(data), block=block),
        B.n_eval_batches(data, split, cfg.eval_batch_size), device,
    )
    if scores is None:
        return None
    return M.evaluate_scores(scores.logits["model"], scores.user, tuple(cfg.ks), cfg.ties)


# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
def check_data_fits(data: PreparedData, model_name: str, mcfg: ModelConfig) -> None:
    """Refuse, before anything is built, data on which a run would be void: an empty train, valid or test
    split, or a model setting that the data's history length makes meaningless (`ModelConfig.check_data`)."""
    keys = {"train": "split, span, train_keep, min_history", "valid": "split, span, valid_fraction, valid_keep",
            "test": "split, span, test_fraction, test_keep"}
    for split, knobs in keys.items():
        inst = data.instances.get(split)
        if inst is None or len(inst) == 0:
            raise DataError(
                f"dataset {data.name!r}: the {split} split has no instances; change "
                f"datasets.{data.name}.protocol ({knobs}) and prepare the data again"
            )
    max_len, _ = data_settings(data)
    mcfg.check_data(max_len, f"models.{model_name}", f"datasets.{data.name}.protocol.max_len")


def run_identity(data: PreparedData, model_name: str, mcfg: ModelConfig, cfg: TrainConfig) -> tuple[dict, str]:
    """(the resolved configuration of a run, its hash): model, config, training settings and the data."""
    resolved = {
        **run_settings(model_name, mcfg, cfg),
        "dataset": data.name,
        "dataset_sha256": data.meta.get("content_sha256"),
        "protocol": data.meta.get("protocol"),
    }
    return resolved, config_hash(resolved)


def finished_result(run_dir: str | Path, data: PreparedData, model_name: str, mcfg: ModelConfig,
                    cfg: TrainConfig) -> "FitResult | None":
    """The stored result of `run_dir` when it holds a finished run of exactly this configuration and training
    code (model None: load it with `load_trained`), else None. Lets a pipeline stage reuse a run that another
    stage already trained instead of training or testing it again."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        return None
    done = read_metrics(run_dir)
    _, chash = run_identity(data, model_name, mcfg.canonical(), cfg)
    if done.get("config_hash") != chash or done.get("code_hash") != code_fingerprint():
        return None
    with open(run_dir / "history.json") as f:
        history = json.load(f)
    per = load_per_instance(run_dir / PER_INSTANCE) if (run_dir / PER_INSTANCE).exists() else {}
    return FitResult(model=None, metrics=done, history=history, per_instance=per)


def run_settings(model_name: str, mcfg: ModelConfig, cfg: TrainConfig) -> dict:
    """The model and training settings of a run, as hashed into its configuration."""
    return {"model": model_name, "model_config": asdict(mcfg), "train": cfg.result_settings()}


def default_run_dir(
    root: str | Path,
    dataset: str,
    name: str,
    model_cfg: ModelConfig | Mapping[str, Any] | None,
    train_cfg: TrainConfig | Mapping[str, Any] | None,
) -> Path:
    """``root/<dataset>/<name>/<hash>``, the hash (12 hex) over model `name`, its config and the training
    settings: runs of different configurations never share a folder, and the same configuration finds
    its checkpoint again."""
    mcfg = model_cfg if isinstance(model_cfg, ModelConfig) else build_config(name, model_cfg)
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else from_dict(TrainConfig, train_cfg or {}, "train")
    return Path(root) / dataset / name / config_hash(run_settings(name, mcfg.canonical(), cfg))


@dataclass
class FitResult:
    model: Recommender | None  # None for a result read back by `finished_result`
    metrics: dict
    history: list[dict]
    per_instance: dict = field(default_factory=dict)  # `<protocol>/<name>` -> per test instance (clsr.evaluation)


def fit(
    data: PreparedData,
    model_name: str,
    model_params: Mapping[str, Any] | ModelConfig | None = None,
    train_cfg: TrainConfig | Mapping[str, Any] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    stop_after_epochs: int | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train `model_name` on `data`, early-stop on validation, test the best checkpoint once.

    `run_dir` receives last.pt, best.pt, metrics.json and history.json; it is locked for the whole run
    (`run_lock`). A finished run of another configuration there is refused unless `overwrite`. With
    `resume`, a last.pt of this configuration and code is continued; one of another configuration or code
    is ignored (printed), one written on another compute path is refused. `stop_after_epochs` ends the
    process early as an interruption would (used by the resume test).
    """
    cfg = train_cfg if isinstance(train_cfg, TrainConfig) else from_dict(TrainConfig, train_cfg or {}, "train")
    mcfg = model_params if isinstance(model_params, ModelConfig) else build_config(model_name, model_params)
    mcfg = mcfg.canonical()  # settings that cannot change the run (e.g. k without a contrastive loss) at one value
    check_data_fits(data, model_name, mcfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = D.context(pick_device(cfg.device))  # under torchrun: this process's rank, the world size, its device
    if cfg.batch_size // ctx.world < 1 + cfg.n_neg:
        raise ConfigError(f"train.batch_size: {cfg.batch_size} split over {ctx.world} processes leaves fewer than "
                          f"1 + n_neg = {1 + cfg.n_neg} instances per process; raise it or use fewer processes")
    if ctx.device.type == "cpu":
        tune_cpu_allocator()  # reuse freed large blocks instead of page-faulting fresh ones (clsr.runtime)
    resolved, chash = run_identity(data, model_name, mcfg, cfg)
    code_hash = code_fingerprint()
    run_dir = Path(run_dir) if run_dir else None
    with contextlib.ExitStack() as held:
        D.set_current(ctx)
        held.callback(D.set_current, None)
        if run_dir and ctx.is_main:  # rank 0 alone locks and writes the run folder
            held.enter_context(run_lock(run_dir))
            guard_finished_run(run_dir, chash, code_hash, overwrite)
        return _train(data, model_name, mcfg, cfg, ctx, resolved, chash, code_hash, run_dir, resume,
                      stop_after_epochs)


def _train(data, model_name, mcfg, cfg, ctx, resolved, chash, code_hash, run_dir, resume, stop_after_epochs):
    """The body of `fit` once its settings are checked and its run directory is locked."""
    max_len, time_unit = data_settings(data)
    device, main = ctx.device, ctx.is_main
    compute = {**compute_path(device), **({"world": ctx.world} if ctx.distributed else {})}  # absent: 1 process
    if compute.get("denormals") == "partial":  # clsr.runtime.flush_denormals came after torch's threads started
        print("denormal floats are flushed on some CPU threads only (torch ran parallel work before clsr was "
              "imported): import clsr before torch for a steady speed", flush=True)
    torch.manual_seed(cfg.seed)
    train_data = _subset_train(data, cfg.max_train_instances, cfg.seed)
    model = build_model(model_name, model_sizes(data), mcfg)
    if hasattr(model, "attach_data"):  # graph models (LightGCN) build their train graph here
        model.attach_data(train_data)
    model = model.to(device)
    opt = make_optimizer(model, cfg.lr)
    rng = np.random.default_rng(cfg.seed)

    start_epoch, best, best_epoch, history = 1, -math.inf, 0, []
    if run_dir:
        ckpt_path = run_dir / "last.pt"
        ck = load_checkpoint(ckpt_path, device, LAST_REMEDY) if resume and ckpt_path.exists() else None
        D.barrier(ctx)  # every rank has read last.pt before rank 0 may change the folder
        if ck is not None and ck.get("config_hash") == chash and ck.get("code_hash") == code_hash:
            check_same_compute_path(ckpt_path, ck.get("compute"), compute)
            if ck["best_epoch"] > 0 and main:  # fail now, not after the remaining epochs
                load_best(run_dir, device, chash, code_hash, ck["best_epoch"])
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            rng.bit_generator.state = ck["numpy_rng"]
            torch.set_rng_state(ck["torch_rng"])
            start_epoch, best, best_epoch, history = ck["epoch"] + 1, ck["best"], ck["best_epoch"], ck["history"]
            if main:
                print(f"[{model_name}] resumed from {ckpt_path} after epoch {ck['epoch']}", flush=True)
        elif main:
            if ck is not None:
                other = "configuration" if ck.get("config_hash") != chash else "version of the training code"
                print(f"[{model_name}] {ckpt_path} belongs to another {other}: starting afresh", flush=True)
            (run_dir / "best.pt").unlink(missing_ok=True)  # an unfinished run's; never tested with this one

    params = [p for p in model.parameters() if p.requires_grad]
    step_model = D.wrap(model, ctx)  # DDP around the model when world > 1 (clsr.distributed)
    n_batches = B.n_train_batches(train_data, cfg.batch_size, cfg.n_neg, world=ctx.world)
    best_state = None
    done_epochs = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if best_epoch > 0 and (epoch - 1) - best_epoch >= cfg.patience:
            break  # a resumed run that had already stopped early
        model.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        parts_acc: dict[str, torch.Tensor] = {}
        shard = {}
        if ctx.distributed:  # this rank's share of each global batch, its own negatives and torch draws
            shard = dict(rank=ctx.rank, world=ctx.world, neg_rng=D.negative_rng(cfg.seed, epoch, ctx.rank))
            torch.manual_seed(D.torch_seed(cfg.seed, epoch, ctx.rank))
        bar = tqdm(
            B.train_batches(train_data, cfg.batch_size, cfg.n_neg, max_len, time_unit, rng, **shard),
            total=n_batches, desc=f"{model_name} epoch {epoch}", mininterval=5, leave=False,
            disable=not (cfg.progress and main),
        )
        n_seen = 0
        diag: dict[str, float] = {}
        for step, batch in enumerate(bar):
            batch = batch.to(device)
            out = step_model(batch)
            # with W > 1: this rank's parts, averaging over the ranks (as DDP averages the gradients) to the
            # one-process loss of the global batch (clsr.distributed); with W = 1 the batch's own
            parts = model.compute_loss(batch, out, ctx)
            if step == 0 and main and diagnostics.applies(model, out):  # what the self-supervision does
                diag = diagnostics.self_supervision(model, out, parts)  # (clsr.diagnostics; rank 0's share)
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            if model.clip_norm:
                clip_per_tensor_(params, model.clip_norm)
            opt.step()
            for k, v in parts.items():
                parts_acc[k] = parts_acc.get(k, 0.0) + v.detach()
            n_seen += batch.size
        steps = max(n_batches, 1)
        sums = {k: float(v) / steps for k, v in parts_acc.items()}
        if ctx.distributed:  # the ranks' parts, averaged: the global batches' losses; instances summed
            *totals, n_seen = D.all_reduce_sum([*sums.values(), n_seen], ctx)
            sums = {k: v / ctx.world for k, v in zip(sums, totals)}
        train_s = time.perf_counter() - t0
        if not all(math.isfinite(v) for v in sums.values()):
            raise FloatingPointError(f"[{model_name}] non-finite loss in epoch {epoch}: {sums}")
        t1 = time.perf_counter()
        D.sync_buffers(model, ctx)  # every rank evaluates rank 0's model, the one checkpointed below
        valid = evaluate(model, data, "valid", cfg, device)
        eval_s = time.perf_counter() - t1
        if not main:  # rank 0 decides (below) and broadcasts the epoch's row and the early-stopping state
            row, best, best_epoch = D.broadcast_object(None, ctx)
            history.append(row)
            if best_epoch == epoch and not run_dir:
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            done_epochs += 1
            if stop_after_epochs is not None and done_epochs >= stop_after_epochs:
                raise KeyboardInterrupt(f"stopped after {done_epochs} epoch(s) on request")
            if epoch - best_epoch >= cfg.patience:
                break
            continue
        score = valid[cfg.select_metric]
        if not math.isfinite(score):
            raise FloatingPointError(
                f"[{model_name}] validation {cfg.select_metric} is {score} in epoch {epoch}; no epoch can be "
                "selected (check the valid split, or choose another train.select_metric)"
            )
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
        row = {
            "epoch": epoch,
            **{f"loss_{k}": v for k, v in sums.items()},
            **{f"valid_{k}": v for k, v in valid.items() if isinstance(v, float)},
            "train_seconds": train_s,
            "valid_seconds": eval_s,
            "train_instances_per_s": n_seen / train_s if train_s > 0 else float("nan"),
            **{f"diag_{k}": v for k, v in diag.items()},
        }
        history.append(row)
        print(
            f"[{model_name}] epoch {epoch:3d} loss {sums['total']:.4f} (rec {sums['rec']:.4f}"
            + "".join(f", {k} {v:.4f}" for k, v in sums.items() if k not in ("total", "rec"))
            + f") valid gauc {valid['gauc']:.4f} auc {valid['auc']:.4f} mrr {valid['mrr']:.4f}"
            + f" | {train_s:.1f}s train {eval_s:.1f}s valid{' *' if improved else ''}",
            flush=True,
        )
        if run_dir:
            if improved:
                save_checkpoint(
                    {"model": model.state_dict(), "epoch": epoch, "config_hash": chash, "code_hash": code_hash},
                    run_dir / "best.pt",
                )
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "history": history,
                    "numpy_rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "config": resolved,
                    "config_hash": chash,
                    "code_hash": code_hash,
                    "compute": compute,
                },
                run_dir / "last.pt",
            )
        elif improved:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        D.broadcast_object((row, best, best_epoch), ctx)  # after the checkpoints: the other ranks may read them
        done_epochs += 1
        if stop_after_epochs is not None and done_epochs >= stop_after_epochs:
            raise KeyboardInterrupt(f"stopped after {done_epochs} epoch(s) on request")
        if epoch - best_epoch >= cfg.patience:
            break

    # test the best checkpoint once
    if run_dir:
        model.load_state_dict(load_best(run_dir, device, chash, code_hash, best_epoch)["model"])
    elif best_state is not None:
        model.load_state_dict(best_state)
    t2 = time.perf_counter()
    D.sync_buffers(model, ctx)
    protocols, per_instance = test_report(model, data, cfg, device)
    if not main:  # rank 0 holds the test report and writes the result
        return FitResult(model=model, metrics={}, history=history)
    test = protocols["sampled"]
    test_s = time.perf_counter() - t2
    best_row = next(r for r in history if r["epoch"] == best_epoch)
    train_secs = [r["train_seconds"] for r in history]
    result = {
        "model": model_name,
        "dataset": data.name,
        "seed": cfg.seed,
        "test": test,
        **{f"test_{name}": m for name, m in protocols.items() if name != "sampled"},
        "valid": {k[len("valid_"):]: v for k, v in best_row.items() if k.startswith("valid_")},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "stop_reason": "patience" if history[-1]["epoch"] - best_epoch >= cfg.patience else "cap",
        "seconds_per_epoch": float(np.mean(train_secs)),
        "train_instances_per_s": float(np.mean([r["train_instances_per_s"] for r in history])),
        "test_seconds": test_s,
        "test_candidates_per_s": test["instances"] * test["candidates"] / test_s if test_s > 0 else float("nan"),
        "parameters": model.n_parameters(),
        "config_hash": chash,
        "code_hash": code_hash,
        "config": resolved,
        "device": str(device),
        "compute": compute,
    }
    if ctx.distributed:
        result["world"] = ctx.world
    if run_dir:
        save_per_instance(run_dir / PER_INSTANCE, per_instance)
        atomic_write_json(run_dir / "history.json", history)
        atomic_write_json(run_dir / "metrics.json", result)
    return FitResult(model=model, metrics=result, history=history, per_instance=per_instance)


def _subset_train(data: PreparedData, n: int, seed: int) -> PreparedData:
    """A shallow copy of `data` whose train split is a fixed seeded subset of n instances."""
    if not n or n >= len(data.instances["train"]):
        return data
    from copy import copy

    from clsr.data.store import Instances

    inst = data.instances["train"]
    idx = np.sort(np.random.default_rng(seed + 7919).choice(len(inst), size=n, replace=False))
    sub = copy(data)
    sub.instances = dict(data.instances)
    sub.instances["train"] = Instances(inst.user[idx], inst.pos[idx])
    return sub


def load_trained(
    run_dir: str | Path, data: PreparedData, device: str = "auto", allow_other_data: bool = False
) -> Recommender:
    """The best checkpoint of a finished run, ready for `clsr.scoring.score_batches` (analysis notebooks).

    `data` must be what the run was trained on (content sha256 and protocol as recorded in metrics.json),
    else `RunError`; `allow_other_data` turns that into a warning on stderr.
    """
    run_dir = Path(run_dir)
    meta = read_metrics(run_dir)
    cfg = meta["config"]
    check_same_data(run_dir, cfg, data, allow_other_data)
    model = build_model(cfg["model"], model_sizes(data), cfg["model_config"])
    if hasattr(model, "attach_data"):
        model.attach_data(_subset_train(data, cfg["train"]["max_train_instances"], cfg["train"]["seed"]))
    dev = pick_device(device)
    remedy = "train the run again (--overwrite) or delete its directory"
    model.load_state_dict(load_checkpoint(run_dir / "best.pt", dev, remedy)["model"])
    return model.to(dev).eval()
