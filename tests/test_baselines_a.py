"""Baselines A: NCF, LightGCN, DIN, GRU4Rec, Caser (clsr/models/{ncf,lightgcn,din,gru4rec,caser}.py).

For every model: output shapes for C = 5 and C = 100; the per-instance ("shared") computation equals
the released row layout (every candidate on its own row); order (in)variance under a shuffled
history; and two epochs of `clsr.train.fit` on a small synthetic log with learnable structure beat
random ranking clearly (validation GAUC > 0.6). Plus model-specific checks: LightGCN's propagation
against a dense computation and its train-only graph, Caser's convolutions against `F.conv1d`,
the split prediction MLP against the concatenated one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from clsr.data.batches import Batch, shuffle_history
from clsr.data.protocol import ProtocolConfig, build
from clsr.models.base import ModelSizes
from clsr.models.layers import MLP, mlp_over_parts
from clsr.models.lightgcn import LightGCN, LightGCNConfig, train_graph_edges
from clsr.models.registry import build_model, model_names
from clsr.train import fit
from tests.test_layers import naive_din_weights

MODELS = ["ncf", "lightgcn", "din", "gru4rec", "caser"]
ORDER_INVARIANT = {"ncf": True, "lightgcn": True, "din": True, "gru4rec": False, "caser": False}
SIZES = ModelSizes(n_users=30, n_items=60, n_cates=7)
L = 12


def random_batch(B: int, C: int, L: int = L, sizes: ModelSizes = SIZES, seed: int = 0) -> Batch:
    """B instances with left-aligned histories of random length (one empty, one full) and C candidates."""
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(1, L + 1, (B,), generator=g)
    length[0], length[-1] = L, 0
    mask = (torch.arange(L)[None, :] < length[:, None]).float()
    hist_item = torch.randint(1, sizes.n_items, (B, L), generator=g) * mask.long()
    hist_cate = torch.randint(1, sizes.n_cates, (B, L), generator=g) * mask.long()
    return Batch(
        user=torch.randint(0, sizes.n_users, (B,), generator=g),
        hist_item=hist_item,
        hist_cate=hist_cate,
        mask=mask,
        length=length,
        time_to_now=torch.rand(B, L, generator=g) * mask,
        time_from_first=torch.rand(B, L, generator=g) * mask,
        cand_item=torch.randint(0, sizes.n_items, (B, C), generator=g),
        cand_cate=torch.randint(0, sizes.n_cates, (B, C), generator=g),
        user_row=torch.arange(B),
        instance=torch.full((B,), -1),
    )


def make_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name, SIZES, {"max_len": L} if name == "caser" else {})
    if name == "lightgcn":
        rng = np.random.default_rng(seed)
        model.set_graph(rng.integers(1, SIZES.n_users, 150), rng.integers(1, SIZES.n_items, 150),
                        rng.integers(0, SIZES.n_cates, SIZES.n_items))
    # larger embeddings than the 0.01 init, so that the history visibly moves the logits
    with torch.no_grad():
        for table in model.embedding_tables():
            table.weight.normal_(0.0, 1.0)
    return model


# --------------------------------------------------------------------------------------------------
def test_registered():
    assert set(MODELS) <= set(model_names())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("C", [5, 100])
def test_forward_shapes_and_loss(name, C):
    model = make_model(name)
    batch = random_batch(6, C)
    out = model(batch)
    assert out["logits"].shape == (6, C)
    assert torch.isfinite(out["logits"]).all()
    parts = model.compute_loss(batch, out)
    parts["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.clip_norm is None  # the released baselines are unclipped
    model.eval()
    with torch.no_grad():
        assert model(batch)["logits"].shape == (6, C)


@pytest.mark.parametrize("name", MODELS)
def test_shared_equals_released_row_layout(name):
    """History parts computed once per instance == the released layout (one candidate per row, the
    history copied onto every row). Train mode: BN statistics over the copies equal those over rows."""
    model = make_model(name)
    batch = random_batch(5, 4)
    shared = model(batch)["logits"]
    rows = model(batch.expand_rows())["logits"].reshape(5, 4)
    torch.testing.assert_close(shared, rows, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_history_order(name):
    """NCF and LightGCN ignore the history; DIN uses no positions (masked sum + attention), so all three
    are invariant to shuffling each history, as released. GRU4Rec and Caser are not."""
    model = make_model(name)
    model.eval()
    batch = random_batch(16, 5)
    shuffled = shuffle_history(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(batch.hist_item, shuffled.hist_item)
    with torch.no_grad():
        a, b = model(batch)["logits"], model(shuffled)["logits"]
    scale = a.abs().max()
    if name in ("ncf", "lightgcn"):
        assert torch.equal(a, b)
    elif ORDER_INVARIANT[name]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(scale))
    else:
        assert (a - b).abs().max() > 1e-3 * scale


def test_mlp_over_parts_equals_concatenation():
    torch.manual_seed(0)
    mlp = MLP(7 + 5 + 3, [6, 4], out_dim=1, init_std=0.3)
    B, C = 9, 4
    s1, c1, s2 = torch.randn(B, 7), torch.randn(B, C, 5), torch.randn(B, 3)
    full = torch.cat([s1.unsqueeze(1).expand(B, C, 7), c1, s2.unsqueeze(1).expand(B, C, 3)], dim=-1)
    torch.testing.assert_close(mlp_over_parts(mlp, [s1, c1, s2]), mlp(full))


def test_din_matches_naive_attention():
    """DIN with DinAttention's fast path == explicit [A, q, A−q, A⊙q] concatenation."""
    model = make_model("din")
    batch = random_batch(6, 5)
    out = model(batch)
    X = torch.cat([model.tokens.item(batch.hist_item), model.tokens.cate(batch.hist_cate)], dim=-1)
    e_v = torch.cat([model.tokens.item(batch.cand_item), model.tokens.cate(batch.cand_cate)], dim=-1)
    a = naive_din_weights(model.att, X @ model.att_proj, batch.mask, e_v)
    att = a @ X
    s = (X * batch.mask.unsqueeze(-1)).sum(1)
    feats = torch.cat([e_v, s.unsqueeze(1).expand_as(e_v), att], dim=-1)
    torch.testing.assert_close(out["logits"], model.pred_mlp(feats).squeeze(-1), rtol=1e-4, atol=1e-5)


def test_gru4rec_final_state_is_step_n_minus_1():
    model = make_model("gru4rec")
    batch = random_batch(5, 3)
    h = model(batch)["h"]
    X = torch.cat([model.tokens.item(batch.hist_item), model.tokens.cate(batch.hist_cate)], dim=-1)
    for b in range(5):
        state = torch.zeros(1, model.gru.hidden_size)
        for t in range(int(batch.length[b])):
            state = model.gru(X[b : b + 1, t], state)
        torch.testing.assert_close(h[b : b + 1], state, rtol=1e-5, atol=1e-6)


def test_caser_convolutions_match_conv1d():
    """Vertical = TF conv1d over the d×L transpose with kernel d (a dense layer over L·d), horizontal =
    conv1d of heights 1..3, ReLU, max over time; both with the padding unmasked."""
    model = make_model("caser")
    batch = random_batch(6, 2)
    pairs = ((model.item_cnn, model.tokens.item(batch.hist_item)), (model.cate_cnn, model.tokens.cate(batch.hist_cate)))
    for cnn, emb in pairs:
        n_v, d = cnn.n_v, cnn.dim
        # TF: input (B, d, L) NWC, kernel (d, L, n_v) == PyTorch conv1d on (B, L, d) NCW, weight (n_v, L, d)
        vert = torch.relu(F.conv1d(emb, cnn.vertical_kernel.view(n_v, L, d), cnn.vertical_bias)).squeeze(-1)
        hor = [
            torch.relu(F.conv1d(emb.transpose(1, 2), K.permute(2, 1, 0), b)).amax(-1)
            for K, b in zip(cnn.horizontal_kernels, cnn.horizontal_biases)
        ]
        torch.testing.assert_close(cnn(emb), torch.cat([vert] + hor, dim=-1), rtol=1e-4, atol=1e-5)
    assert model(batch)["cnn"].shape == (6, 2 * (128 + 3 * 128))


def test_caser_takes_history_length_from_data():
    model = build_model("caser", SIZES)  # built for the default L = 50

    class FakeData:
        meta = {"max_len": L}

    with pytest.raises(ValueError, match="vertical filter"):
        model(random_batch(3, 2))
    model.attach_data(FakeData())
    assert model.item_cnn.vertical_kernel.shape == (128, L * 32)
    assert model(random_batch(3, 2))["logits"].shape == (3, 2)


# --------------------------------------------------------------------------------------------------
# LightGCN
def test_lightgcn_propagation_equals_dense():
    U, I, K = 5, 7, 3
    users = np.array([1, 1, 2, 3, 3, 3, 4, 1])
    items = np.array([1, 2, 2, 3, 4, 1, 6, 1])  # (1, 1) twice: counts once; user 0 and item 5 isolated
    item2cate = np.array([0, 1, 1, 2, 2, 3, 1])
    torch.manual_seed(0)
    model = LightGCN(LightGCNConfig(n_layers=K), ModelSizes(U, I, 4))
    model.set_graph(users, items, item2cate)

    A = torch.zeros(U + I, U + I)
    for u, i in zip(users, items):
        A[u, U + i] = A[U + i, u] = 1.0
    deg = A.sum(1)
    d = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    A_hat = d[:, None] * A * d[None, :]
    torch.testing.assert_close(model.adj.to_dense(), A_hat)
    assert torch.equal(A_hat, A_hat.T) and (A_hat.diagonal() == 0).all()

    item_nodes = torch.cat([model.tokens.item.weight, model.tokens.cate.weight[torch.as_tensor(item2cate)]], -1)
    E0 = torch.cat([model.user_emb.weight, item_nodes])
    expected = sum(torch.linalg.matrix_power(A_hat, k) @ E0 for k in range(K + 1)) / (K + 1)
    torch.testing.assert_close(model.propagate(), expected, rtol=1e-5, atol=1e-7)
    # isolated nodes keep E0 / (K + 1); score = <u, i>
    torch.testing.assert_close(model.propagate()[0], E0[0] / (K + 1))
    batch = random_batch(4, 3, sizes=ModelSizes(U, I, 4))
    out = model(batch)
    E = model.propagate()
    torch.testing.assert_close(out["logits"], (E[batch.user].unsqueeze(1) * E[U + batch.cand_item]).sum(-1))
    # gradients reach the layer-0 tables through the sparse propagation
    out["logits"].sum().backward()
    assert model.tokens.item.weight.grad.abs().sum() > 0


def test_lightgcn_eval_cache_tracks_parameter_updates():
    model = make_model("lightgcn")
    model.eval()
    batch = random_batch(4, 3)
    with torch.no_grad():
        a = model(batch)["logits"]
        assert torch.equal(a, model(batch)["logits"])
        model.user_emb.weight.add_(1.0)  # an optimiser step bumps the version counter
        b = model(batch)["logits"]
    assert not torch.equal(a, b)
    model.train()
    torch.testing.assert_close(model(batch)["logits"], b)


def synthetic_log(n_users=200, n_events=25, n_cates=10, per_cate=20, p_pref=0.85, p_next=0.7, seed=0) -> pd.DataFrame:
    """Users with a preferred category (85 % of their events) and a within-category sequential pattern
    (the next item of a category is the previous one + 1 with probability 0.7). Hourly timestamps."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        pref, prev = u % n_cates, {}
        for t in range(n_events):
            c = pref if rng.random() < p_pref else int(rng.integers(n_cates))
            j = (prev[c] + 1) % per_cate if (c in prev and rng.random() < p_next) else int(rng.integers(per_cate))
            prev[c] = j
            rows.append((f"u{u}", f"i{c * per_cate + j}", f"c{c}", 1_000_000 + 7 * u + 3600 * t))
    return pd.DataFrame(rows, columns=["user", "item", "category", "ts"])


@pytest.fixture(scope="module")
def synthetic_data():
    return build(
        synthetic_log(), ProtocolConfig(max_len=20, test_negatives=19, time_unit=3600.0), name="synthetic"
    )


def test_lightgcn_graph_uses_train_only(synthetic_data):
    """Edges = (user, item) of every event up to each user's last train target; nothing from valid/test."""
    data = synthetic_data
    users, items, item2cate = train_graph_edges(data)
    got = set(zip(users.tolist(), items.tolist()))
    expected = set()
    inst = data.instances["train"]
    for u, p in zip(inst.user, inst.pos):
        start = data.user_offsets[u]
        for e in range(start, start + p + 1):  # history 0..p-1 and the target p
            expected.add((int(data.user_index[u]), int(data.item_index[data.event_item[e]])))
    assert got == expected
    # per_user split: each user's last two events are valid / test; pairs seen only there are not edges
    only_eval = set()
    for split in ("valid", "test"):
        for u, e in zip(data.instances[split].user, data.target_event(split)):
            only_eval.add((int(data.user_index[u]), int(data.item_index[data.event_item[e]])))
    only_eval -= expected
    assert only_eval and only_eval.isdisjoint(got)
    cates = data.cate_index[data.event_cate[: data.n_events]]
    its = data.item_index[data.event_item[: data.n_events]]
    assert all(item2cate[i] == c for i, c in zip(its, cates) if i > 0)


@pytest.fixture
def one_thread():
    """The training tests run single-threaded: on a busy 2-core machine, two OpenMP threads per
    process can be many times slower than one."""
    n = torch.get_num_threads()
    yield 1
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", MODELS)
def test_two_epochs_beat_random(name, synthetic_data, one_thread):
    res = fit(
        synthetic_data, name, {}, {"epochs": 2, "batch_size": 64, "progress": False, "seed": 0, "threads": one_thread}
    )
    valid = res.metrics["valid"]
    assert valid["gauc"] > 0.6, (name, valid)
    assert res.metrics["test"]["gauc"] > 0.6, (name, res.metrics["test"])
