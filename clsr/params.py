"""params.yaml as typed configuration: one dataclass per section, every default documented beside its value.

    pipeline:        PipelineConfig        which datasets, models and seeds the pipeline runs
    datasets:        {name: DatasetConfig} a source (clsr.data.sources) and a protocol (clsr.data.protocol)
    train:           TrainConfig           optimisation and evaluation (clsr.train)
    models:          {name: {...}}         per-model settings, checked against the model's config class
    ablations:       AblationsConfig       the CLSR ablation axes
    disentanglement: DisentanglementConfig the counterfactual / ground-truth study
    sweep:           SweepConfig           the generator sweep (stages sweep_*, outside the default pipeline)

`check(data)` validates a whole params mapping and returns it normalised: every section present, every
default filled in from the classes below (params.yaml may restate them, for DVC). An unknown or misspelled
section or key anywhere is a `ConfigError` that names it and lists what is allowed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from clsr.config import ConfigError, from_dict, suggest, to_dict


@dataclass
class PipelineConfig:
    """What `dvc repro` runs (the stages of dvc.yaml loop over these lists)."""

    datasets: list[str] = field(default_factory=lambda: ["ml100k", "synthetic"])  # keys of `datasets`
    models: list[str] = field(default_factory=lambda: ["ncf", "lightgcn", "din", "gru4rec", "caser", "sasrec",
                                                       "dien", "slirec", "clsr"])  # registered model names
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # the main table reports mean ± std over these
    ablation_dataset: str = "ml100k"  # the dataset every ablation runs on
    disentanglement_dataset: str = "synthetic"  # a dataset whose generator recorded the driver of every event
    counterfactual_datasets: list[str] = field(default_factory=lambda: ["ml100k", "synthetic"])
    oracle_datasets: list[str] = field(default_factory=list)  # synthetic datasets the oracle stage scores

    def validate(self, where: str = "pipeline") -> None:
        if not self.datasets:
            raise ConfigError(f"{where}.datasets: list at least one dataset")
        if not self.seeds:
            raise ConfigError(f"{where}.seeds: list at least one seed")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"{where}.seeds: seeds must be >= 0, got {self.seeds}")
        for key in ("datasets", "models", "seeds"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key}: {values} lists a value twice")


@dataclass
class AblationsConfig:
    """The ablation axes, each run on `pipeline.ablation_dataset`; every list is one axis. A value equal to the
    main configuration reuses the main table's runs of the same seeds (clsr/stages/train.py)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # the headline axes: contrastive × k, slirec_mask
    other_seeds: list[int] = field(default_factory=lambda: [0])  # every other axis (its table says when it is one)
    contrastive: list[Literal["triplet", "bpr", "none"]] = field(default_factory=lambda: ["triplet", "bpr", "none"])
    k: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])  # recent k of the short-term proxy (× contrastive)
    length_threshold: list[int] = field(default_factory=lambda: [0, 5, 10, 20])  # l_t of the contrastive loss
    contrastive_weight: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])  # β
    normalized_margin: list[float] = field(default_factory=lambda: [0.01])  # triplet on unit vectors, margin per dim
    fusion: list[Literal["attention", "fixed"]] = field(default_factory=lambda: ["attention", "fixed"])
    sequential_model: list[Literal["time4lstm", "gru", "lstm"]] = field(
        default_factory=lambda: ["time4lstm", "gru", "lstm"])
    rec_loss: list[Literal["softmax", "bce"]] = field(default_factory=lambda: ["softmax", "bce"])
    slirec_mask: list[bool] = field(default_factory=lambda: [True, False])  # SLi-Rec long-term padding mask

    def validate(self, where: str = "ablations") -> None:
        for key in ("seeds", "other_seeds"):
            values = getattr(self, key)
            if not values or any(s < 0 for s in values) or len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key}: list distinct seeds >= 0, got {values}")
        if any(k < 1 for k in self.k):
            raise ConfigError(f"{where}.k: every k must be >= 1, got {self.k}")
        if any(v < 0 for v in self.length_threshold):
            raise ConfigError(f"{where}.length_threshold: values must be >= 0, got {self.length_threshold}")
        if any(not v >= 0 for v in self.contrastive_weight):
            raise ConfigError(f"{where}.contrastive_weight: values must be >= 0, got {self.contrastive_weight}")
        if any(not v > 0 for v in self.normalized_margin):
            raise ConfigError(f"{where}.normalized_margin: values must be > 0, got {self.normalized_margin}")


@dataclass
class DisentanglementConfig:
    """The disentanglement study (notebook 05)."""

    recent_k: int = 5  # counterfactual: keep only the last k events of each test history
    shuffle_seed: int = 0  # counterfactual: fixed permutation of each test history
    models: list[str] = field(default_factory=lambda: ["clsr", "clsr_nocon", "slirec"])  # names or aliases

    def validate(self, where: str = "disentanglement") -> None:
        if self.recent_k < 1:
            raise ConfigError(f"{where}.recent_k: must be >= 1, got {self.recent_k}")
        if self.shuffle_seed < 0:
            raise ConfigError(f"{where}.shuffle_seed: must be >= 0, got {self.shuffle_seed}")
        if not self.models:
            raise ConfigError(f"{where}.models: list at least one model")


@dataclass
class SweepConfig:
    """The generator sweep (`clsr.stages.sweep`, stages sweep_* of dvc.yaml, not run by `make repro`): one
    synthetic dataset per (p_short_mean, mean_topic_run) cell, each studied with the oracle and `models`
    over `seeds`."""

    p_short_mean: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8])  # the source option, one axis
    mean_topic_run: list[float] = field(default_factory=lambda: [3.0, 8.0, 20.0])  # the other axis
    models: list[str] = field(default_factory=lambda: ["clsr", "clsr_nocon", "slirec"])  # names or aliases
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    source: dict = field(default_factory=lambda: {"n_users": 500, "seed": 0})  # other synthetic options of every cell
    protocol: dict = field(default_factory=dict)  # clsr.data.protocol.ProtocolConfig keys of every cell
    # train overrides of every run: to early stopping on every train instance, no full-ranking test (not used)
    train: dict = field(default_factory=lambda: {"epochs": 30, "patience": 3, "max_train_instances": 0,
                                                 "full_ranking_max_items": 0})

    def validate(self, where: str = "sweep") -> None:
        from clsr.config import with_overrides
        from clsr.data.protocol import ProtocolConfig
        from clsr.data.synthetic import SyntheticOptions
        from clsr.train import TrainConfig

        for key in ("p_short_mean", "mean_topic_run", "models", "seeds"):
            values = getattr(self, key)
            if not values:
                raise ConfigError(f"{where}.{key}: list at least one value")
            if len(set(values)) != len(values):
                raise ConfigError(f"{where}.{key}: {values} lists a value twice")
        if any(not 0.0 <= p <= 1.0 for p in self.p_short_mean):
            raise ConfigError(f"{where}.p_short_mean: values must lie in [0, 1], got {self.p_short_mean}")
        if any(not r >= 1.0 for r in self.mean_topic_run):
            raise ConfigError(f"{where}.mean_topic_run: values must be >= 1, got {self.mean_topic_run}")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"{where}.seeds: seeds must be >= 0, got {self.seeds}")
        source = dict(self.source)
        if source.pop("name", "synthetic") != "synthetic":
            raise ConfigError(f"{where}.source.name: the sweep varies the synthetic generator; drop the key or write synthetic")
        for key in ("p_short_mean", "mean_topic_run"):
            if key in source:
                raise ConfigError(f"{where}.source.{key}: set by the sweep's axis; list its values under {where}.{key}")
        from_dict(SyntheticOptions, source, f"{where}.source")
        self.protocol = to_dict(from_dict(ProtocolConfig, self.protocol, f"{where}.protocol"))
        with_overrides(TrainConfig(), dict(self.train), f"{where}.train")


@dataclass
class DatasetConfig:
    """One dataset: where its events come from and how they are split and evaluated."""

    source: dict  # {name: <source>, ...options}; see clsr.data.sources.SOURCES
    protocol: dict = field(default_factory=dict)  # clsr.data.protocol.ProtocolConfig keys

    def validate(self, where: str = "datasets.<name>") -> None:
        from clsr.data.protocol import ProtocolConfig
        from clsr.data.sources import SOURCES

        if not isinstance(self.source, Mapping):
            raise ConfigError(f"{where}.source: expected a mapping such as {{name: ml100k}}, got {self.source!r}")
        name = self.source.get("name")
        if name is None:
            raise ConfigError(f"{where}.source: missing 'name' (one of {sorted(SOURCES)})")
        if name not in SOURCES:
            raise ConfigError(f"{where}.source.name: unknown source {name!r}; known sources: {sorted(SOURCES)}")
        self.protocol = to_dict(from_dict(ProtocolConfig, self.protocol, f"{where}.protocol"))


#: the datasets when params.yaml has no `datasets` section (the two that need no download)
DEFAULT_DATASETS: dict[str, dict] = {
    "ml100k": {"source": {"name": "ml100k"}},
    "synthetic": {"source": {"name": "synthetic"}},
}

SECTIONS = ("pipeline", "datasets", "train", "models", "ablations", "disentanglement", "sweep")


def _mapping(value: Any, where: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {value!r}")
    return value


def check(data: Mapping[str, Any], where: str = "params.yaml") -> dict:
    """Validate a whole params mapping; return it normalised (every section, every default filled in)."""
    from clsr.models.registry import build_config, model_names
    from clsr.runs import MODEL_ALIASES
    from clsr.train import TrainConfig

    data = _mapping(data, where)
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"{where}: unknown section {k!r}{suggest(k, SECTIONS)}; sections are {list(SECTIONS)}")

    pipeline = from_dict(PipelineConfig, _mapping(data.get("pipeline"), f"{where} pipeline"), f"{where} pipeline")
    datasets = {}
    given = data.get("datasets", DEFAULT_DATASETS)
    for name, ds in _mapping(given, f"{where} datasets").items():
        datasets[str(name)] = to_dict(from_dict(DatasetConfig, _mapping(ds, f"{where} datasets.{name}"),
                                                f"{where} datasets.{name}"))
    train = from_dict(TrainConfig, _mapping(data.get("train"), f"{where} train"), f"{where} train")
    models = {}
    for name, mcfg in _mapping(data.get("models"), f"{where} models").items():
        if name not in model_names():
            raise ConfigError(f"{where} models: unknown model {name!r}{suggest(name, model_names())}; "
                              f"registered models: {model_names()}")
        models[name] = to_dict(build_config(name, _mapping(mcfg, f"{where} models.{name}")))
    ablations = from_dict(AblationsConfig, _mapping(data.get("ablations"), f"{where} ablations"), f"{where} ablations")
    dis = from_dict(DisentanglementConfig, _mapping(data.get("disentanglement"), f"{where} disentanglement"),
                    f"{where} disentanglement")

    sweep = from_dict(SweepConfig, _mapping(data.get("sweep"), f"{where} sweep"), f"{where} sweep")

    runnable = set(model_names()) | set(MODEL_ALIASES)
    for key, names in (("pipeline.models", pipeline.models), ("disentanglement.models", dis.models),
                       ("sweep.models", sweep.models)):
        for m in names:
            if m not in runnable:
                raise ConfigError(f"{where} {key}: unknown model {m!r}{suggest(m, runnable)}; "
                                  f"models and aliases: {sorted(runnable)}")
    for key in ("datasets", "counterfactual_datasets", "oracle_datasets"):
        for d in getattr(pipeline, key):
            if d not in datasets:
                raise ConfigError(f"{where} pipeline.{key}: {d!r} is not defined under `datasets`"
                                  f"{suggest(d, datasets)}; defined: {sorted(datasets)}")
    for d in pipeline.oracle_datasets:
        if (datasets[d]["source"] or {}).get("name") != "synthetic":
            raise ConfigError(f"{where} pipeline.oracle_datasets: {d!r} does not come from the synthetic source; "
                              "the oracle needs the generator's parameters")
    for key in ("ablation_dataset", "disentanglement_dataset"):
        d = getattr(pipeline, key)
        if d not in datasets:
            raise ConfigError(f"{where} pipeline.{key}: {d!r} is not defined under `datasets`"
                              f"{suggest(d, datasets)}; defined: {sorted(datasets)}")
    return {
        "pipeline": to_dict(pipeline),
        "datasets": datasets,
        "train": to_dict(train),
        "models": models,
        "ablations": to_dict(ablations),
        "disentanglement": to_dict(dis),
        "sweep": to_dict(sweep),
    }


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML of `path`; a missing, unreadable or malformed file is one ConfigError naming it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file {path} not found (looked in {path.resolve().parent}); run from the "
                          "project root or pass --params PATH")
    if path.is_dir():
        raise ConfigError(f"params file {path} is a directory; pass the path of a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None


def load(path: str | Path = "params.yaml") -> dict:
    """Read, validate and normalise a params file (see `check`)."""
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections {list(SECTIONS)}")
    return check(data, str(Path(path).name))
