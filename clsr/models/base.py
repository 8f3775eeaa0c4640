"""What every model in the registry provides to the trainer.

A model maps a `Batch` (B instances, C candidates each, column 0 the positive) to a dict of tensors
holding at least ``logits`` of shape (B, C). It owns its losses: `compute_loss` returns the named parts
and their sum under ``total``. The shared parts (recommendation loss, L2 on the used embedding rows and
all other parameters) are implemented once here; models add their own through `extra_losses`.

In data-parallel training both take the run's `clsr.distributed.Context` and pass it to the terms of
`clsr.losses`: each part is then this rank's, and the ranks' parts average to the one-process part of the
global batch (clsr/distributed.py). Without it (or with one process) the parts are the batch's own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clsr import distributed as D
from clsr import losses
from clsr.config import ConfigError
from clsr.data.batches import Batch


@dataclass
class ModelConfig:
    """Settings every model shares; each model's config subclasses this (defaults = released CLI)."""

    item_dim: int = 32  # item embedding size; the history token is item ‖ category (32 + 8 = 40)
    cate_dim: int = 8  # category embedding size
    init_std: float = 0.01  # truncated-normal std for embeddings and dense weights (§6.4)
    rec_loss: str = "softmax"  # softmax over each instance's 1+N logits (released) | bce (per row)
    embed_l2: float = 1.0e-6  # ½‖·‖² on the embedding rows used in the batch
    layer_l2: float = 1.0e-6  # ½‖·‖² on every non-embedding parameter

    def validate(self, where: str = "model") -> None:
        if self.rec_loss not in ("softmax", "bce"):
            raise ConfigError(f"{where}.rec_loss: {self.rec_loss!r} is not one of ['softmax', 'bce']")

    def canonical(self) -> "ModelConfig":
        """This configuration with every setting that cannot change the run at one fixed value, so that runs
        that must be identical share one configuration hash (and one run folder); self by default."""
        return self

    def check_data(self, max_len: int, where: str = "model", max_len_key: str = "protocol.max_len") -> None:
        """Refuse settings the data's history length `max_len` makes void (ConfigError); none by default."""

    # --- checks shared by the subclasses' `validate` (all raise `ConfigError` naming `where.key`) ---
    def _require_positive(self, where: str, *keys: str) -> None:
        """Each integer setting in `keys` must be ≥ 1."""
        for key in keys:
            value = getattr(self, key)
            if value < 1:
                raise ConfigError(f"{where}.{key}: must be ≥ 1, got {value}")

    def _require_layer_sizes(self, where: str, key: str, allow_empty: bool) -> None:
        """The list of layer sizes `key` must hold positive sizes; non-empty unless `allow_empty`."""
        sizes = getattr(self, key)
        if allow_empty:
            if any(h < 1 for h in sizes):
                raise ConfigError(f"{where}.{key}: sizes must be positive, got {sizes}")
        elif not sizes or any(h < 1 for h in sizes):
            raise ConfigError(f"{where}.{key}: need ≥ 1 positive hidden size, got {sizes}")

    def _require_activation(self, where: str, key: str = "activation", also: tuple[str, ...] = ()) -> None:
        """Setting `key` must name an activation of `layers.activation_fn`, or one of the extra names `also`."""
        from clsr.models.layers import activation_fn  # here, so base stays importable without layers

        name = getattr(self, key)
        if name in also:
            return
        try:
            activation_fn(name)
        except ValueError as e:
            extra = f" (or {', '.join(repr(a) for a in also)})" if also else ""
            raise ConfigError(f"{where}.{key}: {e}{extra}") from None

    def _require_hidden_is_token(self, where: str) -> None:
        """hidden_size must equal the token width item_dim + cate_dim (models mixing u = α u^l + (1−α) u^s)."""
        token = self.item_dim + self.cate_dim
        if self.hidden_size != token:
            raise ConfigError(
                f"{where}.hidden_size: must equal item_dim + cate_dim = {token} (u = α u^l + (1−α) u^s "
                f"mixes the LSTM space with the embedding space), got {self.hidden_size}"
            )


@dataclass
class ModelSizes:
    """Vocabulary sizes, index 0 included (padding and every id unseen in training)."""

    n_users: int
    n_items: int
    n_cates: int


class Recommender(nn.Module):
    #: per-tensor gradient clipping norm used by the trainer (released: CLSR 2.0, baselines none)
    clip_norm: float | None = None

    def __init__(self, cfg: ModelConfig, sizes: ModelSizes):
        super().__init__()
        self.cfg = cfg
        self.sizes = sizes

    # --- to implement ---------------------------------------------------------------------------
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def embedding_rows(self, batch: Batch) -> list[tuple[nn.Embedding, torch.Tensor]]:
        """(table, row indices) pairs used by this batch, for the L2 term on used rows (§7.4)."""
        return []

    def extra_losses(
        self, batch: Batch, out: dict[str, torch.Tensor], ctx: D.Context | None = None
    ) -> dict[str, torch.Tensor]:
        """Model-specific weighted loss terms (contrastive, discrepancy, auxiliary...); with a context of
        several ranks, this rank's parts (module docstring)."""
        return {}

    # --- shared ---------------------------------------------------------------------------------
    def embedding_tables(self) -> list[nn.Embedding]:
        return [m for m in self.modules() if isinstance(m, nn.Embedding)]

    def compute_loss(
        self, batch: Batch, out: dict[str, torch.Tensor], ctx: D.Context | None = None
    ) -> dict[str, torch.Tensor]:
        """The named loss parts of `batch` and their sum ``total``; with a context of several ranks, this
        rank's parts of the global batch's (module docstring)."""
        parts = {"rec": losses.recommendation_loss(out["logits"], self.cfg.rec_loss, ctx)}
        parts["l2"] = losses.l2_loss(self, self.embedding_rows(batch), self.cfg.embed_l2, self.cfg.layer_l2, ctx)
        parts.update(self.extra_losses(batch, out, ctx))
        parts["total"] = sum(parts.values())
        return parts

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
