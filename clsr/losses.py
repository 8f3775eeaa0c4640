"""Losses shared by every model (official-clsr.md §2.4).

CLSR's own terms (contrastive, discrepancy) live in this module too, as pure functions of tensors, so
that tests can check each against its equation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def recommendation_loss(logits: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """L_rec on (B, C) logits whose column 0 is the positive.

    softmax (released): -1/B Σ_b log softmax(z_b)_0, a sampled-softmax cross-entropy over 1+N.
    bce (the paper's text):  mean over all B*C rows of BCE(σ(z), y), y = 1 for column 0 else 0.
    """
    if kind == "softmax":
        return -F.log_softmax(logits, dim=1)[:, 0].mean()
    if kind == "bce":
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"rec_loss: unknown kind {kind!r}; choose 'softmax' or 'bce'")


def l2_loss(
    model: nn.Module,
    used_rows: list[tuple[nn.Embedding, torch.Tensor]],
    embed_l2: float,
    layer_l2: float,
) -> torch.Tensor:
    """L_reg = embed_l2 · ½Σ‖E[r]‖² over the *unique* used rows of each table
    + layer_l2 · ½Σ‖θ‖² over every parameter that is not an embedding table (tf.nn.l2_loss)."""
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    if embed_l2:
        for table, rows in used_rows:
            uniq = torch.unique(rows.reshape(-1))
            total = total + embed_l2 * 0.5 * table.weight[uniq].pow(2).sum()
    if layer_l2:
        emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        for p in model.parameters():
            if p.requires_grad and id(p) not in emb:
                total = total + layer_l2 * 0.5 * p.pow(2).sum()
    return total
