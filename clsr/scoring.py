"""Scoring a model: its outputs on a stream of evaluation batches, stacked into numpy arrays.

One function, `score_batches`, serves validation and test (`clsr.train.evaluate`, on the stored
fixed-candidate batches of `clsr.data.batches.eval_batches`) and the analyses (the α histogram of the
report, the counterfactual and category batches of `clsr.disentangle`).

A *readout* is one way of reading a model out: ``None`` = as trained (``model(batch)``), a number a =
the fusion weight fixed to a for every row (``model(batch, alpha_override=a)``; α = 1 keeps the long-term
interest only, α = 0 the short-term one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from clsr.data.batches import Batch

#: the model as trained, with its own fusion weight α
AS_TRAINED: dict[str, float | None] = {"model": None}


@dataclass
class Scores:
    """A model's outputs on n instances, in the order of the batches."""

    logits: dict[str, np.ndarray]  # {readout: (n, C)} the candidates' scores, positive in column 0
    user: np.ndarray  # (n,) vocabulary index of each instance's user (the GAUC groups)
    user_row: np.ndarray  # (n,) row of the user in the prepared data
    instance: np.ndarray  # (n,) index of the instance in its split
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # kept model outputs (as trained), rows stacked


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters (CPU for a callable without any)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def score_batches(
    model: Callable,
    batches: Iterable[Batch],
    readouts: Mapping[str, float | None] = AS_TRAINED,
    keep: Sequence[str] = (),
    device: torch.device | str | None = None,
) -> Scores:
    """One forward per batch and readout, in evaluation mode.

    `model` is any callable ``model(batch, alpha_override=a) -> {'logits': (B, C), ...}`` (a module is put in
    eval mode); `readouts` maps a name to ``None`` (as trained) or a fixed α. The outputs named in `keep`
    (e.g. ``alpha``, ``u_long``, ``u_short``) are stacked from the as-trained readout; a name the model does
    not return is left out of ``Scores.outputs``.
    """
    if keep and None not in readouts.values():
        raise ValueError(f"score_batches: keep={list(keep)} needs an as-trained readout (None) among {dict(readouts)}")
    if hasattr(model, "eval"):
        model.eval()
    device = torch.device(device) if device is not None else model_device(model)
    logits: dict[str, list[np.ndarray]] = {name: [] for name in readouts}
    kept: dict[str, list[np.ndarray]] = {}
    ids: dict[str, list[np.ndarray]] = {"user": [], "user_row": [], "instance": []}
    for batch in batches:
        b = batch.to(device)
        for name, alpha in readouts.items():
            res = model(b) if alpha is None else model(b, alpha_override=alpha)
            logits[name].append(res["logits"].float().cpu().numpy())
            if alpha is None:
                for k in keep:
                    if k in res:
                        kept.setdefault(k, []).append(res[k].float().cpu().numpy())
        for k, v in ids.items():
            v.append(getattr(batch, k).cpu().numpy())

    def stack(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(empty_shape)

    return Scores(
        logits={name: stack(v, (0, 0)) for name, v in logits.items()},
        user=stack(ids["user"], (0,)),
        user_row=stack(ids["user_row"], (0,)),
        instance=stack(ids["instance"], (0,)),
        outputs={k: np.concatenate(v) for k, v in kept.items()},
    )
