"""What the notebooks need to run as DVC stages *and* as chapters in JupyterLab.

- `context()` finds the project root (notebooks run with cwd = notebooks/ in JupyterLab and with
  cwd = root under papermill), reads params.yaml, and in *tiny mode* (environment CLSR_TINY=1, used by
  the notebook tests) swaps in a tiny synthetic configuration and a scratch folder, so every notebook
  runs in seconds without touching the real pipeline outputs.
- Paths of every stage output are defined here once; dvc.yaml spells the same paths.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clsr.config import load_params

TINY_ENV = "CLSR_TINY"

#: the configuration used by the notebook tests: a tiny synthetic dataset, one short epoch
TINY_PARAMS: dict[str, Any] = {
    "pipeline": {
        "datasets": ["tiny"],
        "models": ["clsr", "din", "slirec"],
        "seeds": [0],
        "ablation_dataset": "tiny",
        "disentanglement_dataset": "tiny",
        "counterfactual_datasets": ["tiny"],
    },
    "datasets": {
        "tiny": {
            "source": {"name": "synthetic", "n_users": 60, "n_items": 120, "n_categories": 6, "mean_events": 25, "seed": 0},
            "protocol": {"split": "per_user", "valid_negatives": 4, "test_negatives": 19, "max_len": 20, "seed": 0},
        }
    },
    "train": {"epochs": 1, "patience": 1, "batch_size": 64, "progress": False, "threads": 1},
    "models": {},
    "ablations": {
        "contrastive": ["triplet", "none"],
        "k": [3],
        "length_threshold": [5],
        "contrastive_weight": [0.1],
        "fusion": ["attention", "fixed"],
        "sequential_model": ["time4lstm"],
        "rec_loss": ["softmax"],
    },
    "disentanglement": {"recent_k": 5, "shuffle_seed": 0, "models": ["clsr", "clsr_nocon", "slirec"]},
}


@dataclass
class Context:
    root: Path
    params: dict
    tiny: bool
    work: Path  # where data/, runs/ and reports/ live (the root, or a scratch folder in tiny mode)
    extra: dict = field(default_factory=dict)

    @property
    def raw_dir(self) -> Path:
        return self.work / "data" / "raw"

    @property
    def interim_dir(self) -> Path:
        return self.work / "data" / "interim"

    @property
    def prepared_dir(self) -> Path:
        return self.work / "data" / "prepared"

    @property
    def runs_dir(self) -> Path:
        return self.work / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.work / "reports"

    def metrics_path(self, kind: str, *parts: str) -> Path:
        """reports/metrics/<kind>/<part>/.../<last>.json"""
        return self.reports_dir.joinpath("metrics", kind, *parts[:-1], f"{parts[-1]}.json")

    def figure(self, name: str) -> Path:
        p = self.reports_dir / "figures" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def table(self, name: str) -> Path:
        p = self.reports_dir / "tables" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def find_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if (p / "params.yaml").exists() and (p / "clsr").is_dir():
            return p
    raise FileNotFoundError(f"no project root (a folder with params.yaml and clsr/) above {here}")


def context(tiny: bool | None = None) -> Context:
    """Resolve root, params and working folder; chdir to the root so relative paths are the same
    under papermill, JupyterLab and pytest."""
    root = find_root()
    os.chdir(root)
    if tiny is None:
        tiny = os.environ.get(TINY_ENV, "") not in ("", "0", "false")
    if not tiny:
        return Context(root=root, params=load_params(root / "params.yaml"), tiny=False, work=root)
    work = Path(os.environ.get("CLSR_TINY_DIR") or tempfile.mkdtemp(prefix="clsr-tiny-"))
    work.mkdir(parents=True, exist_ok=True)
    return Context(root=root, params=copy.deepcopy(TINY_PARAMS), tiny=True, work=work)


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# stage bodies (each notebook calls one of these, then shows what it produced)
# ------------------------------------------------------------------------------------------------
def interactions_stage(ctx: Context, dataset: str):
    """data@dataset: source -> data/interim/<dataset>/interactions.parquet (+ ground truth sidecars)."""
    import pandas as pd

    from clsr.data.prepare import RELEASED, dataset_config
    from clsr.data.sources import load_source
    from clsr.data.store import atomic_write_json

    source, _ = dataset_config(ctx.params, dataset)
    out = ctx.interim_dir / dataset
    tmp = out.with_name(f".{dataset}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    if source.get("name") == RELEASED:  # the released files are read as they are by the protocol stage
        df = pd.DataFrame(columns=["user", "item", "category", "ts"])
        atomic_write_json(tmp / "source.json", {"source": source, "released_files": True})
    else:
        df = load_source(source, ctx.raw_dir)
        table = df.copy(deep=False)
        table.attrs = {}  # pandas would try to store attrs (DataFrames inside) as parquet JSON metadata
        table.to_parquet(tmp / "interactions.parquet", index=False)
        profiles = df.attrs.get("user_profiles")
        if isinstance(profiles, pd.DataFrame):
            profiles.to_parquet(tmp / "user_profiles.parquet", index=False)
        atomic_write_json(tmp / "source.json", {"source": source, "source_files": df.attrs.get("source_files", {})})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return df


def read_interactions(ctx: Context, dataset: str):
    import pandas as pd

    folder = ctx.interim_dir / dataset
    meta = read_json(folder / "source.json")
    if meta.get("released_files"):
        return None
    df = pd.read_parquet(folder / "interactions.parquet")
    df.attrs["source_files"] = meta.get("source_files", {})
    if (folder / "user_profiles.parquet").exists():
        df.attrs["user_profiles"] = pd.read_parquet(folder / "user_profiles.parquet")
    return df


def protocol_stage(ctx: Context, dataset: str):
    """protocol@dataset: interim interactions -> data/prepared/<dataset> + reports/data/<dataset>/stats.json."""
    from clsr.data.prepare import prepare

    df = read_interactions(ctx, dataset)
    data = prepare(dataset, ctx.params, ctx.raw_dir, ctx.prepared_dir, interactions=df)
    dst = ctx.reports_dir / "data" / dataset
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.prepared_dir / dataset / "stats.json", dst / "stats.json")
    return data


def ensure_prepared(ctx: Context, dataset: str):
    """The prepared dataset; in tiny mode it is built on the spot when missing."""
    from clsr.data.prepare import load_prepared

    if ctx.tiny and not (ctx.prepared_dir / dataset / "meta.json").exists():
        if not (ctx.interim_dir / dataset / "source.json").exists():
            interactions_stage(ctx, dataset)
        protocol_stage(ctx, dataset)
    return load_prepared(dataset, ctx.prepared_dir)


#: pseudo-models: a registered model with fixed overrides
MODEL_ALIASES = {"clsr_nocon": ("clsr", {"model.contrastive": "none"})}


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``"model.contrastive=bpr,model.recent_k=3"`` -> dict. ``model.fusion=attention|fixed`` is the
    ablation's name for ``model.manual_alpha=false|true``."""
    import yaml

    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"override {part!r}: expected key=value")
        k, v = part.split("=", 1)
        k, v = k.strip(), yaml.safe_load(v)
        if k == "model.fusion":
            if v not in ("attention", "fixed"):
                raise ValueError(f"model.fusion: {v!r} is not one of ['attention', 'fixed']")
            out["model.manual_alpha"] = v == "fixed"
        else:
            out[k] = v
    return out


def run_paths(ctx: Context, group: str, dataset: str, variant: str) -> tuple[Path, Path]:
    """(run folder, metrics file) exactly as dvc.yaml names them."""
    if group == "main":
        return ctx.runs_dir / "main" / dataset / variant, ctx.metrics_path("main", dataset, variant)
    return ctx.runs_dir / "ablation" / group / variant, ctx.metrics_path("ablation", group, variant)


def train_stage(
    ctx: Context, dataset: str, model: str, seed: int, group: str, variant: str, overrides: str | dict | None = None
):
    """train / ablation stages: fit one model, copy its metrics.json where the report reads it."""
    from clsr.data.store import atomic_write_json
    from clsr.runs import resolve
    from clsr.train import fit

    over = parse_overrides(overrides) if isinstance(overrides, str) or overrides is None else dict(overrides)
    name = model
    if model in MODEL_ALIASES:
        name, extra = MODEL_ALIASES[model]
        over = {**extra, **over}
    over["train.seed"] = int(seed)
    model_cfg, train_cfg = resolve(ctx.params, name, over)
    data = ensure_prepared(ctx, dataset)
    run_dir, metrics_file = run_paths(ctx, group, dataset, variant)
    res = fit(data, name, model_cfg, train_cfg, run_dir=run_dir)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    res.metrics["variant"] = variant
    res.metrics["group"] = group
    res.metrics["overrides"] = dict(over)
    res.metrics["history"] = res.history  # the report draws training curves from committed files
    atomic_write_json(metrics_file, res.metrics)
    return res


def pick_dataset(ctx: Context, dataset: str) -> str:
    """The dataset a notebook works on: as asked, or the tiny one in tiny mode."""
    if ctx.tiny:
        return ctx.params["pipeline"]["datasets"][0]
    return dataset
