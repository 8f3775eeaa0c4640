"""NCF: Neural Collaborative Filtering (NeuMF = GMF + MLP), as released with CLSR.

He, Liao, Zhang, Nie, Hu, Chua. "Neural Collaborative Filtering." WWW 2017.
https://doi.org/10.1145/3038912.3052569
Released code: github.com/tsinghua-fib-lab/CLSR, ``reco_utils/.../sequential/ncf.py`` (``--model NCF``);
docs/protocol.md §8.

For user u and candidate item v (vocabulary indices; the history is ignored):

    gmf   = P_u ⊙ Q_v                                      P, Q: GMF user / item tables (40-d)
    mlp   = ReLU(W_2 ReLU(W_1 [P'_u ‖ Q'_v] + b_1) + b_2)  P', Q': MLP tables (40-d); 80 -> 80 -> 40
    logit = h · [gmf ‖ mlp]                                 h: 80 -> 1, no bias

Initialisation as released: the four tables truncated normal (std 0.01); W_1, W_2 and h Xavier
(glorot) uniform; b = 0.

Deviations from the paper (all as released):
- Trained jointly from scratch (no GMF / MLP pre-training, no α trade-off), with the shared sampled
  softmax over 1 + 4 in-batch candidates instead of pointwise log loss with random negatives; the
  MLP tower is 80 -> 40 (the released ``ncf_layer_sizes``). Only item ids are used (no category).
- User 0 is every user unseen in training: they all share one row.

Deviations from the released code (none changes the function):
- The released NCF also builds the base item/category tables, which only receive their L2 term;
  they are not created here. As released, the NCF tables get **no** L2 (the released code puts them
  in the embedding scope but not in `embed_params`), so `embedding_rows` is empty; the dense layers
  get the shared ``layer_l2``.
- The user parts are computed once per instance: P'_u enters W_1 through its own column block,
  W_1 [P'_u ‖ Q'_v] = W_1,u P'_u + W_1,v Q'_v (exact).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.layers import glorot_uniform_, trunc_normal_


@dataclass
class NCFConfig(ModelConfig):
    """NCF settings; defaults are the released yaml values (docs/protocol.md §8).
    (item_dim / cate_dim of the base config are not used: NCF has its own 40-d tables.)"""

    embed_dim: int = 40  # GMF and MLP user / item embedding size (user_embedding_dim)
    mlp_layers: list[int] = field(default_factory=lambda: [80, 40])  # MLP tower on [u ‖ i] (ncf_layer_sizes), ReLU

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_positive(where, "embed_dim")
        if not self.mlp_layers or any(h < 1 for h in self.mlp_layers):
            raise ConfigError(f"{where}.mlp_layers: need ≥ 1 positive size, got {self.mlp_layers}")


class NCF(Recommender):
    """forward(batch) -> {"logits": (B, C)}."""

    def __init__(self, cfg: NCFConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.ncf")
        k = cfg.embed_dim
        self.user_gmf = nn.Embedding(sizes.n_users, k)
        self.user_mlp = nn.Embedding(sizes.n_users, k)
        self.item_gmf = nn.Embedding(sizes.n_items, k)
        self.item_mlp = nn.Embedding(sizes.n_items, k)
        for table in (self.user_gmf, self.user_mlp, self.item_gmf, self.item_mlp):
            trunc_normal_(table.weight, cfg.init_std)
        dims = [2 * k] + list(cfg.mlp_layers)
        self.mlp = nn.ModuleList(nn.Linear(dims[j], dims[j + 1]) for j in range(len(cfg.mlp_layers)))
        self.out = nn.Linear(k + dims[-1], 1, bias=False)
        for lin in list(self.mlp) + [self.out]:
            glorot_uniform_(lin.weight)  # tf.contrib.layers.xavier_initializer (uniform)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        k = self.cfg.embed_dim
        u, v = batch.user, batch.cand_item  # (B,), (B, C)
        gmf = self.user_gmf(u).unsqueeze(1) * self.item_gmf(v)  # (B, C, k)
        first = self.mlp[0]
        # W_1 [P'_u ‖ Q'_v] + b_1 with the user block once per instance
        h = F.linear(self.item_mlp(v), first.weight[:, k:], first.bias) + F.linear(
            self.user_mlp(u), first.weight[:, :k]
        ).unsqueeze(1)
        h = torch.relu(h)
        for lin in self.mlp[1:]:
            h = torch.relu(lin(h))
        logits = self.out(torch.cat([gmf, h], dim=-1)).squeeze(-1)
        return {"logits": logits}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """None: the released NCF puts no L2 on its tables (see the module docstring)."""
        return []
