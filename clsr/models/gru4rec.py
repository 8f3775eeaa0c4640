"""GRU4Rec as released with CLSR: a CTR-style GRU encoder of the history.

Hidasi, Karatzoglou, Baltrunas, Tikk. "Session-based Recommendations with Recurrent Neural
Networks." ICLR 2016. https://arxiv.org/abs/1511.06939
Released code: github.com/tsinghua-fib-lab/CLSR (``--model GRU4REC``, the Microsoft Recommenders
``gru4rec.py``); docs/protocol.md §8.

With X = [E_i(hist) ‖ E_c(hist)] (B, L, 40) and the target e_v = [E_i(v) ‖ E_c(v)] (40):

    h     = GRU(X) final state at step n − 1          TF GRUCell, 40 units, zero initial state
    logit = MLP([h ‖ e_v])                             80 -> 100 -> 64 -> 1, BN + ReLU

Deviations from the paper (all as released):
- This is **not** the session-parallel GRU4Rec: there are no session-parallel mini-batches, no
  one-hot/output-layer scoring over all items, and no TOP1/BPR ranking loss. The GRU only encodes the
  history; the target item enters through the prediction MLP, and training uses the shared sampled
  softmax over 1 + 4 in-batch candidates. Item and category embeddings are concatenated.

Deviations from the released code (none changes the function):
- The GRU runs once per instance (not once per candidate row) and stops at the batch's longest
  history; the final state is read at step n − 1 (`cells.run_rnn`, exact vs ``dynamic_rnn``). The
  per-instance part of the prediction MLP's first layer is computed once per instance
  (`layers.mlp_over_parts`, exact).
- PyTorch's BN running variance uses the unbiased batch variance (TF: biased). Dropout (0) not built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.cells import TFGRUCell, run_rnn
from clsr.models.layers import MLP, ItemCategoryEmbedding, mlp_over_parts


@dataclass
class GRU4RecConfig(ModelConfig):
    """GRU4Rec settings; defaults are the released CLI / yaml values (docs/protocol.md §8)."""

    hidden_size: int = 40  # GRU units (hidden_size)
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every hidden layer
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_layer_sizes(where, "pred_layers", allow_empty=True)
        self._require_positive(where, "item_dim", "cate_dim")
        self._require_activation(where)
        self._require_positive(where, "hidden_size")


class GRU4Rec(Recommender):
    """forward(batch) -> {"logits": (B, C), "h": (B, H) final GRU state}."""

    def __init__(self, cfg: GRU4RecConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.gru4rec")
        d = cfg.item_dim + cfg.cate_dim
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        self.gru = TFGRUCell(d, cfg.hidden_size)  # glorot kernels, gate bias 1, candidate bias 0
        self.pred_mlp = MLP(
            cfg.hidden_size + d, cfg.pred_layers, cfg.activation, cfg.batch_norm, out_dim=1, init_std=cfg.init_std
        )

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        X = self.tokens.history(batch)  # (B, L, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        n_steps = int(batch.length.max()) if batch.length.numel() else 0  # one host sync per forward
        _, h = run_rnn(self.gru, X, batch.length, n_steps=n_steps)  # (B, H)
        logits = mlp_over_parts(self.pred_mlp, [h, e_v]).squeeze(-1)
        return {"logits": logits, "h": h}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)
