"""LightGCN on the train user–item graph (the paper's model, not the released "LGN").

He, Deng, Wang, Li, Zhang, Wang. "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation." SIGIR 2020. https://doi.org/10.1145/3397271.3401063
Released counterpart: github.com/tsinghua-fib-lab/CLSR, ``reco_utils/.../sequential/lgn.py``
(``--model LGN``); docs/protocol.md §8.

Graph. Nodes are the U user vocabulary rows and the I item vocabulary rows (N = U + I). An edge joins
user u and item i when i occurs in u's *train* data: the target of one of u's train instances, or an
item of one of their histories. Since a history holds every earlier event, that is u's events
0 .. p_max(u), p_max the position of u's last train target. Duplicate pairs count once; index 0
(padding / unseen) gets no edge. Nothing from valid or test enters the graph (the histories of train
instances hold train-period events only under every split rule of `clsr.data.protocol`).

    A = [[0, R], [Rᵀ, 0]],   Â = D^{-1/2} A D^{-1/2}   (symmetric normalisation, no self-loops;
                                                        isolated nodes get 0)
    E⁽⁰⁾ = [E_u ; E_v],      E⁽ᵏ⁺¹⁾ = Â E⁽ᵏ⁾,          E = 1/(K+1) Σ_{k=0..K} E⁽ᵏ⁾   (K = 2)
    logit(u, v) = ⟨E[u], E[U + v]⟩

No weights, no nonlinearity. Item nodes are [E_i(v) ‖ E_c(cat(v))] (32 + 8 = 40, as released), with
cat(v) the item's category in the train events (0 for items without train events), so that items of
one category share part of their embedding; users have a 40-d table. The whole graph is propagated at
every training step (sparse matmuls; ~2.6k nodes on MovieLens-100K); in eval mode the propagated
table is cached until a parameter changes.

How this differs from the released "LGN" (which is **not** LightGCN; none of this is copied):
- **Bug, not reproduced:** the released graph builder adds each user's history items to the row of
  the *next* user in the file (`get_R` writes the previous line's history under the current uid), so
  every user's neighbourhood is another user's items. Here user u is joined to u's own items.
- The released propagation uses D^{-1}(A + I) with self-loops and a learned LeakyReLU(ÂE W_k + b_k)
  per layer (N(0, 0.01) weights), i.e. an NGCF/GCN layer; here it is the parameter-free LightGCN
  layer with D^{-1/2} A D^{-1/2}.
- The released code also builds item–item chain edges (consecutive history items, and the last one
  to the target); they go only into adjacency matrices the model never uses. Not built here.
- The released user–item edges come from each user's last train line: its history, *without* the
  target of that line (the target only enters the unused item–item edges). Here the user's last
  train target is an edge too (every train target is, as in the paper).

Deviations from the paper:
- Trained with the shared sampled softmax over 1 + 4 in-batch candidates (released), not BPR with
  uniform negatives; embeddings initialised truncated normal (std 0.01) as every model here, not Xavier.
- L2 (``embed_l2``, ½‖·‖²) on the layer-0 rows of the batch's users, candidate items and their
  categories, as the paper regularises E⁽⁰⁾ of the batch (the released code put it on the
  *propagated* rows of history and candidate items).
- The candidate's category in the batch is not used: an item node always carries its train category.
  Unseen users (index 0) have no edges: their final embedding is E_u[0] / (K + 1).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.data.store import PreparedData
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.layers import ItemCategoryEmbedding, trunc_normal_


@dataclass
class LightGCNConfig(ModelConfig):
    """LightGCN settings. item nodes are item_dim + cate_dim wide (released 32 + 8); users the same."""

    n_layers: int = 2  # K, propagation layers (paper and released default 2)

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        if self.n_layers < 0:
            raise ConfigError(f"{where}.n_layers: must be ≥ 0, got {self.n_layers}")
        self._require_positive(where, "item_dim", "cate_dim")


def train_graph_edges(data: PreparedData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user vocab index, item vocab index) of every distinct train edge, and the item → category
    vocabulary map over the items of those events (item2cate[0] = 0; 0 for items without events).

    Users with train instances contribute their events 0 .. p_max (the targets of their train instances
    and everything in those instances' histories)."""
    inst = data.instances["train"]
    n_rows = data.n_users
    p_max = np.full(n_rows, -1, dtype=np.int64)
    np.maximum.at(p_max, inst.user.astype(np.int64), inst.pos.astype(np.int64))
    users = np.flatnonzero(p_max >= 0)
    counts = p_max[users] + 1
    starts = data.user_offsets[users]
    first = np.repeat(np.cumsum(counts) - counts, counts)
    ev = np.repeat(starts, counts) + (np.arange(int(counts.sum()), dtype=np.int64) - first)
    u = data.user_index[np.repeat(users, counts)].astype(np.int64)
    i = data.item_index[data.event_item[ev]].astype(np.int64)
    c = data.cate_index[data.event_cate[ev]].astype(np.int64)
    n_items = data.item_vocab_size
    item2cate = np.zeros(n_items, dtype=np.int64)
    item2cate[i] = c  # the last category seen for the item (Taobao items have one)
    item2cate[0] = 0
    keep = (u > 0) & (i > 0)
    pairs = np.unique(u[keep] * n_items + i[keep])
    return pairs // n_items, pairs % n_items, item2cate


def normalized_adjacency(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> torch.Tensor:
    """Â = D^{-1/2} A D^{-1/2} of the bipartite graph, nodes [users ; items], as a sparse CSR tensor.
    A is binary: duplicate (user, item) pairs count once. Degree-0 nodes get 0 rows and columns."""
    pairs = np.unique(np.asarray(users, dtype=np.int64) * n_items + np.asarray(items, dtype=np.int64))
    users = torch.from_numpy(pairs // n_items)
    items = torch.from_numpy(pairs % n_items) + n_users
    N = n_users + n_items
    row = torch.cat([users, items])
    col = torch.cat([items, users])
    deg = torch.bincount(row, minlength=N).to(torch.float32)
    d_inv_sqrt = torch.where(deg > 0, deg.clamp(min=1).rsqrt(), torch.zeros_like(deg))
    val = d_inv_sqrt[row] * d_inv_sqrt[col]
    # CSR spmm is ~25 % faster than COO here; silence the "CSR support is in beta" and
    # "invariant checks disabled" notices (the indices are valid by construction)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        A = torch.sparse_coo_tensor(torch.stack([row, col]), val, (N, N)).coalesce()
        return A.to_sparse_csr()


class LightGCN(Recommender):
    """forward(batch) -> {"logits": (B, C), "user_vec": (B, d), "item_vec": (B, C, d)}.

    Needs its train graph: `attach_data(train_data)` (the trainer calls it right after building the
    model) or `set_graph(users, items, item2cate)` for a hand-made graph.
    """

    def __init__(self, cfg: LightGCNConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.lightgcn")
        d = cfg.item_dim + cfg.cate_dim
        # user, item and category tables drawn, then initialised, in this order
        self.user_emb = nn.Embedding(sizes.n_users, d)
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, init_std=None)
        for table in (self.user_emb, *self.tokens.tables()):
            trunc_normal_(table.weight, cfg.init_std)
        # data-derived, rebuilt by attach_data: not saved in checkpoints
        self.register_buffer("adj", None, persistent=False)
        self.register_buffer("item2cate", torch.zeros(sizes.n_items, dtype=torch.long), persistent=False)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    # ---- graph -----------------------------------------------------------------------------------
    def attach_data(self, data: PreparedData) -> None:
        """Build the graph from `data`'s train split (pass the training data the model is fitted on)."""
        users, items, item2cate = train_graph_edges(data)
        if item2cate.shape[0] > self.sizes.n_items:
            raise ValueError(
                f"LightGCN: the data has {item2cate.shape[0]} item vocabulary rows, the model {self.sizes.n_items}"
            )
        self.set_graph(users, items, item2cate)

    def set_graph(self, users, items, item2cate=None) -> None:
        """Install the graph with edges (users[k], items[k]) (vocabulary indices) and the item → category
        map used for the item nodes (default: category 0 for every item)."""
        device = self.user_emb.weight.device
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if len(users) and (users.max() >= self.sizes.n_users or items.max() >= self.sizes.n_items):
            raise ValueError("LightGCN.set_graph: an edge index exceeds the vocabulary sizes")
        self.adj = normalized_adjacency(users, items, self.sizes.n_users, self.sizes.n_items).to(device)
        i2c = torch.zeros(self.sizes.n_items, dtype=torch.long)
        if item2cate is not None:
            src = torch.as_tensor(np.asarray(item2cate), dtype=torch.long)
            i2c[: len(src)] = src
        self.item2cate = i2c.to(device)
        self._cache = None

    def layer0(self) -> torch.Tensor:
        """E⁽⁰⁾ = [E_u ; E_i ‖ E_c(item2cate)] (N, d)."""
        items = torch.cat([self.tokens.item.weight, self.tokens.cate.weight[self.item2cate]], dim=-1)
        return torch.cat([self.user_emb.weight, items], dim=0)

    def propagate(self) -> torch.Tensor:
        """E = mean_{k=0..K} Â^k E⁽⁰⁾ (N, d)."""
        if self.adj is None:
            raise RuntimeError(
                "LightGCN has no graph: call model.attach_data(train_data) after building it "
                "(clsr.train.fit does), or model.set_graph(users, items, item2cate)"
            )
        E = self.layer0()
        total = E
        for _ in range(self.cfg.n_layers):
            E = torch.sparse.mm(self.adj, E)
            total = total + E
        return total / (self.cfg.n_layers + 1)

    def _final_embeddings(self) -> torch.Tensor:
        """The propagated table; cached while no gradient is recorded and no parameter has changed
        (evaluation runs many batches on the same parameters)."""
        if torch.is_grad_enabled() or self.training:
            self._cache = None
            return self.propagate()
        tables = (self.user_emb.weight, self.tokens.item.weight, self.tokens.cate.weight)
        key = (id(self.adj),) + tuple((id(p), p._version) for p in tables)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.propagate())
        return self._cache[1]

    # ---- model -----------------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        E = self._final_embeddings()
        u = E[batch.user]  # (B, d)
        v = E[self.sizes.n_users + batch.cand_item]  # (B, C, d)
        logits = torch.bmm(v, u.unsqueeze(-1)).squeeze(-1)
        return {"logits": logits, "user_vec": u, "item_vec": v}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """Layer-0 rows of the batch's users, candidate items and those items' categories."""
        items = batch.cand_item.reshape(-1)
        return [(self.user_emb, batch.user)] + self.tokens.used_rows(items, self.item2cate[items])
