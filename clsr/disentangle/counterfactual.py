"""The counterfactual test sets (docs/protocol.md §10): the stored test instances, same fixed candidates,
with their histories changed.

* ``original``: the histories as stored;
* ``recent``:   only the last ``recent_k`` events of each history, the time features recomputed on the
  shortened history (`clsr.data.batches.eval_batches(recent_k=)`); a short-term encoder should lose
  little, a long-term one much;
* ``shuffled``: each history's items and categories permuted among its valid positions, timestamps (and
  so the time features) left in place, as the released ShuffleSASequentialIterator. The permutation of an
  instance is a fixed function of (``shuffle_seed``, instance index, position) (`shuffle_keys`), so it does
  not depend on the batch size. Order-sensitive short-term modelling should suffer, order-free long-term
  modelling should not. (Both long-term encoders studied here are attention pooling without positions,
  hence exactly order-invariant by construction.)
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

import numpy as np
import torch

from clsr.data import batches as B
from clsr.data.store import PreparedData
from clsr.train import data_settings

SETS = ("original", "recent", "shuffled")

_U64 = np.uint64


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a well-mixed bijection."""
    z = np.asarray(x, dtype=_U64) + _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def shuffle_keys(seed: int, instance: np.ndarray, length: int) -> np.ndarray:
    """Uniform keys in [0, 1), shape (n, length), a fixed function of (seed, instance, position)."""
    instance = np.asarray(instance, dtype=np.int64)
    if (instance < 0).any():
        raise ValueError("shuffle_keys: instances need their index in the split (batch.instance >= 0)")
    with np.errstate(over="ignore"):
        s = splitmix64(np.array([int(seed) % 2**64], dtype=_U64))
        h = splitmix64(s ^ instance.astype(_U64))
        k = splitmix64(h[:, None] ^ splitmix64(np.arange(length, dtype=_U64))[None, :])
    return (k >> _U64(11)).astype(np.float64) / float(2**53)


def shuffle_batch(batch: B.Batch, seed: int) -> B.Batch:
    """Counterfactual "shuffled": permute each history's items and categories among its valid positions.

    The same operation as `clsr.data.batches.shuffle_history` (timestamps, time features, mask and
    candidates untouched; padding stays at the end), with the permutation drawn from `shuffle_keys` so
    that it depends only on (seed, instance), not on the batching.
    """
    L = batch.hist_item.shape[1]
    keys = torch.from_numpy(shuffle_keys(seed, batch.instance.cpu().numpy(), L)).to(batch.mask.device)
    keys = torch.where(batch.mask > 0, keys, torch.full_like(keys, 2.0))  # padding sorts last
    perm = keys.argsort(dim=1, stable=True)
    return replace(batch, hist_item=batch.hist_item.gather(1, perm), hist_cate=batch.hist_cate.gather(1, perm))


def counterfactual_batches(
    data: PreparedData,
    kind: str,
    split: str = "test",
    batch_size: int = 500,
    recent_k: int = 5,
    shuffle_seed: int = 0,
) -> Iterator[B.Batch]:
    """Evaluation batches of `split` (stored order, fixed candidates) for one counterfactual set."""
    max_len, time_unit = data_settings(data)
    if kind == "original":
        yield from B.eval_batches(data, split, batch_size, max_len, time_unit)
    elif kind == "recent":
        if recent_k < 1:
            raise ValueError(f"disentanglement.recent_k: must be >= 1, got {recent_k}")
        yield from B.eval_batches(data, split, batch_size, max_len, time_unit, recent_k=recent_k)
    elif kind == "shuffled":
        for b in B.eval_batches(data, split, batch_size, max_len, time_unit):
            yield shuffle_batch(b, shuffle_seed)
    else:
        raise ValueError(f"counterfactual set {kind!r} is not one of {list(SETS)}")
