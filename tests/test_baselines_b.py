"""Baselines DIEN, SASRec, SLi-Rec and SURGE: shapes, exactness of the shared-history computation,
the equations of their special parts (Dice, AUGRU, SURGE's graph and pooling), order sensitivity,
SLi-Rec's α override and long-term mask, and a short training run that must beat random.

Speed (not a test): ``.venv/bin/python tests/test_baselines_b.py`` prints training instances/s
(forward + backward + Adam, 2 threads) on random 500 × (1+4) batches with L = 50.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clsr.data.batches import Batch, shuffle_history
from clsr.data.protocol import ProtocolConfig, build
from clsr.models.attention import PAD_SCORE
from clsr.models.base import ModelSizes
from clsr.models.cells import TFGRUCell, augru_step, run_augru
from clsr.models.dien import Dice
from clsr.models.registry import build_model, model_names

MODELS = ["dien", "sasrec", "slirec", "surge"]
SIZES = ModelSizes(n_users=50, n_items=300, n_cates=12)


def random_batch(B: int, C: int, L: int, seed: int = 0, min_len: int = 0, max_len: int | None = None,
                 sizes: ModelSizes = SIZES) -> Batch:
    """A Batch built directly from tensors: left-aligned histories, right padding, C candidates."""
    g = torch.Generator().manual_seed(seed)
    max_len = L if max_len is None else max_len
    length = torch.randint(min_len, max_len + 1, (B,), generator=g)
    mask = (torch.arange(L)[None, :] < length[:, None]).float()
    valid = mask.long()
    return Batch(
        user=torch.randint(1, sizes.n_users, (B,), generator=g),
        hist_item=torch.randint(1, sizes.n_items, (B, L), generator=g) * valid,
        hist_cate=torch.randint(1, sizes.n_cates, (B, L), generator=g) * valid,
        mask=mask,
        length=length,
        time_to_now=torch.rand(B, L, generator=g) * 6.0 * mask,
        time_from_first=torch.rand(B, L, generator=g) * 6.0 * mask,
        cand_item=torch.randint(1, sizes.n_items, (B, C), generator=g),
        cand_cate=torch.randint(1, sizes.n_cates, (B, C), generator=g),
        user_row=torch.arange(B),
        instance=torch.arange(B),
    )


def make(name: str, seed: int = 0, **params):
    """A model with larger-than-released init so that small differences are far above float noise."""
    torch.manual_seed(seed)
    params = {"init_std": 0.3, **params}
    if name == "sasrec":
        params.setdefault("dropout", 0.0)
    return build_model(name, SIZES, params)


def test_registered():
    assert set(MODELS) <= set(model_names())


# ------------------------------------------------------------------------------------------------
# shapes and the shared-history computation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes(name):
    model = make(name)
    L = 10
    b5 = random_batch(12, 5, L, seed=1, min_len=0)  # includes empty histories
    model.train()
    out = model(b5)
    assert out["logits"].shape == (12, 5)
    assert torch.isfinite(out["logits"]).all()
    parts = model.compute_loss(b5, out)
    assert torch.isfinite(parts["total"])
    parts["total"].backward()
    model.eval()
    with torch.no_grad():
        out100 = model(random_batch(6, 100, L, seed=2, min_len=1))
    assert out100["logits"].shape == (6, 100)
    assert torch.isfinite(out100["logits"]).all()
    if name == "slirec":
        assert out100["alpha"].shape == (6, 100)
        assert out100["u_long"].shape == (6, 40)
        assert out100["u_short"].shape == (6, 100, 40)
    if name == "dien":
        assert out100["att"].shape == (6, 100, L) and out100["h"].shape == (6, 100, 40)
    if name == "surge":
        assert out100["cluster_score"].shape == (6, 100, L) and out100["readout"].shape == (6, 100, 40)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [True, False])
def test_shared_history_equals_released_row_layout(name, train):
    """History parts computed once per instance == the released layout (one candidate per row)."""
    model = make(name)
    model.train(train)
    batch = random_batch(10, 5, 9, seed=3, min_len=1)
    with torch.no_grad():
        shared = model(batch)["logits"]
        rows = model(batch.expand_rows())["logits"].view(10, 5)
    torch.testing.assert_close(shared, rows, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, params", [("dien", {}), ("sasrec", {}), ("slirec", {"mask_long_term_padding": True})])
def test_padding_content_is_ignored(name, params):
    """Whatever sits in the padded positions (items, categories, times) does not change the logits.
    SLi-Rec's default long-term attention reads the padding row, as released (test below): masked here."""
    model = make(name, **params).eval()
    batch = random_batch(10, 5, 9, seed=4, min_len=1, max_len=6)
    pad = batch.mask == 0
    g = torch.Generator().manual_seed(0)
    other = Batch(**{**batch.__dict__})
    other.hist_item = torch.where(pad, torch.randint(1, SIZES.n_items, pad.shape, generator=g), batch.hist_item)
    other.hist_cate = torch.where(pad, torch.randint(1, SIZES.n_cates, pad.shape, generator=g), batch.hist_cate)
    other.time_from_first = torch.where(pad, torch.rand(pad.shape, generator=g), batch.time_from_first)
    if name != "slirec":  # τ^now[:, L−1] (a padded column unless n = L) is a released SLi-Rec input
        other.time_to_now = torch.where(pad, torch.rand(pad.shape, generator=g), batch.time_to_now)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["logits"], model(other)["logits"])


# ------------------------------------------------------------------------------------------------
# order sensitivity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs",
    [("dien", {}), ("sasrec", {}), ("slirec", {}), ("slirec", {"alpha_override": 0.0}), ("surge", {})],
)
def test_sequential_models_see_order(name, kwargs):
    model = make(name).eval()
    batch = random_batch(16, 5, 10, seed=5, min_len=4)
    shuffled = shuffle_history(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(shuffled.hist_item, batch.hist_item)
    with torch.no_grad():
        a = model(batch, **kwargs)["logits"]
        b = model(shuffled, **kwargs)["logits"]
    assert (a - b).abs().max() > 1e-3


def test_slirec_long_term_part_is_order_free():
    model = make("slirec").eval()
    batch = random_batch(16, 5, 10, seed=5, min_len=4)
    shuffled = shuffle_history(batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(batch, alpha_override=1.0), model(shuffled, alpha_override=1.0)
    torch.testing.assert_close(a["logits"], b["logits"])
    assert (a["u_short"] - b["u_short"]).abs().max() > 1e-3  # the short-term part did change


# ------------------------------------------------------------------------------------------------
# SLi-Rec: α override and the long-term padding mask
# ------------------------------------------------------------------------------------------------
def _perturb_short_inputs(batch: Batch) -> Batch:
    g = torch.Generator().manual_seed(7)
    other = Batch(**{**batch.__dict__})
    other.time_to_now = batch.time_to_now + torch.rand(batch.mask.shape, generator=g) * 3 * batch.mask
    other.time_from_first = batch.time_from_first + torch.rand(batch.mask.shape, generator=g) * 3 * batch.mask
    return other


def test_slirec_alpha_one_ignores_the_short_term_part():
    model = make("slirec").eval()
    batch = random_batch(12, 5, 8, seed=6, min_len=2)
    moved = _perturb_short_inputs(batch)
    with torch.no_grad():
        base = model(batch, alpha_override=1.0)
        assert (base["alpha"] == 1.0).all()
        # time features feed only the Time4LSTM (and the fusion MLP, bypassed by the override)
        torch.testing.assert_close(model(moved, alpha_override=1.0)["logits"], base["logits"], rtol=0, atol=0)
        assert (model(moved)["logits"] - model(batch)["logits"]).abs().max() > 1e-4  # learned α: they matter
        # so do the LSTM's and the short-term attention's weights
        for p in list(model.lstm.parameters()) + [model.short_proj]:
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(model(batch, alpha_override=1.0)["logits"], base["logits"], rtol=0, atol=0)


def test_slirec_alpha_zero_ignores_the_long_term_part():
    model = make("slirec").eval()
    batch = random_batch(12, 5, 8, seed=6, min_len=2)
    with torch.no_grad():
        base = model(batch, alpha_override=0.0)["logits"]
        model.long_query.add_(torch.randn_like(model.long_query))
        model.long_proj.add_(torch.randn_like(model.long_proj))
        torch.testing.assert_close(model(batch, alpha_override=0.0)["logits"], base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="alpha_override"):
        model(batch, alpha_override=1.5)


def test_slirec_long_term_mask_matters_only_with_padding():
    model = make("slirec").eval()
    full = random_batch(8, 5, 7, seed=8, min_len=7)  # every history fills all L positions
    padded = random_batch(8, 5, 7, seed=8, min_len=1, max_len=5)
    with torch.no_grad():
        model.cfg.mask_long_term_padding = True
        masked_full, masked_pad = model(full), model(padded)
        model.cfg.mask_long_term_padding = False
        open_full, open_pad = model(full), model(padded)
    torch.testing.assert_close(masked_full["logits"], open_full["logits"], rtol=0, atol=0)
    assert (masked_pad["u_long"] - open_pad["u_long"]).abs().max() > 1e-3
    assert (masked_pad["logits"] - open_pad["logits"]).abs().max() > 1e-4
    # masked: padded positions get zero weight; released (unmasked): they get some
    pad = padded.mask == 0
    assert masked_pad["att_long"][pad].max() == 0
    assert open_pad["att_long"][pad].min() > 0


# ------------------------------------------------------------------------------------------------
# DIEN: Dice and AUGRU equations, auxiliary loss
# ------------------------------------------------------------------------------------------------
def _dice_released(x: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """deeprec_utils.dice, literally (statistics over every axis but the last)."""
    axes = tuple(range(x.dim() - 1))
    mean = x.mean(axes, keepdim=True)
    std = torch.sqrt(((x - mean) ** 2 + eps).mean(axes, keepdim=True))
    p = torch.sigmoid((x - mean) / (std + eps))
    return alpha * (1.0 - p) * x + p * x


def test_dice_equation():
    x = torch.tensor([[[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]], [[-0.5, 1.5, 2.0], [0.25, -3.0, 1.0]]])  # (2, 2, 3)
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.0, 0.3, -0.7]))
    expected = _dice_released(x, dice.alpha.detach())
    dice.train()
    torch.testing.assert_close(dice(x), expected, rtol=1e-6, atol=1e-6)
    # by hand for one entry: channel 0 holds 1, 3, -0.5, 0.25 -> mean 0.9375, biased var 1.69921875
    p = 1 / (1 + math.exp(-(1.0 - 0.9375) / math.sqrt(1.69921875)))
    assert abs(float(dice(x).detach()[0, 0, 0]) - p * 1.0) < 1e-6  # α_0 = 0: Dice(x) = p x
    # released: batch statistics also at evaluation
    dice.eval()
    torch.testing.assert_close(dice(x), expected, rtol=1e-6, atol=1e-6)
    # option: running averages at evaluation (updated once by the training call above, momentum 0.05)
    running = Dice(3, eval_batch_stats=False)
    running.train()
    running(x)
    running.eval()
    flat = x.reshape(-1, 3)
    mu = 0.05 * flat.mean(0)
    var = 0.95 + 0.05 * flat.var(0, unbiased=True)
    p_run = torch.sigmoid((x - mu) / torch.sqrt(var + 1e-9))
    torch.testing.assert_close(running(x), p_run * x, rtol=1e-6, atol=1e-6)


def test_augru_one_step_by_hand():
    torch.manual_seed(0)
    D = H = 3
    cell = TFGRUCell(D, H)
    x = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    h = torch.tensor([[0.1, 0.2, -0.3], [0.0, -0.4, 0.5]])
    a = torch.tensor([[0.25], [0.9]])
    Wg, bg, Wc, bc = (t.detach().numpy().astype(np.float64) for t in
                      (cell.gate_kernel, cell.gate_bias, cell.cand_kernel, cell.cand_bias))
    xn, hn, an = x.numpy().astype(np.float64), h.numpy().astype(np.float64), a.numpy().astype(np.float64)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    rz = sig(np.concatenate([xn, hn], 1) @ Wg + bg)
    r, u = rz[:, :H], rz[:, H:]
    c = np.tanh(np.concatenate([xn, r * hn], 1) @ Wc + bc)
    u_att = (1 - an) * u  # VecAttGRUCell: update gate scaled by (1 − attention)
    expected = u_att * hn + (1 - u_att) * c
    with torch.no_grad():
        got = augru_step(cell, x, h, a)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
        # a = 0 is an ordinary TF GRU step; a = 1 replaces the state by the candidate
        torch.testing.assert_close(augru_step(cell, x, h, torch.zeros(2, 1)), cell(x, h))
        np.testing.assert_allclose(augru_step(cell, x, h, torch.ones(2, 1)).numpy(), c, rtol=1e-5, atol=1e-6)
        # the runner from a zero state, one step, C = 1
        first = run_augru(cell, x.unsqueeze(1), a.unsqueeze(1), torch.tensor([1, 1]))
        torch.testing.assert_close(first[:, 0], augru_step(cell, x, torch.zeros(2, H), a))


def test_augru_runner_matches_step_loop():
    """run_augru (shared inputs, C attention sequences, frozen state past n) == a loop of augru_step."""
    torch.manual_seed(1)
    B, C, L, D, H = 4, 3, 6, 5, 4
    cell = TFGRUCell(D, H)
    x = torch.randn(B, L, D)
    att = torch.softmax(torch.randn(B, C, L), -1)
    lengths = torch.tensor([6, 3, 0, 1])
    with torch.no_grad():
        got = run_augru(cell, x, att, lengths)
        for b in range(B):
            for c in range(C):
                h = torch.zeros(1, H)
                for t in range(int(lengths[b])):
                    h = augru_step(cell, x[b, t : t + 1], h, att[b, c, t].view(1, 1))
                torch.testing.assert_close(got[b, c], h[0], rtol=1e-5, atol=1e-6)


def test_dien_auxiliary_loss():
    batch = random_batch(10, 5, 8, seed=9, min_len=2)
    off = make("dien")
    assert "aux" not in off.compute_loss(batch, off(batch))
    model = make("dien", aux_loss_weight=0.5)
    model.train()
    parts = model.compute_loss(batch, model(batch))
    assert torch.isfinite(parts["aux"]) and parts["aux"] > 0
    parts["aux"].backward()
    assert model.gru.gate_kernel.grad is not None and model.gru.gate_kernel.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# SASRec
# ------------------------------------------------------------------------------------------------
def test_sasrec_dot_score_and_max_len():
    model = make("sasrec", score="dot").eval()
    batch = random_batch(6, 5, 8, seed=10, min_len=1)
    with torch.no_grad():
        out = model(batch)
        e_v = torch.cat([model.tokens.item(batch.cand_item), model.tokens.cate(batch.cand_cate)], -1)
        torch.testing.assert_close(out["logits"], (out["h"].unsqueeze(1) * e_v).sum(-1))
    short = make("sasrec", max_len=5)
    with pytest.raises(ValueError, match="max_len"):
        short(batch)


def test_sasrec_user_vector_reads_the_newest_item():
    """h is read at position n − 1: dropping the newest item changes every user vector."""
    model = make("sasrec").eval()
    batch = random_batch(8, 5, 8, seed=11, min_len=3, max_len=8)
    cut = Batch(**{**batch.__dict__})
    keep = batch.length - 1  # drop the newest item: the user vector must change
    cut.length = keep
    cut.mask = (torch.arange(8)[None] < keep[:, None]).float()
    cut.hist_item = batch.hist_item * cut.mask.long()
    cut.hist_cate = batch.hist_cate * cut.mask.long()
    with torch.no_grad():
        assert (model(batch)["h"] - model(cut)["h"]).abs().min() > 0


# ------------------------------------------------------------------------------------------------
# SURGE: a literal per-row transcription of the authors' TF code
# ------------------------------------------------------------------------------------------------
def _surge_reference(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N,), keep counts (N,)) for batch.expand_rows(), row by row, as in surge.py (eval mode)."""
    rows = batch.expand_rows()
    cfg = model.cfg
    X_all = torch.cat([model.tokens.item(rows.hist_item), model.tokens.cate(rows.hist_cate)], -1)
    ev_all = torch.cat([model.tokens.item(rows.cand_item[:, 0]), model.tokens.cate(rows.cand_cate[:, 0])], -1)
    N, L, d = X_all.shape

    def attention(scorer, query, keys, mask):  # released _attention_fcn (explicit concatenation)
        att_in = keys @ scorer.proj
        q = query.expand_as(att_in) if query.dim() == 1 else query
        s = scorer.mlp(torch.cat([att_in, q, att_in - q, att_in * q], -1)).squeeze(-1)
        return torch.softmax(torch.where(mask == 1, s, torch.full_like(s, PAD_SCORE)), -1)

    logits, kept = [], []
    for i in range(N):
        X, e_v, m = X_all[i], ev_all[i], rows.mask[i]
        S = torch.zeros(L, L)
        for w in model.metric_w:
            Xf = X * w
            Xf = Xf / Xf.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            S1 = Xf @ Xf.T
            S1 = (S1 - S1.min(-1, keepdim=True).values) / (S1.max(-1, keepdim=True).values - S1.min(-1, keepdim=True).values)
            S = S + S1
        S = S / len(model.metric_w) * m[:, None] * m[None, :]
        flat = S.flatten()
        k = math.ceil(int((flat != 0).sum()) * cfg.relative_threshold)
        thr = flat.sort(descending=True).values[k]
        A = (S > thr).float()
        A_bool = A * (1 - torch.eye(L)) + torch.eye(L)
        D = A_bool.sum(-1).sqrt()[None, :] + 1e-7
        A_n = (A_bool / D) / D.T
        X_q = A_n @ (A_n @ X)
        f1 = attention(model.att_cluster[0], X_q, X, m)
        f2 = attention(model.att_query[0], e_v, X, m)
        E = A_bool * f1[None, :] + A_bool * f2[:, None]
        E = F.leaky_relu(E, 0.2)
        E = torch.softmax(torch.where(A_bool == 1, E, torch.full_like(E, PAD_SCORE)), -1)
        Xc = F.leaky_relu((E @ X) @ model.gcn_w[0] + X, 0.2)
        X_q = A_n @ (A_n @ Xc)
        f1 = attention(model.att_cluster[0], X_q, Xc, m)
        f2 = attention(model.att_query[0], e_v, Xc, m)
        score = torch.softmax(torch.where(m == 1, f1 + f2, torch.full_like(f1, PAD_SCORE)), -1)
        n = int(m.sum())
        to_keep = cfg.pool_length if n > cfg.pool_length else n
        score = score * m
        target = score.sort(descending=True).values[to_keep] + 1e-7
        keep = (score > target).float()
        readout = (Xc * score[:, None] * keep[:, None]).sum(0)
        order = torch.argsort(keep, descending=True, stable=True)
        X_r, m_r = Xc[order], keep[order]
        n_r = int(m_r.sum())
        h = torch.zeros(1, cfg.hidden_size)
        if n_r:
            a = attention(model.att_gru, e_v, X_r[:n_r], m_r[:n_r])
            for t in range(n_r):
                h = augru_step(model.augru, X_r[t : t + 1], h, a[t].view(1, 1))
        z = torch.cat([h[0], readout, e_v, readout * e_v])
        logits.append(model.pred_mlp(z[None])[0, 0])
        kept.append(n_r)
    return torch.stack(logits), torch.tensor(kept)


def test_surge_matches_literal_transcription():
    model = make("surge", pool_length=3, init_std=0.2).eval()
    L = 8
    batch = random_batch(6, 3, L, seed=12, min_len=0)
    with torch.no_grad():
        out = model(batch)
        ref, kept = _surge_reference(model, batch)
    torch.testing.assert_close(out["logits"].reshape(-1), ref, rtol=1e-4, atol=1e-5)
    # pooling keeps min(n, pool_length) nodes
    expected = torch.clamp(batch.length, max=3).repeat_interleave(3)
    assert torch.equal(kept, expected)
    assert torch.equal(out["keep"].sum(-1).reshape(-1).long(), expected)
    # the graph: only valid nodes, at most ⌈ε · #candidate edges⌉ edges, no gradient path
    A = out["adjacency"]
    valid = batch.mask > 0
    assert not (A & ~(valid[:, :, None] & valid[:, None, :])).any()
    assert (A.flatten(1).sum(1) <= torch.ceil(0.5 * batch.length.float() ** 2)).all()


def test_surge_eval_chunks_are_exact():
    model = make("surge").eval()
    batch = random_batch(4, 30, 8, seed=13, min_len=1)
    with torch.no_grad():
        whole = model(batch)["logits"]
        model.cfg.eval_chunk_elements = 4 * 8 * 8 * 7  # 7 candidates per chunk
        chunked = model(batch)["logits"]
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=1e-6)


def test_surge_metric_weights_get_only_the_l2_gradient():
    model = make("surge")
    model.train()
    batch = random_batch(8, 5, 8, seed=14, min_len=2)
    out = model(batch)
    out["logits"].sum().backward()
    assert all(w.grad is None for w in model.metric_w)  # hard threshold: no gradient through the graph


# ------------------------------------------------------------------------------------------------
# short training on learnable synthetic data beats random
# ------------------------------------------------------------------------------------------------
def synthetic_interactions(n_users=120, n_cates=8, per_cate=16, n_events=30, p_next=0.75, p_pref=0.7, seed=0):
    """Users with a preferred category (long-term signal) and chains item k -> k+1 inside a category
    (sequential signal): each event continues the chain with prob. p_next, else restarts at a random
    item of the preferred category (prob. p_pref) or of a random one. One event per hour."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pref = int(rng.integers(n_cates))
        c, k = pref, int(rng.integers(per_cate))
        for j in range(n_events):
            if j > 0 and rng.random() < p_next:
                k = (k + 1) % per_cate
            else:
                c = pref if rng.random() < p_pref else int(rng.integers(n_cates))
                k = int(rng.integers(per_cate))
            rows.append((u, c * per_cate + k, c, 1_500_000_000 + 7 * u + 3600 * j))
    return pd.DataFrame(rows, columns=["user", "item", "category", "ts"])


@pytest.fixture(scope="module")
def learnable_data():
    df = synthetic_interactions()
    return build(df, ProtocolConfig(split="per_user", max_len=15, valid_negatives=4, test_negatives=9,
                                    time_unit=3600.0), name="learnable")


@pytest.mark.parametrize("name", MODELS)
def test_two_epochs_beat_random(name, learnable_data):
    from clsr.train import fit

    result = fit(learnable_data, name, {}, {"epochs": 2, "batch_size": 64, "progress": False, "seed": 0})
    assert result.metrics["valid"]["gauc"] > 0.7, result.metrics["valid"]


# ------------------------------------------------------------------------------------------------
def _bench(names=tuple(MODELS) + ("gru4rec", "din"), B=500, C=5, L=50, steps=5):  # pragma: no cover
    import time

    torch.set_num_threads(2)
    sizes = ModelSizes(n_users=10_000, n_items=50_000, n_cates=1_000)
    for name in names:
        torch.manual_seed(0)
        model = build_model(name, sizes, {})
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        batches = [random_batch(B, C, L, seed=s, min_len=1, sizes=sizes) for s in range(2)]
        model.train()

        def step(b):
            parts = model.compute_loss(b, model(b))
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            opt.step()

        step(batches[0])
        times = []
        for s in range(steps):
            t0 = time.perf_counter()
            step(batches[s % 2])
            times.append(time.perf_counter() - t0)
        best, med = min(times), sorted(times)[len(times) // 2]
        print(f"{name:8s} {B / med:7.0f} instances/s (median of {steps}; best {B / best:.0f})  "
              f"{med * 1000:.0f} ms per {B}x{C} step, L={L}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    import sys

    _bench(tuple(sys.argv[1:]) or tuple(MODELS) + ("gru4rec", "din"))
