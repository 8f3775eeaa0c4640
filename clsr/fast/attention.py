"""Fast twins of `attention.DinAttention.forward` (the DIN scorer + masked softmax), tried in this order:

- `din_valid_only` (evaluation, or no batch norm: a position's score does not depend on the others):
  scores only the valid positions, in cache-sized chunks, with batch norm folded into the linear layers;
  torch ops, any device.
- `din_ragged` (training on a CPU with the C kernels, ``lengths`` given, CLSR's two-layer ReLU scorers):
  the padded positions of an instance (all with the same key) folded into one row per query that counts
  L − n_b times in the batch statistics (`native.RaggedRows`), so they are never computed.
- `din_fused` (training on a CPU with the C kernels): the first layer's product term in one kernel pass
  (`native.din_pair_layer`), K and Q added inside the first fused batch norm + ReLU (`mlp.fused_tail_din`).

Each returns the reference's weights: padded positions get PAD_SCORE before the masked softmax, which
gives them weight exactly 0 either way (a fully padded row gets uniform weights either way).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from clsr import fast
from clsr.fast import native
from clsr.fast.mlp import _tail_from, fusable, fused_tail_din
from clsr.models.attention import (PAD_SCORE, DinAttention, din_first_layer, din_first_layer_terms,
                                   din_weight_blocks, masked_softmax)
from clsr.models.layers import MLP

_SOURCES = (DinAttention.forward, din_first_layer, din_first_layer_terms, din_weight_blocks, masked_softmax,
            MLP.tail, MLP._norm_act)


def _weights(s: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    w = masked_softmax(s, mask.unsqueeze(1))
    return w.squeeze(1) if query.dim() == 2 else w


# --------------------------------------------------------------------------------------------------
# evaluation: valid positions only, batch norm folded
# --------------------------------------------------------------------------------------------------
def bn_affine(mlp: MLP, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BN_k on running statistics as an affine map: BN_k(z) = z ⊙ g + t with g = γ / sqrt(σ²_run + ε),
    t = β − μ_run ⊙ g (g = 1, t = 0 without BN). Eval mode only."""
    h = mlp.sizes[k]
    if mlp.norms is None:
        w = mlp.linears[k].weight
        return w.new_ones(h), w.new_zeros(h)
    bn = mlp.norms[k]
    g = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return g, bn.bias - bn.running_mean * g


def _act_inplace(mlp: MLP, k: int, z: torch.Tensor) -> torch.Tensor:
    return torch.relu_(z) if mlp._act_names[k] == "relu" else mlp.activations[k](z)


def tail_folded(mlp: MLP, z: torch.Tensor) -> torch.Tensor:
    """`MLP.tail` in eval mode for a 2-D z that already is BN_0(first layer) (the caller folded BN_0 into
    its first-layer weights): act_0, then the later layers with BN folded into W and b,
    W'_k = diag(g_k) W_k, b'_k = g_k ⊙ b_k + t_k. Saves a pass and an allocation per layer."""
    x = _act_inplace(mlp, 0, z)
    for k in range(1, len(mlp.linears)):
        g, t = bn_affine(mlp, k)
        lin = mlp.linears[k]
        x = _act_inplace(mlp, k, torch.addmm(lin.bias * g + t, x, (lin.weight * g[:, None]).t()))
    return mlp.out(x) if mlp.out is not None else x


@fast.register(DinAttention.forward, sources=_SOURCES, checked="99aa0f15a3f19441")
def din_valid_only(att, keys, mask, query, query_shared=None, lengths=None, chunk_rows: int = 1 << 14):
    """Weights from the scores of the valid positions only, padded ones set to PAD_SCORE. The (position,
    query) rows are processed in chunks of ``chunk_rows`` so that the temporaries stay cache-sized
    (C = 100 at evaluation), and BN is folded into the linear layers (`bn_affine`, `tail_folded`)."""
    mlp = att.mlp
    r = query if query.dim() == 3 else query.unsqueeze(1)  # (B, C, d_r)
    B, C, L = keys.shape[0], r.shape[1], keys.shape[1]
    d_s = 0 if query_shared is None else query_shared.shape[-1]
    if d_s + r.shape[-1] != att.dim:
        raise ValueError(f"DinAttention: query width {d_s}+{r.shape[-1]} != key width {att.dim}")
    # BN_0 (running statistics) folded into the first layer: every block's rows scale by g, b -> g b + t
    g, t = bn_affine(mlp, 0)
    W_k, bias, W_qs, W_qr, W_ps, W_pr = din_weight_blocks(mlp.linears[0], att.dim, d_s)
    W_k, W_qs, W_qr, W_ps, W_pr = (W * g[:, None] for W in (W_k, W_qs, W_qr, W_ps, W_pr))
    bias = bias * g + t
    b_idx, t_idx = (mask != 0).nonzero(as_tuple=True)  # the valid positions
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
        out.append(tail_folded(mlp, z).view(hi - lo, C))
    if out:
        scores = scores.index_put((b_idx, torch.arange(C, device=keys.device)[:, None], t_idx), torch.cat(out).t())
    return _weights(scores, mask, query)


@din_valid_only.accepts
def _(att, keys, mask, query, query_shared=None, lengths=None):
    if type(att.mlp) is not MLP:
        return "scorer is not a layers.MLP"
    return None if att.positions_independent() else "training with batch norm: padding enters the statistics"


# --------------------------------------------------------------------------------------------------
# training on a CPU: padded positions folded into one weighted row (C kernels)
# --------------------------------------------------------------------------------------------------
@fast.register(DinAttention.forward, sources=_SOURCES, checked="99aa0f15a3f19441")
def din_ragged(att, keys, mask, query, query_shared=None, lengths=None):
    """Weights without computing the padded positions' rows: their keys are all equal within an instance
    (the caller promises it by passing ``lengths``), so their rows are too, and each instance's padding
    enters the BN statistics as one row per query weighted L − n_b. Same statistics, same gradients."""
    mlp = att.mlp
    K, Q, a_r, r, W_pr = din_first_layer_terms(mlp.linears[0], keys, query, query_shared)
    B, L, C = keys.shape[0], keys.shape[1], r.shape[1]
    rows = native.RaggedRows(lengths, C, L)
    prod = native.RaggedProduct.apply(a_r, r, rows)
    y = native.bn_relu(mlp.norms[0], torch.mm(prod, W_pr.t().contiguous()), K, Q, rows=rows)
    lin = mlp.linears[1]  # its bias goes to the kernel on the side (no copy pass over the rows)
    s_rows = native.bn_relu_dot(mlp.norms[1], torch.mm(y, lin.weight.t()), mlp.out, rows=rows, x_bias=lin.bias)
    s = keys.new_full((B, C, L), PAD_SCORE)
    s = s.index_put((rows.b_row, rows.q_row, rows.t_row), s_rows[: rows.V, 0])
    return _weights(s, mask, query)


@din_ragged.accepts
def _(att, keys, mask, query, query_shared=None, lengths=None):
    if lengths is None:
        return "no lengths (padded keys not promised equal)"
    if keys.shape[0] * (query.shape[1] if query.dim() == 3 else 1) < 2:
        return "fewer than two rows"
    mlp = att.mlp
    why = fusable(mlp, keys)
    if why is None and not (len(mlp.linears) == 2 and mlp.out is not None and mlp.out.out_features == 1):
        why = "not two hidden layers with a one-unit output"
    if why is None and keys.stride(-1) != 1:
        why = "keys without unit stride"
    return why


# --------------------------------------------------------------------------------------------------
# training on a CPU: every position, the product layer and batch norm + ReLU in C kernels
# --------------------------------------------------------------------------------------------------
@fast.register(DinAttention.forward, sources=_SOURCES, checked="99aa0f15a3f19441")
def din_fused(att, keys, mask, query, query_shared=None, lengths=None):
    """Weights with z = P + K + Q never written: P = W_p,r (a_r ⊙ r) in one kernel pass, K and Q added
    inside the first fused batch norm + ReLU."""
    mlp = att.mlp
    K, Q, a_r, r, W_pr = din_first_layer_terms(mlp.linears[0], keys, query, query_shared)
    B, L, C = keys.shape[0], keys.shape[1], r.shape[1]
    P = native.din_pair_layer(a_r, r, W_pr)
    s = fused_tail_din(mlp, P, K, Q, (B, C, L)).view(B, C, L)
    return _weights(s, mask, query)


@din_fused.accepts
def _(att, keys, mask, query, query_shared=None, lengths=None):
    if keys.shape[0] * keys.shape[1] * (query.shape[1] if query.dim() == 3 else 1) < 2:
        return "fewer than two rows"
    why = fusable(att.mlp, keys)
    if why is None and (keys.stride(-1) != 1 or (query.dim() == 3 and query.stride(-1) != 1)):
        why = "keys or query without unit stride"
    return why
