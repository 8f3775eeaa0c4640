"""Caser: convolutional sequence embedding, as released with CLSR.

Tang, Wang. "Personalized Top-N Sequential Recommendation via Convolutional Sequence Embedding."
WSDM 2018. https://doi.org/10.1145/3159652.3159656
Released code: github.com/tsinghua-fib-lab/CLSR (``--model CASER``, the Microsoft Recommenders
``caser.py``); docs/protocol.md §8.

The item history E_i(hist) (L × 32) and the category history E_c(hist) (L × 8) go through two
separate CNNs with the same structure. For a history matrix H (L × d):

    vertical    o_v = ReLU(conv1d(Hᵀ, n_v filters, kernel d))           TF conv1d over the d×L transpose:
                                                                       a dense layer over all L·d entries, 128
    horizontal  o_h = [max_t ReLU(conv1d(H, n_h filters, kernel h))_t  for h = 1 .. L_conv]   3 × 128
    cnn(H)      = [o_v ‖ o_h]                                          128 + 384 = 512

    logit = MLP([cnn(E_i(hist)) ‖ cnn(E_c(hist)) ‖ e_v])               1024 + 40 -> 100 -> 64 -> 1

with T = 1, n_v = n_h = 128, L_conv = 3 (the released yaml). Padding is **not** masked, as released:
the padded positions (item and category row 0) enter the vertical filter and the horizontal windows
and their max.

Deviations from the paper (all as released):
- The "image" is the whole truncated history (L = 50 columns, left-aligned, right-padded), not the
  last L = 5 items; the horizontal heights are 1..3, not 1..L.
- ReLU on the vertical filters too (the paper's vertical layer is linear); no fully-connected layer
  after the concatenation, no user embedding P_u, no dropout; item and category sequences have
  separate CNNs; the target item enters a prediction MLP (with BN) instead of an output-embedding dot
  product; the loss is the shared sampled softmax over 1 + 4 in-batch candidates; T = 1.

Deviations from the released code:
- **Every instance is scored.** The released run sets ``min_seq_length = 5`` for Caser, which drops
  instances whose history is shorter than 5 from training *and* from valid/test evaluation, so its
  test set is a subset of the other models'. Here Caser trains and is evaluated on every instance
  (short histories are right-padded like all others), so its metrics are comparable with the other
  models'. (Required by the project protocol.)
- The vertical filter spans L positions, so the model needs L: it is built with ``max_len`` and
  `attach_data` (called by the trainer) resizes it to the data's ``max_len`` (the released model reads
  ``max_seq_length`` from its hparams).
- The CNN runs once per instance and the per-instance block of the prediction MLP's first layer is
  multiplied once per instance (`layers.mlp_over_parts`), exact. Each horizontal convolution is one
  matmul over the stacked windows, with ReLU and bias applied after the max (exact, see
  `_SeqCNN._horizontal`).
- PyTorch's BN running variance uses the unbiased batch variance (TF: biased). Dropout (0) not built.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from clsr.config import ConfigError
from clsr.data.batches import Batch
from clsr.data.store import PreparedData
from clsr.models.base import ModelConfig, ModelSizes, Recommender
from clsr.models.layers import MLP, ItemCategoryEmbedding, glorot_uniform_, mlp_over_parts


@dataclass
class CaserConfig(ModelConfig):
    """Caser settings; defaults are the released yaml values (docs/protocol.md §8)."""

    n_v: int = 128  # vertical filters per sequence (item, category)
    n_h: int = 128  # horizontal filters per height
    conv_len: int = 3  # L_conv: horizontal filter heights 1 .. conv_len (released `L`)
    max_len: int = 50  # history length L the vertical filter spans; attach_data(data) resizes it to the data's max_len
    pred_layers: list[int] = field(default_factory=lambda: [100, 64])  # prediction MLP (layer_sizes), + linear to 1
    activation: str = "relu"  # every hidden layer of the prediction MLP
    batch_norm: bool = True  # BN in every MLP hidden layer (enable_BN), ε 1e-4, TF momentum 0.95

    def validate(self, where: str = "model") -> None:
        super().validate(where)
        self._require_layer_sizes(where, "pred_layers", allow_empty=True)
        self._require_positive(where, "item_dim", "cate_dim")
        self._require_activation(where)
        self._require_positive(where, "n_v", "n_h", "conv_len", "max_len")
        if self.max_len < self.conv_len:
            raise ConfigError(f"{where}.max_len: must be ≥ conv_len = {self.conv_len}, got {self.max_len}")


class _SeqCNN(nn.Module):
    """Vertical + horizontal convolutions of one history matrix H (B, L, d) -> (B, n_v + conv_len·n_h).

    Kernels are glorot-uniform over their TF conv1d shapes (kernel, in, out) (fan_in = kernel·in,
    fan_out = kernel·out), biases 0, as ``tf.layers.conv1d`` initialises them.
    """

    def __init__(self, dim: int, max_len: int, n_v: int, n_h: int, conv_len: int):
        super().__init__()
        self.dim, self.n_v, self.n_h, self.conv_len = dim, n_v, n_h, conv_len
        self.vertical_bias = nn.Parameter(torch.zeros(n_v))
        self.resize(max_len)
        # horizontal kernels: height h in TF layout (h, d, n_h) = conv1d weights over windows of h positions
        self.horizontal_kernels = nn.ParameterList(
            nn.Parameter(glorot_uniform_(torch.empty(h, dim, n_h))) for h in range(1, conv_len + 1)
        )
        self.horizontal_biases = nn.ParameterList(nn.Parameter(torch.zeros(n_h)) for _ in range(conv_len))

    def resize(self, max_len: int, device=None) -> None:
        """(Re)create the vertical kernel (glorot-uniform) for histories of max_len positions. TF kernel
        (d, L, n_v) on Hᵀ (B, d, L): out_k = Σ_{j,l} H[l, j] K[j, l, k], a dense layer on H flattened
        to L·d; stored as (n_v, L·d) for `F.linear`."""
        K = glorot_uniform_(torch.empty(self.dim, max_len, self.n_v, device=device))
        self.max_len = max_len
        self.vertical_kernel = nn.Parameter(K.permute(2, 1, 0).reshape(self.n_v, max_len * self.dim).contiguous())

    def _horizontal(self, H: torch.Tensor) -> torch.Tensor:
        """For each height h: c_t = ReLU(Σ_{j<h} H_{t+j} K_h[j] + b_h), t = 0..L−h (TF 'valid'), then the
        max over t (padding included, as released). Each height is one matmul of the windows
        [H_t ‖ … ‖ H_{t+h−1}] (B, L−h+1, h·d) with K_h flattened to (h·d, n_h). ReLU and the bias commute
        with the max over t (monotone, constant in t), so they are applied after it. (`max` gives a
        tied maximum's gradient to one position, TF splits it; ties come from identical padded windows,
        whose inputs are equal, so every parameter and embedding gradient is the same.)"""
        L = H.shape[1]
        outs = []
        for K, b in zip(self.horizontal_kernels, self.horizontal_biases):
            h = K.shape[0]
            T = L - h + 1
            windows = torch.cat([H[:, j : j + T] for j in range(h)], dim=-1) if h > 1 else H
            outs.append((windows @ K.reshape(h * self.dim, self.n_h)).max(dim=1).values + b)
        return torch.relu(torch.cat(outs, dim=-1))

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        B, L, d = H.shape
        if L != self.max_len:
            raise ValueError(
                f"Caser: histories have L = {L} columns but the vertical filter spans {self.max_len}; "
                "build the model with max_len = the data's max_len or call model.attach_data(data)"
            )
        o_v = torch.relu(F.linear(H.reshape(B, L * d), self.vertical_kernel, self.vertical_bias))
        return torch.cat([o_v, self._horizontal(H)], dim=-1)


class Caser(Recommender):
    """forward(batch) -> {"logits": (B, C), "cnn": (B, 2·(n_v + conv_len·n_h)) history features}."""

    def __init__(self, cfg: CaserConfig, sizes: ModelSizes):
        super().__init__(cfg, sizes)
        cfg.validate("model.caser")
        self.tokens = ItemCategoryEmbedding(sizes.n_items, sizes.n_cates, cfg.item_dim, cfg.cate_dim, cfg.init_std)
        self.item_cnn = _SeqCNN(cfg.item_dim, cfg.max_len, cfg.n_v, cfg.n_h, cfg.conv_len)
        self.cate_cnn = _SeqCNN(cfg.cate_dim, cfg.max_len, cfg.n_v, cfg.n_h, cfg.conv_len)
        cnn_dim = 2 * (cfg.n_v + cfg.conv_len * cfg.n_h)
        self.pred_mlp = MLP(
            cnn_dim + cfg.item_dim + cfg.cate_dim, cfg.pred_layers, cfg.activation, cfg.batch_norm,
            out_dim=1, init_std=cfg.init_std,
        )

    @property
    def max_len(self) -> int:
        return self.item_cnn.max_len

    def attach_data(self, data: PreparedData) -> None:
        """Resize the vertical filters to the data's history length L (the trainer calls this after
        building the model and before creating the optimiser). When L differs from ``cfg.max_len`` the
        two vertical kernels are re-drawn (glorot-uniform); otherwise nothing changes."""
        L = int(data.meta.get("max_len", self.cfg.max_len))
        if L < self.cfg.conv_len:
            raise ConfigError(f"model.caser: the data's max_len {L} is shorter than conv_len {self.cfg.conv_len}")
        if L != self.max_len:
            for cnn in (self.item_cnn, self.cate_cnn):
                cnn.resize(L, device=cnn.vertical_bias.device)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        tokens = self.tokens
        cnn = torch.cat(
            [self.item_cnn(tokens.items(batch.hist_item)), self.cate_cnn(tokens.cates(batch.hist_cate))], dim=-1
        )  # (B, 1024)
        e_v = tokens.candidates(batch)  # (B, C, d)
        logits = mlp_over_parts(self.pred_mlp, [cnn, e_v]).squeeze(-1)
        return {"logits": logits, "cnn": cnn}

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        return self.tokens.batch_rows(batch)
