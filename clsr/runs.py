"""One training run resolved from params.yaml plus overrides: what the CLI, notebooks and DVC stages call.

    params.yaml
      train:   TrainConfig keys (epochs, patience, batch_size, ...)
      models:  {clsr: {...CLSRConfig keys}, din: {...}, ...}

Overrides are dotted keys: ``train.epochs=3``, ``model.contrastive=bpr`` (the chosen model's config).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from clsr.config import ConfigError, from_dict, with_overrides
from clsr.data.prepare import load_prepared
from clsr.models.base import ModelConfig
from clsr.models.registry import build_config
from clsr.train import FitResult, TrainConfig, fit


def resolve(
    params: Mapping[str, Any], model: str, overrides: Mapping[str, Any] | None = None
) -> tuple[ModelConfig, TrainConfig]:
    train_cfg = from_dict(TrainConfig, params.get("train") or {}, "params.yaml train")
    models = params.get("models") or {}
    model_cfg = build_config(model, models.get(model) or {})
    t_over, m_over = {}, {}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head == "train" and rest:
            t_over[rest] = value
        elif head == "model" and rest:
            m_over[rest] = value
        else:
            raise ConfigError(f"override {key!r}: keys start with 'train.' or 'model.' (e.g. model.contrastive=bpr)")
    if t_over:
        train_cfg = with_overrides(train_cfg, t_over, "train override")
    if m_over:
        model_cfg = with_overrides(model_cfg, m_over, f"model override ({model})")
    return model_cfg, train_cfg


def run(
    params: Mapping[str, Any],
    dataset: str,
    model: str,
    run_dir: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    prepared_dir: str | Path = "data/prepared",
    resume: bool = True,
) -> FitResult:
    model_cfg, train_cfg = resolve(params, model, overrides)
    data = load_prepared(dataset, prepared_dir)
    return fit(data, model, model_cfg, train_cfg, run_dir=run_dir, resume=resume)
