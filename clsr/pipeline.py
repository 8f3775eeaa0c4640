"""The context every stage runs in, as a DVC stage *and* as a chapter opened in JupyterLab.

- `context()` finds the project root (notebooks run with cwd = notebooks/ in JupyterLab and with
  cwd = root under papermill), reads params.yaml, and in *tiny mode* (environment CLSR_TINY=1, used by
  the notebook tests) swaps in a tiny synthetic configuration and a scratch folder, so every notebook
  runs in seconds without touching the real pipeline outputs.
- Paths of every stage output are defined here once; dvc.yaml spells the same paths.

The stage bodies live in `clsr.stages` (one module per notebook).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clsr.config import load_params
from clsr.params import check

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
        "seeds": [0],
        "other_seeds": [0],
        "contrastive": ["triplet", "none"],
        "k": [3],
        "length_threshold": [5],
        "contrastive_weight": [0.1],
        "normalized_margin": [0.01],
        "fusion": ["attention", "fixed"],
        "sequential_model": ["time4lstm"],
        "rec_loss": ["softmax"],
        "slirec_mask": [True, False],
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

    def shown(self, path: str | Path) -> str:
        """`path` as logs and executed notebooks print it: relative to the project root when it lies inside
        it (committed notebooks then name no machine path), else as it is."""
        p = Path(path).absolute()
        return p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(path)


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
    return Context(root=root, params=check(copy.deepcopy(TINY_PARAMS), "tiny params"), tiny=True, work=work)


def read_json(path: str | Path) -> Any:
    with open(path) as f:
        return json.load(f)


def run_paths(ctx: Context, group: str, dataset: str, variant: str) -> Path:
    """The metrics file of a run, exactly as dvc.yaml names it: reports/metrics/main/<dataset>/<variant>.json for
    the main table, reports/metrics/ablation/<group>/<variant>.json for an ablation axis (per-instance test
    values beside it, .npz)."""
    if group == "main":
        return ctx.metrics_path("main", dataset, variant)
    return ctx.metrics_path("ablation", group, variant)


def main_run_dir(ctx: Context, dataset: str, variant: str) -> Path | None:
    """The run folder behind the main-table metrics file of `variant` (e.g. ``clsr_seed0``), or None when that
    run has not finished."""
    metrics = run_paths(ctx, "main", dataset, variant)
    if not metrics.exists():
        return None
    return ctx.work / read_json(metrics)["run_dir"]


def pick_dataset(ctx: Context, dataset: str) -> str:
    """The dataset a notebook works on: as asked, or the tiny one in tiny mode."""
    if ctx.tiny:
        return ctx.params["pipeline"]["datasets"][0]
    return dataset
