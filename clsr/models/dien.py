"""DIEN: Deep Interest Evolution Network, as released with CLSR.

Zhou, Mou, Fan, Pi, Bian, Zhou, Zhu, Gai. "Deep Interest Evolution Network for Click-Through Rate
Prediction." AAAI 2019. https://arxiv.org/abs/1809.03672
Released code: github.com/tsinghua-fib-lab/CLSR (``--model DIEN``, the Microsoft Recommenders
``dien.py``, ``rnn_cell_implement.VecAttGRUCell``, ``deeprec_utils.dice``); docs/protocol.md §8.

With X = [E_i(hist) ‖ E_c(hist)] (B, L, 40), mask m, length n and the target e_v = [E_i(v) ‖ E_c(v)]:

    O     = GRU(X)                                      interest extractor, TF GRUCell(40), O_t = 0 for t ≥ n
    a     = softmax_t MLP_att([A_t, e_v, A_t − e_v, A_t ⊙ e_v]),  A = O W   (W 40×40, padded t masked)
    h     = AUGRU(O; a) final state at step n − 1        interest evolving layer, one per candidate
    s     = Σ_t m_t X_t
    logit = MLP([e_v ‖ h ‖ s ‖ e_v ⊙ s])                 160 -> 100 -> 64 -> 1, BN + Dice

The AUGRU is the released ``VecAttGRUCell`` (TF GRU convention h' = u h + (1 − u) c, u = "keep"):

    [r, u] = σ([x ‖ h] W_g + b_g)      c = tanh([x ‖ r ⊙ h] W_c + b_c)
    u'     = (1 − a_t) · u             h' = u' ⊙ h + (1 − u') ⊙ c

i.e. the update gate is scaled by (1 − attention): a_t = 1 replaces the state by the candidate c,
a_t = 0 is an ordinary GRU step. Dice (``deeprec_utils.dice``, ε = 1e-9, α initialised to 0):

    μ, σ² = mean / biased variance of x over every leading position of the batch (per channel)
    p     = sigmoid((x − μ) / (sqrt(σ² + ε) + ε))      Dice(x) = p ⊙ x + α ⊙ (1 − p) ⊙ x

Deviations from the paper:
- No auxiliary loss by default (released); ``aux_loss_weight > 0`` adds the paper's L_aux (see
  `DIEN.extra_losses`) with inner-product scores σ(⟨o_t, x_{t+1}⟩) and negatives drawn from the
  batch's history tokens (the paper samples negatives from the item pool; the released DIEN author
  code uses a separate "no-click" sequence, which this data does not have).
- AUGRU as coded: u' = (1 − a) u in the TF keep-gate convention. In the paper's convention
  (h' = (1 − ũ) h + ũ h̃, ũ = a · u_paper) attention scales the *update*, so a = 0 freezes the state;
  the released cell instead runs a plain GRU step at a = 0 and fully overwrites at a = 1.
- The attention scorer is the DIN-style MLP with a projection W and softmax over the history (the
  paper's AUGRU uses a bilinear score); Dice is used in *every* MLP — the attention scorer too —
  because the released yaml sets ``activation: [dice, dice]`` and every ``_fcn_net`` reads it; each MLP
  hidden layer is Linear -> BN -> Dice (BN ``enable_BN`` precedes Dice, as released).
- Training uses the shared sampled-softmax loss over 1 + 4 in-batch candidates (released), not BCE.

Deviations from the released code:
- Dice at evaluation: released Dice always normalises with the *current batch's* statistics, so an
  evaluation logit depends on the other rows of its batch (and on 1+4 vs 1+99 candidates). Kept as the
  default (``dice_eval_batch_stats=True``); ``False`` tracks running averages during training (BN-style,
  momentum 0.05) and uses them at evaluation, which makes every logit a function of its own row only.
- Dice divides by sqrt(σ² + ε) (the fused ``F.batch_norm``) instead of sqrt(σ² + ε) + ε, ε = 1e-9:
  a relative change of ε/σ, below float32 resolution for σ > 1e-2 (its input is BN output, σ ≈ 1).
- The GRU and the attention keys run once per instance and are broadcast to the C candidates; the
  AUGRU input projections (O W_x + b) are computed once per instance too, and only the recurrent
  products run per candidate (B·C rows). The recurrences stop at the batch's longest history.
  Statistics of BN and Dice over C copies of a row equal those over the rows, so this is exact
  (tests compare with the released per-row layout).
- PyTorch's BN running variance uses the unbiased batch variance (TF: biased). Dropout (0) not built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clsr import distributed as D
from clsr import losses
from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.attention import din_scores, masked_softmax
from clsr.models.cells import TFGRUCell, run_augru, run_rnn
from clsr.models.layers import BN_EPS, BN_MOMENTUM, MLP, ItemCategoryEmbedding, trunc_normal_

DICE_EPS = 1.0e-9


# --------------------------------------------------------------------------------------------------
# Dice and an MLP that uses it
# --------------------------------------------------------------------------------------------------
class Dice(nn.Module):
    """Dice(x) = p ⊙ x + α ⊙ (1 − p) ⊙ x,  p = σ((x − μ) / (sqrt(σ² + ε) + ε)), per channel (last dim).

    μ, σ² are the batch mean and biased variance over all leading positions (released). With
    ``eval_batch_stats=False`` evaluation uses running averages updated in training instead (BN-style:
    momentum 0.05, unbiased variance).

    The normalisation runs through the fused ``F.batch_norm``, which divides by sqrt(σ² + ε) without
    the released extra + ε (ε = 1e-9): a relative change of ε / sqrt(σ² + ε), below float32
    resolution unless σ < 1e-2 (the input here comes out of a BN layer, σ ≈ 1).
    """

    def __init__(self, dim: int, eval_batch_stats: bool = True):
        super().__init__()
        self.dim, self.eval_batch_stats = dim, eval_batch_stats
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_stats = self.training or self.eval_batch_stats
        track = self.training or not self.eval_batch_stats  # update (train) or read (eval) the averages
        xn = F.batch_norm(
            x.reshape(-1, self.dim),
            self.running_mean if track else None,
            self.running_var if track else None,
            training=batch_stats,
            momentum=BN_MOMENTUM,
            eps=DICE_EPS,
        ).view(x.shape)
        return x * torch.addcmul(self.alpha, 1.0 - self.alpha, torch.sigmoid(xn))  # x (p + α (1 − p))


class DiceMLP(nn.Module):
    """`layers.MLP` with Dice: x_k = Dice_k(BN_k(x_{k-1} W_k + b_k)), then y = x_K w_out + b_out (one unit).

    Same initialisation (trunc-normal weights, zero biases) and the same ``linears`` / ``tail`` split as
    `layers.MLP`, so `attention.din_scores` works with either.
    """

    def __init__(self, in_dim: int, sizes: Sequence[int], batch_norm: bool = True, init_std: float = 0.01,
                 eval_batch_stats: bool = True):
        super().__init__()
        dims = [in_dim] + list(sizes)
        self.linears = nn.ModuleList(nn.Linear(dims[k], dims[k + 1]) for k in range(len(sizes)))
        self.norms = (
            nn.ModuleList(nn.BatchNorm1d(h, eps=BN_EPS, momentum=BN_MOMENTUM) for h in sizes) if batch_norm else None
        )
        self.dice = nn.ModuleList(Dice(h, eval_batch_stats=eval_batch_stats) for h in sizes)
        self.out = nn.Linear(dims[-1], 1)
        for lin in list(self.linears) + [self.out]:
            trunc_normal_(lin.weight, init_std)
            nn.init.zeros_(lin.bias)

    def _norm_act(self, k: int, z: torch.Tensor) -> torch.Tensor:
        if self.norms is not None:
            shape = z.shape
            z = self.norms[k](z.reshape(-1, shape[-1])).view(shape)
        return self.dice[k](z)

    def tail(self, z: torch.Tensor) -> torch.Tensor:
        x = self._norm_act(0, z)
        for k in range(1, len(self.linears)):
            x = self._norm_act(k, self.linears[k](x))
        return self.out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.linears[0](x)) if len(self.linears) else self.out(x)


def make_mlp(in_dim: int, sizes: Sequence[int], activation: str, batch_norm: bool, init_std: float,
             eval_batch_stats: bool = True) -> nn.Module:
    """A DiceMLP for ``activation == "dice"``, else `layers.MLP` (one activation for every layer)."""
    if activation == "dice":
        return DiceMLP(in_dim, sizes, batch_norm, init_std, eval_batch_stats)
    return MLP(in_dim, sizes, activation, batch_norm, out_dim=1, init_std=init_std)


@dataclass
class DIENConfig(ModelConfig):
    """DIEN settings; defaults are the released CLI / yaml values (docs/protocol.md §8, dien.yaml)."""

    hidden_size: int = 40  # GRU and AUGRU units (hidden_size)
    att_layers: list[int] = field(default_factory=lambda: [80, 40])  # attention scorer MLP (att_fcn_layer_sizes), + linear to 1
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "dice"  # every MLP hidden layer, attention scorer included (yaml [dice, dice]); or relu, ...
    batch_norm: bool = True  # BN before the activation in every MLP hidden layer (enable_BN), ε 1e-4
    dice_eval_batch_stats: bool = True  # released: Dice uses batch statistics at eval too; False = running averages
    aux_loss_weight: float = 0.0  # weight of the paper's auxiliary loss; 0 = off (released)

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_positive(where, "item_dim", "cate_dim", "hidden_size")
        self._require_layer_sizes(where, "att_layers", allow_empty=False)
        self._require_layer_sizes(where, "pred_layers", allow_empty=False)
        self._require_activation(where, also=("dice",))
        if self.aux_loss_weight < 0:
            raise ConfigError(f"{where}.aux_loss_weight: must be ≥ 0, got {self.aux_loss_weight}")
        if self.aux_loss_weight > 0 and self.hidden_size != self.item_dim + self.cate_dim:
            raise ConfigError(
                f"{where}.aux_loss_weight: the auxiliary score ⟨o_t, x_t+1⟩ needs hidden_size == "
                f"item_dim + cate_dim ({self.item_dim + self.cate_dim}), got {self.hidden_size}"
            )


class DIEN(Recommender):
    """DIEN as released. forward(batch) returns (B instances, C candidates, L positions, d = 40, H = 40):

    ============ ============ ==============================================================
    logits       (B, C)       prediction MLP output
    att          (B, C, L)    attention of each candidate over the GRU outputs
    h            (B, C, H)    AUGRU final state (interest evolved towards the candidate)
    hist_sum     (B, d)       Σ_t m_t X_t
    gru_out      (B, L, H)    interest extractor outputs O (zero beyond n; for the auxiliary loss)
    hist_emb     (B, L, d)    X (for the auxiliary loss)
    ============ ============ ==============================================================
    """

    def __init__(self, cfg: DIENConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.dien")
        d, H = cfg.item_dim + cfg.cate_dim, cfg.hidden_size
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        self.gru = TFGRUCell(d, H)  # interest extractor ("gru1"): glorot kernels, gate bias 1
        # released `attention_mat` (key width H × query width d), truncated normal
        self.att_proj = nn.Parameter(trunc_normal_(torch.empty(H, d), cfg.init_std))
        mk = dict(activation=cfg.activation, batch_norm=cfg.batch_norm, init_std=cfg.init_std,
                  eval_batch_stats=cfg.dice_eval_batch_stats)
        self.att_mlp = make_mlp(4 * d, cfg.att_layers, **mk)
        self.augru = TFGRUCell(H, H)  # interest evolving ("gru2", VecAttGRUCell): same variables as a GRU
        self.pred_mlp = make_mlp(d + H + d + d, cfg.pred_layers, **mk)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        X = self.tokens.history(batch)  # (B, L, d)
        e_v = self.tokens.candidates(batch)  # (B, C, d)
        mask = batch.mask.to(X.dtype)
        lengths = batch.length
        n_steps = int(lengths.max()) if lengths.numel() else 0  # one host sync per forward

        O, _ = run_rnn(self.gru, X, lengths, n_steps=n_steps)  # (B, L, H), zero beyond n
        scores = din_scores(self.att_mlp, (O @ self.att_proj).unsqueeze(1), e_v.unsqueeze(2))  # (B, C, L)
        att = masked_softmax(scores, mask.unsqueeze(1))
        h = run_augru(self.augru, O, att, lengths, n_steps)  # (B, C, H)

        hist_sum = torch.bmm(mask.unsqueeze(1), X).squeeze(1)  # (B, d)
        s = hist_sum.unsqueeze(1).expand_as(e_v)
        logits = self.pred_mlp(torch.cat([e_v, h, s, e_v * s], dim=-1)).squeeze(-1)
        return {"logits": logits, "att": att, "h": h, "hist_sum": hist_sum, "gru_out": O, "hist_emb": X}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)

    def extra_losses(
        self, batch: Batch, out: dict[str, torch.Tensor], ctx: D.Context | None = None
    ) -> dict[str, torch.Tensor]:
        """The paper's auxiliary loss (off by default, as released), weighted by ``aux_loss_weight``:

            L_aux = −mean_{(b,t): t+1 < n_b} [ log σ(⟨o_t, x_{t+1}⟩) + log(1 − σ(⟨o_t, x̂_{b,t}⟩)) ]

        o_t is the interest extractor's output at step t, x_{t+1} the next history token
        [E_i ‖ E_c], and x̂ a negative token drawn uniformly (with replacement, torch's global RNG)
        from all valid history positions of the batch; a draw that happens to equal the positive is
        kept (rare, and it only adds noise).

        With a context of several ranks: this rank's part of the mean over the global batch's pairs,
        W·Σ_local / P_global (P_global from `clsr.distributed.global_sum`, taken by every rank before the
        early return); the negatives come from the rank's own share.
        """
        w = self.cfg.aux_loss_weight
        if w <= 0:
            return {}
        O, X = out["gru_out"], out["hist_emb"]
        B, L, _ = X.shape
        pair = (torch.arange(L - 1, device=X.device)[None, :] + 1 < batch.length[:, None])  # (B, L−1)
        if losses.spreads(ctx):  # every rank counts the global pairs, also one without a pair of its own
            n_pairs = D.global_sum(pair.sum().to(O.dtype), ctx)
        if not bool(pair.any()):
            return {"aux": O.new_zeros(())}
        o = O[:, :-1][pair]  # (P, H)
        pos = X[:, 1:][pair]  # (P, d)
        pool = X[batch.mask > 0]  # (V, d) every valid history token of the batch
        neg = pool[torch.randint(0, pool.shape[0], (o.shape[0],), device=X.device)]
        log_lik = F.logsigmoid((o * pos).sum(-1)) + F.logsigmoid(-(o * neg).sum(-1))  # (P,)
        if losses.spreads(ctx):
            return {"aux": w * -(ctx.world * log_lik.sum() / n_pairs)}
        return {"aux": w * -log_lik.mean()}
