"""What CLSR's self-supervision does during training: logged once per epoch, on the epoch's first batch.

For a model whose forward returns the interests u^l, u^s and the proxies p^l, p^s (CLSR):

- ``cos_long`` / ``cos_short``: mean cosine of (u^l, p^l) and of (u^s, p^s) over the batch's instances;
  ``norm_ratio_long``: mean ‖u^l‖ / ‖p^l‖. A near-uniform long-term attention makes u^l ≈ p^l (the mean
  of the history), cos → 1, ratio → 1, and then the long-term contrastive terms have nothing to teach.
- ``hinge_active`` (triplet only): the share of per-dimension hinges max(0, ·) with a positive argument,
  i.e. still sending a gradient. With the released margin 1 against squared coordinate differences of
  order 1e-4 every hinge is active, and the term is the constant 4 · d · margin · β plus a small linear part.
- ``grad_<part>``: the gradient norm each loss part sends into the parameters the contrastive term reaches
  (the encoders and the tables they read), and ``grad_ratio_<part>`` that norm over the recommendation
  loss's on the same parameters: how loud the self-supervision is next to the task.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from clsr import losses

#: the outputs a model must return for the diagnostics to apply
NEEDS = ("u_long", "u_short", "p_long", "p_short")


def applies(model, out: Mapping[str, torch.Tensor]) -> bool:
    cfg = getattr(model, "cfg", None)
    return all(k in out for k in NEEDS) and getattr(cfg, "contrastive", "none") != "none"


def _per_instance(x: torch.Tensor) -> torch.Tensor:
    """(B, d) as is; (B, C, d) -> the positive candidate's row (B, d)."""
    return x[:, 0] if x.dim() == 3 else x


def _grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


def self_supervision(model, out: Mapping[str, torch.Tensor], parts: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The quantities above for one batch; call before ``parts['total'].backward()`` (the graph is kept)."""
    cfg = model.cfg
    u_l, u_s = _per_instance(out["u_long"]).detach(), _per_instance(out["u_short"]).detach()
    p_l, p_s = _per_instance(out["p_long"]).detach(), _per_instance(out["p_short"]).detach()
    diag = {
        "cos_long": float(F.cosine_similarity(u_l, p_l, dim=-1).mean()),
        "cos_short": float(F.cosine_similarity(u_s, p_s, dim=-1).mean()),
        "norm_ratio_long": float((u_l.norm(dim=-1) / p_l.norm(dim=-1).clamp(min=1e-12)).mean()),
    }
    if cfg.contrastive == "triplet":
        vectors = (u_l, u_s, p_l, p_s)
        if getattr(cfg, "contrastive_normalize", False):
            vectors = tuple(F.normalize(x, dim=-1) for x in vectors)
        args = losses.triplet_hinge_args(*vectors, cfg.margin)
        diag["hinge_active"] = float(torch.cat([(a > 0).float().reshape(-1) for a in args]).mean())
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {name: _grad_norm(parts[name], params) for name in ("rec", "contrastive", "discrepancy") if name in parts
             and parts[name].requires_grad}
    reached = [i for i, g in enumerate(grads.get("contrastive", [])) if g is not None]
    for name, g in grads.items():
        norm = torch.sqrt(sum((g[i].float().square().sum() for i in reached if g[i] is not None),
                              torch.zeros(())))
        diag[f"grad_{name}"] = float(norm)
    if "grad_rec" in diag:
        for name in grads:
            if name != "rec":
                diag[f"grad_ratio_{name}"] = diag[f"grad_{name}"] / max(diag["grad_rec"], 1e-30)
    return diag
