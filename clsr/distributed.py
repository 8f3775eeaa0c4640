"""Data-parallel training on several processes: PyTorch's own engine (``torch.distributed`` + DDP), launched by
``torchrun``.

    torchrun --nproc_per_node 2 -m clsr train --dataset ml100k --model clsr           # 2 processes, one machine
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m clsr train ...

`context` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
joins the process group once — NCCL when the run's device is a GPU (each process takes ``cuda:LOCAL_RANK``),
gloo on CPUs — and returns who this process is. Without torchrun (no ``WORLD_SIZE``, or ``WORLD_SIZE=1``)
nothing is initialised: world 1, rank 0, and `clsr.train.fit` runs exactly the single-process code.

Semantics with world size W > 1 (`clsr.train.fit`):

- Global batch: ``train.batch_size`` instances per step, as in one process. Every rank draws the same seeded
  epoch permutation (one shared stream, the one a single process uses, advanced by the permutation only),
  cuts it into the same global batches and takes its contiguous share (`local_share`: sizes differ by at most
  one). A final global chunk is kept when every share has at least 1 + n_neg instances.
- Negatives: each rank draws its in-batch negatives from its *own local batch*, with its own stream seeded by
  (seed, epoch, rank) (`negative_rng`). The pool of a negative is the b/W instances of the rank's share, not
  the b of the global batch: at W = 4 and b = 500 a negative is one of 125 targets instead of 500 (slightly
  more repeats of popular items among an instance's negatives); everything else about the draw is unchanged.
- Gradient: DDP all-reduces (averages) the gradients during backward. Every rank's loss parts are written so
  that their mean over the ranks is the one-process part of the global batch, value and gradient
  (`clsr.models.base.Recommender.compute_loss` with the run's context; the terms in `clsr.losses`). A mean
  over the global batch's entries (the recommendation loss over instances, the masked means of the
  contrastive terms over candidate rows, DIEN's auxiliary loss over history steps) is W·Σ_local / Σ_global,
  the global count from an all-reduce of the local counts (`global_sum`: a scalar, no gradient). A sum over
  the batch's *set* of rows (embedding L2 over the unique rows used, CLSR's discrepancy over the unique
  users) weights each of the rank's unique rows by W/c, c the number of ranks whose share uses it, and the
  discrepancy's mean divides by the size of the union: both from an all-gather of the ranks' unique ids
  (`row_share`; the ids, never a vocabulary-sized vector). The layer L2 is the same on every rank and
  enters as is. The logged loss parts, averaged over the ranks, are therefore the global batch's. Gradient
  clipping (per tensor) acts on the all-reduced gradient, the one-process gradient of the global batch,
  and Adam steps on every rank with it: parameters stay equal on all ranks. What still differs from one
  process is what each rank computes from its own share: the negatives (above), batch-norm statistics
  (below), and DIEN's auxiliary negatives (drawn from the share's history tokens).
- Batch norm: statistics per rank (plain BatchNorm, not SyncBatchNorm): a training step normalises each
  local batch by its own mean and variance (b/W instances, noisier for large W); the running averages used
  at evaluation are rank 0's (DDP broadcasts rank 0's buffers before every forward, and `sync_buffers`
  before each evaluation), so the checkpoint rank 0 writes is exactly the model every rank evaluates.
- Torch's own random numbers (dropout, sampled negatives inside a model) come from a stream seeded by
  (seed, epoch, rank) at the start of every epoch, so a resumed run draws what an uninterrupted one would.
- Evaluation: the fixed-candidate batches (the very batches of a single process, same boundaries) are dealt
  out in contiguous blocks (`shard_range`), each rank scores its block, rank 0 gathers the scores in order
  and computes the metrics: they equal a single-process evaluation of the same checkpoint exactly. The
  early-stopping decision is taken on rank 0 and broadcast (`broadcast_object`).
- Files: rank 0 holds the run lock and writes every file (checkpoints atomically); the other ranks only read
  the checkpoint when resuming. Every rank memory-maps the same prepared arrays (`clsr.data.store.map_npz`).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

#: a fixed offset so that the per-rank streams never coincide with the single-process stream of `seed`
_STREAM_TAG = 0x636C7372  # "clsr"


@dataclass(frozen=True)
class Context:
    """Who this process is in the run: rank, world size, and the device it computes on."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_world() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def context(device: torch.device) -> Context:
    """This process's place in the run, joining torchrun's process group on first use.

    `device` is the one the run's setting picks (`clsr.train.pick_device`); under torchrun a CUDA device
    becomes ``cuda:LOCAL_RANK`` (one GPU per process).
    """
    world = env_world()
    if world <= 1:
        return Context(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), timeout=datetime.timedelta(minutes=30))
    return Context(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun process); nothing when none was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- training data -------------------------------------------------------------------------------
def local_share(chunk: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s contiguous share of a global batch (`np.array_split`: sizes differ by at most one)."""
    return chunk if world == 1 else np.array_split(chunk, world)[rank]


def negative_rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    """The stream rank `rank` draws its in-batch negatives from in `epoch` (independent of the world size)."""
    return np.random.default_rng(np.random.SeedSequence([_STREAM_TAG, seed, epoch, rank]))


def torch_seed(seed: int, epoch: int, rank: int) -> int:
    """The torch seed of rank `rank` in `epoch` (dropout and other draws inside a model)."""
    return int(np.random.SeedSequence([_STREAM_TAG, seed, epoch, rank, 1]).generate_state(1, np.uint64)[0] >> 1)


# ---- loss terms over the global batch (clsr.losses) -----------------------------------------------
def global_sum(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Σ_r x_r over the ranks, for a count (no gradient flows through it); `x` itself in one process."""
    if not ctx.distributed:
        return x
    total = x.detach().clone()
    dist.all_reduce(total)
    return total


def row_share(ids: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, int]:
    """For this rank's unique row ids (1-d): (c, n) with c[i] the number of ranks whose ids hold
    ids[i] (≥ 1, int64) and n the number of distinct ids over all ranks, |∪_r ids_r|. Weighting each of a
    rank's rows by 1/c counts a row used by several shares once over the ranks.

    Two all-gathers: the ranks' id counts, then their ids padded to the largest count (never a tensor of the
    vocabulary's size). In one process: (ones, len(ids)).
    """
    if not ctx.distributed:
        return torch.ones_like(ids), ids.numel()
    size = torch.tensor([ids.numel()], dtype=torch.int64, device=ids.device)
    sizes = [torch.empty_like(size) for _ in range(ctx.world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = ids.new_full((max(max(sizes), 1),), -1)
    padded[: ids.numel()] = ids
    parts = [torch.empty_like(padded) for _ in range(ctx.world)]
    dist.all_gather(parts, padded)
    union, counts = torch.unique(torch.cat([p[:n] for p, n in zip(parts, sizes)]), return_counts=True)
    return counts[torch.searchsorted(union, ids)], union.numel()


# ---- evaluation ----------------------------------------------------------------------------------
def shard_range(n_batches: int, rank: int, world: int) -> range:
    """The contiguous block of batch numbers rank `rank` scores (blocks in rank order cover 0..n-1)."""
    lo, hi = (n_batches * rank) // world, (n_batches * (rank + 1)) // world
    return range(lo, hi)


def gather_to_main(obj: Any, ctx: Context) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None on the other ranks)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, ctx: Context) -> Any:
    """Rank 0's `obj` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: Iterable[float], ctx: Context) -> list[float]:
    """Element-wise sums over the ranks (float64)."""
    values = [float(v) for v in values]
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.cpu().tolist()


def sync_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Copy rank 0's buffers (batch-norm running averages) to every rank: the model rank 0 checkpoints."""
    if not ctx.distributed:
        return
    for buf in model.buffers():
        if buf.layout == torch.strided:  # sparse buffers are built by every rank from the same data
            dist.broadcast(buf.data, src=0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """The module the training steps call: `model` itself in one process, DDP around it otherwise."""
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # buffers every rank builds itself from the same data (LightGCN's sparse graph) are not DDP's to broadcast
    own = [name for name, buf in model.named_buffers() if buf.layout != torch.strided]
    if own:
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, own)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


#: the process group's context for code that has no run at hand (evaluation helpers); set by `clsr.train.fit`
_current: Context | None = None


def current() -> Context:
    """The context `clsr.train.fit` set for this process, or a single process on the CPU."""
    return _current if _current is not None else Context(0, 1, torch.device("cpu"))


def set_current(ctx: Context | None) -> None:
    global _current
    _current = ctx


def score_sharded(model, make_batches: Callable[[range | None], Iterable], n_batches: int, device=None):
    """`clsr.scoring.score_batches` over the batches `make_batches(block)` yields for each rank's block of
    batch numbers, gathered on rank 0 in order: the Scores of one process scoring every batch, on rank 0;
    None on the other ranks. In one process: ``score_batches(model, make_batches(None))``."""
    from clsr.scoring import Scores, score_batches

    ctx = current()
    if not ctx.distributed:
        return score_batches(model, make_batches(None), device=device)
    mine = score_batches(model, make_batches(shard_range(n_batches, ctx.rank, ctx.world)), device=device)
    parts = gather_to_main(mine, ctx)
    if parts is None:
        return None
    parts = [p for p in parts if len(p.user)] or parts[:1]
    return Scores(
        logits={k: np.concatenate([p.logits[k] for p in parts]) for k in parts[0].logits},
        user=np.concatenate([p.user for p in parts]),
        user_row=np.concatenate([p.user_row for p in parts]),
        instance=np.concatenate([p.instance for p in parts]),
        outputs={k: np.concatenate([p.outputs[k] for p in parts]) for k in parts[0].outputs},
    )
