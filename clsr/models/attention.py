"""The DIN attention scorer (released ``_attention_fcn``, without the projection matrix, which the
caller owns), with its exact fast paths, and the masked softmax and pooling every attention uses.

Contents
--------
- `DinAttention`: the DIN-style scorer MLP([k, q, k-q, k⊙q]) with a masked softmax, with an exact fast
  path that never materialises the 4-fold concatenation (docs/design.md, "Where the time goes").
- `din_scores`: the same decomposition for any MLP with ``linears`` and ``tail`` (DIEN's Dice MLP,
  SURGE's scorers), keys and queries broadcast against each other.
- `masked_softmax`, `attention_pool` (Σ_t a_t V_t), `PAD_SCORE`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clsr.models import native
from clsr.models.layers import MLP

#: score given to padded positions before the softmax, as released: ``-(2**32) + 1``
PAD_SCORE = float(-(2**32) + 1)


# --------------------------------------------------------------------------------------------------
# DIN attention (released `_attention_fcn`, without the projection matrix, which the caller owns)
# --------------------------------------------------------------------------------------------------
class _AddPositionAndQueryTerms(torch.autograd.Function):
    """z[b, c, t] += K[b, t] + Q[b, c] in place on the fresh 2-D GEMM output z (B·C·L, h).

    Exists only to avoid materialising K + Q as a (B, C, L, h) tensor (one allocation and one pass
    over the largest tensor of a training step). Backward: ∂z passes through; ∂K = Σ_c ∂z, ∂Q = Σ_t ∂z.
    """

    @staticmethod
    def forward(ctx, z, K, Q):
        B, L, h = K.shape
        C = Q.shape[1]
        ctx.shape = (B, C, L, h)
        z.view(B, C, L, h).add_(K.unsqueeze(1)).add_(Q.unsqueeze(2))
        ctx.mark_dirty(z)
        return z

    @staticmethod
    def backward(ctx, grad):
        g = grad.view(ctx.shape)
        return grad, g.sum(1), g.sum(2)


def din_weight_blocks(first: nn.Linear, d: int, d_s: int = 0):
    """Column blocks of a DIN first layer W = [W_a, W_q, W_d, W_p] (h × 4d), regrouped for the split
    z = (W_a + W_d) a + (W_q − W_d) q + W_p (a ⊙ q) + b with q = [s (d_s) ‖ r (d − d_s)]:
    returns (W_a + W_d, b, (W_q − W_d)_s, (W_q − W_d)_r, W_p,s, W_p,r)."""
    W = first.weight
    W_a, W_q, W_d, W_p = W[:, :d], W[:, d : 2 * d], W[:, 2 * d : 3 * d], W[:, 3 * d :]
    W_qd = W_q - W_d
    return W_a + W_d, first.bias, W_qd[:, :d_s], W_qd[:, d_s:], W_p[:, :d_s], W_p[:, d_s:]


def din_first_layer(
    first: nn.Linear, keys: torch.Tensor, query: torch.Tensor, query_shared: torch.Tensor | None = None,
    split: bool = False, rows: "native.RaggedRows | None" = None,
):
    """Pre-activation of a DIN scorer's first layer on [k, q, k − q, k ⊙ q] without the concatenation.

    keys (B, L, d); query (B, d_r) or (B, C, d_r); optional query_shared (B, d_s) with the full query
    [query_shared ‖ query] of width d. ``first`` is the (4d -> h) linear layer. Returns z as a fresh
    2-D tensor (B·C·L, h), rows ordered (b, c, t), ready for `MLP.tail` (see `DinAttention` for the
    algebra). Exact. ``split=True`` returns (P, K, Q) with z = P + K[b, t] + Q[b, c] left unsummed, for
    `native.bn_relu`, which adds the two broadcast terms on the fly; with ``rows`` (`native.RaggedRows`),
    P has those rows (the padded positions folded into one row per query) instead of all B·C·L.
    """
    d = keys.shape[-1]
    r = query if query.dim() == 3 else query.unsqueeze(1)  # (B, C, d_r)
    d_s = 0 if query_shared is None else query_shared.shape[-1]
    if d_s + r.shape[-1] != d or first.in_features != 4 * d:
        raise ValueError(
            f"din_first_layer: query width {d_s}+{r.shape[-1]} and layer input {first.in_features} "
            f"do not match key width {d} (expected 4·{d})"
        )
    W_k, bias, W_qs, W_qr, W_ps, W_pr = din_weight_blocks(first, d, d_s)
    K = F.linear(keys, W_k)  # (B, L, h): (W_a + W_d) a_t, once per history position
    # the bias rides with the small per-query term (a bias in the (B·L, h) GEMM costs a copy pass)
    Q = F.linear(r, W_qr, bias)  # (B, C, h): (W_q − W_d)_r r + b, once per query
    # split, not slices: a slice (even keys[..., 0:]) backpropagates as a zero fill of the whole key
    # tensor plus a copy, per slice; split's backward is one cat
    keys_s, keys_r = keys.split([d_s, d - d_s], dim=-1) if d_s else (None, keys)
    if d_s:  # the shared query part s: its product term is per position, its linear term per instance
        s = query_shared
        K = K + F.linear(keys_s * s.unsqueeze(1), W_ps)
        Q = Q + F.linear(s, W_qs).unsqueeze(1)
    # per (query, position): W_p,r (a_r,t ⊙ r_c), one GEMM over all B·C·L rows, then + K + Q in place
    if rows is not None:  # ragged rows: the product for the valid positions and one padding row per query
        prod = native.RaggedProduct.apply(keys_r, r, rows)
        return torch.mm(prod, W_pr.t().contiguous()), K, Q
    if split:
        P = native.din_pair_layer(keys_r, r, W_pr)
        if P is None:
            prod = keys_r.unsqueeze(1) * r.unsqueeze(2)
            P = torch.mm(prod.view(-1, prod.shape[-1]), W_pr.t().contiguous())
        return P, K, Q
    z = native.din_pair_layer(keys_r, r, W_pr, K, Q)  # the same in fused kernels, when available
    if z is not None:
        return z
    prod = keys_r.unsqueeze(1) * r.unsqueeze(2)  # (B, C, L, d_r)
    # W_prᵀ made contiguous: a transposed column block sends this GEMM to a path twice as slow on CPU
    z = torch.mm(prod.view(-1, prod.shape[-1]), W_pr.t().contiguous())
    return _AddPositionAndQueryTerms.apply(z, K, Q)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax_t(s_t if m_t else -(2**32)+1), as released (a fully padded row gets uniform weights)."""
    return torch.softmax(scores.masked_fill(mask == 0, PAD_SCORE), dim=-1)


def attention_pool(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """u = Σ_t a_t V_t. weights (B, L) -> (B, d), or (B, C, L) -> (B, C, d); values (B, L, d)."""
    if weights.dim() == 2:
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1)
    return torch.bmm(weights, values)


class DinAttention(nn.Module):
    """DIN scorer with masked softmax (released ``_attention_fcn`` after ``A = V·W``):

        s_t = MLP([a_t, q, a_t − q, a_t ⊙ q]),     w = softmax_t(s_t, padded t -> -(2**32)+1)

    Shapes: keys A (B, L, d); query q either (B, d) -> weights (B, L), or (B, C, d) -> weights
    (B, C, L) (C queries sharing the keys). The query may be given in two parts,
    ``query_shared`` (B, d_s) common to the C queries of an instance and ``query`` (B, C, d_r) or
    (B, d_r); the full query is [query_shared ‖ query], d_s + d_r = d.

    Fast path (exact). Writing the first layer W = [W_a, W_q, W_d, W_p] (one block per concat part),

        z = W_a a + W_q q + W_d (a − q) + W_p (a ⊙ q) + b
          = (W_a + W_d) a  +  (W_q − W_d) q  +  W_p (a ⊙ q)  + b,

    and with q = [s ‖ r], a = [a_s ‖ a_r], W_p (a ⊙ q) = W_p,s (a_s ⊙ s) + W_p,r (a_r ⊙ r). So

        K[b, t]    = (W_a + W_d) a_t + W_p,s (a_s,t ⊙ s)        once per history position,
        Q[b, c]    = (W_q − W_d) q_c + b                         once per query,
        P[b, c, t] = W_p,r (a_r,t ⊙ r_c)                         the only per-(position, query) product,

    z = K + Q + P. The 4d-wide concatenation is never built and the per-candidate matmul is d_r wide
    instead of 4d. The naive path (``naive=True``) builds the concatenation explicitly (tests compare).
    BN statistics run over all B·C·L positions in both paths (padding included, as released).
    """

    def __init__(
        self,
        dim: int,
        sizes: Sequence[int] = (80, 40),
        activation: str | Sequence[str] = "relu",
        batch_norm: bool = True,
        init_std: float = 0.01,
    ):
        super().__init__()
        if not sizes:
            raise ValueError("DinAttention needs at least one hidden layer")
        self.dim = dim
        self.mlp = MLP(4 * dim, sizes, activation, batch_norm, out_dim=1, init_std=init_std)

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _full_query(query: torch.Tensor, query_shared: torch.Tensor | None) -> torch.Tensor:
        """[query_shared ‖ query] as (B, C, d)."""
        q = query if query.dim() == 3 else query.unsqueeze(1)
        if query_shared is None:
            return q
        return torch.cat([query_shared.unsqueeze(1).expand(-1, q.shape[1], -1), q], dim=-1)

    def scores_naive(self, keys: torch.Tensor, query: torch.Tensor, query_shared=None) -> torch.Tensor:
        """s (B, C, L) from the explicit concatenation [a, q, a−q, a⊙q] (B, C, L, 4d)."""
        q = self._full_query(query, query_shared)  # (B, C, d)
        B, C, d = q.shape
        L = keys.shape[1]
        a = keys.unsqueeze(1).expand(B, C, L, d)
        qq = q.unsqueeze(2).expand(B, C, L, d)
        z = torch.cat([a, qq, a - qq, a * qq], dim=-1)
        return self.mlp(z).squeeze(-1)

    def scores_fast(self, keys: torch.Tensor, query: torch.Tensor, query_shared=None) -> torch.Tensor:
        """s (B, C, L) via the decomposition in the class docstring (exact, no 4d concat)."""
        B, L = keys.shape[0], keys.shape[1]
        C = query.shape[1] if query.dim() == 3 else 1
        mlp = self.mlp
        if mlp.norms is not None and mlp._act_names[0] == "relu" and native.can_fuse_bn_relu(mlp.norms[0], keys):
            # BN_0 + ReLU fused with the next layer, K and Q added inside the kernel (z is never written)
            P, K, Q = din_first_layer(mlp.linears[0], keys, query, query_shared, split=True)
            return mlp.tail(P, din_terms=(K, Q, (B, C, L))).view(B, C, L)
        z = din_first_layer(mlp.linears[0], keys, query, query_shared)  # (B·C·L, h)
        return mlp.tail(z).view(B, C, L)

    def scores_ragged(self, keys, query, query_shared, lengths) -> torch.Tensor | None:
        """s (B, C, L) in training mode without computing the padded positions' rows: their keys are all
        equal within an instance (the caller guarantees it: zero, or the padding item's), so their rows are
        too, and each instance's padding enters the BN statistics as one row per query weighted L − n_b
        (`native.RaggedRows`). Exact (same statistics, same gradients). Padded positions get PAD_SCORE.
        None when the kernels cannot take this scorer (then the dense path runs): CPU float, BN and ReLU
        in both hidden layers of a two-layer MLP with one output unit (CLSR's scorers)."""
        mlp = self.mlp
        if not (
            mlp.norms is not None and len(mlp.linears) == 2 and mlp.out is not None and mlp.out.out_features == 1
            and all(a == "relu" for a in mlp._act_names) and native.can_fuse_bn_relu(mlp.norms[0], keys)
        ):
            return None
        r = query if query.dim() == 3 else query.unsqueeze(1)
        B, L, C = keys.shape[0], keys.shape[1], r.shape[1]
        rows = native.RaggedRows(lengths, C, L)
        P, K, Q = din_first_layer(mlp.linears[0], keys, query, query_shared, rows=rows)
        y = native.bn_relu(mlp.norms[0], P, K, Q, rows=rows)
        lin = mlp.linears[1]  # its bias goes to the kernel on the side (no copy pass over the rows)
        s_rows = native.bn_relu_dot(mlp.norms[1], torch.mm(y, lin.weight.t()), mlp.out, rows=rows, x_bias=lin.bias)
        s = keys.new_full((B, C, L), PAD_SCORE)
        return s.index_put((rows.b_row, rows.q_row, rows.t_row), s_rows[: rows.V, 0])

    def positions_independent(self) -> bool:
        """True when a position's score does not depend on the other positions: BN off, or BN in
        eval mode (running statistics). Then padded positions need not be scored at all."""
        return self.mlp.norms is None or not self.mlp.training

    def scores_valid_only(
        self, keys: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, query_shared=None, chunk_rows: int = 1 << 14
    ) -> torch.Tensor:
        """s (B, C, L) scoring only the valid positions, padded ones set to -(2**32)+1.

        Exact only when `positions_independent()` (in train mode with BN, padded positions enter the
        batch statistics). Their masked score never reaches the softmax otherwise; a row with no valid
        position gets uniform weights either way. The (position, query) rows are processed in chunks of
        ``chunk_rows`` so that the temporaries stay cache-sized (C = 100 at evaluation), and BN is folded
        into the linear layers (`MLP.bn_affine`, `MLP.tail_folded`).
        """
        r = query if query.dim() == 3 else query.unsqueeze(1)  # (B, C, d_r)
        B, C, L = keys.shape[0], r.shape[1], keys.shape[1]
        d_s = 0 if query_shared is None else query_shared.shape[-1]
        if d_s + r.shape[-1] != self.dim:
            raise ValueError(f"DinAttention: query width {d_s}+{r.shape[-1]} != key width {self.dim}")
        # BN_0 (running statistics) folded into the first layer: every block's rows scale by g, b -> g b + t
        g, t = self.mlp.bn_affine(0)
        W_k, bias, W_qs, W_qr, W_ps, W_pr = din_weight_blocks(self.mlp.linears[0], self.dim, d_s)
        W_k, W_qs, W_qr, W_ps, W_pr = (W * g[:, None] for W in (W_k, W_qs, W_qr, W_ps, W_pr))
        bias = bias * g + t
        b_idx, t_idx = (mask != 0).nonzero(as_tuple=True)  # the P valid positions
        a = keys[b_idx, t_idx]  # (P, d)
        K = F.linear(a, W_k, bias)  # (P, h)
        Q = F.linear(r, W_qr)  # (B, C, h)
        if d_s:
            s = query_shared
            K = K + F.linear(a[:, :d_s] * s[b_idx], W_ps)
            Q = Q + F.linear(s, W_qs).unsqueeze(1)
        a_r = a[:, d_s:]
        scores = keys.new_full((B, C, L), PAD_SCORE)
        P = a.shape[0]
        step = max(1, chunk_rows // C)
        out = []
        for lo in range(0, P, step):
            hi = min(P, lo + step)
            bi = b_idx[lo:hi]
            prod = a_r[lo:hi].unsqueeze(1) * r[bi]  # (p, C, d_r)
            base = K[lo:hi].unsqueeze(1) + Q[bi]  # (p, C, h)
            z = torch.addmm(base.view(-1, base.shape[-1]), prod.view(-1, prod.shape[-1]), W_pr.t())
            out.append(self.mlp.tail_folded(z).view(hi - lo, C))
        if out:
            scores = scores.index_put((b_idx, torch.arange(C, device=keys.device)[:, None], t_idx), torch.cat(out).t())
        return scores

    def forward(
        self,
        keys: torch.Tensor,
        mask: torch.Tensor,
        query: torch.Tensor,
        query_shared: torch.Tensor | None = None,
        naive: bool = False,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention weights: (B, L) for a (B, d_r) query, (B, C, L) for a (B, C, d_r) query.

        ``naive`` builds the 4d concatenation over every position (the reference). Otherwise the fast
        decomposition runs over every position in training (BN statistics include padding, as
        released) and over the valid positions only when `positions_independent()` (evaluation).
        ``lengths`` (B,): the histories are left-aligned with n_b valid positions AND every padded
        position of an instance has the same key; training then folds the padded positions into one
        weighted row per query (`scores_ragged`, exact).
        """
        s = None
        if naive:
            s = self.scores_naive(keys, query, query_shared)
        elif self.positions_independent():
            s = self.scores_valid_only(keys, mask, query, query_shared)
        elif lengths is not None:
            s = self.scores_ragged(keys, query, query_shared, lengths)
        if s is None:
            s = self.scores_fast(keys, query, query_shared)  # (B, C, L)
        w = masked_softmax(s, mask.unsqueeze(1))
        return w.squeeze(1) if query.dim() == 2 else w


def din_scores(mlp: nn.Module, keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """s = mlp([k, q, k − q, k ⊙ q]).squeeze(-1) for keys (..., L, d) and queries broadcastable to them
    ((..., 1, d): one query for all positions; (..., L, d): one query per position), without building
    the 4d concatenation. This is the exact decomposition of `DinAttention`,

        z = (W_a + W_d) k + (W_q − W_d) q + W_p (k ⊙ q) + b,

    with each term computed on its own (un-broadcast) shape, so keys shared by C queries
    (keys (B, 1, L, d), queries (B, C, 1, d)) are projected once. `mlp` needs ``linears`` and ``tail``
    (a `layers.MLP`, or DIEN's `DiceMLP`). Returns the broadcast shape without the last axis."""
    d = keys.shape[-1]
    W, b = mlp.linears[0].weight, mlp.linears[0].bias
    W_a, W_q, W_d, W_p = W[:, :d], W[:, d : 2 * d], W[:, 2 * d : 3 * d], W[:, 3 * d :]
    z = F.linear(keys * query, W_p)  # the only product on the broadcast shape
    z = z.add_(F.linear(keys, W_a + W_d, b)).add_(F.linear(query, W_q - W_d))  # in place: add's backward needs no inputs
    return mlp.tail(z).squeeze(-1)
