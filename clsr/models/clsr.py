"""CLSR: Contrastive learning framework for disentangling Long and Short-term interests.

Zheng, Gao, Chang, Niu, Song, Jin, Li. "Disentangling Long and Short-Term Interests for
Recommendation." The Web Conference (WWW) 2022. arXiv:2202.13090.
Released code: github.com/tsinghua-fib-lab/CLSR (TF 1.15), ``reco_utils/.../sequential/clsr.py``.

This file follows the *released code* step by step (docs/protocol.md §6.2, numbered 1-9 below and in
the method names); the paper body was not available to check against (docs/protocol.md §0, §6.5).

Deviations from the paper (as far as the released code differs from a reading of the abstract;
the code is followed in each case, docs/protocol.md §6.5):
- the short-term attention query is [GRU(X; h0 = e^s) ‖ target item], i.e. target-aware;
- both attention scorers are DIN-style MLPs on [k, q, k−q, k⊙q] with batch norm;
- the fusion MLP also sees a second GRU summary h^c ("causal2") and τ^now at the last *padded*
  column L−1 (zero unless the history fills all L positions);
- contrastive terms are computed on every candidate row; the triplet form hinges per dimension on
  squared differences; the default is triplet, not BPR;
- the extra discrepancy term −w·MSE(E_l[u], E_s[u]) (rewarding the two user embeddings for differing)
  and the sampled-softmax recommendation loss (in clsr.losses / clsr.models.base).

Deviations from the released code (all numerically negligible or confined to degenerate inputs):
- 0/0 guards: a contrastive term whose batch has no history longer than the threshold is 0 instead of
  NaN; the proxies of an empty history (n = 0, never produced with min_seq_length ≥ 1) are 0 instead of
  NaN. Both are exact whenever the released value is finite.
- BatchNorm running variance: PyTorch updates it with the unbiased batch variance, TF with the
  biased one (factor n/(n−1), n ≥ B·L). Training-mode outputs are unaffected. It also means the shared
  and the naive (per-row) paths give running variances that differ by that factor, since they see
  B·L and B·C·L rows; logits and losses in train mode are identical.
- The unused base ``user_embedding`` table of the released model is not created (it receives no
  gradient and no L2 there). Dropout (0 in the released configuration) is not implemented.
- History-only parts are computed once per instance and broadcast to the C candidates
  (``shared_encoders=True``); this is exact because BN statistics over C identical copies of each row
  equal those over the unique rows (docs/design.md, "Compute candidate-independent parts once").
- Attention scorers never build the 4-fold concatenation (exact algebraic split of the first layer,
  attention.DinAttention).
- Speed: the recurrent nets, the MLP tails, the scorers and the embedding lookups run through their fast
  twins in clsr.fast where one applies (packed valid positions with a hand-written backward, the two
  GRUs of step 4 and 8 as one block-diagonal GRU, fused batch norm + ReLU, padded positions folded into
  one weighted row, evaluation on the valid positions only; C kernels on a CPU). Each is tested equal to
  the reference block here in float64, forward and gradients; float32 rounding may differ.
- τ^now[:, L−1] is read from the last column of the batch tensor, so the batch width must be the
  configured max length L (the data layer pads to L; trimming trailing padding would change it).
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, field

import torch
from torch import nn

from clsr import distributed as D
from clsr import losses
from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.attention import DinAttention, attention_pool
from clsr import fast
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell, run_gru_pair, run_rnn
from clsr.models.layers import MLP, ItemCategoryEmbedding, lookup, trunc_normal_

SEQUENTIAL_MODELS = ("time4lstm", "gru", "lstm")


@dataclass
class CLSRConfig(ModelConfig):
    """CLSR settings; defaults are the released CLI values (docs/protocol.md §6.1)."""

    user_dim: int = 40  # user long / short embedding size (user_embedding_dim)
    hidden_size: int = 40  # RNN hidden size H; must equal item_dim + cate_dim (u = α u^l + (1−α) u^s)
    att_layers: list[int] = field(default_factory=lambda: [80, 40])  # attention and fusion MLPs (att_fcn_layer_sizes), + linear to 1
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every hidden layer
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95
    contrastive: str = "triplet"  # triplet | bpr | none (CLI default triplet; hparams default bpr)
    contrastive_weight: float = 0.1  # contrastive_loss_weight
    margin: float = 1.0  # triplet_margin, added per dimension
    contrastive_normalize: bool = False  # unit-length u and p in the contrastive terms (not released; see clsr.diagnostics)
    recent_k: int = 3  # contrastive_recent_k: p^s = mean of the last min(k, n) items
    length_threshold: int = 5  # contrastive_length_threshold: rows with n > 5 (strict) enter L_con
    discrepancy_weight: float = 0.01  # discrepancy_loss_weight, applied with a MINUS sign
    interest_evolve: bool = True  # h^s = GRU(X; h0 = e^s) (True) or h^s = e^s (False)
    predict_long_short: bool = True  # add the "causal2" GRU state h^c to the fusion input
    sequential_model: str = "time4lstm"  # time4lstm | gru | lstm: the short-term sequence encoder
    manual_alpha: bool = False  # fixed α instead of the fusion MLP (no causal2, no fusion MLP then)
    manual_alpha_value: float = 0.5  # α when manual_alpha
    clip_norm: float | None = 2.0  # per-tensor gradient clipping norm (max_grad_norm); None = off
    shared_encoders: bool = True  # history parts once per instance (fast); False = naive per-row reference
    fused_recurrences: bool = True  # recurrences through their fast twins (clsr.fast); False = the reference cells stepped under autograd

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_positive(where, "item_dim", "cate_dim", "user_dim", "hidden_size", "recent_k")
        self._require_hidden_is_token(where)
        self._require_layer_sizes(where, "att_layers", allow_empty=False)
        self._require_layer_sizes(where, "pred_layers", allow_empty=True)
        self._require_activation(where)
        if self.contrastive not in losses.CONTRASTIVE_KINDS:
            raise ConfigError(
                f"{where}.contrastive: {self.contrastive!r} is not one of {list(losses.CONTRASTIVE_KINDS)}"
            )
        if self.sequential_model not in SEQUENTIAL_MODELS:
            raise ConfigError(
                f"{where}.sequential_model: {self.sequential_model!r} is not one of {list(SEQUENTIAL_MODELS)}"
            )
        if self.length_threshold < 0:
            raise ConfigError(f"{where}.length_threshold: must be ≥ 0, got {self.length_threshold}")
        if self.contrastive_weight < 0 or self.discrepancy_weight < 0 or self.margin < 0:
            raise ConfigError(
                f"{where}: contrastive_weight, discrepancy_weight and margin must be ≥ 0 (the discrepancy "
                f"sign is applied by the loss), got {self.contrastive_weight}, {self.discrepancy_weight}, "
                f"{self.margin}"
            )
        if not 0.0 <= self.manual_alpha_value <= 1.0:
            raise ConfigError(f"{where}.manual_alpha_value: must be in [0, 1], got {self.manual_alpha_value}")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"{where}.clip_norm: must be > 0 or null (no clipping), got {self.clip_norm}")

    def canonical(self) -> "CLSRConfig":
        """Without a contrastive loss, k, l_t, β, the margin and the normalisation are read by nothing that trains;
        with attention fusion, manual_alpha_value is not read: those settings go to their defaults."""
        unread = []
        if self.contrastive == "none":
            unread += ["recent_k", "length_threshold", "contrastive_weight", "margin", "contrastive_normalize"]
        if not self.manual_alpha:
            unread.append("manual_alpha_value")
        defaults = type(self)()
        return dataclasses.replace(self, **{k: getattr(defaults, k) for k in unread})

    def check_data(self, max_len: int, where: str = "model", max_len_key: str = "protocol.max_len") -> None:
        """recent_k ≥ max_len makes p^s (mean of the last min(k, n) items) equal p^l (mean of all n ≤ max_len)."""
        if self.contrastive != "none" and self.recent_k >= max_len:
            raise ConfigError(
                f"{where}.recent_k: {self.recent_k} ≥ {max_len_key} = {max_len}, so the short-term proxy equals "
                f"the long-term one and the contrastive task is void; lower {where}.recent_k below {max_len_key}"
            )


class CLSR(Recommender):
    """CLSR as released. `forward(batch)` returns (B instances, C candidates, L positions,
    d = item_dim + cate_dim = H, d_u = user_dim):

    ========== ============ ==========================================================================
    key        shape        meaning
    ========== ============ ==========================================================================
    logits     (B, C)       z, the prediction MLP output (σ(z) is the click probability)
    alpha      (B, C)       α, weight of the long-term interest
    u_long     (B, d)       u^l, long-term interest (per instance)
    u_short    (B, C, d)    u^s, short-term interest (per candidate: the query holds the target)
    user       (B, C, d)    u = α u^l + (1 − α) u^s
    p_long     (B, d)       p^l, long-term proxy (mean of the history)
    p_short    (B, d)       p^s, short-term proxy (mean of the last min(k, n) items)
    h_short    (B, d_u)     h^s, the short-term intention (GRU final state, or e^s)
    att_long   (B, L)       long-term attention weights
    att_short  (B, C, L)    short-term attention weights
    ========== ============ ==========================================================================

    With ``shared_encoders=False`` (the naive reference) every per-instance entry is computed once per
    candidate row and has a C axis after B: u_long, p_long, p_short (B, C, d), h_short (B, C, d_u),
    att_long (B, C, L). `extra_losses` accepts both.
    """

    def __init__(self, cfg: CLSRConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.clsr")
        self.clip_norm = cfg.clip_norm
        d, du, H = cfg.item_dim + cfg.cate_dim, cfg.user_dim, cfg.hidden_size

        # 1. embeddings: index 0 is an ordinary trainable row (padding and OOV), so no padding_idx;
        # the four tables are drawn, then initialised, in the released order (item, category, user l, s)
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, init_std=None)
        self.user_long = nn.Embedding(sizes.n_users, du)
        self.user_short = nn.Embedding(sizes.n_users, du)
        for table in (*self.tokens.tables(), self.user_long, self.user_short):
            trunc_normal_(table.weight, cfg.init_std)

        mlp_kw = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, init_std=cfg.init_std)
        # 2. long-term encoder: A = X W_l (d × d_u), DIN scorer queried by e^l
        self.long_proj = nn.Parameter(trunc_normal_(torch.empty(d, du), cfg.init_std))
        self.long_att = DinAttention(du, cfg.att_layers, **mlp_kw)
        # 4. short-term intention GRU (initial state e^s)
        self.intention_gru = TFGRUCell(d, du) if cfg.interest_evolve else None
        # 6. sequence encoder
        if cfg.sequential_model == "time4lstm":
            self.seq_cell: nn.Module = Time4LSTMCell(d, H)
        elif cfg.sequential_model == "gru":
            self.seq_cell = TFGRUCell(d, H)
        else:
            self.seq_cell = TFLSTMCell(d, H)
        # 7. short-term encoder: A_s = O W_s (H × (d_u + d)), DIN scorer queried by [h^s ‖ e_v]
        self.short_proj = nn.Parameter(trunc_normal_(torch.empty(H, du + d), cfg.init_std))
        self.short_att = DinAttention(du + d, cfg.att_layers, **mlp_kw)
        # 8. fusion (the released code builds neither net when α is fixed)
        self.fuse_gru = TFGRUCell(d, H) if (cfg.predict_long_short and not cfg.manual_alpha) else None
        fuse_in = (H if cfg.predict_long_short else 0) + d + d + H + 1
        self.fuse_mlp = None if cfg.manual_alpha else MLP(fuse_in, cfg.att_layers, out_dim=1, **mlp_kw)
        # 9. prediction
        self.pred_mlp = MLP(H + d, cfg.pred_layers, out_dim=1, **mlp_kw)

    # ---- 1. inputs ---------------------------------------------------------------------------------
    def embed(self, batch: Batch):
        """X = [E_i(hist) ‖ E_c(hist)] (B, L, d), e_v = [E_i(cand) ‖ E_c(cand)] (B, C, d),
        e^l = E_l(user), e^s = E_s(user) (B, d_u)."""
        X, e_v = self.tokens.history(batch), self.tokens.candidates(batch)
        return X, e_v, lookup(self.user_long, batch.user), lookup(self.user_short, batch.user)

    # ---- 2. long-term encoder ------------------------------------------------------------------------
    def long_term(self, X, mask, e_long, lengths=None):
        """a = softmax_t MLP([A_t, e^l, A_t − e^l, A_t ⊙ e^l]) with A = X W_l;  u^l = Σ_t a_t X_t (raw X).
        ``lengths``: passed on to the scorer (padded positions all hold the padding item, so equal keys)."""
        A = X @ self.long_proj
        a = self.long_att(A, mask, e_long, lengths=lengths)  # (B, L)
        return attention_pool(a, X), a

    # ---- 3 and 5. proxies ------------------------------------------------------------------------------
    def proxies(self, X, mask):
        """p^l = Σ_t m_t X_t / Σ_t m_t;  p^s = mean of X over positions with 1 ≤ pos_t ≤ k, where
        pos_t = Σ_{t' ≥ t} m_t' (the newest valid item has pos = 1), i.e. the last min(k, n) items."""
        n = mask.sum(1, keepdim=True).clamp(min=1.0)  # guard n = 0 (released: NaN)
        p_long = torch.bmm(mask.unsqueeze(1), X).squeeze(1) / n
        pos = mask.flip(1).cumsum(1).flip(1)
        recent = ((pos >= 1) & (pos <= self.cfg.recent_k)).to(X.dtype)
        p_short = torch.bmm(recent.unsqueeze(1), X).squeeze(1) / recent.sum(1, keepdim=True).clamp(min=1.0)
        return p_long, p_short

    # ---- 4 (and the GRU of 8). intention and fusion GRUs ----------------------------------------------------
    def _runner(self, fn):
        """`fn` (a seamed runner of cells) or, with ``fused_recurrences`` off, its reference."""
        return fn if self.cfg.fused_recurrences else fast.reference(fn)

    def intention_and_fusion_states(self, X, lengths, e_short, n_steps=None):
        """h^s = GRU(X; h0 = e^s) final state at step n−1 (interest_evolve, else h^s = e^s), and
        h^c = GRU_causal2(X; h0 = 0) final state (None when not used). Separate parameters."""
        if self.intention_gru is not None and self.fuse_gru is not None:
            return self._runner(run_gru_pair)(self.intention_gru, self.fuse_gru, X, lengths, h0_a=e_short,
                                              n_steps=n_steps)
        h_short = e_short
        if self.intention_gru is not None:
            h_short = self._runner(run_rnn)(self.intention_gru, X, lengths, h0=e_short, n_steps=n_steps)[1]
        h_c = None
        if self.fuse_gru is not None:
            h_c = self._runner(run_rnn)(self.fuse_gru, X, lengths, n_steps=n_steps)[1]
        return h_short, h_c

    # ---- 6. sequence encoder -------------------------------------------------------------------------------
    def sequence(self, X, lengths, time_first, time_now, n_steps=None):
        """O = Time4LSTM([X ‖ τ^first ‖ τ^now]) (or GRU / LSTM on X), zero beyond n. (B, L, H)."""
        times = torch.stack([time_first, time_now], dim=-1) if isinstance(self.seq_cell, Time4LSTMCell) else None
        return self._runner(run_rnn)(self.seq_cell, X, lengths, n_steps=n_steps, times=times)[0]

    # ---- 7. short-term encoder ---------------------------------------------------------------------------------
    def short_term(self, O, mask, h_short, e_v, lengths=None):
        """a^s = softmax_t MLP([A_s,t, q, A_s,t − q, A_s,t ⊙ q]) with A_s = O W_s and q = [h^s ‖ e_v]
        (one query per candidate); u^s = Σ_t a^s_t O_t (raw O). Returns u^s (B, C, H), a^s (B, C, L).
        ``lengths``: passed on to the scorer (O is zero at padded positions, so equal keys)."""
        A_s = O @ self.short_proj
        a = self.short_att(A_s, mask, e_v, query_shared=h_short, lengths=lengths)
        return attention_pool(a, O), a

    # ---- 8. fusion --------------------------------------------------------------------------------------------
    def fusion_weight(self, e_v, u_long, u_short, tau_last, h_c=None):
        """α = σ(MLP([h^c ‖ e_v ‖ u^l ‖ u^s ‖ τ^now[:, L−1]])), (B, C); h^c is dropped when
        predict_long_short is False. With manual_alpha, α is the constant manual_alpha_value."""
        B, C = e_v.shape[0], e_v.shape[1]
        if self.fuse_mlp is None:
            return u_short.new_full((B, C), self.cfg.manual_alpha_value)
        parts = [] if h_c is None else [h_c.unsqueeze(1).expand(B, C, -1)]
        parts += [
            e_v,
            u_long.unsqueeze(1).expand(B, C, -1),
            u_short,
            tau_last.view(B, 1, 1).expand(B, C, 1),
        ]
        return torch.sigmoid(self.fuse_mlp(torch.cat(parts, dim=-1))).squeeze(-1)

    # ---- 9. prediction --------------------------------------------------------------------------------------
    def predict(self, u, e_v):
        """z = MLP([u ‖ e_v]) (B, C)."""
        return self.pred_mlp(torch.cat([u, e_v], dim=-1)).squeeze(-1)

    # ---- forward ----------------------------------------------------------------------------------------------
    def _forward_instances(self, batch: Batch, alpha_override: float | None = None) -> dict[str, torch.Tensor]:
        """Steps 1-9 with the history parts computed once per row of `batch` and broadcast to its C
        candidates."""
        X, e_v, e_long, e_short = self.embed(batch)
        mask = batch.mask.to(X.dtype)
        lengths = batch.length
        # the recurrences stop at the longest history of the batch (one host sync per forward)
        n_steps = int(lengths.max()) if lengths.numel() else 0

        # left-aligned histories with equal keys at every padded position: the scorers may fold them
        u_long, att_long = self.long_term(X, mask, e_long, lengths=lengths)
        p_long, p_short = self.proxies(X, mask)
        h_short, h_c = self.intention_and_fusion_states(X, lengths, e_short, n_steps)
        O = self.sequence(X, lengths, batch.time_from_first.to(X.dtype), batch.time_to_now.to(X.dtype), n_steps)
        u_short, att_short = self.short_term(O, mask, h_short, e_v, lengths=lengths)
        # τ^now at the last *padded* column L−1 (zero unless n = L), as released
        tau_last = batch.time_to_now[:, -1].to(X.dtype)
        if alpha_override is None:
            alpha = self.fusion_weight(e_v, u_long, u_short, tau_last, h_c)
        else:  # evaluation-time probe (disentanglement study): α fixed for every row
            if not 0.0 <= float(alpha_override) <= 1.0:
                raise ValueError(f"clsr: alpha_override must be in [0, 1], got {alpha_override}")
            alpha = u_short.new_full(u_short.shape[:2], float(alpha_override))
        user = torch.lerp(u_short, u_long.unsqueeze(1).expand_as(u_short), alpha.unsqueeze(-1))
        logits = self.predict(user, e_v)
        return {
            "logits": logits,
            "alpha": alpha,
            "u_long": u_long,
            "u_short": u_short,
            "user": user,
            "p_long": p_long,
            "p_short": p_short,
            "h_short": h_short,
            "att_long": att_long,
            "att_short": att_short,
        }

    def forward(self, batch: Batch, alpha_override: float | None = None) -> dict[str, torch.Tensor]:
        """`alpha_override=a` (in [0, 1]) fixes α = a for every row, nothing else changes: a = 1 reads
        out the long-term interest only, a = 0 the short-term one (evaluation-time probe)."""
        if self.cfg.shared_encoders:
            return self._forward_instances(batch, alpha_override=alpha_override)
        # naive reference: the released row layout, one candidate per row, everything per row
        B, C = batch.size, batch.n_candidates
        out = self._forward_instances(batch.expand_rows(), alpha_override=alpha_override)
        per_candidate = ("logits", "alpha", "u_short", "user", "att_short")  # (B·C, 1, ...) -> (B, C, ...)
        return {
            k: v.reshape(B, C, *(v.shape[2:] if k in per_candidate else v.shape[1:])) for k, v in out.items()
        }

    # ---- losses --------------------------------------------------------------------------------------------------
    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """Rows entering L2 (§2.4): items and categories of the history (padding row 0 included) and of
        every candidate; the batch's users in both user tables."""
        return self.tokens.batch_rows(batch) + [(self.user_long, batch.user), (self.user_short, batch.user)]

    def extra_losses(
        self, batch: Batch, out: dict[str, torch.Tensor], ctx: D.Context | None = None
    ) -> dict[str, torch.Tensor]:
        """contrastive: w · Σ_k masked_mean_r(ℓ_k) over all B·C candidate rows, m_r = [n > threshold];
        discrepancy: −w · mean over the batch's unique users and d_u dims of (E_l[u] − E_s[u])²; with a
        context of several ranks, this rank's parts of the global batch's (clsr.losses)."""
        cfg = self.cfg
        parts: dict[str, torch.Tensor] = {}
        if cfg.contrastive != "none":
            u_short = out["u_short"]  # (B, C, d)

            def rows(x):  # per-instance (B, d) -> (B, 1, d); per-row (B, C, d) as is
                return x.unsqueeze(1) if x.dim() == 2 else x

            mask = (batch.length > cfg.length_threshold).to(u_short.dtype).view(-1, 1)
            parts["contrastive"] = losses.contrastive_loss(
                cfg.contrastive,
                rows(out["u_long"]),
                u_short,
                rows(out["p_long"]),
                rows(out["p_short"]),
                mask.expand(-1, u_short.shape[1]),
                weight=cfg.contrastive_weight,
                margin=cfg.margin,
                normalize=cfg.contrastive_normalize,
                ctx=ctx,
            )
        parts["discrepancy"] = losses.discrepancy_loss(
            self.user_long.weight, self.user_short.weight, batch.user, cfg.discrepancy_weight, ctx
        )
        return parts
