"""The test evaluation of a trained model under three protocols, with per-instance values for paired statistics.

- ``sampled``: the paper's 1 + 99 fixed candidates, negatives drawn by popularity (docs/protocol.md §3);
- ``uniform``: 1 + 99 fixed candidates with uniformly drawn negatives (stored by `prepare` as "test_uniform");
- ``full``: the target among every item of the training vocabulary, the user's earlier items excluded (the
  target itself never is), HR@10/20, NDCG@10/20 and MRR. Instances whose target never occurs in training
  (vocabulary index 0, one shared embedding row) cannot be ranked by any model and are left out; their count
  is reported. Runs when the vocabulary has at most ``train.full_ranking_max_items`` items.

Sampled metrics can reorder models (Krichene & Rendle, KDD 2020): the report compares the orderings.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import numpy as np
import torch

from clsr import metrics as M
from clsr.data import batches as B
from clsr.data.store import PreparedData
from clsr.distributed import current, score_sharded

#: candidate rows (instances × items) per forward in full ranking: bounds the (B, C, L, d) attention tensors
FULL_RANKING_ROWS = 16384


def data_settings(data: PreparedData) -> tuple[int, float]:
    return int(data.meta.get("max_len", 50)), float(data.meta.get("time_unit", 86400.0))


def vocab_item_categories(data: PreparedData) -> np.ndarray:
    """(V,) category vocabulary index of each item vocabulary index (its first event's category; 0 for padding)."""
    out = np.zeros(data.item_vocab_size, dtype=np.int64)
    first = np.unique(data.event_item, return_index=True)[1]  # first event of each item code
    codes = data.event_item[first]
    vocab = data.item_index[codes]
    seen = vocab > 0
    out[vocab[seen]] = data.cate_index[data.event_cate[first][seen]]
    return out


def full_ranking_per_batch(data: PreparedData) -> int:
    """Instances per full-ranking batch (each scores the whole vocabulary)."""
    return max(1, FULL_RANKING_ROWS // max(data.item_vocab_size - 1, 1))


def full_ranking_batches(data: PreparedData, split: str, rows: np.ndarray,
                         block: range | None = None) -> Iterator[B.Batch]:
    """The instances `rows` of `split`, each with every vocabulary item 1..V-1 as candidates (`block`: only
    these batch numbers, one rank's share of a distributed evaluation)."""
    max_len, time_unit = data_settings(data)
    inst = data.instances[split]
    items = torch.arange(1, data.item_vocab_size, dtype=torch.int64)
    cates = torch.from_numpy(vocab_item_categories(data)[1:])
    per_batch = full_ranking_per_batch(data)
    starts = range(0, len(rows), per_batch)
    for s in (starts if block is None else starts[block.start : block.stop]):
        r = rows[s : s + per_batch]
        n = len(r)
        placeholder = np.zeros((n, 1), dtype=np.int64)  # replaced by the whole vocabulary below
        b = B.make_batch(data, inst.user[r], inst.pos[r], placeholder, placeholder, max_len, time_unit, instance=r)
        yield replace(b, cand_item=items.expand(n, -1).contiguous(), cand_cate=cates.expand(n, -1).contiguous())


def full_ranking(model, data: PreparedData, split: str, ks=M.FULL_RANKING_KS, ties: str = "mean",
                 device=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Full-ranking metrics of `split` and their per-instance values (rows = the rankable instances)."""
    targets = data.item_index[data.event_item[data.target_event(split)]].astype(np.int64)
    rows = np.flatnonzero(targets > 0)
    if not len(rows):
        return {"instances": 0, "left_out": int(len(targets)), "items": int(data.item_vocab_size - 1)}, {}
    n_batches = -(-len(rows) // full_ranking_per_batch(data))
    scores = score_sharded(model, lambda block: full_ranking_batches(data, split, rows, block), n_batches, device)
    if scores is None:  # another rank of a distributed run computes the metrics
        return None, None
    offsets, items = B.history_items(data, split)
    sub_off = np.concatenate([[0], np.cumsum(offsets[rows + 1] - offsets[rows])])
    sub_items = np.concatenate([items[offsets[i]:offsets[i + 1]] for i in rows])
    full = np.zeros((len(rows), data.item_vocab_size), dtype=np.float64)
    full[:, 1:] = scores.logits["model"]
    per = M.full_ranking_per_instance(full, targets[rows], (sub_off, sub_items), ks, ties)
    summary = M.ranking_means(per, ks)
    summary.update(instances=int(len(rows)), left_out=int(len(targets) - len(rows)),
                   items=int(data.item_vocab_size - 1))
    return summary, {"instance": rows, "user": scores.user, **{k: v for k, v in per.items() if k != "rank"}}


def sampled(model, data: PreparedData, split: str, ks, ties: str, batch_size: int,
            device=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The 1 + N metrics of `split`'s fixed candidates and their per-instance values."""
    scores = score_sharded(model, lambda block: B.eval_batches(data, split, batch_size, *data_settings(data),
                                                               block=block),
                           B.n_eval_batches(data, split, batch_size), device)
    if scores is None:  # another rank of a distributed run computes the metrics
        return None, None
    logits = scores.logits["model"]
    per = M.sampled_per_instance(logits, scores.user, tuple(ks), ties)
    return M.evaluate_scores(logits, scores.user, tuple(ks), ties), {"instance": scores.instance, **per}


def test_report(model, data: PreparedData, cfg, device=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """{protocol: metrics} for the protocols the data allows, and the flat per-instance arrays
    (``<protocol>/<name>``) saved beside the metrics for the paired bootstrap of the report.

    In a distributed run (`clsr.distributed`) every rank scores its share; rank 0 gets the report, the other
    ranks ({}, {})."""
    out: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    splits = {"sampled": "test"}
    if "test_uniform" in data.candidates:
        splits["uniform"] = "test_uniform"
    for name, split in splits.items():
        out[name], per = sampled(model, data, split, cfg.ks, cfg.ties, cfg.eval_batch_size, device)
        arrays.update({f"{name}/{k}": v for k, v in (per or {}).items()})
    if 0 < data.item_vocab_size - 1 <= cfg.full_ranking_max_items:
        out["full"], per = full_ranking(model, data, "test", ties="mean", device=device)
        arrays.update({f"full/{k}": v for k, v in (per or {}).items()})
    if not current().is_main:
        return {}, {}
    return out, arrays
