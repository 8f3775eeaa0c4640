"""Building blocks shared by CLSR and the baselines: initialisers, the MLP, the item + category embedding.

Each matches the released TensorFlow code and documents the equation it implements. The DIN attention
scorer lives in `clsr.models.attention`, the recurrent cells and their runners in `clsr.models.cells`.

Contents
--------
- `trunc_normal_`, `glorot_uniform_`: TF1's ``truncated_normal_initializer`` and
  ``glorot_uniform_initializer``.
- `MLP`: ``_fcn_net`` — [Linear -> BatchNorm -> activation] per hidden layer, then a linear output;
  `mlp_over_parts` runs one on a concatenation of per-instance and per-candidate parts without
  broadcasting the per-instance ones.
- `ItemCategoryEmbedding`: the item and category tables and the token e = [E_i(item) ‖ E_c(category)]
  that every model reads (`lookup`: the embedding lookup with the fast backward).

Layout conventions: dense layers are ``nn.Linear`` (PyTorch layout (out, in)); glorot is symmetric in
the fans, so the layout does not change the limit.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clsr.data.batches import Batch
from clsr import fast

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
    - ``tail(z)`` applies everything after the first linear layer to its pre-activation ``z``
      (`mlp_over_parts` and the DIN scorer compute ``z`` themselves).
    """

    def __init__(
        self,
        in_dim: int,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "relu",
        batch_norm: bool = True,
        out_dim: int | None = 1,
        init_std: float = 0.01,
    ):
        super().__init__()
        sizes = list(sizes)
        acts = [activation] * len(sizes) if isinstance(activation, str) else list(activation)
        if len(acts) != len(sizes):
            raise ValueError(f"MLP: {len(acts)} activations for {len(sizes)} hidden layers")
        self.sizes = sizes
        self.activations = [activation_fn(a) for a in acts]
        self._act_names = acts
        dims = [in_dim] + sizes
        self.linears = nn.ModuleList(nn.Linear(dims[k], dims[k + 1]) for k in range(len(sizes)))
        self.norms = (
            nn.ModuleList(nn.BatchNorm1d(h, eps=BN_EPS, momentum=BN_MOMENTUM) for h in sizes)
            if batch_norm
            else None
        )
        self.out = nn.Linear(dims[-1], out_dim) if out_dim is not None else None
        for lin in list(self.linears) + ([self.out] if self.out is not None else []):
            trunc_normal_(lin.weight, init_std)
            nn.init.zeros_(lin.bias)

    def _norm_act(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """act_k(BN_k(z)) on a 2-D (N, C) z with torch ops: BN statistics over all N rows."""
        if self.norms is not None:
            z = self.norms[k](z)
            if self._act_names[k] == "relu":
                # in place on BN's fresh 2-D output (not a view, so no CopySlices in the backward):
                # BN's backward needs its input, not its output, so this is autograd-safe
                return torch.relu_(z)
        return self.activations[k](z)

    @fast.seam
    def tail(self, z: torch.Tensor) -> torch.Tensor:
        """Everything after the first linear layer, given that layer's pre-activation z (any leading
        shape; flattened to (-1, C) so that BN runs over every leading position). (Fast twin:
        `clsr.fast.mlp.fused_tail`, batch norm + ReLU fused in training on a CPU.)"""
        lead = z.shape[:-1]
        x = z.reshape(-1, z.shape[-1])
        for k in range(len(self.linears)):
            if k:
                x = self.linears[k](x)
            x = self._norm_act(k, x)
        if self.out is not None:
            x = self.out(x)
        return x.view(*lead, x.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linears:
            return self.out(x) if self.out is not None else x
        lead = x.shape[:-1]
        return self.tail(self.linears[0](x.reshape(-1, x.shape[-1])).view(*lead, -1))


def mlp_over_parts(mlp: MLP, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``mlp(cat(parts, -1))`` for parts that are either per instance (B, k) or per candidate (B, C, k),
    without broadcasting the per-instance parts to the C candidates.

    The first layer is linear, so W [p_1 ‖ … ‖ p_n] + b = Σ_j W_j p_j + b with W_j the column block of
    part j: per-instance blocks are multiplied once per instance and added to every candidate's row.
    Everything after the first linear layer (BN over all B·C rows, activation, further layers) is
    `MLP.tail`, so the result equals the concatenated computation. Returns (B, C, out).
    """
    first = mlp.linears[0]
    W, b = first.weight, first.bias
    shared, per_cand, off = None, None, 0
    for p in parts:
        k = p.shape[-1]
        y = F.linear(p, W[:, off : off + k])
        off += k
        if p.dim() == 2:
            shared = y if shared is None else shared + y
        else:
            per_cand = y if per_cand is None else per_cand + y
    if off != W.shape[1]:
        raise ValueError(f"mlp_over_parts: parts are {off} wide, the MLP expects {W.shape[1]}")
    if per_cand is None:
        raise ValueError("mlp_over_parts: at least one part must be per candidate (B, C, k)")
    z = per_cand + b
    if shared is not None:
        z = z + shared.unsqueeze(1)
    return mlp.tail(z)


# --------------------------------------------------------------------------------------------------
# item + category embedding
# --------------------------------------------------------------------------------------------------
@fast.seam
def lookup(table: nn.Embedding, idx: torch.Tensor) -> torch.Tensor:
    """table(idx) as an index_select of its weight: the same values and the same gradient (an index_add),
    which on CPU takes a third of nn.Embedding's backward time (0.5 vs 1.7 ms for 25k lookups). Only for
    plain tables (no padding_idx, max_norm or sparse gradients)."""
    return table.weight.index_select(0, idx.reshape(-1)).view(*idx.shape, table.embedding_dim)


class ItemCategoryEmbedding(nn.Module):
    """The item table E_i (n_items × item_dim) and the category table E_c (n_cates × cate_dim), and the
    token every model reads:

        e(v) = [E_i(item_v) ‖ E_c(cate_v)]        (item_dim + cate_dim = 32 + 8 = 40, as released)

    Index 0 of each table is an ordinary trainable row (padding and every id unseen in training), so
    there is no padding_idx. Both tables are drawn truncated normal (std ``init_std``, as released); with
    ``init_std=None`` they keep nn.Embedding's draw and the caller initialises them (a model that draws
    its tables in the released variable order, e.g. CLSR's item, category, user tables, then their init).
    """

    def __init__(self, n_items: int, n_cates: int, item_dim: int, cate_dim: int, init_std: float | None):
        super().__init__()
        self.item = nn.Embedding(n_items, item_dim)
        self.cate = nn.Embedding(n_cates, cate_dim)
        self.dim = item_dim + cate_dim
        if init_std is not None:
            for table in self.tables():
                trunc_normal_(table.weight, init_std)

    def tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        return self.item, self.cate

    def items(self, idx: torch.Tensor) -> torch.Tensor:
        """E_i(idx), shape idx.shape + (item_dim,)."""
        return lookup(self.item, idx)

    def cates(self, idx: torch.Tensor) -> torch.Tensor:
        """E_c(idx), shape idx.shape + (cate_dim,)."""
        return lookup(self.cate, idx)

    def forward(self, items: torch.Tensor, cates: torch.Tensor) -> torch.Tensor:
        """[E_i(items) ‖ E_c(cates)], shape items.shape + (dim,)."""
        return torch.cat([self.items(items), self.cates(cates)], dim=-1)

    def history(self, batch: Batch) -> torch.Tensor:
        """X = e(history) (B, L, d), padded positions included (the padding row 0)."""
        return self(batch.hist_item, batch.hist_cate)

    def candidates(self, batch: Batch) -> torch.Tensor:
        """e_v = e(candidates) (B, C, d)."""
        return self(batch.cand_item, batch.cand_cate)

    def used_rows(self, items: torch.Tensor, cates: torch.Tensor) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """(table, rows) pairs for `Recommender.embedding_rows` (the L2 term on the used rows)."""
        return [(self.item, items.reshape(-1)), (self.cate, cates.reshape(-1))]

    def batch_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """The rows a batch reads: history (padding row 0 included) and candidates, of both tables
        (released ``embed_params``)."""
        return self.used_rows(
            torch.cat([batch.hist_item.reshape(-1), batch.cand_item.reshape(-1)]),
            torch.cat([batch.hist_cate.reshape(-1), batch.cand_cate.reshape(-1)]),
        )
