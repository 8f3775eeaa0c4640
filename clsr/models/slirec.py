"""SLi-Rec: adaptive user modelling with long- and short-term preferences, as released with CLSR.

Yu, Lian, Mahmoody, Liu, Xie. "Adaptive User Modeling with Long and Short-Term Preferences for
Personalized Recommendation." IJCAI 2019. https://doi.org/10.24963/ijcai.2019/585
Released code: github.com/tsinghua-fib-lab/CLSR (``--model SLIREC``, the Microsoft Recommenders
``sli_rec.py`` with ``base_model._attention`` and ``rnn_cell_implement.Time4LSTMCell``);
docs/protocol.md §8 and §6.3.

With X = [E_i(hist) ‖ E_c(hist)] (B, L, 40), mask m, length n and the target e_v = [E_i(v) ‖ E_c(v)]:

    long term (A2SVD):  a^l = softmax_t(⟨X_t W, q⟩)        W 40×40, q a learned GLOBAL 40-vector
                        u^l = Σ_t a^l_t X_t                 (B, 40), the same for every candidate
    short term:         O   = Time4LSTM([E_i(hist) ‖ τ^first ‖ τ^now])      (32 + 2 inputs, H = 40)
                        a^s = softmax_t MLP_att([A_t, e_v, A_t − e_v, A_t ⊙ e_v]),  A = O W_s (40×40)
                        u^s = Σ_t a^s_t O_t                 (B, C, 40), target-aware
    fusion:             α   = σ(MLP_fuse([e_v ‖ u^l ‖ u^s ‖ τ^now[:, L−1]]))      121 -> 80 -> 40 -> 1
                        u   = α u^l + (1 − α) u^s
    prediction:         logit = MLP([u ‖ e_v])              80 -> 100 -> 64 -> 1, BN + ReLU

τ^now[:, L−1] is the last *padded* column (non-zero only when the history fills all L positions), as
released. Categories do not enter the LSTM (released). There is no user embedding.

Deviations from the paper:
- The fusion gate sees [e_v ‖ u^l ‖ u^s ‖ τ^now at column L−1] and the short-term attention is the DIN
  MLP scorer with BN (released); the long-term part is the code's A2SVD attention with a global query
  rather than a per-user one; training uses the shared sampled softmax over 1 + 4 in-batch candidates.

Deviations from the released code:
- Optional: ``mask_long_term_padding: true`` masks padded positions in the long-term softmax. The
  default is the released form, without a mask, where the padding token (row 0) takes part of the weight
  and of u^l for every history shorter than L: trained to convergence on ml100k with 3 seeds it scored
  higher than the masked form (reports/tables/ablations/ablation_slirec_mask.md).
- ``forward(batch, alpha_override=a)`` fixes α = a (a float in [0, 1]) without changing anything else:
  α = 1 uses the long-term interest only, α = 0 the short-term one (the disentanglement study). The
  released ``manual_alpha`` is a training-time variant; this is an evaluation-time probe.
- The long-term encoder and the LSTM run once per instance and are broadcast to the C candidates; the
  LSTM stops at the batch's longest history (exact, see cells.run_rnn); BN statistics over C copies of
  a row equal those over the rows (exact, tests compare with the per-row layout).
- PyTorch's BN running variance uses the unbiased batch variance (TF: biased). Dropout (0) not built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.attention import DinAttention, attention_pool, masked_softmax
from clsr.models.cells import Time4LSTMCell, run_rnn
from clsr.models.layers import MLP, ItemCategoryEmbedding, trunc_normal_


@dataclass
class SLiRecConfig(ModelConfig):
    """SLi-Rec settings; defaults are the released CLI / yaml values (docs/protocol.md §8)."""

    hidden_size: int = 40  # Time4LSTM units H; must equal item_dim + cate_dim (u = α u^l + (1−α) u^s)
    att_layers: list[int] = field(default_factory=lambda: [80, 40])  # attention scorer and fusion MLPs (att_fcn_layer_sizes), + linear to 1
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every MLP hidden layer
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95
    mask_long_term_padding: bool = False  # as released: padding takes part in the long-term softmax; True masks it

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_positive(where, "item_dim", "cate_dim", "hidden_size")
        self._require_hidden_is_token(where)
        self._require_layer_sizes(where, "att_layers", allow_empty=False)
        self._require_layer_sizes(where, "pred_layers", allow_empty=False)
        self._require_activation(where)


class SLiRec(Recommender):
    """SLi-Rec as released. forward(batch, alpha_override=None) returns (B instances, C candidates,
    L positions, d = H = 40):

    ========== ============ ==============================================================
    logits     (B, C)       prediction MLP output
    alpha      (B, C)       α, weight of the long-term interest (the override value if given)
    u_long     (B, d)       u^l (per instance: the long-term part does not see the target)
    u_short    (B, C, H)    u^s (per candidate: target-aware attention over the LSTM outputs)
    user       (B, C, d)    u = α u^l + (1 − α) u^s
    att_long   (B, L)       long-term attention weights
    att_short  (B, C, L)    short-term attention weights
    ========== ============ ==============================================================
    """

    def __init__(self, cfg: SLiRecConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.slirec")
        d, H = cfg.item_dim + cfg.cate_dim, cfg.hidden_size
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        # long term (released `_attention`): attention_mat 40×40 and query 40, truncated normal
        self.long_proj = nn.Parameter(trunc_normal_(torch.empty(d, d), cfg.init_std))
        self.long_query = nn.Parameter(trunc_normal_(torch.empty(d), cfg.init_std))
        # short term: Time4LSTM over [item embedding ‖ τ^first ‖ τ^now] (categories not used)
        self.lstm = Time4LSTMCell(cfg.item_dim, H)
        mlp_kw = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, init_std=cfg.init_std)
        self.short_proj = nn.Parameter(trunc_normal_(torch.empty(H, d), cfg.init_std))  # H × query width
        self.short_att = DinAttention(d, cfg.att_layers, **mlp_kw)
        self.fuse_mlp = MLP(d + d + H + 1, cfg.att_layers, out_dim=1, **mlp_kw)
        self.pred_mlp = MLP(H + d, cfg.pred_layers, out_dim=1, **mlp_kw)

    def long_term(self, X: torch.Tensor, mask: torch.Tensor):
        """a = softmax_t ⟨X_t W, q⟩ (padded t masked unless mask_long_term_padding is False);
        u^l = Σ_t a_t X_t. Returns u^l (B, d), a (B, L)."""
        s = (X @ self.long_proj) @ self.long_query  # (B, L)
        a = masked_softmax(s, mask) if self.cfg.mask_long_term_padding else torch.softmax(s, dim=-1)
        return attention_pool(a, X), a

    def short_term(self, batch: Batch, E_item: torch.Tensor, mask: torch.Tensor, e_v: torch.Tensor):
        """O = Time4LSTM([E_i ‖ τ^first ‖ τ^now]); a^s = DIN(O W_s, e_v); u^s = Σ_t a^s_t O_t.
        Returns u^s (B, C, H), a^s (B, C, L)."""
        lengths = batch.length
        n_steps = int(lengths.max()) if lengths.numel() else 0  # one host sync per forward
        dt = E_item.dtype
        times = torch.stack([batch.time_from_first.to(dt), batch.time_to_now.to(dt)], dim=-1)  # (B, L, 2)
        O, _ = run_rnn(self.lstm, E_item, lengths, n_steps=n_steps, times=times)  # (B, L, H), zero beyond n
        a = self.short_att(O @ self.short_proj, mask, e_v)  # (B, C, L)
        return attention_pool(a, O), a

    def forward(self, batch: Batch, alpha_override: float | None = None) -> dict[str, torch.Tensor]:
        E_item = self.tokens.items(batch.hist_item)
        X = torch.cat([E_item, self.tokens.cates(batch.hist_cate)], dim=-1)  # (B, L, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        mask = batch.mask.to(X.dtype)
        B, C = e_v.shape[0], e_v.shape[1]

        u_long, att_long = self.long_term(X, mask)
        u_short, att_short = self.short_term(batch, E_item, mask, e_v)
        u_long_c = u_long.unsqueeze(1).expand(B, C, -1)
        if alpha_override is None:
            tau_last = batch.time_to_now[:, -1].to(X.dtype).view(B, 1, 1).expand(B, C, 1)  # padded column L−1
            alpha = torch.sigmoid(self.fuse_mlp(torch.cat([e_v, u_long_c, u_short, tau_last], dim=-1))).squeeze(-1)
        else:
            if not 0.0 <= float(alpha_override) <= 1.0:
                raise ValueError(f"slirec: alpha_override must be in [0, 1], got {alpha_override}")
            alpha = e_v.new_full((B, C), float(alpha_override))
        user = torch.lerp(u_short, u_long_c, alpha.unsqueeze(-1))  # α u^l + (1 − α) u^s
        logits = self.pred_mlp(torch.cat([user, e_v], dim=-1)).squeeze(-1)
        return {
            "logits": logits,
            "alpha": alpha,
            "u_long": u_long,
            "u_short": u_short,
            "user": user,
            "att_long": att_long,
            "att_short": att_short,
        }

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)
