"""SURGE: Sequential Recommendation with Graph Neural Networks.

Chang, Gao, Zheng, Hui, Niu, Song, Jin, Li. "Sequential Recommendation with Graph Neural Networks."
SIGIR 2021. https://doi.org/10.1145/3404835.3462968
Authors' code: github.com/tsinghua-fib-lab/SIGIR21-SURGE (TF 1.15, the same Microsoft Recommenders
framework as CLSR), ``reco_utils/.../sequential/surge.py``. Not part of the CLSR release; this file
follows the authors' code step by step (the paper's equations were not checked line by line).

With X = [E_i(hist) ‖ E_c(hist)] (B, L, d = 40), mask m, length n and the target e_v (B, C, d):

1. Interest graph (per instance), metric learning + relative-rank sparsification:
       S_h = minmax_row(cos(w_h ⊙ X_i, w_h ⊙ X_j)),  S = mean_h S_h ⊙ m_i m_j       (B, L, L)
       A_ij = [S_ij > the (⌈ε · #nonzero(S)⌉ + 1)-th largest entry of S]              ε = 0.5
   minmax_row maps each row to [0, 1] over all L columns (padding included, as released).
2. Interest fusion (cluster- and query-aware attentive graph convolution):
       Â = D^{-1/2} Ā D^{-1/2} with Ā = A plus self-loops;  X_q = Â Â X    (2-hop cluster centre)
       f1 = softmax_t DIN_1(X_t W_1; query X_q,t)     cluster-aware, per instance   (B, L)
       f2 = softmax_t DIN_2(X_t W_2; query e_v)       query-aware,  per candidate   (B, C, L)
       E_ij = softmax_{j: Ā_ij = 1} (f1_j + f2_i)                                 (B, C, L, L)
       X^c = LeakyReLU((E X) W_g + X)                                             (B, C, L, d)
3. Interest extraction (cluster score and graph pooling):
       σ = softmax_t(f1'_t + f2'_t) with f1', f2' the same two attentions (shared weights) on X^c
           and X'_q = Â Â X^c;
       keep the top min(n, pool_length) nodes by σ (pool_length = 30 for L = 50);
       r = Σ_t keep_t σ_t X^c_t                                 graph readout     (B, C, d)
4. Prediction: the kept nodes in their original order form a reduced sequence X^r (length l);
       a = softmax_t DIN_3(X^r_t W_3; query e_v);  h = AUGRU(X^r; a) final state (released VecAttGRUCell,
       see clsr.models.cells.run_augru);  logit = MLP([h ‖ r ‖ e_v ‖ r ⊙ e_v])     160 -> 100 -> 64 -> 1, BN + ReLU

Every DIN_k is the released ``_attention_fcn``: a d×d projection W_k (truncated normal) and the MLP
[80, 40] with BN on [k, q, k − q, k ⊙ q] (computed through the exact decomposition of
`clsr.models.attention.din_scores`), masked softmax over positions.

Deviations from the authors' code (none changes the function on ordinary inputs):
- The graph construction (step 1) runs without autograd. In the authors' code A is a hard threshold
  (``tf.greater``), so no gradient flows through S either: the metric weights w_h only receive the L2
  gradient (the same here, they stay in the L2 term as every non-embedding parameter).
- Guards for degenerate rows: the min-max denominator is clamped at 1e-12 (TF: NaN when all L tokens
  of a history are identical); a rank index past the end (ε = 1 with a full graph, or n = L ≤
  pool_length) keeps every candidate edge / valid node (TF: out-of-range gather).
- LeakyReLU on E before its softmax is omitted: E = f1 + f2 ≥ 0 (sums of softmax weights), where
  LeakyReLU is the identity.
- Only one pooling layer (the authors' setting ``pool_layers = 1``), so the coarsened adjacency
  E Ā Eᵀ that would feed a second layer is not computed. ``metric_heads`` and ``attention_heads`` are
  configurable as in the code (default 1 and 1).
- Per-instance parts (graph, f1, Â) are computed once and broadcast to the C candidates (BN statistics
  over C copies of a row equal those over the rows, exact; tests compare with the per-row layout). In
  eval mode the per-candidate part runs in chunks of candidates to bound memory (exact: BN then uses
  its running averages).
- Â Â is formed once per instance and applied once (the code applies Â twice to every X^c): the
  same product up to float rounding order.
- The tail of the reduced sequences is cut at the batch's longest reduced length (as released).
- PyTorch's BN running variance uses the unbiased batch variance (TF: biased). Dropout (0) not built.

Deviations from the paper: those of the authors' code (e.g. the cluster score is a softmax of two
attention weights; pooling keeps a fixed number of nodes, 30 of 50; the readout and the reduced
sequence are per target item), plus the project-wide sampled softmax over 1 + 4 in-batch candidates.
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
from clsr.models.attention import PAD_SCORE, din_scores, masked_softmax
from clsr.models.cells import TFGRUCell, run_augru
from clsr.models.layers import MLP, ItemCategoryEmbedding, glorot_uniform_, trunc_normal_

KERAS_EPS = 1.0e-7  # K.epsilon(): degree guard and the pooling threshold offset
LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu default


@dataclass
class SURGEConfig(ModelConfig):
    """SURGE settings; defaults are the authors' code (surge.py, gcn.yaml, Taobao)."""

    hidden_size: int = 40  # AUGRU units (hidden_size)
    att_layers: list[int] = field(default_factory=lambda: [80, 40])  # every attention scorer MLP (att_fcn_layer_sizes), + linear to 1
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every MLP hidden layer (gcn.yaml)
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95
    relative_threshold: float = 0.5  # ε: share of the non-zero similarity entries kept as edges
    metric_heads: int = 1  # weighted-cosine heads averaged into S
    attention_heads: int = 1  # graph-attention heads averaged into X^c
    pool_length: int = 30  # nodes kept by graph pooling when n > pool_length (authors: 30 Taobao L=50, 150 Kuaishou L=250)
    eval_chunk_elements: int = 16_000_000  # eval only: candidates processed in chunks of ≤ this many B·C·L·L entries

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_positive(
            where, "item_dim", "cate_dim", "hidden_size", "metric_heads", "attention_heads", "pool_length",
            "eval_chunk_elements",
        )
        if not 0.0 < self.relative_threshold <= 1.0:
            raise ConfigError(f"{where}.relative_threshold: must be in (0, 1], got {self.relative_threshold}")
        self._require_layer_sizes(where, "att_layers", allow_empty=False)
        self._require_layer_sizes(where, "pred_layers", allow_empty=False)
        self._require_activation(where)


class _DinScorer(nn.Module):
    """Released ``_attention_fcn`` without the softmax: s = MLP([k W, q, k W − q, k W ⊙ q])."""

    def __init__(self, d: int, cfg: SURGEConfig):
        super().__init__()
        self.proj = nn.Parameter(trunc_normal_(torch.empty(d, d), cfg.init_std))  # attention_mat (key × query width)
        self.mlp = MLP(4 * d, cfg.att_layers, cfg.activation, cfg.batch_norm, out_dim=1, init_std=cfg.init_std)

    def weights(self, keys: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked softmax over positions of the scores; keys (..., L, d), query broadcastable to keys."""
        return masked_softmax(din_scores(self.mlp, keys @ self.proj, query), mask)


class SURGE(Recommender):
    """SURGE as in the authors' code. forward(batch) returns (B instances, C candidates, L positions):

    ============== ============ ========================================================
    logits         (B, C)       prediction MLP output
    cluster_score  (B, C, L)    σ, the pooling score of each history node
    keep           (B, C, L)    1 for the nodes kept by graph pooling
    readout        (B, C, d)    r, the graph readout
    adjacency      (B, L, L)    A (before self-loops), the sparsified interest graph
    ============== ============ ========================================================
    """

    def __init__(self, cfg: SURGEConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.surge")
        d, H = cfg.item_dim + cfg.cate_dim, cfg.hidden_size
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        # weighted-cosine weights: tf.layers.dense(ones(1, 1), d, use_bias=False) kernel (1, d), glorot
        self.metric_w = nn.ParameterList(
            nn.Parameter(glorot_uniform_(torch.empty(1, d)).view(d)) for _ in range(cfg.metric_heads)
        )
        self.att_cluster = nn.ModuleList(_DinScorer(d, cfg) for _ in range(cfg.attention_heads))  # f1 ("f1_shared_i")
        self.att_query = nn.ModuleList(_DinScorer(d, cfg) for _ in range(cfg.attention_heads))  # f2 ("f2_shared_i")
        # graph convolution output: tf.layers.dense(·, 40, use_bias=False), glorot, stored (in, out)
        self.gcn_w = nn.ParameterList(
            nn.Parameter(glorot_uniform_(torch.empty(d, d))) for _ in range(cfg.attention_heads)
        )
        self.att_gru = _DinScorer(d, cfg)  # "AGRU" attention of the prediction layer
        self.augru = TFGRUCell(d, H)  # VecAttGRUCell variables
        self.pred_mlp = MLP(H + 3 * d, cfg.pred_layers, cfg.activation, cfg.batch_norm, out_dim=1, init_std=cfg.init_std)

    # ---- 1. interest graph ---------------------------------------------------------------------------
    @torch.no_grad()
    def interest_graph(self, X: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A (B, L, L) bool: the top ⌈ε · #nonzero⌉ entries of the masked, min-max normalised,
        head-averaged weighted-cosine similarity (strictly greater than the next one)."""
        B, L, _ = X.shape
        S = X.new_zeros(B, L, L)
        for w in self.metric_w:
            Z = F.normalize(X * w, dim=-1, eps=1e-12)  # tf.nn.l2_normalize
            s = Z @ Z.transpose(1, 2)
            lo, hi = s.amin(-1, keepdim=True), s.amax(-1, keepdim=True)
            S += (s - lo) / (hi - lo).clamp(min=1e-12)
        S = S / len(self.metric_w) * mask.unsqueeze(-1) * mask.unsqueeze(-2)
        flat = S.reshape(B, L * L)
        n_edges = (flat != 0).sum(1)
        k = torch.ceil(n_edges.to(S.dtype) * self.cfg.relative_threshold).long()  # (B,)
        ranked = flat.sort(dim=1, descending=True).values
        thr = ranked.gather(1, k.clamp(max=L * L - 1).unsqueeze(1))
        thr = torch.where(k.unsqueeze(1) < L * L, thr, torch.full_like(thr, -math.inf))
        return (S > thr.view(B, 1, 1)) & (mask.unsqueeze(-1) > 0) & (mask.unsqueeze(-2) > 0)

    @staticmethod
    def normalised_adjacency(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ā, Â): Ā = A with every self-loop set; Â_ij = Ā_ij / ((√deg_i + ε)(√deg_j + ε))."""
        L = A.shape[-1]
        A_bar = A | torch.eye(L, dtype=torch.bool, device=A.device)
        Af = A_bar.to(torch.get_default_dtype())
        dinv = 1.0 / (Af.sum(-1).sqrt() + KERAS_EPS)  # (B, L)
        return A_bar, Af * dinv.unsqueeze(-1) * dinv.unsqueeze(-2)

    # ---- 2-4. per-candidate part ---------------------------------------------------------------------
    def _candidates(self, X, mask, A_bar, A_hat2, f1, e_v):
        """Steps 2 (after f1) to 4 for the candidates e_v (B, C, d). Returns a dict of (B, C, ...)."""
        cfg = self.cfg
        B, L, d = X.shape
        C = e_v.shape[1]
        q = e_v.unsqueeze(2)  # (B, C, 1, d): one query for every position
        m_c = mask.unsqueeze(1)  # (B, 1, L)
        no_edge = ~A_bar.unsqueeze(1)  # (B, 1, L, L)

        # 2. interest fusion: E_ij = softmax_j (f1_j + f2_i) over the edges of Ā, X^c = LReLU(E X W_g + X)
        Xc_heads = []
        for h in range(cfg.attention_heads):
            f2 = self.att_query[h].weights(X.unsqueeze(1), q, m_c)  # (B, C, L)
            E = (f1[h].view(B, 1, 1, L) + f2.unsqueeze(-1)).masked_fill(no_edge, PAD_SCORE)
            E = torch.softmax(E, dim=-1)  # (B, C, L, L)
            EX = torch.bmm(E.view(B, C * L, L), X).view(B, C, L, d)
            Xc_heads.append(F.leaky_relu(EX @ self.gcn_w[h] + X.unsqueeze(1), LEAKY_SLOPE))
        Xc = Xc_heads[0] if len(Xc_heads) == 1 else torch.stack(Xc_heads).mean(0)  # (B, C, L, d)

        # 3. interest extraction: cluster score σ and graph pooling
        X_q2 = torch.matmul(A_hat2.unsqueeze(1), Xc)  # Â Â X^c, (B, C, L, d)
        score = 0.0
        for h in range(cfg.attention_heads):
            score = score + self.att_cluster[h].weights(Xc, X_q2, m_c) + self.att_query[h].weights(Xc, q, m_c)
        score = masked_softmax(score / cfg.attention_heads, m_c)  # (B, C, L)
        with torch.no_grad():
            n = mask.sum(1).long()  # (B,)
            to_keep = torch.where(n > cfg.pool_length, torch.full_like(n, cfg.pool_length), n)
            s = score * m_c
            ranked = s.sort(dim=-1, descending=True).values  # (B, C, L)
            idx = to_keep.clamp(max=L - 1).view(B, 1, 1).expand(B, C, 1)
            thr = ranked.gather(-1, idx) + KERAS_EPS
            thr = torch.where((to_keep < L).view(B, 1, 1), thr, torch.zeros_like(thr))
            keep = s > thr  # (B, C, L)
        keep_f = keep.to(Xc.dtype)
        readout = ((score * keep_f).unsqueeze(-1) * Xc).sum(2)  # (B, C, d)

        # 4. prediction: kept nodes in their original order, attention-updated GRU
        with torch.no_grad():
            order = torch.argsort(keep.to(torch.int8), dim=-1, descending=True, stable=True)
            red_len = keep.sum(-1)  # (B, C)
            l_max = int(red_len.max()) if red_len.numel() else 0
        H = cfg.hidden_size
        if l_max == 0:
            h_final = Xc.new_zeros(B, C, H)
        else:
            order = order[..., :l_max]
            X_red = Xc.gather(2, order.unsqueeze(-1).expand(B, C, l_max, d))  # (B, C, l, d)
            m_red = keep_f.gather(2, order)  # (B, C, l)
            a = self.att_gru.weights(X_red, q, m_red)  # (B, C, l)
            h_final = run_augru(
                self.augru, X_red.reshape(B * C, l_max, d), a.reshape(B * C, 1, l_max), red_len.reshape(B * C), l_max
            ).view(B, C, H)
        logits = self.pred_mlp(torch.cat([h_final, readout, e_v, readout * e_v], dim=-1)).squeeze(-1)
        return {"logits": logits, "cluster_score": score, "keep": keep_f, "readout": readout}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        X = self.tokens.history(batch)  # (B, L, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        mask = batch.mask.to(X.dtype)
        B, L, _ = X.shape
        C = e_v.shape[1]

        A = self.interest_graph(X.detach(), mask)  # (B, L, L) bool, no gradient (hard threshold)
        A_bar, A_hat = self.normalised_adjacency(A)
        A_hat2 = (A_hat @ A_hat).to(X.dtype)  # Â Â, once per instance (no gradient: A is a hard threshold)
        X_q = A_hat2 @ X  # (B, L, d), the 2-hop cluster centres
        f1 = [att.weights(X, X_q, mask) for att in self.att_cluster]  # per instance, (B, L) each

        chunk = C
        if not self.training:
            chunk = max(1, min(C, self.cfg.eval_chunk_elements // max(1, B * L * L)))
        parts = [
            self._candidates(X, mask, A_bar, A_hat2, f1, e_v[:, s : s + chunk]) for s in range(0, C, chunk)
        ]
        out = parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
        out["adjacency"] = A
        return out

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)
