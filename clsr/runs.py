"""How a run is named: one resolver for model names, aliases and overrides, used by the CLI, the pipeline
stages and the disentanglement study.

    name       a registered model (`python -m clsr models`) or an alias below (`clsr_nocon`)
    overrides  dotted keys, ``train.<TrainConfig key>=value`` or ``model.<the model's config key>=value``;
               given as a mapping, a list of ``key=value`` strings (the CLI's repeated ``--set``) or one
               comma-separated string (the notebooks' ``overrides`` parameter); values are read as YAML
               (``5``, ``0.1``, ``bpr``, ``true``).

``model.fusion=attention|fixed`` is the ablation's name for ``model.manual_alpha=false|true``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from clsr.config import ConfigError, from_dict, suggest, with_overrides, to_dict

#: pseudo-models: a registered model with fixed overrides
MODEL_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"clsr_nocon": ("clsr", {"model.contrastive": "none"})}

#: override keys that stand for another key's value
FUSION = {"attention": False, "fixed": True}


@dataclass(frozen=True)
class RunSpec:
    """A fully resolved run: what `clsr.train.fit` needs besides the data."""

    name: str  # as asked: a model or an alias
    model: str  # the registered model that trains
    model_cfg: Any  # the model's config dataclass
    train_cfg: Any  # clsr.train.TrainConfig
    overrides: dict = field(default_factory=dict)  # the dotted overrides applied (alias's included)

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "model_config": to_dict(self.model_cfg),
                "train": to_dict(self.train_cfg), "overrides": dict(self.overrides)}


def _split_pairs(text: str) -> list[str]:
    """Split ``a=1,b=[1, 2],c=x`` on the commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_overrides(spec: str | list[str] | tuple[str, ...] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Overrides in any of the accepted spellings -> ``{dotted key: value}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return dict(spec)
    items = _split_pairs(spec) if isinstance(spec, str) else [p for s in spec for p in _split_pairs(s)]
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.contrastive=bpr")
        key, text = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"override {key}: cannot read the value {text!r}") from None
    return out


def _expand_sugar(over: dict[str, Any]) -> dict[str, Any]:
    if "model.fusion" not in over:
        return over
    over = dict(over)
    value = over.pop("model.fusion")
    if value not in FUSION:
        raise ConfigError(f"override model.fusion: {value!r} is not one of {list(FUSION)}")
    over["model.manual_alpha"] = FUSION[value]
    return over


def registered_name(name: str) -> str:
    """The registered model behind a name or alias; an unknown name lists what exists."""
    from clsr.models.registry import model_names

    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name][0]
    if name not in model_names():
        known = model_names() + sorted(MODEL_ALIASES)
        raise ConfigError(f"unknown model {name!r}{suggest(name, known)}; models and aliases: {known}")
    return name


def resolve_run(
    params: Mapping[str, Any], name: str, overrides: Any = None, seed: int | None = None
) -> RunSpec:
    """Resolve `name` (+ alias overrides, + `overrides`, + `seed`) against params.yaml's train/models sections."""
    from clsr.models.registry import build_config
    from clsr.train import TrainConfig

    model = registered_name(name)
    over = {**MODEL_ALIASES.get(name, (name, {}))[1], **_expand_sugar(parse_overrides(overrides))}
    if seed is not None:
        over["train.seed"] = int(seed)
    train_cfg = from_dict(TrainConfig, params.get("train") or {}, "params.yaml train")
    model_cfg = build_config(model, (params.get("models") or {}).get(model) or {})
    t_over, m_over = {}, {}
    for key, value in over.items():
        head, _, rest = key.partition(".")
        if head == "train" and rest:
            t_over[rest] = value
        elif head == "model" and rest:
            m_over[rest] = value
        else:
            raise ConfigError(
                f"override {key!r}: keys start with 'train.' or 'model.' (e.g. model.contrastive=bpr, train.epochs=3)"
            )
    if t_over:
        train_cfg = with_overrides(train_cfg, t_over, "override train")
    if m_over:
        model_cfg = with_overrides(model_cfg, m_over, f"override model ({model})")
    return RunSpec(name=name, model=model, model_cfg=model_cfg, train_cfg=train_cfg, overrides=over)


def run(
    params: Mapping[str, Any],
    dataset: str,
    name: str,
    run_dir: str | Path,
    overrides: Any = None,
    prepared_dir: str | Path = "data/prepared",
    resume: bool = True,
    seed: int | None = None,
    **fit_kwargs: Any,
):
    """Resolve and train one run on a prepared dataset (what `python -m clsr train` does)."""
    from clsr.data.prepare import load_prepared
    from clsr.train import fit

    spec = resolve_run(params, name, overrides, seed)
    data = load_prepared(dataset, prepared_dir)
    return fit(data, spec.model, spec.model_cfg, spec.train_cfg, run_dir=run_dir, resume=resume, **fit_kwargs)
