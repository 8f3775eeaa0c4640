"""SASRec: Self-Attentive Sequential Recommendation.

Kang, McAuley. "Self-Attentive Sequential Recommendation." ICDM 2018. https://arxiv.org/abs/1808.09781
Reference code: github.com/kang205/SASRec (TF, ``model.py`` / ``modules.py``). Not part of the CLSR
release (docs/protocol.md §8; the paper's comparison is understood to include it); written here from the
paper and the authors' code.

With X = [E_i(hist) ‖ E_c(hist)] (B, L, d = 40), mask m and length n (histories left-aligned):

    S⁰_t   = (√d · X_t + P[n − 1 − t]) · m_t        learned positions counted back from the newest item
    for each of the blocks (2):
        Q  = LN(S)
        S  = Q + Attn(Q W_Q, S W_K, S W_V)          causal (key s ≤ query t), padded keys masked
        S  = (LN(S) + FFN(LN(S))) · m               FFN = ReLU(· W_1 + b_1) W_2 + b_2, point-wise
    h      = LN(S)[n − 1]                            the output at the newest valid item
    logit  = MLP([h ‖ e_v])  (score = "mlp")  or  ⟨h, e_v⟩  (score = "dot", the paper)

Multi-head attention splits d into ``n_heads`` heads (scaled dot product, per-head dimension d/heads);
dropout (0.2) is applied to S⁰, to the attention weights and after each FFN layer, in training only.

Deviations from the paper / the authors' code:
- Tokens are item ‖ category embeddings (32 + 8) like every model of this project; the shared
  truncated-normal (std 0.01) init is used for the embedding tables and the position table; the dense
  layers of the blocks use glorot-uniform as in the authors' code (TF ``dense`` default).
- Default scoring is the project's prediction MLP on [h ‖ e_v] (100 -> 64 -> 1, BN + ReLU), so that
  SASRec differs from the other baselines only in its sequence encoder; ``score: dot`` is the
  paper's ⟨h, e_v⟩ with the shared input embedding (e_v not scaled by √d).
- Loss: the project's sampled softmax over 1 + 4 in-batch candidates (not the paper's per-position
  BCE with one random negative), and only the last position is trained (no loss at every step).
- Positions: the authors left-pad to a fixed length, so the newest item always sits in the last slot
  and the position embedding encodes recency; the batches here are left-aligned, so the index is
  counted back from the newest valid item (P[0] = newest) to keep that meaning.
- Padded keys get the score −(2^32)+1 (the authors' key masking) rather than −∞, so an empty
  history yields finite (uniform) weights instead of NaN. With left-aligned histories the causal mask
  already hides every padded key from every valid query; the key mask only matters for padded query
  rows, which are discarded.
- L2: the shared ½‖·‖² terms (embed_l2 on the used item, category and position rows, layer_l2 on all
  other parameters, LayerNorm included) replace the authors' L2 on the embedding tables only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.attention import PAD_SCORE
from clsr.models.layers import MLP, ItemCategoryEmbedding, trunc_normal_

SCORES = ("mlp", "dot")


@dataclass
class SASRecConfig(ModelConfig):
    """SASRec settings (the paper's defaults where the project does not fix them)."""

    n_blocks: int = 2  # self-attention blocks (paper: 2)
    n_heads: int = 1  # attention heads (paper: 1); must divide item_dim + cate_dim
    dropout: float = 0.2  # dropout on the embeddings, the attention weights and the FFN (paper: 0.2 / 0.5)
    max_len: int = 250  # rows of the position table; must be ≥ the data's L (50 Taobao, 250 Kuaishou)
    ln_eps: float = 1.0e-8  # LayerNorm ε (authors' code)
    score: str = "mlp"  # mlp: MLP([h ‖ e_v]) like the other baselines | dot: ⟨h, e_v⟩ (paper)
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP for score = mlp, + linear to 1
    activation: str = "relu"  # prediction MLP hidden layers
    batch_norm: bool = True  # BN in the prediction MLP hidden layers, ε 1e-4, TF momentum 0.95

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        d = self.item_dim + self.cate_dim
        self._require_positive(where, "item_dim", "cate_dim", "n_blocks", "n_heads", "max_len")
        if d % self.n_heads:
            raise ConfigError(f"{where}.n_heads: {self.n_heads} does not divide the token width {d}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{where}.dropout: must be in [0, 1), got {self.dropout}")
        if self.score not in SCORES:
            raise ConfigError(f"{where}.score: {self.score!r} is not one of {list(SCORES)}")
        self._require_layer_sizes(where, "pred_layers", allow_empty=True)
        self._require_activation(where)


class SelfAttentionBlock(nn.Module):
    """S <- Q + MHA(Q, S) with Q = LN(S); then S <- LN(S) + FFN(LN(S)) (authors' residual placement)."""

    def __init__(self, d: int, n_heads: int, dropout: float, ln_eps: float):
        super().__init__()
        self.d, self.n_heads, self.dropout = d, n_heads, dropout
        self.ln_att = nn.LayerNorm(d, eps=ln_eps)
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)  # [W_K ‖ W_V]
        self.ln_ffn = nn.LayerNorm(d, eps=ln_eps)
        self.ffn1 = nn.Linear(d, d)
        self.ffn2 = nn.Linear(d, d)
        for lin in (self.q, self.ffn1, self.ffn2):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        for k in range(2):  # W_K and W_V are separate d×d glorot matrices in the authors' code
            nn.init.xavier_uniform_(self.kv.weight[k * self.d : (k + 1) * self.d])
        nn.init.zeros_(self.kv.bias)

    def forward(self, S: torch.Tensor, att_bias: torch.Tensor) -> torch.Tensor:
        """S (B, L, d); att_bias (B, 1, L, L) additive scores (0 allowed, −(2^32)+1 masked)."""
        B, L, d = S.shape
        nh, dh = self.n_heads, d // self.n_heads
        Q = self.ln_att(S)
        q = self.q(Q).view(B, L, nh, dh).transpose(1, 2)  # (B, nh, L, dh)
        k, v = self.kv(S).view(B, L, 2, nh, dh).permute(2, 0, 3, 1, 4)  # 2 × (B, nh, L, dh)
        p = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=att_bias, dropout_p=p)  # (B, nh, L, dh)
        S = Q + att.transpose(1, 2).reshape(B, L, d)
        X = self.ln_ffn(S)
        h = F.dropout(F.relu(self.ffn1(X)), p, self.training)
        return X + F.dropout(self.ffn2(h), p, self.training)


class SASRec(Recommender):
    """forward(batch) -> {"logits": (B, C), "h": (B, d) the user vector (output at position n − 1)}."""

    def __init__(self, cfg: SASRecConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.sasrec")
        d = cfg.item_dim + cfg.cate_dim
        # item, category and position tables drawn, then initialised, in this order
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, init_std=None)
        self.pos_emb = nn.Embedding(cfg.max_len, d)  # P[k]: the k-th newest item
        for table in (*self.tokens.tables(), self.pos_emb):
            trunc_normal_(table.weight, cfg.init_std)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d, cfg.n_heads, cfg.dropout, cfg.ln_eps) for _ in range(cfg.n_blocks)
        )
        self.ln_out = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.pred_mlp = (
            MLP(2 * d, cfg.pred_layers, cfg.activation, cfg.batch_norm, out_dim=1, init_std=cfg.init_std)
            if cfg.score == "mlp"
            else None
        )

    def encode(self, batch: Batch) -> torch.Tensor:
        """The user vector h = LN(S)[n − 1] (B, d)."""
        B, L = batch.hist_item.shape
        if L > self.cfg.max_len:
            raise ValueError(
                f"sasrec: histories have L = {L} positions but model.sasrec.max_len = {self.cfg.max_len}; "
                f"set max_len ≥ {L}"
            )
        X = self.tokens.history(batch)
        d = X.shape[-1]
        mask = batch.mask.to(X.dtype)
        lengths = batch.length
        t = torch.arange(L, device=X.device)
        pos = (lengths[:, None] - 1 - t[None, :]).clamp(min=0)  # newest valid item -> 0
        S = (X * math.sqrt(d) + self.pos_emb(pos)) * mask.unsqueeze(-1)
        S = F.dropout(S, self.cfg.dropout, self.training)
        # allowed[b, t, s] = (s ≤ t) and s is a valid key; the diagonal stays allowed so no row is empty
        causal = t[None, :] <= t[:, None]  # (L, L) [t, s]
        allowed = causal & ((mask[:, None, :] > 0) | torch.eye(L, dtype=torch.bool, device=X.device))
        att_bias = torch.zeros(B, 1, L, L, dtype=X.dtype, device=X.device)
        att_bias.masked_fill_(~allowed.unsqueeze(1), PAD_SCORE)
        for block in self.blocks:
            S = block(S, att_bias) * mask.unsqueeze(-1)
        last = (lengths.clamp(min=1) - 1).view(B, 1, 1).expand(B, 1, d)
        return self.ln_out(S.gather(1, last).squeeze(1))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        h = self.encode(batch)  # (B, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        if self.pred_mlp is None:
            logits = torch.einsum("bd,bcd->bc", h, e_v)
        else:
            logits = self.pred_mlp(torch.cat([h.unsqueeze(1).expand_as(e_v), e_v], dim=-1)).squeeze(-1)
        return {"logits": logits, "h": h}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """History (padding row 0 included) and candidate rows of both tables; the position rows of the
        valid history items."""
        n_max = int(batch.length.max()) if batch.length.numel() else 0
        positions = torch.arange(min(max(n_max, 1), self.cfg.max_len), device=batch.length.device)
        return self.tokens.batch_rows(batch) + [(self.pos_emb, positions)]
