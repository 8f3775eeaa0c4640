"""Building blocks against hand computations of their equations (docs/protocol.md §6.2–§6.4)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clsr.data.batches import Batch
from clsr.fast.attention import bn_affine, din_valid_only, tail_folded
from clsr.models.attention import PAD_SCORE, DinAttention, attention_pool, masked_softmax
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell, run_rnn
from clsr.models.layers import BN_EPS, BN_MOMENTUM, MLP, ItemCategoryEmbedding, glorot_uniform_, trunc_normal_

torch.set_num_threads(1)


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_bn_train(x, eps=BN_EPS):
    """BN with batch statistics (biased variance), γ = 1, β = 0, over all rows of a 2-D array."""
    return (x - x.mean(0)) / np.sqrt(x.var(0) + eps)


# ------------------------------------------------------------------------------------------------
# initialisers and MLP
# ------------------------------------------------------------------------------------------------
def test_trunc_normal_and_glorot_limits():
    torch.manual_seed(0)
    w = trunc_normal_(torch.empty(200, 200), std=0.01)
    assert w.abs().max() <= 0.02 + 1e-9
    assert 0.007 < w.std() < 0.01  # truncation at 2σ shrinks the std to ≈ 0.88σ
    v = glorot_uniform_(torch.empty(40))
    assert v.abs().max() <= math.sqrt(6 / 80) and v.abs().max() > 0.2
    k = glorot_uniform_(torch.empty(80, 160))
    assert k.abs().max() <= math.sqrt(6 / 240)


def test_mlp_bn_settings_init_and_statistics_over_all_positions():
    torch.manual_seed(0)
    mlp = MLP(6, [5, 4], out_dim=1).double()
    for bn in mlp.norms:
        assert bn.eps == BN_EPS == 1e-4 and bn.momentum == BN_MOMENTUM == 0.05
    for lin in list(mlp.linears) + [mlp.out]:
        assert torch.all(lin.bias == 0) and lin.weight.abs().max() <= 0.02
    # a 3-D input: BN statistics are over all B·L positions (what the flattened numpy computes)
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    y = mlp(x)
    assert y.shape == (3, 7, 1)
    W = [(l.weight.detach().numpy(), l.bias.detach().numpy()) for l in mlp.linears]
    h = x.reshape(-1, 6).numpy()
    for Wk, bk in W:
        h = np.maximum(np_bn_train(h @ Wk.T + bk), 0)
    ref = h @ mlp.out.weight.detach().numpy().T + mlp.out.bias.detach().numpy()
    np.testing.assert_allclose(y.detach().reshape(-1, 1).numpy(), ref, rtol=1e-10, atol=1e-12)
    # running statistics: momentum 0.05 towards the batch mean
    first = (x.reshape(-1, 6) @ mlp.linears[0].weight.T + mlp.linears[0].bias).detach()
    torch.testing.assert_close(mlp.norms[0].running_mean, 0.05 * first.mean(0))


def test_mlp_eval_bn_folding_equals_bn():
    torch.manual_seed(0)
    mlp = MLP(6, [5, 4], out_dim=2).double()
    with torch.no_grad():
        for bn in mlp.norms:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    mlp.eval()
    x = torch.randn(11, 6, dtype=torch.float64)
    z0 = mlp.linears[0](x)
    g, t = bn_affine(mlp, 0)
    torch.testing.assert_close(tail_folded(mlp, z0 * g + t), mlp(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# item + category embedding
# ------------------------------------------------------------------------------------------------
def token_batch(B=4, C=3, L=5, n_items=9, n_cates=4):
    g = torch.Generator().manual_seed(0)
    length = torch.tensor([5, 2, 0, 3])[:B]
    mask = (torch.arange(L)[None, :] < length[:, None]).float()
    return Batch(
        user=torch.ones(B, dtype=torch.long),
        hist_item=torch.randint(1, n_items, (B, L), generator=g) * mask.long(),
        hist_cate=torch.randint(1, n_cates, (B, L), generator=g) * mask.long(),
        mask=mask,
        length=length,
        time_to_now=torch.zeros(B, L),
        time_from_first=torch.zeros(B, L),
        cand_item=torch.randint(1, n_items, (B, C), generator=g),
        cand_cate=torch.randint(1, n_cates, (B, C), generator=g),
        user_row=torch.arange(B),
        instance=torch.arange(B),
    )


def test_item_category_embedding_tokens_gradients_and_used_rows():
    """e = [E_i(item) ‖ E_c(cate)] for history and candidates, the same gradient as nn.Embedding's own
    lookup (repeated rows add up), and the rows a batch reads (padding row 0 of the history included)."""
    torch.manual_seed(0)
    tokens = ItemCategoryEmbedding(9, 4, 6, 2, init_std=0.01)
    assert tokens.dim == 8 and tokens.item.weight.shape == (9, 6) and tokens.cate.weight.shape == (4, 2)
    for table in tokens.tables():
        assert table.padding_idx is None and table.weight.abs().max() <= 0.02 and table.weight[0].abs().sum() > 0
    b = token_batch()
    X, e_v = tokens.history(b), tokens.candidates(b)
    torch.testing.assert_close(X, torch.cat([tokens.item(b.hist_item), tokens.cate(b.hist_cate)], -1), rtol=0, atol=0)
    torch.testing.assert_close(e_v, torch.cat([tokens.item(b.cand_item), tokens.cate(b.cand_cate)], -1), rtol=0, atol=0)
    torch.testing.assert_close(tokens.items(b.hist_item), X[..., :6], rtol=0, atol=0)
    torch.testing.assert_close(tokens.cates(b.cand_cate), e_v[..., 6:], rtol=0, atol=0)

    wx, wv = torch.randn(X.shape), torch.randn(e_v.shape)
    ((X * wx).sum() + (e_v * wv).sum()).backward()
    fast = [t.weight.grad.clone() for t in tokens.tables()]
    tokens.zero_grad()
    ref_X = torch.cat([tokens.item(b.hist_item), tokens.cate(b.hist_cate)], -1)
    ref_v = torch.cat([tokens.item(b.cand_item), tokens.cate(b.cand_cate)], -1)
    ((ref_X * wx).sum() + (ref_v * wv).sum()).backward()
    for got, table in zip(fast, tokens.tables()):
        torch.testing.assert_close(got, table.weight.grad, rtol=1e-6, atol=1e-7)

    (item_table, item_rows), (cate_table, cate_rows) = tokens.batch_rows(b)
    assert item_table is tokens.item and cate_table is tokens.cate
    assert sorted(item_rows.tolist()) == sorted(b.hist_item.flatten().tolist() + b.cand_item.flatten().tolist())
    assert sorted(cate_rows.tolist()) == sorted(b.hist_cate.flatten().tolist() + b.cand_cate.flatten().tolist())
    assert 0 in item_rows.tolist()  # the padded history positions read row 0


def test_item_category_embedding_without_init_std_leaves_the_draw_to_the_caller():
    torch.manual_seed(3)
    tokens = ItemCategoryEmbedding(500, 50, 32, 8, init_std=None)
    torch.manual_seed(3)
    item, cate = torch.nn.Embedding(500, 32), torch.nn.Embedding(50, 8)
    assert torch.equal(tokens.item.weight, item.weight) and torch.equal(tokens.cate.weight, cate.weight)


# ------------------------------------------------------------------------------------------------
# DIN attention
# ------------------------------------------------------------------------------------------------
def np_din_weights(att: DinAttention, keys, mask, query):
    """Direct numpy computation: concat, MLP with train-mode BN over all B·C·L rows, masked softmax.
    keys (B, L, d), query (B, C, d) -> (B, C, L)."""
    B, L, d = keys.shape
    C = query.shape[1]
    a = np.broadcast_to(keys[:, None], (B, C, L, d))
    q = np.broadcast_to(query[:, :, None], (B, C, L, d))
    h = np.concatenate([a, q, a - q, a * q], -1).reshape(-1, 4 * d)
    for lin in att.mlp.linears:
        h = np.maximum(np_bn_train(h @ lin.weight.detach().numpy().T + lin.bias.detach().numpy()), 0)
    s = (h @ att.mlp.out.weight.detach().numpy().T + att.mlp.out.bias.detach().numpy()).reshape(B, C, L)
    s = np.where(mask[:, None] > 0, s, PAD_SCORE)
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def din_case():
    torch.manual_seed(1)
    att = DinAttention(4, (6, 3), init_std=0.5).double()  # large init so scores are not all ~equal
    keys = torch.randn(2, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float64)
    return att, keys, mask


def test_din_attention_matches_numpy_and_zeroes_padding(din_case):
    att, keys, mask = din_case
    query = torch.randn(2, 3, 4, dtype=torch.float64)
    w = att(keys, mask, query)
    assert w.shape == (2, 3, 5)
    assert torch.all(w[0, :, 3:] == 0)  # padded positions get exactly zero weight
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    ref = np_din_weights(att, keys.numpy(), mask.numpy(), query.numpy())
    np.testing.assert_allclose(w.detach().numpy(), ref, rtol=1e-9, atol=1e-12)
    # one query per instance: (B, d) -> (B, L), same as C = 1
    w1 = att(keys, mask, query[:, 0])
    ref1 = np_din_weights(att, keys.numpy(), mask.numpy(), query[:, :1].numpy())[:, 0]
    np.testing.assert_allclose(w1.detach().numpy(), ref1, rtol=1e-9, atol=1e-12)


def naive_din_weights(att: DinAttention, keys, mask, query, query_shared=None):
    """The DIN scorer from its definition: MLP([a, q, a − q, a ⊙ q]) over the explicit concatenation
    (B, C, L, 4d), then the masked softmax. (B, C, L), or (B, L) for a (B, d) query."""
    q = query if query.dim() == 3 else query.unsqueeze(1)
    if query_shared is not None:
        q = torch.cat([query_shared.unsqueeze(1).expand(-1, q.shape[1], -1), q], -1)
    B, C, d = q.shape
    a = keys.unsqueeze(1).expand(B, C, keys.shape[1], d)
    qq = q.unsqueeze(2).expand_as(a)
    w = masked_softmax(att.mlp(torch.cat([a, qq, a - qq, a * qq], -1)).squeeze(-1), mask.unsqueeze(1))
    return w if query.dim() == 3 else w.squeeze(1)


def test_din_fast_path_equals_naive_path(din_case):
    att, keys, mask = din_case
    query = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(att(keys, mask, query), naive_din_weights(att, keys, mask, query), rtol=1e-10, atol=1e-12)
    # query given as [shared ‖ per-query] parts: fast split == naive concat == full query
    shared, per = query[:, 0, :1], query[..., 1:]
    full = torch.cat([shared.unsqueeze(1).expand(-1, 3, -1), per], -1)
    fast = att(keys, mask, per, query_shared=shared)
    torch.testing.assert_close(fast, naive_din_weights(att, keys, mask, per, shared), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast, naive_din_weights(att, keys, mask, full), rtol=1e-10, atol=1e-12)
    # gradients agree too (keys, both query parts and the first layer's weight)
    inputs = [keys.requires_grad_(True), per.requires_grad_(True), shared.requires_grad_(True),
              att.mlp.linears[0].weight]
    g_fast = torch.autograd.grad((att(keys, mask, per, shared) ** 2).sum(), inputs)
    g_naive = torch.autograd.grad((naive_din_weights(att, keys, mask, per, shared) ** 2).sum(), inputs)
    for a, b in zip(g_fast, g_naive):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_din_eval_scores_only_valid_positions_exactly(din_case):
    att, keys, mask = din_case
    att(keys, mask, torch.randn(2, 3, 4, dtype=torch.float64))  # move the running statistics
    att.eval()
    assert att.positions_independent()
    query = torch.randn(2, 3, 4, dtype=torch.float64)
    mask = mask.clone()
    mask[1] = 0  # an empty history: uniform weights, as released
    w = att(keys, mask, query[..., 1:], query_shared=query[:, 0, :1])
    w_naive = naive_din_weights(att, keys, mask, query[..., 1:], query[:, 0, :1])
    torch.testing.assert_close(w, w_naive, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w[1], torch.full((3, 5), 0.2, dtype=torch.float64))
    # tiny chunks give the same result
    torch.testing.assert_close(din_valid_only.fn(att, keys, mask, query[..., 1:], query[:, 0, :1], chunk_rows=2), w)


def test_attention_pool():
    w = torch.tensor([[0.25, 0.75, 0.0]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 4.0], [9.0, 9.0]]])
    torch.testing.assert_close(attention_pool(w, v), torch.tensor([[0.25, 3.0]]))
    torch.testing.assert_close(attention_pool(w.unsqueeze(1).repeat(1, 2, 1), v), torch.tensor([[[0.25, 3.0]] * 2]))


# ------------------------------------------------------------------------------------------------
# recurrent cells
# ------------------------------------------------------------------------------------------------
def test_tf_gru_step_matches_equations_and_differs_from_torch_gru():
    torch.manual_seed(0)
    D, H = 2, 3
    cell = TFGRUCell(D, H).double()
    with torch.no_grad():
        cell.gate_bias.copy_(torch.tensor([0.1, -0.2, 0.3, 1.0, 1.0, 0.5]))
        cell.cand_bias.copy_(torch.tensor([0.05, -0.1, 0.2]))
    x = np.array([[0.5, -1.0]])
    h = np.array([[0.3, -0.6, 0.9]])
    Wg, bg = cell.gate_kernel.detach().numpy(), cell.gate_bias.detach().numpy()
    Wc, bc = cell.cand_kernel.detach().numpy(), cell.cand_bias.detach().numpy()
    rz = sig(np.concatenate([x, h], 1) @ Wg + bg)
    r, z = rz[:, :H], rz[:, H:]
    c = np.tanh(np.concatenate([x, r * h], 1) @ Wc + bc)  # reset applied before the matmul
    expected = z * h + (1 - z) * c
    xt, ht = torch.tensor(x), torch.tensor(h)
    np.testing.assert_allclose(cell(xt, ht).detach().numpy(), expected, rtol=1e-12)
    # torch.nn.GRUCell with the same weights applies r after the recurrent matmul: a different function
    tg = torch.nn.GRUCell(D, H).double()
    with torch.no_grad():
        tg.weight_ih.copy_(torch.cat([cell.gate_kernel[:D].T, cell.cand_kernel[:D].T]))
        tg.weight_hh.copy_(torch.cat([cell.gate_kernel[D:].T, cell.cand_kernel[D:].T]))
        tg.bias_ih.copy_(torch.cat([cell.gate_bias, cell.cand_bias]))
        tg.bias_hh.zero_()
    assert (tg(xt, ht) - cell(xt, ht)).abs().max() > 1e-3


def test_gru_init_gate_bias_one():
    cell = TFGRUCell(4, 3)
    assert torch.all(cell.gate_bias == 1.0) and torch.all(cell.cand_bias == 0.0)
    assert cell.gate_kernel.shape == (7, 6) and cell.gate_kernel.abs().max() <= math.sqrt(6 / 13)


def test_tf_lstm_step_matches_equations():
    torch.manual_seed(0)
    D, H = 3, 2
    cell = TFLSTMCell(D, H).double()
    x, h, c = np.array([[0.2, -0.4, 1.0]]), np.array([[0.1, -0.3]]), np.array([[0.5, -0.5]])
    W = cell.kernel.detach().numpy()
    g = np.concatenate([x, h], 1) @ W
    i, j, f, o = np.split(g, 4, axis=1)
    c_new = sig(f + 1.0) * c + sig(i) * np.tanh(j)
    h_new = sig(o) * np.tanh(c_new)
    hn, cn = cell(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    np.testing.assert_allclose(hn.detach().numpy(), h_new, rtol=1e-12)
    np.testing.assert_allclose(cn.detach().numpy(), c_new, rtol=1e-12)


def test_time4lstm_step_matches_section_2_3():
    torch.manual_seed(0)
    D, H = 3, 2
    cell = Time4LSTMCell(D, H).double()
    with torch.no_grad():
        cell.bias.copy_(torch.linspace(-0.3, 0.4, 4 * H))  # non-zero _Linear bias, to see the order
    p = {k: v.detach().numpy() for k, v in cell.named_parameters()}
    x = np.array([[0.2, -0.4, 1.0]])
    t_first, t_now = 2.5, -0.7
    h, c = np.array([[0.1, -0.3]]), np.array([[0.5, -0.5]])
    T1 = np.tanh(t_now * p["time_input_w1"] + p["time_input_b1"])
    T2 = np.tanh(t_first * p["time_input_w2"] + p["time_input_b2"])
    g1 = x @ p["time_kernel_w1"] + T1 @ p["time_kernel_t1"] + p["time_bias1"]
    g2 = x @ p["time_kernel_w2"] + T2 @ p["time_kernel_t2"] + p["time_bias2"]
    i, j, f, o = np.split(np.concatenate([x, h], 1) @ p["kernel"] + p["bias"], 4, axis=1)
    o = o + T1 @ p["o_kernel_t1"] + T2 @ p["o_kernel_t2"]
    c_new = sig(f + 1.0) * sig(g2) * c + sig(i) * sig(g1) * np.tanh(j)
    h_new = sig(o) * np.tanh(c_new)

    inputs = torch.tensor([[0.2, -0.4, 1.0, t_first, t_now]], dtype=torch.float64)  # [x ‖ τ^first ‖ τ^now]
    hn, cn = cell(inputs, (torch.tensor(h), torch.tensor(c)))
    np.testing.assert_allclose(hn.detach().numpy(), h_new, rtol=1e-12)
    np.testing.assert_allclose(cn.detach().numpy(), c_new, rtol=1e-12)
    # initialisation: glorot everywhere (1-D vectors with limit sqrt(6/(2H))), _Linear bias 0
    fresh = Time4LSTMCell(40, 40)
    assert torch.all(fresh.bias == 0)
    for name in ("time_input_w1", "time_input_b1", "time_input_w2", "time_input_b2", "time_bias1", "time_bias2"):
        v = getattr(fresh, name)
        assert v.shape == (40,) and v.abs().max() <= math.sqrt(6 / 80) and v.abs().max() > 0.2


# ------------------------------------------------------------------------------------------------
# the runner: dynamic_rnn with sequence_length
# ------------------------------------------------------------------------------------------------
def manual_run(cell, x, n, state):
    """Step a cell's one-step `forward` over the first n inputs of one sequence."""
    out = []
    for t in range(n):
        state = cell(x[t : t + 1], state)
        out.append(state[0] if isinstance(state, tuple) else state)
    return out, state


@pytest.mark.parametrize("kind", ["gru", "lstm", "time4lstm"])
def test_runner_zero_outputs_and_frozen_state_past_length(kind):
    torch.manual_seed(0)
    B, L, D, H = 3, 5, 3, 4
    cell = {"gru": TFGRUCell(D, H), "lstm": TFLSTMCell(D, H), "time4lstm": Time4LSTMCell(D, H)}[kind].double()
    width = D + 2 if kind == "time4lstm" else D
    x = torch.randn(B, L, width, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0])
    h0 = torch.randn(B, H, dtype=torch.float64) if kind == "gru" else None
    outputs, final = run_rnn(cell, x, lengths, h0=h0)
    assert outputs.shape == (B, L, H)
    for b in range(B):
        n = int(lengths[b])
        assert torch.all(outputs[b, n:] == 0)
        if kind == "gru":
            state = h0[b : b + 1]
        else:
            state = (torch.zeros(1, H, dtype=torch.float64), torch.zeros(1, H, dtype=torch.float64))
        outs, state = manual_run(cell, x[b], n, state)
        for t in range(n):
            torch.testing.assert_close(outputs[b, t : t + 1], outs[t], rtol=1e-12, atol=1e-14)
        last = state if kind == "gru" else state[0]
        torch.testing.assert_close(final[b : b + 1], last, rtol=1e-12, atol=1e-14)
    # what lies in the padding changes nothing; stopping the loop at the longest history neither
    x2 = x.clone()
    x2[1, 2:] = 100.0
    x2[2] = -7.0
    o2, f2 = run_rnn(cell, x2, lengths, h0=h0)
    torch.testing.assert_close(o2, outputs)
    torch.testing.assert_close(f2, final)
    o3, f3 = run_rnn(cell, x, torch.tensor([3, 2, 0]), h0=h0, n_steps=3)
    o4, f4 = run_rnn(cell, x, torch.tensor([3, 2, 0]), h0=h0)
    torch.testing.assert_close(o3, o4)
    torch.testing.assert_close(f3, f4)
