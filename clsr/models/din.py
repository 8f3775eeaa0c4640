"""DIN: Deep Interest Network, as released with CLSR.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai. "Deep Interest Network for Click-Through Rate
Prediction." KDD 2018. https://doi.org/10.1145/3219819.3219823
Released code: github.com/tsinghua-fib-lab/CLSR, ``reco_utils/.../sequential/din.py`` (which reuses
SLi-Rec's ``_attention_fcn``); docs/protocol.md §8.

With X = [E_i(hist) ‖ E_c(hist)] (B, L, 40) and the target e_v = [E_i(v) ‖ E_c(v)] (40):

    s     = Σ_t m_t X_t                                           masked sum of the history
    a     = softmax_t MLP_att([A_t, e_v, A_t − e_v, A_t ⊙ e_v]),  A = X W   (W 40×40, padded t masked)
    att   = Σ_t a_t X_t                                           (the raw X, not A)
    logit = MLP([e_v ‖ s ‖ att])                                  120 -> 100 -> 64 -> 1, BN + ReLU

Deviations from the paper:
- ReLU with batch norm instead of Dice / PReLU (the released yaml); no mini-batch-aware
  regularisation (the shared L2 on the batch's embedding rows is used instead, docs/protocol.md §7.4);
  the attention weights are softmax-normalised over the history (the paper keeps them unnormalised);
  there is no user-profile or context feature, only item and category ids.
- Training uses the shared sampled-softmax loss over 1 + 4 in-batch candidates (released), not BCE.

Deviations from the released code (none changes the function):
- The history part (s, the keys A and their projections) is computed once per instance and
  broadcast to the C candidates; the attention scorer uses `DinAttention`'s exact fast path, and the
  first layer of the prediction MLP is split into a per-instance and a per-candidate product
  (`layers.mlp_over_parts`). BN statistics over C copies of a row equal those over the rows, so this is exact.
- PyTorch's BN running variance is updated with the unbiased batch variance (TF: biased); eval-mode
  outputs differ by the factor n/(n−1), n ≥ B·C·L. Dropout (0 in the released setting) is not built.

The model uses no positions: the masked sum and the attention are permutation invariant, so
shuffling a history does not change the logits (tests assert it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import torch
from torch import nn

from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.attention import DinAttention, attention_pool
from clsr.models.layers import MLP, ItemCategoryEmbedding, mlp_over_parts, trunc_normal_


@dataclass
class DINConfig(ModelConfig):
    """DIN settings; defaults are the released CLI / yaml values (docs/protocol.md §8)."""

    att_layers: list[int] = field(default_factory=lambda: [80, 40])  # attention scorer MLP (att_fcn_layer_sizes), + linear to 1
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every hidden layer (the released yaml uses ReLU, not Dice)
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_layer_sizes(where, "att_layers", allow_empty=True)
        self._require_layer_sizes(where, "pred_layers", allow_empty=True)
        self._require_positive(where, "item_dim", "cate_dim")
        self._require_activation(where)
        if not self.att_layers:
            raise ConfigError(f"{where}.att_layers: the attention scorer needs ≥ 1 hidden layer")


class DIN(Recommender):
    """DIN as released. forward(batch) -> {"logits": (B, C), "att": (B, C, L) attention weights,
    "hist_sum": (B, d) masked sum of the history}."""

    def __init__(self, cfg: DINConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.din")
        d = cfg.item_dim + cfg.cate_dim
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        mlp_kw = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, init_std=cfg.init_std)
        # released `attention_mat`: (key width × query width), truncated normal
        self.att_proj = nn.Parameter(trunc_normal_(torch.empty(d, d), cfg.init_std))
        self.att = DinAttention(d, cfg.att_layers, **mlp_kw)
        self.pred_mlp = MLP(3 * d, cfg.pred_layers, out_dim=1, **mlp_kw)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        X = self.tokens.history(batch)  # (B, L, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        mask = batch.mask.to(X.dtype)
        hist_sum = torch.bmm(mask.unsqueeze(1), X).squeeze(1)  # Σ_t m_t X_t, (B, d)
        a = self.att(X @ self.att_proj, mask, e_v)  # (B, C, L), keys shared by the C queries
        att = attention_pool(a, X)  # (B, C, d)
        logits = mlp_over_parts(self.pred_mlp, [e_v, hist_sum, att]).squeeze(-1)
        return {"logits": logits, "att": a, "hist_sum": hist_sum}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)
