"""Losses shared by every model (docs/protocol.md §7).

CLSR's own terms (contrastive, discrepancy) live in this module too, as pure functions of tensors, so
that tests can check each against its equation.

Data-parallel training: every term takes the run's `clsr.distributed.Context` (`ctx`). With W > 1 ranks it
returns this rank's part, scaled so that the mean of the ranks' parts is the one-process term of the global
batch, value and gradient (the mean DDP takes of the gradients; clsr/distributed.py): a mean over the batch's
entries is W·Σ_local / Σ_global (`spread_mean`), a sum over the batch's unique rows weights each of the rank's
rows by W / (ranks using it) (`clsr.distributed.row_share`). Without a context, or with W = 1, no collective
runs and the arithmetic is the single-process one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clsr import distributed as D


def spreads(ctx: D.Context | None) -> bool:
    """Whether `ctx` is a run of several ranks (the terms then return the rank's part, module docstring)."""
    return ctx is not None and ctx.distributed


def spread_mean(local_sum: torch.Tensor, local_count: torch.Tensor, ctx: D.Context) -> torch.Tensor:
    """This rank's part of a mean over the global batch's entries: W·Σ_local / max(Σ_r count_r, 1), so that
    the ranks' parts average to Σ_all / Σ_count (0 when no rank has an entry). Every rank must call it."""
    return ctx.world * local_sum / D.global_sum(local_count, ctx).clamp(min=1.0)


def recommendation_loss(logits: torch.Tensor, kind: str = "softmax", ctx: D.Context | None = None) -> torch.Tensor:
    """L_rec on (B, C) logits whose column 0 is the positive.

    softmax (released): -1/B Σ_b log softmax(z_b)_0, a sampled-softmax cross-entropy over 1+N.
    bce (the paper's text):  mean over all B*C rows of BCE(σ(z), y), y = 1 for column 0 else 0.
    With several ranks: the rank's part of the mean over the global batch (`spread_mean`).
    """
    if kind == "softmax":
        if not spreads(ctx):
            return -F.log_softmax(logits, dim=1)[:, 0].mean()
        values = -F.log_softmax(logits, dim=1)[:, 0]
    elif kind == "bce":
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        if not spreads(ctx):
            return F.binary_cross_entropy_with_logits(logits, labels)
        values = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    else:
        raise ValueError(f"rec_loss: unknown kind {kind!r}; choose 'softmax' or 'bce'")
    return spread_mean(values.sum(), values.new_tensor(float(values.numel())), ctx)


def l2_loss(
    model: nn.Module,
    used_rows: list[tuple[nn.Embedding, torch.Tensor]],
    embed_l2: float,
    layer_l2: float,
    ctx: D.Context | None = None,
) -> torch.Tensor:
    """L_reg = embed_l2 · ½Σ‖E[r]‖² over the *unique* used rows of each table
    + layer_l2 · ½Σ‖θ‖² over every parameter that is not an embedding table (tf.nn.l2_loss).

    With several ranks the embedding rows are the union of the ranks' used rows: rank r weights each of its
    rows by W/c, c the number of ranks using it (`clsr.distributed.row_share`); the layer term, the same on
    every rank, enters as is."""
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    if embed_l2:
        for table, rows in used_rows:
            # the sorted unique rows, as torch.unique gives them, without its sort (a flag per table row)
            used = torch.zeros(table.num_embeddings, dtype=torch.bool, device=rows.device)
            used[rows.reshape(-1)] = True
            uniq = used.nonzero().squeeze(1)
            if spreads(ctx):
                n_ranks, _ = D.row_share(uniq, ctx)
                row_sq = table.weight[uniq].pow(2).sum(1)
                total = total + embed_l2 * 0.5 * (row_sq * (ctx.world / n_ranks.to(row_sq.dtype))).sum()
            else:
                total = total + embed_l2 * 0.5 * table.weight[uniq].pow(2).sum()
    if layer_l2:
        emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        for p in model.parameters():
            if p.requires_grad and id(p) not in emb:
                total = total + layer_l2 * 0.5 * p.pow(2).sum()
    return total


# --------------------------------------------------------------------------------------------------
# CLSR's self-supervised terms (docs/protocol.md §7.2–§7.3, released `_compute_contrastive_loss` and
# `_compute_discrepancy_loss`). Inputs are broadcast against each other, so u^l, p^l, p^s may be given
# per instance (B, 1, d) and u^s per candidate row (B, C, d).
# --------------------------------------------------------------------------------------------------
CONTRASTIVE_KINDS = ("triplet", "bpr", "none")


def masked_mean(values: torch.Tensor, mask: torch.Tensor, ctx: D.Context | None = None) -> torch.Tensor:
    """Σ m·ℓ / Σ m over all entries of the broadcast shape of (ℓ, m); 0 (not NaN, as released) when
    Σ m = 0. Broadcasting matters: a per-instance term (B, 1) against a per-row mask (B, C) is counted
    once per candidate row, as in the released row layout.

    m is 0/1, so Σ m ≥ 1 whenever it is non-zero and clamping the denominator at 1 changes nothing
    else; it also needs no host sync. With several ranks: the rank's part of the global batch's masked mean
    (`spread_mean`, Σ m over every rank's rows).
    """
    values, mask = torch.broadcast_tensors(values, mask.to(values.dtype))
    if spreads(ctx):
        return spread_mean((mask * values).sum(), mask.sum(), ctx)
    return (mask * values).sum() / mask.sum().clamp(min=1.0)


def triplet_terms(
    u_long: torch.Tensor, u_short: torch.Tensor, p_long: torch.Tensor, p_short: torch.Tensor, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row triplet terms *as coded*: per-dimension hinge on squared coordinate differences,

        ℓ1 = Σ_d max(0, (u^l_d − p^l_d)² − (u^l_d − p^s_d)² + m)     anchor u^l, pos p^l, neg p^s
        ℓ2 = Σ_d max(0, (u^s_d − p^s_d)² − (u^s_d − p^l_d)² + m)     anchor u^s, pos p^s, neg p^l
        ℓ3 = Σ_d max(0, (u^l_d − p^l_d)² − (u^s_d − p^l_d)² + m)     anchor p^l, pos u^l, neg u^s
        ℓ4 = Σ_d max(0, (u^s_d − p^s_d)² − (u^l_d − p^s_d)² + m)     anchor p^s, pos u^s, neg u^l

    Each returned tensor has the broadcast shape of the inputs without the last dimension.
    """
    return tuple(torch.relu(a).sum(-1) for a in triplet_hinge_args(u_long, u_short, p_long, p_short, margin))


def triplet_hinge_args(
    u_long: torch.Tensor, u_short: torch.Tensor, p_long: torch.Tensor, p_short: torch.Tensor, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-dimension hinge arguments of ℓ1..ℓ4 (before max(0, ·)): a hinge is *active* where its argument is
    positive, i.e. where the term still sends a gradient."""
    d_lm = (u_long - p_long).square()
    d_lr = (u_long - p_short).square()
    d_sm = (u_short - p_long).square()
    d_sr = (u_short - p_short).square()
    return d_lm - d_lr + margin, d_sr - d_sm + margin, d_lm - d_sm + margin, d_sr - d_lr + margin


def bpr_terms(
    u_long: torch.Tensor, u_short: torch.Tensor, p_long: torch.Tensor, p_short: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row BPR terms, softplus(x) = ln(1 + eˣ), ⟨·,·⟩ the inner product:

        ℓ1 = softplus(⟨u^l, p^s⟩ − ⟨u^l, p^l⟩)      ℓ2 = softplus(⟨u^s, p^l⟩ − ⟨u^s, p^s⟩)
        ℓ3 = softplus(⟨p^l, u^s⟩ − ⟨p^l, u^l⟩)      ℓ4 = softplus(⟨p^s, u^l⟩ − ⟨p^s, u^s⟩)
    """

    def sp(a, b, c):  # softplus(⟨a, c − b⟩) = softplus(⟨a, c⟩ − ⟨a, b⟩)
        return F.softplus((a * (c - b)).sum(-1))

    return (
        sp(u_long, p_long, p_short),
        sp(u_short, p_short, p_long),
        sp(p_long, u_long, u_short),
        sp(p_short, u_short, u_long),
    )


def contrastive_terms(
    kind: str,
    u_long: torch.Tensor,
    u_short: torch.Tensor,
    p_long: torch.Tensor,
    p_short: torch.Tensor,
    margin: float = 1.0,
    normalize: bool = False,
) -> tuple[torch.Tensor, ...]:
    """The four per-row terms of `kind` ('triplet' or 'bpr'); () for 'none'. With `normalize` every vector is
    scaled to unit length first, so distances and margins live on a fixed scale (an option; not released)."""
    if normalize:
        u_long, u_short, p_long, p_short = (F.normalize(x, dim=-1) for x in (u_long, u_short, p_long, p_short))
    if kind == "triplet":
        return triplet_terms(u_long, u_short, p_long, p_short, margin)
    if kind == "bpr":
        return bpr_terms(u_long, u_short, p_long, p_short)
    if kind == "none":
        return ()
    raise ValueError(f"contrastive: unknown kind {kind!r}; choose one of {list(CONTRASTIVE_KINDS)}")


def contrastive_loss(
    kind: str,
    u_long: torch.Tensor,
    u_short: torch.Tensor,
    p_long: torch.Tensor,
    p_short: torch.Tensor,
    mask: torch.Tensor,
    weight: float = 0.1,
    margin: float = 1.0,
    normalize: bool = False,
    ctx: D.Context | None = None,
) -> torch.Tensor:
    """L_con = w · Σ_{k=1..4} (Σ_r m_r ℓ_{k,r} / Σ_r m_r): a *separate* masked mean per term over all
    rows r (every candidate row of every instance), m_r = 1 when the history is longer than the
    threshold. `mask` must broadcast to the per-row term shape. With several ranks: the rank's part
    (`masked_mean` over the global batch's rows)."""
    terms = contrastive_terms(kind, u_long, u_short, p_long, p_short, margin, normalize)
    total = u_long.new_zeros(())
    for t in terms:
        total = total + masked_mean(t, mask, ctx)
    return weight * total


def discrepancy_loss(
    long_table: torch.Tensor,
    short_table: torch.Tensor,
    users: torch.Tensor,
    weight: float = 0.01,
    ctx: D.Context | None = None,
) -> torch.Tensor:
    """L_dis = −w · 1/(|U_b|·d) Σ_{u ∈ U_b} ‖E_l[u] − E_s[u]‖², U_b the batch's *unique* users.

    The minus sign is released behaviour: the term rewards the two user embeddings for differing.
    With several ranks U_b is the union of the ranks' users: rank r sums over its unique users, each weighted
    by W/c (c ranks use it), and divides by |U_b|·d (`clsr.distributed.row_share`).
    """
    uniq = torch.unique(users.reshape(-1))
    if spreads(ctx):
        n_ranks, n_users = D.row_share(uniq, ctx)
        diff_sq = (long_table[uniq] - short_table[uniq]).square().sum(1)
        return -weight * (diff_sq * (ctx.world / n_ranks.to(diff_sq.dtype))).sum() / (n_users * long_table.shape[1])
    return -weight * (long_table[uniq] - short_table[uniq]).square().mean()
