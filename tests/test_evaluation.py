"""The test report's protocols (clsr.evaluation) against brute-force computations on a prepared random log."""
from __future__ import annotations

import numpy as np
import torch

from clsr import evaluation as E
from clsr.train import TrainConfig


class HashScorer:
    """A fake model: score(user, item) = a fixed pseudo-random function of the pair (ties included)."""

    def __call__(self, batch, alpha_override=None):
        u = batch.user[:, None].to(torch.int64)
        i = batch.cand_item.to(torch.int64)
        score = ((u * 7919 + i * 104729) % 13).to(torch.float32)  # 13 levels: many exact ties
        return {"logits": score}

    def score(self, user: int, item: int) -> float:
        return float((user * 7919 + item * 104729) % 13)


def brute_earlier(data, split):
    inst = data.instances[split]
    out = []
    for u, p in zip(inst.user, inst.pos):
        start = data.user_offsets[u]
        out.append([int(data.item_index[data.event_item[start + j]]) for j in range(int(p))])
    return out


def test_vocab_item_categories_follow_the_events(prepared_random):
    data, _ = prepared_random
    cat = E.vocab_item_categories(data)
    assert cat[0] == 0
    for e in range(data.n_events):
        v = data.item_index[data.event_item[e]]
        if v > 0:  # every event of an item has the item's one category in this log
            assert cat[v] == data.cate_index[data.event_cate[e]]


def test_full_ranking_equals_a_brute_force_ranking(prepared_random):
    data, _ = prepared_random
    model = HashScorer()
    summary, per = E.full_ranking(model, data, "test", ks=(10, 20), ties="mean")
    targets = data.item_index[data.event_item[data.target_event("test")]]
    earlier = brute_earlier(data, "test")
    users = data.user_index[data.instances["test"].user]
    rr, hits10, kept = [], [], []
    for i, t in enumerate(targets):
        if t == 0:
            continue  # an item never seen in training: no model can rank it
        kept.append(i)
        excluded = set(earlier[i]) - {int(t)}
        s_t = model.score(users[i], int(t))
        others = [model.score(users[i], j) for j in range(1, data.item_vocab_size) if j != t and j not in excluded]
        rank = 1 + sum(s > s_t for s in others) + 0.5 * sum(s == s_t for s in others)
        rr.append(1.0 / rank)
        hits10.append(float(rank <= 10))
    assert per["instance"].tolist() == kept
    assert summary["instances"] == len(kept) and summary["left_out"] == len(targets) - len(kept)
    np.testing.assert_allclose(per["rr"], rr, rtol=0, atol=1e-12)
    assert summary["mrr"] == np.mean(rr)
    assert np.isclose(summary["hit@10"], np.mean(hits10))


def test_report_protocols_and_per_instance_means(prepared_random):
    data, _ = prepared_random
    cfg = TrainConfig(eval_batch_size=7, ks=[1, 2])
    report, arrays = E.test_report(HashScorer(), data, cfg)
    assert "sampled" in report and "full" in report
    assert np.isclose(arrays["sampled/rr"].mean(), report["sampled"]["mrr"])
    assert np.isclose(arrays["full/rr"].mean(), report["full"]["mrr"])
    off = TrainConfig(full_ranking_max_items=0)
    assert "full" not in E.test_report(HashScorer(), data, off)[0]
