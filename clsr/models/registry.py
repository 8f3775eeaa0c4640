"""Models by name: `build_model("clsr", sizes, overrides)` is how the trainer, CLI and notebooks get one.

Each entry is (config dataclass, model class). Add a model by writing its file under clsr/models/
and one line here.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from clsr.config import from_dict
from clsr.models.base import ModelConfig, ModelSizes, Recommender

# name -> "module:ConfigClass:ModelClass" (imported lazily so one broken model cannot break the rest)
MODELS: dict[str, str] = {
    "clsr": "clsr.models.clsr:CLSRConfig:CLSR",
    "ncf": "clsr.models.ncf:NCFConfig:NCF",
    "lightgcn": "clsr.models.lightgcn:LightGCNConfig:LightGCN",
    "din": "clsr.models.din:DINConfig:DIN",
    "gru4rec": "clsr.models.gru4rec:GRU4RecConfig:GRU4Rec",
    "caser": "clsr.models.caser:CaserConfig:Caser",
    "dien": "clsr.models.dien:DIENConfig:DIEN",
    "sasrec": "clsr.models.sasrec:SASRecConfig:SASRec",
    "slirec": "clsr.models.slirec:SLiRecConfig:SLiRec",
    "surge": "clsr.models.surge:SURGEConfig:SURGE",
}


def model_names() -> list[str]:
    return sorted(MODELS)


def model_classes(name: str) -> tuple[type[ModelConfig], type[Recommender]]:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available models: {model_names()}")
    module, cfg_cls, model_cls = MODELS[name].split(":")
    mod = importlib.import_module(module)
    return getattr(mod, cfg_cls), getattr(mod, model_cls)


def build_config(name: str, params: Mapping[str, Any] | None = None) -> ModelConfig:
    cfg_cls, _ = model_classes(name)
    return from_dict(cfg_cls, params or {}, where=f"model.{name}")


def build_model(name: str, sizes: ModelSizes, params: Mapping[str, Any] | ModelConfig | None = None) -> Recommender:
    cfg = params if isinstance(params, ModelConfig) else build_config(name, params)
    _, model_cls = model_classes(name)
    return model_cls(cfg, sizes)
