"""clsr.diagnostics against direct computations on a tiny CLSR batch."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from clsr import diagnostics as D
from clsr import losses
from clsr.data import batches as B
from clsr.models.base import ModelSizes
from clsr.models.registry import build_model


def _model_and_batch(prepared, contrastive="triplet", **cfg):
    data, _ = prepared
    torch.manual_seed(0)
    sizes = ModelSizes(n_users=data.user_vocab_size, n_items=data.item_vocab_size, n_cates=data.cate_vocab_size)
    model = build_model("clsr", sizes, {"contrastive": contrastive, **cfg})
    rng = np.random.default_rng(0)
    batch = next(B.train_batches(data, 32, 4, int(data.meta["max_len"]), float(data.meta["time_unit"]), rng))
    return model, batch


def test_hinge_share_on_hand_made_vectors():
    cfg = SimpleNamespace(contrastive="triplet", margin=0.5)
    model = SimpleNamespace(cfg=cfg, parameters=lambda: iter(()))
    u_l = torch.tensor([[1.0, 0.0]])
    p_l = torch.tensor([[1.0, 0.0]])  # u^l on its positive proxy
    p_s = torch.tensor([[-1.0, 0.0]])  # and far from the negative one
    u_s = torch.tensor([[-1.0, 0.0]])
    out = {"u_long": u_l, "u_short": u_s, "p_long": p_l, "p_short": p_s}
    diag = D.self_supervision(model, out, {})
    # hinge arguments per dimension: dim 0 of every term is 0 − 4 + 0.5 < 0, dim 1 is 0 − 0 + 0.5 > 0
    assert diag["hinge_active"] == 0.5
    assert diag["cos_long"] == 1.0 and diag["cos_short"] == 1.0 and diag["norm_ratio_long"] == 1.0
    args = losses.triplet_hinge_args(u_l, u_s, p_l, p_s, 0.5)
    assert [a.tolist() for a in args] == [[[-3.5, 0.5]]] * 4


def test_gradient_norms_equal_separate_backward_passes(prepared_random):
    model, batch = _model_and_batch(prepared_random)
    model.train()
    out = model(batch)
    parts = model.compute_loss(batch, out)
    assert D.applies(model, out)
    diag = D.self_supervision(model, out, parts)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads_of(name):
        model.zero_grad(set_to_none=True)
        parts[name].backward(retain_graph=True)
        return [None if p.grad is None else p.grad.clone() for p in params]

    con, rec = grads_of("contrastive"), grads_of("rec")
    reached = [i for i, g in enumerate(con) if g is not None]
    assert reached, "the contrastive term reaches no parameter"
    want_rec = torch.sqrt(sum(rec[i].square().sum() for i in reached if rec[i] is not None))
    want_con = torch.sqrt(sum(con[i].square().sum() for i in reached))
    assert np.isclose(diag["grad_rec"], float(want_rec), rtol=1e-5)
    assert np.isclose(diag["grad_contrastive"], float(want_con), rtol=1e-5)
    assert np.isclose(diag["grad_ratio_contrastive"], float(want_con / want_rec), rtol=1e-5)
    # the released margin against embeddings of scale 1e-2: every hinge is active
    assert diag["hinge_active"] == 1.0


def test_no_diagnostics_without_a_contrastive_term(prepared_random):
    model, batch = _model_and_batch(prepared_random, contrastive="none")
    assert not D.applies(model, model(batch))


def test_normalized_contrastive_terms_are_scale_free():
    g = torch.Generator().manual_seed(0)
    u_l, u_s, p_l, p_s = (torch.randn(5, 8, generator=g) for _ in range(4))
    a = losses.contrastive_terms("triplet", u_l, u_s, p_l, p_s, 0.01, normalize=True)
    b = losses.contrastive_terms("triplet", 3 * u_l, 0.5 * u_s, 7 * p_l, 2 * p_s, 0.01, normalize=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    raw = losses.contrastive_terms("triplet", u_l, u_s, p_l, p_s, 0.01)
    assert not all(torch.allclose(x, y) for x, y in zip(a, raw))
