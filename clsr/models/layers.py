"""Building blocks shared by CLSR and the baselines, each matching the released TensorFlow code.

Reference: ``/work/shared/reference/official-clsr.md`` §2.2 (MLP, attention), §2.3 (Time4LSTM), §2.7
(initialisation). Every block documents the equation it implements.

Contents
--------
- `trunc_normal_`, `glorot_uniform_`: TF1's ``truncated_normal_initializer`` and
  ``glorot_uniform_initializer``.
- `MLP`: ``_fcn_net`` — [Linear -> BatchNorm -> activation] per hidden layer, then a linear output.
- `DinAttention`: the DIN-style scorer MLP([k, q, k-q, k⊙q]) with a masked softmax, with an exact fast
  path that never materialises the 4-fold concatenation (DESIGN.md "Where the time goes").
- `attention_pool`: Σ_t a_t V_t.
- `TFGRUCell`, `TFLSTMCell`, `Time4LSTMCell` and the runner `run_rnn` (`run_gru` is an alias):
  TF1 ``GRUCell`` / ``LSTMCell`` / SLi-Rec ``Time4LSTMCell`` semantics with ``dynamic_rnn``'s
  ``sequence_length`` behaviour (outputs zero past the length, state frozen at step length-1).

Layout conventions: recurrent kernels are stored in TF's layout (in, out) so that their glorot limits,
which depend on the full kernel shape, match the released code; dense layers are ``nn.Linear``
(PyTorch layout (out, in)); glorot is symmetric in the fans, so the layout does not change the limit.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clsr.models import native
from clsr.models.recurrence import GRUSequence, LSTMSequence, Time4Inputs

#: score given to padded positions before the softmax, as released: ``-(2**32) + 1``
PAD_SCORE = float(-(2**32) + 1)

#: TF ``tf.layers.batch_normalization(momentum=0.95, epsilon=1e-4)`` in PyTorch terms
BN_EPS = 1.0e-4
BN_MOMENTUM = 0.05


# --------------------------------------------------------------------------------------------------
# initialisers
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.01) -> torch.Tensor:
    """TF ``truncated_normal_initializer(stddev=std)``: w ~ N(0, std²), redrawn outside [-2·std, 2·std].

    (``std`` is the standard deviation of the normal *before* truncation, as in TF and in
    ``torch.nn.init.trunc_normal_``.)
    """
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def tf_fans(shape: Sequence[int]) -> tuple[int, int]:
    """TF's ``_compute_fans``: a 1-D shape [n] has fan_in = fan_out = n; a 2-D shape (in, out)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


@torch.no_grad()
def glorot_uniform_(tensor: torch.Tensor) -> torch.Tensor:
    """TF ``glorot_uniform_initializer``: w ~ U(-l, l), l = sqrt(6 / (fan_in + fan_out)).

    The 1-D vectors of Time4LSTM get l = sqrt(6 / (2n)) (≈ 0.274 for n = 40), as in TF.
    """
    fan_in, fan_out = tf_fans(tuple(tensor.shape))
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tensor.uniform_(-limit, limit)


# --------------------------------------------------------------------------------------------------
# MLP with batch norm (released `_fcn_net`)
# --------------------------------------------------------------------------------------------------
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "identity": lambda x: x,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class MLP(nn.Module):
    """The released ``_fcn_net``: for each hidden size h_k,

        x_k = act(BN(x_{k-1} W_k + b_k)),    then    y = x_K W_out + b_out    (when out_dim is set)

    - W ~ trunc-normal(std), b = 0; BN γ = 1, β = 0, ε = 1e-4, PyTorch momentum 0.05 (TF 0.95).
    - Any leading shape is accepted: the input is viewed as (-1, C) for BN, so on a 3-D or 4-D
      attention input the statistics run over **all** positions, padding included, as released.
    - ``activation`` is one name for every hidden layer or one per layer (TF ``hparams.activation``).
    - ``tail(z)`` applies everything after the first linear layer to its pre-activation ``z``; the
      DIN fast path computes ``z`` itself (see `DinAttention`).
    """

    def __init__(
        self,
        in_dim: int,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "relu",
        batch_norm: bool = True,
        out_dim: int | None = 1,
        init_std: float = 0.01,
        bn_eps: float = BN_EPS,
        bn_momentum: float = BN_MOMENTUM,
    ):
        super().__init__()
        sizes = list(sizes)
        acts = [activation] * len(sizes) if isinstance(activation, str) else list(activation)
        if len(acts) != len(sizes):
            raise ValueError(f"MLP: {len(acts)} activations for {len(sizes)} hidden layers")
        self.in_dim, self.sizes, self.out_dim = in_dim, sizes, out_dim
        self.activations = [activation_fn(a) for a in acts]
        self._act_names = acts
        dims = [in_dim] + sizes
        self.linears = nn.ModuleList(nn.Linear(dims[k], dims[k + 1]) for k in range(len(sizes)))
        self.norms = (
            nn.ModuleList(nn.BatchNorm1d(h, eps=bn_eps, momentum=bn_momentum) for h in sizes)
            if batch_norm
            else None
        )
        self.out = nn.Linear(dims[-1], out_dim) if out_dim is not None else None
        for lin in list(self.linears) + ([self.out] if self.out is not None else []):
            trunc_normal_(lin.weight, init_std)
            nn.init.zeros_(lin.bias)

    @property
    def output_dim(self) -> int:
        return self.out_dim if self.out_dim is not None else ([self.in_dim] + self.sizes)[-1]

    def _norm_act(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """act_k(BN_k(z)) on a 2-D (N, C) z with torch ops: BN statistics over all N rows."""
        if self.norms is not None:
            z = self.norms[k](z)
            if self._act_names[k] == "relu":
                # in place on BN's fresh 2-D output (not a view, so no CopySlices in the backward):
                # BN's backward needs its input, not its output, so this is autograd-safe
                return torch.relu_(z)
        return self.activations[k](z)

    def tail(self, z: torch.Tensor, din_terms=None) -> torch.Tensor:
        """Everything after the first linear layer, given that layer's pre-activation z (any leading
        shape; flattened to (-1, C) so that BN runs over every leading position).

        ``din_terms`` = (K, Q, (B, Q_n, L)): z is the DIN first layer's product part only, rows (b, q, t),
        and the pre-activation is z + K[b, t] + Q[b, q] (`din_first_layer(split=True)`).

        In training mode on a CPU, each BN + ReLU runs as one fused kernel pair (`native.bn_relu`, with the
        DIN terms added inside it), and the last one together with a one-unit output layer
        (`native.bn_relu_dot`, whose activations are then never written); the torch ops below are the
        reference and the fallback (tests compare them)."""
        lead = z.shape[:-1]
        x = z if z.dim() == 2 else z.reshape(-1, z.shape[-1])
        last = len(self.linears) - 1
        for k in range(last + 1):
            bn = self.norms[k] if self.norms is not None else None
            fusable = bn is not None and self._act_names[k] == "relu" and native.can_fuse_bn_relu(bn, x)
            if k:
                lin = self.linears[k]
                if fusable and k == last and self.out is not None:
                    # the kernel takes the linear bias on the side (BN only moves its mean by it)
                    fused = native.bn_relu_dot(bn, torch.mm(x, lin.weight.t()), self.out, x_bias=lin.bias)
                    if fused is not None:
                        return fused.view(*lead, 1)
                x = lin(x)
            fused = None
            if fusable:
                K, Q, dims = din_terms if din_terms is not None else (None, None, None)
                if k == last and self.out is not None and din_terms is None:
                    fused = native.bn_relu_dot(bn, x, self.out)
                    if fused is not None:
                        return fused.view(*lead, 1)
                fused = native.bn_relu(bn, x, K, Q, dims)
            if fused is None:
                if din_terms is not None:  # no kernel: add the DIN terms explicitly
                    K, Q, (B, Qn, L) = din_terms
                    x = (x.view(B, Qn, L, -1) + K.unsqueeze(1) + Q.unsqueeze(2)).view(B * Qn * L, -1)
                fused = self._norm_act(k, x)
            x, din_terms = fused, None
        if self.out is not None:
            x = self.out(x)
        return x.view(*lead, x.shape[-1])

    # ---- evaluation with batch norm folded into the linear layers --------------------------------
    def bn_affine(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """BN_k on running statistics as an affine map: BN_k(z) = z ⊙ g + t with
        g = γ / sqrt(σ²_run + ε), t = β − μ_run ⊙ g (g = 1, t = 0 without BN). Eval mode only."""
        h = self.sizes[k]
        if self.norms is None:
            w = self.linears[k].weight
            return w.new_ones(h), w.new_zeros(h)
        bn = self.norms[k]
        g = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        return g, bn.bias - bn.running_mean * g

    def tail_folded(self, z: torch.Tensor) -> torch.Tensor:
        """`tail` in eval mode for a 2-D z that already is BN_0(first layer) (the caller folded BN_0
        into its first-layer weights): act_0, then the later layers with BN folded into W and b,
        W'_k = diag(g_k) W_k, b'_k = g_k ⊙ b_k + t_k. Saves a pass and an allocation per layer."""
        if self.norms is not None and self.training:
            raise RuntimeError("MLP.tail_folded needs running statistics (eval mode)")
        x = self._act_inplace(0, z)
        for k in range(1, len(self.linears)):
            g, t = self.bn_affine(k)
            lin = self.linears[k]
            x = self._act_inplace(k, torch.addmm(lin.bias * g + t, x, (lin.weight * g[:, None]).t()))
        return self.out(x) if self.out is not None else x

    def _act_inplace(self, k: int, z: torch.Tensor) -> torch.Tensor:
        return torch.relu_(z) if self._act_names[k] == "relu" else self.activations[k](z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linears:
            return self.out(x) if self.out is not None else x
        lead = x.shape[:-1]
        return self.tail(self.linears[0](x.reshape(-1, x.shape[-1])).view(*lead, -1))


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


# --------------------------------------------------------------------------------------------------
# recurrent cells (TF1 semantics) and the dynamic_rnn-like runner
# --------------------------------------------------------------------------------------------------
class TFGRUCell(nn.Module):
    """TF1 ``tf.nn.rnn_cell.GRUCell``:

        [r, z] = σ([x ‖ h] W_g + b_g)          (split order r, z; b_g initialised to 1.0)
        c      = tanh([x ‖ r ⊙ h] W_c + b_c)    (reset applied BEFORE the matmul; b_c = 0)
        h'     = z ⊙ h + (1 − z) ⊙ c

    Kernels W_g ((d+H) × 2H) and W_c ((d+H) × H) are glorot-uniform over their full TF shapes.
    PyTorch's ``nn.GRUCell`` applies r after the recurrent matmul, so it is not the same function.

    `forward(x, h)` is the textbook one-step form; `precompute` + `step` is the runner's form, with
    the input projection of all steps done in one matmul outside the time loop.
    """

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.input_dim, self.hidden_size = input_dim, hidden_size
        D, H = input_dim, hidden_size
        self.gate_kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, 2 * H)))
        self.gate_bias = nn.Parameter(torch.ones(2 * H))
        self.cand_kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, H)))
        self.cand_bias = nn.Parameter(torch.zeros(H))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step, literally the equations above."""
        H = self.hidden_size
        rz = torch.sigmoid(torch.cat([x, h], -1) @ self.gate_kernel + self.gate_bias)
        r, z = rz[..., :H], rz[..., H:]
        c = torch.tanh(torch.cat([x, r * h], -1) @ self.cand_kernel + self.cand_bias)
        return z * h + (1 - z) * c

    def init_state(self, h0: torch.Tensor | None, batch: int, like: torch.Tensor):
        return like.new_zeros(batch, self.hidden_size) if h0 is None else h0

    def input_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d) -> ([x W_g,x ‖ x W_c,x] (R, 3H), one matmul; its bias [b_g ‖ b_c] (3H,)), for the
        fused recurrence, which adds the bias itself."""
        D = self.input_dim
        W_x = torch.cat([self.gate_kernel[:D], self.cand_kernel[:D]], dim=1)  # (D, 3H)
        return torch.mm(x, W_x), torch.cat([self.gate_bias, self.cand_bias])

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, d) -> [x W_g,x + b_g ‖ x W_c,x + b_c] (R, 3H)."""
        proj, bias = self.input_part(x)
        return proj + bias

    def input_projection(self, x: torch.Tensor):
        """x (B, L, d) -> time-major (x_t W_g,x + b_g (L, B, 2H), x_t W_c,x + b_c (L, B, H))."""
        H = self.hidden_size
        proj = self.project_rows(x.transpose(0, 1).reshape(-1, self.input_dim))
        return proj.view(x.shape[1], x.shape[0], 3 * H).split([2 * H, H], dim=-1)

    def precompute(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per step t: (x_t W_g,x + b_g, x_t W_c,x + b_c). Split and unbound outside the loop: a slice's
        backward is a zero fill + copy + accumulate, split/unbind backpropagate as one cat/stack."""
        gx, cx = self.input_projection(x)
        return list(zip(gx.unbind(0), cx.unbind(0)))

    def step_weights(self):
        D = self.input_dim
        return self.gate_kernel[D:], self.cand_kernel[D:]

    def step(self, pre, state, weights):
        """h' from the precomputed input part; weights = (W_g,h, W_c,h) sliced once per sequence."""
        gx, cx = pre
        Wg_h, Wc_h = weights
        r, z = torch.sigmoid(torch.addmm(gx, state, Wg_h)).chunk(2, dim=-1)
        c = torch.tanh(torch.addmm(cx, r * state, Wc_h))
        h = torch.lerp(c, state, z)  # c + z (h − c) = z h + (1 − z) c
        return h, h


class TFLSTMCell(nn.Module):
    """TF1 ``tf.nn.rnn_cell.LSTMCell`` (no peepholes, no projection), forget bias +1:

        [i, j, f, o] = [x ‖ h] W + b                 (split order i, j, f, o; b = 0)
        c' = σ(f + 1) ⊙ c + σ(i) ⊙ tanh(j)
        h' = σ(o) ⊙ tanh(c')

    W ((d+H) × 4H) is glorot-uniform. The state is (h, c); the output is h. `Time4LSTMCell` reuses
    `step` with two extra multiplicative time gates. Forms as in `TFGRUCell`.
    """

    forget_bias = 1.0

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.input_dim, self.hidden_size = input_dim, hidden_size
        D, H = input_dim, hidden_size
        self.kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, 4 * H)))
        self.bias = nn.Parameter(torch.zeros(4 * H))

    def gates(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, h], -1) @ self.kernel + self.bias

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step, literally the equations above. state = (h, c) -> returns (h', c')."""
        h, c = state
        i, j, f, o = self.gates(x, h).chunk(4, -1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c

    def init_state(self, h0: torch.Tensor | None, batch: int, like: torch.Tensor):
        z = like.new_zeros(batch, self.hidden_size)
        return (z if h0 is None else h0), z

    def input_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d) -> (x W_x (R, 4H), its bias b with the forget bias folded into the f block (4H,)),
        for the fused recurrence, which adds the bias itself."""
        D, H = self.input_dim, self.hidden_size
        shift = torch.zeros_like(self.bias)
        shift[2 * H : 3 * H] = self.forget_bias
        return torch.mm(x, self.kernel[:D]), self.bias + shift

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, d) -> the gates' input part x W_x + b (R, 4H), forget bias folded into the f block."""
        gx, bias = self.input_part(x)
        return gx + bias

    def precompute(self, x: torch.Tensor):
        """Per step (gates' input part (B, 4H), None): no scaling of the gates."""
        B, L = x.shape[0], x.shape[1]
        gx = self.project_rows(x.transpose(0, 1).reshape(L * B, x.shape[2])).view(L, B, -1)
        return [(g, None) for g in gx.unbind(0)]

    def step_weights(self):
        return self.kernel[self.input_dim :]

    def step(self, pre, state, W_h):
        """gates = pre + h W_h; with scale (Time4LSTM), σ(i), σ(f) are multiplied by σ(g1), σ(g2)."""
        gx, scale = pre
        h, c = state
        g = torch.addmm(gx, h, W_h)
        s = torch.sigmoid(g)  # σ of all four blocks in one op; the j block is not used
        if scale is not None:
            s = s * scale  # [σ(g1), 1, σ(g2), 1] in the (i, j, f, o) slots
        si, _, sf, so = s.chunk(4, dim=1)
        c = torch.addcmul(sf * c, si, torch.tanh(g.chunk(4, dim=1)[1]))
        h = so * torch.tanh(c)
        return h, (h, c)


class Time4LSTMCell(TFLSTMCell):
    """SLi-Rec ``Time4LSTMCell`` (official-clsr.md §2.3). Input per step: [x_t ‖ τ^first_t ‖ τ^now_t]
    (d + 2 columns; the last column is τ^now, "time_now", the one before it τ^first, "time_last"):

        T1 = tanh(τ^now · w_1 + b_1),   T2 = tanh(τ^first · w_2 + b_2)            (w, b ∈ R^H)
        g1 = x_t W_x1 + T1 W_t1 + c_1,  g2 = x_t W_x2 + T2 W_t2 + c_2
        [i, j, f, o] = [x_t ‖ h_{t−1}] W + b                                        (i, j, f, o order)
        o ← o + T1 W_o1 + T2 W_o2
        c_t = σ(f + 1) ⊙ σ(g2) ⊙ c_{t−1} + σ(i) ⊙ σ(g1) ⊙ tanh(j)
        h_t = σ(o) ⊙ tanh(c_t)

    All variables are glorot-uniform (the 1-D ones with l = sqrt(6/(2H))), except the ``_Linear`` bias
    b = 0. Nothing in T1, T2, g1, g2 depends on h, so they are all computed for every step at once in
    `input_projection`; the time loop only does the LSTM recurrence, scaled by [σ(g1), 1, σ(g2), 1].
    """

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__(input_dim, hidden_size)
        D, H = input_dim, hidden_size

        def g(*shape):
            return nn.Parameter(glorot_uniform_(torch.empty(*shape)))

        self.time_input_w1, self.time_input_b1 = g(H), g(H)
        self.time_input_w2, self.time_input_b2 = g(H), g(H)
        self.time_kernel_w1, self.time_kernel_t1, self.time_bias1 = g(D, H), g(H, H), g(H)
        self.time_kernel_w2, self.time_kernel_t2, self.time_bias2 = g(D, H), g(H, H), g(H)
        self.o_kernel_t1, self.o_kernel_t2 = g(H, H), g(H, H)

    def time_gates(self, inputs: torch.Tensor):
        """(x, T1, T2, σ(g1), σ(g2)) for inputs (..., d+2)."""
        x, t_first, t_now = inputs[..., :-2], inputs[..., -2:-1], inputs[..., -1:]
        T1 = torch.tanh(t_now * self.time_input_w1 + self.time_input_b1)
        T2 = torch.tanh(t_first * self.time_input_w2 + self.time_input_b2)
        g1 = x @ self.time_kernel_w1 + T1 @ self.time_kernel_t1 + self.time_bias1
        g2 = x @ self.time_kernel_w2 + T2 @ self.time_kernel_t2 + self.time_bias2
        return x, T1, T2, torch.sigmoid(g1), torch.sigmoid(g2)

    def forward(self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step, literally the equations above. inputs (B, d+2), state (h, c) -> (h', c')."""
        h, c = state
        x, T1, T2, s1, s2 = self.time_gates(inputs)
        i, j, f, o = self.gates(x, h).chunk(4, -1)
        o = o + T1 @ self.o_kernel_t1 + T2 @ self.o_kernel_t2
        c = torch.sigmoid(f + self.forget_bias) * s2 * c + torch.sigmoid(i) * s1 * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c

    def projection_weights(self):
        """The input side of the cell as three linear maps (rows τ = [τ^first, τ^now]):
            [T1 ‖ T2] = tanh(τ W_τ + b_τ),           W_τ = [[0, w2], [w1, 0]] (2 × 2H), b_τ = [b1 ‖ b2]
            A = x W_x + b_x,                          W_x = [W_lstm,x | W_x1 | W_x2] (D × 6H),
                                                      b_x = [b (+1 on f) | c1 | c2]
            [o | g1 | g2] += [T1 ‖ T2] W_T,           W_T = [[W_o1, W_t1, 0], [W_o2, 0, W_t2]] (2H × 3H)
        so that A's columns are the pre-activations [i, j, f, o, g1, g2] minus their h part.
        Returns (W_x, b_x, W_τ, b_τ, W_T)."""
        D, H = self.input_dim, self.hidden_size
        zH = self.time_input_w1.new_zeros(H)
        W_tau = torch.stack([torch.cat([zH, self.time_input_w2]), torch.cat([self.time_input_w1, zH])])
        b_tau = torch.cat([self.time_input_b1, self.time_input_b2])
        shift = torch.zeros_like(self.bias)
        shift[2 * H : 3 * H] = self.forget_bias
        W_x = torch.cat([self.kernel[:D], self.time_kernel_w1, self.time_kernel_w2], dim=1)
        b_x = torch.cat([self.bias + shift, self.time_bias1, self.time_bias2])
        zHH = self.o_kernel_t1.new_zeros(H, H)
        W_T = torch.cat(
            [torch.cat([self.o_kernel_t1, self.time_kernel_t1, zHH], 1),
             torch.cat([self.o_kernel_t2, zHH, self.time_kernel_t2], 1)], 0
        )
        return W_x, b_x, W_tau, b_tau, W_T

    def input_part(self, x: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d), tau (R, 2) = [τ^first, τ^now] -> (the input part of every pre-activation
        [i, j, f, o, g1, g2] without its bias (R, 6H), that bias b_x (6H,)) (`projection_weights`), for all
        rows (steps) at once, in one hand-differentiated Function (`recurrence.Time4Inputs`: no
        concatenations either way); the fused recurrence adds the bias itself."""
        W_x, b_x, W_tau, b_tau, W_T = self.projection_weights()
        return Time4Inputs.apply(x, tau, W_x, W_tau, b_tau, W_T), b_x

    def precompute(self, inputs: torch.Tensor):
        """Per step (gates' input part (B, 4H), scale [σ(g1), 1, σ(g2), 1] (B, 4H)) for `step`, with torch
        ops (the reference path; the fused one uses `project_rows`)."""
        B, L, H = inputs.shape[0], inputs.shape[1], self.hidden_size
        x, tau = inputs.transpose(0, 1).reshape(L * B, -1).split([self.input_dim, 2], dim=1)
        W_x, b_x, W_tau, b_tau, W_T = self.projection_weights()
        T = torch.tanh(tau @ W_tau + b_tau)
        A = x @ W_x + b_x
        A = torch.cat([A[:, : 3 * H], A[:, 3 * H :] + T @ W_T], dim=1).view(L, B, 6 * H)
        s1, s2 = torch.sigmoid(A[..., 4 * H : 5 * H]), torch.sigmoid(A[..., 5 * H :])
        ones = torch.ones_like(s1)
        scale = torch.cat([s1, ones, s2, ones], dim=-1)
        return list(zip(A[..., : 4 * H].unbind(0), scale.unbind(0)))


def lookup(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """table(idx) as an index_select of its weight: the same values and the same gradient (an index_add),
    which on CPU takes a third of nn.Embedding's backward time (0.5 vs 1.7 ms for 25k lookups); with the
    kernels, the index_add is a plain loop (`native.EmbeddingLookup`: 25k rows into the 20-row category
    table, ~1 ms with torch's index_add_). Only for plain tables (no padding_idx, max_norm or sparse
    gradients)."""
    out = native.lookup(table.weight, idx)
    if out is not None:
        return out
    return table.weight.index_select(0, idx.reshape(-1)).view(*idx.shape, table.embedding_dim)


def length_mask(lengths: torch.Tensor, L: int, dtype=torch.float32) -> torch.Tensor:
    """m[b, t] = 1 if t < n_b else 0, shape (B, L)."""
    return (torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def _final_states(states: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """states (..., B, n, H) -> the state at step n_b − 1 (..., B, H); ``start`` where n_b = 0."""
    n, H = states.shape[-2], states.shape[-1]
    B = lengths.shape[0]
    idx = (lengths.clamp(min=1, max=n) - 1).view(B, 1, 1).expand(*states.shape[:-3], B, 1, H)
    final = states.gather(-2, idx).squeeze(-2)
    return torch.where((lengths > 0).view(B, 1), final, start)


class Packing:
    """Rows sorted by length (longest first) and their valid positions stacked step after step, as
    `clsr.models.recurrence` expects (the layout of ``torch.nn.utils.rnn.PackedSequence``).

    perm[i] is the original row of sorted row i; batch_sizes[t] = k_t, the rows still running at step t;
    packed row p holds position rows_t[p] of original row rows_b[p]; prev_idx[p − k_0] the packed row of
    row p's previous step (for the rows of steps 1..); last[i] the packed row of sorted row i's final step.
    """

    def __init__(self, perm, inv, sorted_len, batch_sizes, rows_b, rows_t, prev_idx, last, width):
        self.perm, self.inv, self.sorted_len = perm, inv, sorted_len
        self.batch_sizes, self.rows_b, self.rows_t = batch_sizes, rows_b, rows_t
        self.prev_idx, self.last, self.width = prev_idx, last, width
        self.flat = rows_b * width + rows_t  # position in a (B·L, ...) view
        self._packed = None  # (input, its packed rows) of the last `pack`

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (P, d). index_select, whose backward is an index_add (the positions are distinct).
        The last result is kept: the forward's recurrent nets that read the same tensor share one packed
        copy (and its gradients add up there, before one index_add)."""
        if self._packed is not None and self._packed[0] is x:
            return self._packed[1]
        packed = x.reshape(-1, x.shape[-1]).index_select(0, self.flat)
        self._packed = (x, packed)
        return packed

    @classmethod
    def plan(cls, lengths: torch.Tensor, n_steps: int, width: int) -> "Packing":
        """Packing of rows with `lengths` over the first `n_steps` positions of a width-`width` layout."""
        dev = lengths.device
        n = lengths.clamp(min=0, max=n_steps)
        sorted_len, perm = torch.sort(n, descending=True, stable=True)
        steps = torch.arange(n_steps, device=dev)
        live = steps.unsqueeze(1) < sorted_len.unsqueeze(0)  # (n_steps, B), time-major
        batch_sizes = [k for k in live.sum(1).tolist() if k > 0]  # one host sync
        t_idx, i_idx = live.nonzero(as_tuple=True)  # ordered by step, then sorted row
        offsets = torch.tensor([0] + batch_sizes[:-1], device=dev, dtype=torch.long).cumsum(0)
        last = (
            offsets[(sorted_len - 1).clamp(min=0)] + torch.arange(len(n), device=dev)
            if batch_sizes else sorted_len.new_zeros(len(n))
        )
        k0 = batch_sizes[0] if batch_sizes else 0
        prev_idx = offsets[t_idx[k0:] - 1] + i_idx[k0:]  # step t's i-th row continues step t−1's i-th row
        return cls(perm, torch.argsort(perm), sorted_len, batch_sizes, perm[i_idx], t_idx, prev_idx, last, width)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed (P, H) -> (B, L, H), zero at every position that was not packed."""
        B, H = len(self.perm), packed.shape[1]
        return packed.new_zeros(B * self.width, H).index_copy(0, self.flat, packed).view(B, self.width, H)

    def final(self, packed: torch.Tensor, h0_sorted: torch.Tensor) -> torch.Tensor:
        """State after each row's last step, in the original row order; h0 where the length is 0."""
        fin = torch.where((self.sorted_len > 0).unsqueeze(1), packed[self.last], h0_sorted)
        return fin[self.inv]


def run_rnn(
    cell: nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor | None = None,
    n_steps: int | None = None,
    fused: bool = True,
    plan: Packing | None = None,
    times: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tf.nn.dynamic_rnn(cell, inputs, sequence_length=lengths, initial_state=h0)`` for left-aligned
    sequences (valid steps 0..n_b−1, padding after).

    Returns (outputs (B, L, H), final (B, H)):
        outputs[b, t] = h_t for t < n_b and 0 beyond (TF zeroes outputs past the length);
        final[b] = h_{n_b − 1} (TF freezes the state past the length), and h0 (zeros if None) for n_b = 0.

    Exactness without a per-step mask: padding comes only *after* the valid steps, so the unmasked
    recurrence agrees with TF's frozen one on every valid step; whatever it computes past n_b is
    discarded (outputs zeroed, final state read at n_b − 1), so those steps get no gradient either.
    ``n_steps`` (default L) lets the caller stop at the batch's longest history; steps beyond it are
    all padding and return zeros.

    ``fused`` (default) runs `TFGRUCell` / `TFLSTMCell` / `Time4LSTMCell` through the whole-sequence
    recurrences of `clsr.models.recurrence` (packed valid positions, hand-written backward; same function,
    faster on CPU: benchmarks/bench_train.py times both);
    ``fused=False`` and any other cell step the cell's `step` under autograd (the reference).
    ``plan``: a `Packing.plan(lengths, n_steps, L)` the caller already built for these lengths (one per
    forward serves all the recurrent nets reading the same histories).
    ``times`` (B, L, 2) = [τ^first, τ^now] for a `Time4LSTMCell`, whose inputs are then x alone (without
    it, the last two input columns are the times, as in the cell's own `forward`).
    """
    B, L = inputs.shape[0], inputs.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    H = cell.hidden_size
    start = inputs.new_zeros(B, H) if h0 is None else h0
    if n_steps == 0:
        return inputs.new_zeros(B, L, H), start
    if fused and isinstance(cell, (TFGRUCell, TFLSTMCell)):  # Time4LSTMCell is a TFLSTMCell
        plan = Packing.plan(lengths, n_steps, L) if plan is None else plan
        if not plan.batch_sizes:  # every history empty
            return inputs.new_zeros(B, L, H), start
        h0_sorted = start[plan.perm]
        if isinstance(cell, Time4LSTMCell):
            if times is None:
                inputs, times = inputs.split([cell.input_dim, 2], dim=-1)
            gx, bias = cell.input_part(plan.pack(inputs), plan.pack(times))  # (P, 6H), packed
        else:
            gx, bias = cell.input_part(plan.pack(inputs))  # the valid positions, packed step after step
        W_h = cell.step_weights()  # GRU: (W_g, W_c); LSTM: W
        sequence, W_h = (GRUSequence, W_h) if isinstance(cell, TFGRUCell) else (LSTMSequence, (W_h,))
        out = sequence.apply(gx, bias, h0_sorted, *W_h, plan.batch_sizes, plan.prev_idx, torch.is_grad_enabled())
        return plan.unpack(out), plan.final(out, h0_sorted)
    if times is not None:
        inputs = torch.cat([inputs, times], dim=-1)
    pre = cell.precompute(inputs[:, :n_steps])
    weights = cell.step_weights()
    state = cell.init_state(h0, B, inputs)
    outs = []
    for t in range(n_steps):
        out, state = cell.step(pre[t], state, weights)
        outs.append(out)
    outputs = torch.stack(outs, dim=1)  # (B, n_steps, H)
    final = _final_states(outputs, lengths, start)
    outputs = outputs * length_mask(lengths, n_steps, outputs.dtype).unsqueeze(-1)
    if n_steps < L:
        outputs = F.pad(outputs, (0, 0, 0, L - n_steps))
    return outputs, final


def run_gru(cell: TFGRUCell, x: torch.Tensor, lengths: torch.Tensor, h0=None, n_steps=None):
    """`run_rnn` for a GRU (kept as a name for readability at call sites)."""
    return run_rnn(cell, x, lengths, h0, n_steps)


def run_gru_pair(
    cell_a: TFGRUCell,
    cell_b: TFGRUCell,
    x: torch.Tensor,
    lengths: torch.Tensor,
    h0_a: torch.Tensor | None = None,
    h0_b: torch.Tensor | None = None,
    n_steps: int | None = None,
    plan: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final states (B, H_a), (B, H_b) of two GRUs with separate parameters reading the same inputs,
    as ``run_rnn(cell_a, ...)[1], run_rnn(cell_b, ...)[1]`` — computed as ONE GRU of width H_a + H_b.

    Why: the time loop costs per op, not per element (see `clsr.models.recurrence`), so two GRUs in
    one loop cost little more than one. The joint GRU's kernels are block-diagonal in the two state
    halves, with gate columns ordered [r_a ‖ r_b ‖ z_a ‖ z_b] and candidate columns [c_a ‖ c_b]; the
    zero blocks add exact zeros, so each half follows its own cell's equations (the result differs
    from two separate runs only by the summation order inside the matmuls).
    """
    B, L = x.shape[0], x.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    Ha, Hb, D = cell_a.hidden_size, cell_b.hidden_size, cell_a.input_dim
    if cell_b.input_dim != D:
        raise ValueError(f"run_gru_pair: input widths differ ({D} vs {cell_b.input_dim})")
    start_a = x.new_zeros(B, Ha) if h0_a is None else h0_a
    start_b = x.new_zeros(B, Hb) if h0_b is None else h0_b
    if n_steps == 0:
        return start_a, start_b

    def cols(cell, W):  # a (rows, 3H) block [r ‖ z ‖ c] -> r, z, c column blocks
        H = cell.hidden_size
        return W[..., :H], W[..., H : 2 * H], W[..., 2 * H :]

    Wa = torch.cat([cell_a.gate_kernel, cell_a.cand_kernel], dim=1)  # (D + Ha, 3 Ha)
    Wb = torch.cat([cell_b.gate_kernel, cell_b.cand_kernel], dim=1)
    ra, za, ca = cols(cell_a, Wa[:D])
    rb, zb, cb = cols(cell_b, Wb[:D])
    W_x = torch.cat([ra, rb, za, zb, ca, cb], dim=1)  # (D, 3 (Ha + Hb))
    ba, bb = torch.cat([cell_a.gate_bias, cell_a.cand_bias]), torch.cat([cell_b.gate_bias, cell_b.cand_bias])
    (rba, zba, cba), (rbb, zbb, cbb) = cols(cell_a, ba), cols(cell_b, bb)
    bias = torch.cat([rba, rbb, zba, zbb, cba, cbb])
    plan = Packing.plan(lengths, n_steps, L) if plan is None else plan  # as in run_rnn
    if not plan.batch_sizes:
        return start_a, start_b
    proj = torch.mm(plan.pack(x), W_x)  # (P, 3 (Ha + Hb)), packed; the recurrence adds the bias
    Wg_a, Wg_b = cell_a.gate_kernel[D:], cell_b.gate_kernel[D:]
    zab, zba_ = Wg_a.new_zeros(Ha, Hb), Wg_a.new_zeros(Hb, Ha)
    W_g = torch.cat(
        [torch.cat([Wg_a[:, :Ha], zab, Wg_a[:, Ha:], zab], dim=1),
         torch.cat([zba_, Wg_b[:, :Hb], zba_, Wg_b[:, Hb:]], dim=1)], dim=0
    )  # (Ha + Hb, 2 (Ha + Hb)), columns [r_a r_b z_a z_b]
    W_c = torch.block_diag(cell_a.cand_kernel[D:], cell_b.cand_kernel[D:])
    h0 = torch.cat([start_a, start_b], dim=1)[plan.perm]
    out = GRUSequence.apply(proj, bias, h0, W_g, W_c, plan.batch_sizes, plan.prev_idx, torch.is_grad_enabled())
    final = plan.final(out, h0)
    return final[:, :Ha], final[:, Ha:]
