"""The DIN attention scorer (released ``_attention_fcn``, without the projection matrix, which the
caller owns), and the masked softmax and pooling every attention uses.

Contents
--------
- `DinAttention`: the DIN-style scorer MLP([k, q, k-q, k⊙q]) with a masked softmax, computed through
  the exact split of its first layer (`din_first_layer`), which never builds the 4-fold concatenation.
  Its fast twins (fused kernels, padding folded into one weighted row, evaluation on the valid
  positions only with batch norm folded) are in `clsr.fast.attention`.
- `din_scores`: the same decomposition for any MLP with ``linears`` and ``tail`` (DIEN's Dice MLP,
  SURGE's scorers), keys and queries broadcast against each other.
- `masked_softmax`, `attention_pool` (Σ_t a_t V_t), `PAD_SCORE`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clsr import fast
from clsr.models.layers import MLP

#: score given to padded positions before the softmax, as released: ``-(2**32) + 1``
PAD_SCORE = float(-(2**32) + 1)


# --------------------------------------------------------------------------------------------------
# DIN attention (released `_attention_fcn`, without the projection matrix, which the caller owns)
# --------------------------------------------------------------------------------------------------
def din_weight_blocks(first: nn.Linear, d: int, d_s: int = 0):
    """Column blocks of a DIN first layer W = [W_a, W_q, W_d, W_p] (h × 4d), regrouped for the split
    z = (W_a + W_d) a + (W_q − W_d) q + W_p (a ⊙ q) + b with q = [s (d_s) ‖ r (d − d_s)]:
    returns (W_a + W_d, b, (W_q − W_d)_s, (W_q − W_d)_r, W_p,s, W_p,r)."""
    W = first.weight
    W_a, W_q, W_d, W_p = W[:, :d], W[:, d : 2 * d], W[:, 2 * d : 3 * d], W[:, 3 * d :]
    W_qd = W_q - W_d
    return W_a + W_d, first.bias, W_qd[:, :d_s], W_qd[:, d_s:], W_p[:, :d_s], W_p[:, d_s:]


def din_first_layer_terms(first: nn.Linear, keys: torch.Tensor, query: torch.Tensor,
                          query_shared: torch.Tensor | None = None):
    """The three terms of a DIN scorer's first layer on [k, q, k − q, k ⊙ q] (see `DinAttention`):

        z[b, c, t] = K[b, t] + Q[b, c] + W_p,r (a_r[b, t] ⊙ r[b, c])

    keys (B, L, d); query (B, d_r) or (B, C, d_r); optional query_shared (B, d_s), the full query being
    [query_shared ‖ query] of width d. Returns (K (B, L, h), Q (B, C, h), a_r (B, L, d_r), r (B, C, d_r),
    W_p,r (h, d_r)): the per-(position, query) product is left to the caller."""
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
    Q = F.linear(r, W_qr, bias)  # (B, C, h): (W_q − W_d)_r r + b, once per query
    # split, not slices: a slice backpropagates as a zero fill of the whole key tensor plus a copy
    keys_s, keys_r = keys.split([d_s, d - d_s], dim=-1) if d_s else (None, keys)
    if d_s:  # the shared query part s: its product term is per position, its linear term per instance
        s = query_shared
        K = K + F.linear(keys_s * s.unsqueeze(1), W_ps)
        Q = Q + F.linear(s, W_qs).unsqueeze(1)
    return K, Q, keys_r, r, W_pr


def din_first_layer(first: nn.Linear, keys: torch.Tensor, query: torch.Tensor,
                    query_shared: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-activation z (B, C, L, h) of a DIN scorer's first layer on [k, q, k − q, k ⊙ q] without the
    concatenation (`din_first_layer_terms`, summed). Exact."""
    K, Q, a_r, r, W_pr = din_first_layer_terms(first, keys, query, query_shared)
    P = F.linear(a_r.unsqueeze(1) * r.unsqueeze(2), W_pr)  # (B, C, L, h): the only per-(query, position) GEMM
    return P + K.unsqueeze(1) + Q.unsqueeze(2)


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

    The first-layer split (exact). Writing the first layer W = [W_a, W_q, W_d, W_p] (one block per concat part),

        z = W_a a + W_q q + W_d (a − q) + W_p (a ⊙ q) + b
          = (W_a + W_d) a  +  (W_q − W_d) q  +  W_p (a ⊙ q)  + b,

    and with q = [s ‖ r], a = [a_s ‖ a_r], W_p (a ⊙ q) = W_p,s (a_s ⊙ s) + W_p,r (a_r ⊙ r). So

        K[b, t]    = (W_a + W_d) a_t + W_p,s (a_s,t ⊙ s)        once per history position,
        Q[b, c]    = (W_q − W_d) q_c + b                         once per query,
        P[b, c, t] = W_p,r (a_r,t ⊙ r_c)                         the only per-(position, query) product,

    z = K + Q + P. The 4d-wide concatenation is never built and the per-candidate matmul is d_r wide
    instead of 4d (tests compare with the explicit concatenation). BN statistics run over all B·C·L
    positions (padding included, as released).
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

    def positions_independent(self) -> bool:
        """True when a position's score does not depend on the other positions: BN off, or BN in
        eval mode (running statistics)."""
        return self.mlp.norms is None or not self.mlp.training

    @fast.seam
    def forward(
        self,
        keys: torch.Tensor,
        mask: torch.Tensor,
        query: torch.Tensor,
        query_shared: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention weights: (B, L) for a (B, d_r) query, (B, C, L) for a (B, C, d_r) query.

        Every position is scored (BN statistics include padding, as released), then the masked softmax.
        ``lengths`` (B,) is a promise for the fast twins: the histories are left-aligned with n_b valid
        positions AND every padded position of an instance has the same key (so a twin may fold them
        into one weighted row); the reference does not need it.
        """
        z = din_first_layer(self.mlp.linears[0], keys, query, query_shared)  # (B, C, L, h)
        s = self.mlp.tail(z).squeeze(-1)  # (B, C, L)
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
