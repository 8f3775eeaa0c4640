"""CLSR model and losses against direct computations (docs/protocol.md §6.2, §7, §11)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from clsr import losses
from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelSizes
from clsr.models.clsr import CLSR, CLSRConfig
from clsr.models.registry import build_model

torch.set_num_threads(1)
SIZES = ModelSizes(n_users=6, n_items=30, n_cates=5)


def make_batch(lengths=(8, 6, 3), C=4, L=8, users=None, seed=0) -> Batch:
    """Left-aligned histories with zero padding (as the data layer produces them)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    B = len(lengths)
    mask = (torch.arange(L)[None] < lengths[:, None]).float()
    hist_item = torch.randint(1, SIZES.n_items, (B, L), generator=g) * mask.long()
    hist_cate = torch.randint(1, SIZES.n_cates, (B, L), generator=g) * mask.long()
    time_to_now = torch.rand(B, L, generator=g).mul(5).flip(1) * mask  # decreasing towards the newest
    time_from_first = torch.rand(B, L, generator=g).mul(5) * mask
    return Batch(
        user=torch.tensor(users if users is not None else list(range(1, B + 1))),
        hist_item=hist_item,
        hist_cate=hist_cate,
        mask=mask,
        length=lengths,
        time_to_now=time_to_now,
        time_from_first=time_from_first,
        cand_item=torch.randint(1, SIZES.n_items, (B, C), generator=g),
        cand_cate=torch.randint(1, SIZES.n_cates, (B, C), generator=g),
        user_row=torch.arange(B),
        instance=torch.full((B,), -1),
    )


def make_model(seed=0, dtype=torch.float64, **overrides) -> CLSR:
    torch.manual_seed(seed)
    m = CLSR(CLSRConfig(**overrides), SIZES).to(dtype)
    # larger embeddings than the 0.01 init so that attention and hinge terms are not degenerate
    with torch.no_grad():
        for t in (m.tokens.item, m.tokens.cate, m.user_long, m.user_short):
            t.weight.normal_(0, 0.5)
    return m.train()


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_config_defaults_and_validation():
    cfg = CLSRConfig()
    assert (cfg.user_dim, cfg.hidden_size, cfg.att_layers, cfg.pred_layers) == (40, 40, [80, 40], [100, 64])
    assert (cfg.contrastive, cfg.contrastive_weight, cfg.margin, cfg.recent_k, cfg.length_threshold) == (
        "triplet", 0.1, 1.0, 3, 5)
    assert (cfg.discrepancy_weight, cfg.sequential_model, cfg.clip_norm) == (0.01, "time4lstm", 2.0)
    for key, bad in [("contrastive", "hinge"), ("sequential_model", "rnn"), ("hidden_size", 32),
                     ("manual_alpha_value", 1.5), ("clip_norm", 0.0), ("att_layers", [])]:
        with pytest.raises(ConfigError, match=key):
            dataclasses.replace(cfg, **{key: bad}).validate("model.clsr")
    model = build_model("clsr", SIZES, {"contrastive": "bpr", "clip_norm": 5})
    assert isinstance(model, CLSR) and model.clip_norm == 5.0 and model.cfg.contrastive == "bpr"


# ------------------------------------------------------------------------------------------------
# forward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("C", [5, 100])
def test_forward_shapes(C):
    m = make_model(dtype=torch.float32)
    b = make_batch(C=C)
    out = m(b)
    B, L, d = 3, 8, 40
    expected = {"logits": (B, C), "alpha": (B, C), "u_long": (B, d), "u_short": (B, C, d), "user": (B, C, d),
                "p_long": (B, d), "p_short": (B, d), "h_short": (B, d), "att_long": (B, L),
                "att_short": (B, C, L)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert torch.isfinite(out["logits"]).all()
    m.eval()
    with torch.no_grad():
        assert m(b)["logits"].shape == (B, C)


def test_proxies_masked_mean_and_last_k():
    m = make_model()
    b = make_batch(lengths=(8, 2, 5))
    out = m(b)
    X = torch.cat([m.tokens.item(b.hist_item), m.tokens.cate(b.hist_cate)], -1)
    for i, n in enumerate([8, 2, 5]):
        torch.testing.assert_close(out["p_long"][i], X[i, :n].mean(0))
        torch.testing.assert_close(out["p_short"][i], X[i, max(0, n - 3) : n].mean(0))  # last min(k, n)


def test_attention_weights_zero_on_padding_and_pool_raw_inputs():
    m = make_model()
    b = make_batch(lengths=(8, 6, 3))
    out = m(b)
    assert torch.all(out["att_long"][2, 3:] == 0) and torch.all(out["att_short"][1, :, 6:] == 0)
    X = torch.cat([m.tokens.item(b.hist_item), m.tokens.cate(b.hist_cate)], -1)
    torch.testing.assert_close(out["u_long"], torch.einsum("bl,bld->bd", out["att_long"], X))  # raw X, not X W_l


def test_fusion_reads_time_to_now_at_last_padded_column():
    m = make_model()
    b = make_batch(lengths=(8, 6, 3))  # L = 8: row 0 fills it
    seen = {}

    def grab(module, inputs, output):  # returns None: the output is left alone
        seen["f"] = inputs[0].detach()

    m.fuse_mlp.register_forward_hook(grab)
    m(b)
    f_last = seen["f"][..., -1]  # (B, C)
    expected = torch.where(b.length == 8, b.time_to_now[:, 7], torch.zeros(3)).to(f_last.dtype)
    torch.testing.assert_close(f_last, expected[:, None].expand_as(f_last))
    assert f_last[0, 0] != 0 and torch.all(f_last[1:] == 0)

    # for a row with n < L the padded column reaches the logits only through the fusion input
    b2 = dataclasses.replace(b, time_to_now=b.time_to_now.clone())
    b2.time_to_now[1, 7] = 3.0
    m.eval()
    with torch.no_grad():
        diff = (m(b2)["logits"] - m(b)["logits"]).abs()
    assert diff[1].max() > 0 and diff[[0, 2]].max() == 0
    fixed = make_model(manual_alpha=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(fixed(b2)["logits"], fixed(b)["logits"], rtol=0, atol=0)


def test_manual_alpha_is_constant_and_builds_no_fusion_nets():
    m = make_model(manual_alpha=True, manual_alpha_value=0.3)
    assert m.fuse_mlp is None and m.fuse_gru is None
    out = m(make_batch())
    torch.testing.assert_close(out["alpha"], torch.full((3, 4), 0.3, dtype=torch.float64))
    torch.testing.assert_close(out["user"], 0.3 * out["u_long"][:, None] + 0.7 * out["u_short"])


def test_interest_evolve_off_uses_user_short_embedding():
    m = make_model(interest_evolve=False)
    b = make_batch()
    assert m.intention_gru is None
    torch.testing.assert_close(m(b)["h_short"], m.user_short(b.user))


# ------------------------------------------------------------------------------------------------
# shared encoders == naive per-row computation
# ------------------------------------------------------------------------------------------------
def _loss_parts(m, b):
    out = m(b)
    return out, m.compute_loss(b, out)


def _assert_same_step(a, b, batch, out_tol, part_tol, grad_tol):
    """Models `a` and `b` give the same logits (rtol, atol = out_tol), the same loss parts (part_tol) and,
    after backward of the total, the same parameter gradients (grad_tol). Returns (out_a, parts_a, out_b)."""
    out_a, parts_a = _loss_parts(a, batch)
    out_b, parts_b = _loss_parts(b, batch)
    torch.testing.assert_close(out_a["logits"], out_b["logits"], rtol=out_tol[0], atol=out_tol[1])
    assert set(parts_a) == set(parts_b)
    for k in parts_a:
        torch.testing.assert_close(parts_a[k], parts_b[k], rtol=part_tol[0], atol=part_tol[1])
    parts_a["total"].backward()
    parts_b["total"].backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=grad_tol[0], atol=grad_tol[1], msg=name)
    return out_a, parts_a, out_b


@pytest.mark.parametrize(
    "overrides",
    [{}, {"contrastive": "bpr"}, {"sequential_model": "gru"}, {"sequential_model": "lstm", "predict_long_short": False},
     {"interest_evolve": False}, {"manual_alpha": True}],
)
def test_shared_encoders_equal_naive_per_row(overrides):
    """Train mode, float32: logits and every loss part to 1e-6, and the gradients."""
    fast = make_model(dtype=torch.float32, **overrides)
    naive = make_model(dtype=torch.float32, shared_encoders=False, **overrides)
    naive.load_state_dict(fast.state_dict())
    b = make_batch(lengths=(8, 6, 3, 7, 1), C=5, users=[1, 2, 1, 3, 4])
    out_f, parts_f, out_n = _assert_same_step(
        fast, naive, b, out_tol=(0, 1e-6), part_tol=(1e-6, 1e-6), grad_tol=(1e-4, 1e-6)
    )
    torch.testing.assert_close(out_f["alpha"], out_n["alpha"], rtol=0, atol=1e-6)
    # the released row layout fed to the shared model gives the same numbers as well
    rows = b.expand_rows()
    out_r = fast(rows)
    torch.testing.assert_close(out_r["logits"].view(5, 5), out_f["logits"], rtol=0, atol=1e-6)
    parts_r = fast.extra_losses(rows, out_r)
    for k in parts_r:
        torch.testing.assert_close(parts_r[k], parts_f[k], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"sequential_model": "gru"}, {"sequential_model": "lstm", "predict_long_short": False},
     {"interest_evolve": False}],
)
def test_fused_recurrences_equal_autograd_cells(overrides):
    """float64, train mode: the packed hand-written-backward recurrences (and the joint block-diagonal GRU)
    give the logits, every loss part and every gradient of the cells stepped under autograd, to rounding."""
    fused = make_model(**overrides)
    ref = make_model(fused_recurrences=False, **overrides)
    ref.load_state_dict(fused.state_dict())
    b = make_batch(lengths=(8, 6, 3, 7, 1, 0), C=3, users=[1, 2, 1, 3, 4, 2])
    _assert_same_step(fused, ref, b, out_tol=(1e-12, 1e-14), part_tol=(1e-12, 1e-14), grad_tol=(1e-9, 1e-15))


def test_shared_equals_naive_in_eval_mode():
    fast = make_model(dtype=torch.float32)
    naive = make_model(dtype=torch.float32, shared_encoders=False)
    fast(make_batch(seed=3))  # non-trivial running statistics
    naive.load_state_dict(fast.state_dict())
    fast.eval()
    naive.eval()
    b = make_batch(lengths=(8, 6, 3, 0), C=7)
    with torch.no_grad():
        torch.testing.assert_close(fast(b)["logits"], naive(b)["logits"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def np_contrastive(kind, ul, us, pl, ps, mask, margin=1.0):
    """Direct numpy version of §2.4 over rows (…, d); returns the four masked means."""
    if kind == "triplet":
        def h(pos, neg):
            return np.maximum(0, pos - neg + margin).sum(-1)
        dlm, dlr, dsm, dsr = (ul - pl) ** 2, (ul - ps) ** 2, (us - pl) ** 2, (us - ps) ** 2
        terms = [h(dlm, dlr), h(dsr, dsm), h(dlm, dsm), h(dsr, dlr)]
    else:
        def sp(x):
            return np.log1p(np.exp(x))
        dot = lambda a, b: (a * b).sum(-1)  # noqa: E731
        terms = [sp(dot(ul, ps) - dot(ul, pl)), sp(dot(us, pl) - dot(us, ps)),
                 sp(dot(pl, us) - dot(pl, ul)), sp(dot(ps, ul) - dot(ps, us))]
    if mask.sum() == 0:
        return [0.0] * 4
    return [float((mask * t).sum() / mask.sum()) for t in terms]


@pytest.mark.parametrize("kind", ["triplet", "bpr"])
def test_contrastive_terms_match_numpy(kind):
    rng = np.random.default_rng(0)
    B, C, d = 4, 3, 5
    ul, pl, ps = (rng.normal(size=(B, 1, d)) * 0.7 for _ in range(3))
    us = rng.normal(size=(B, C, d)) * 0.7
    lengths = np.array([7, 3, 6, 5])
    mask = np.broadcast_to((lengths > 5).astype(float)[:, None], (B, C))  # strict > 5
    t = lambda a: torch.tensor(a)  # noqa: E731
    terms = losses.contrastive_terms(kind, t(ul), t(us), t(pl), t(ps), margin=1.0)
    means = [float(losses.masked_mean(x, t(mask))) for x in terms]
    np.testing.assert_allclose(means, np_contrastive(kind, ul, us, pl, ps, mask), rtol=1e-12)
    total = losses.contrastive_loss(kind, t(ul), t(us), t(pl), t(ps), t(mask), weight=0.1)
    np.testing.assert_allclose(float(total), 0.1 * sum(means), rtol=1e-12)
    # 0/0 guard: no qualifying row -> 0, not NaN
    zero = losses.contrastive_loss(kind, t(ul), t(us), t(pl), t(ps), t(mask * 0), weight=0.1)
    assert float(zero) == 0.0


def test_triplet_per_dimension_margin():
    """Identical vectors: every dimension contributes the margin, so a row reaches d·m (as coded)."""
    v = torch.zeros(1, 4)
    assert [float(x) for x in losses.triplet_terms(v, v, v, v, margin=1.0)] == [4.0] * 4


@pytest.mark.parametrize("kind", ["triplet", "bpr"])
def test_model_contrastive_over_all_candidate_rows(kind):
    m = make_model(contrastive=kind)
    b = make_batch(lengths=(8, 6, 3, 5), C=4)  # rows 0 and 1 qualify (n > 5); 5 does not
    out = m(b)
    got = m.extra_losses(b, out)["contrastive"].item()
    ul, pl, ps = (out[k].detach().numpy()[:, None] for k in ("u_long", "p_long", "p_short"))
    us = out["u_short"].detach().numpy()
    mask = np.broadcast_to((b.length.numpy() > 5).astype(float)[:, None], (4, 4))
    np.testing.assert_allclose(got, 0.1 * sum(np_contrastive(kind, ul, us, pl, ps, mask)), rtol=1e-10)
    # no history longer than the threshold: the term is 0
    short = make_batch(lengths=(2, 5, 1), C=4)
    assert m.extra_losses(short, m(short))["contrastive"].item() == 0.0
    assert "contrastive" not in make_model(contrastive="none").extra_losses(b, out)


def test_contrastive_gradients_reach_the_proxies_embeddings():
    m = make_model()
    b = make_batch(lengths=(8, 7, 6))
    out = m(b)
    con = m.extra_losses(b, out)["contrastive"]
    g_pl, g_ps = torch.autograd.grad(con, [out["p_long"], out["p_short"]], retain_graph=True)
    assert g_pl.abs().sum() > 0 and g_ps.abs().sum() > 0
    # through p^l, p^s (and u^l, u^s) into the item / category rows of the history
    con.backward()
    hist_rows = torch.unique(b.hist_item[b.mask > 0])
    assert (m.tokens.item.weight.grad[hist_rows].abs().sum(-1) > 0).all()
    # through p^l alone (u^l, u^s held fixed): nothing is detached on the proxy path
    m.zero_grad()
    X = torch.cat([m.tokens.item(b.hist_item), m.tokens.cate(b.hist_cate)], -1)
    p_long, p_short = m.proxies(X, b.mask.double())
    loss = losses.contrastive_loss("triplet", out["u_long"].detach()[:, None], out["u_short"].detach(),
                                   p_long[:, None], p_short[:, None], torch.ones(3, 4))
    loss.backward()
    assert (m.tokens.item.weight.grad[hist_rows].abs().sum(-1) > 0).all()


def test_discrepancy_negative_and_over_unique_users():
    m = make_model()
    b = make_batch(users=[2, 2, 5])
    d = m.extra_losses(b, m(b))["discrepancy"]
    El, Es = m.user_long.weight.detach(), m.user_short.weight.detach()
    expected = -0.01 * ((El[[2, 5]] - Es[[2, 5]]) ** 2).mean()  # user 2 counted once
    torch.testing.assert_close(d, expected)
    assert d < 0
    # gradient descent on it pushes the two embeddings apart
    g = torch.autograd.grad(d, m.user_long.weight)[0]
    assert torch.all((g[2] * (El[2] - Es[2])) <= 0)


def test_l2_only_on_used_rows():
    m = make_model()
    b = make_batch()
    l2 = losses.l2_loss(m, m.embedding_rows(b), embed_l2=1e-6, layer_l2=0.0)
    l2.backward()
    used = torch.unique(torch.cat([b.hist_item.reshape(-1), b.cand_item.reshape(-1)]))
    unused = torch.ones(SIZES.n_items, dtype=torch.bool)
    unused[used] = False
    g = m.tokens.item.weight.grad
    assert unused.any() and torch.all(g[unused] == 0)
    torch.testing.assert_close(g[used], 1e-6 * m.tokens.item.weight.detach()[used])  # ½‖·‖² -> w·row, once per row
    assert 0 in used.tolist()  # the padding row is a used row (histories shorter than L)
    g_u = m.user_long.weight.grad
    assert torch.all(g_u[[0, 4, 5]] == 0) and torch.all(g_u[[1, 2, 3]] != 0)


def test_compute_loss_parts_and_finite_backward():
    m = make_model(dtype=torch.float32)
    b = make_batch()
    parts = m.compute_loss(b, m(b))
    assert set(parts) == {"rec", "l2", "contrastive", "discrepancy", "total"}
    torch.testing.assert_close(parts["total"], sum(v for k, v in parts.items() if k != "total"))
    parts["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
