"""The whole DVC pipeline, end to end, on a tiny configuration in a temporary copy of the project.

Checks that `dvc repro` runs every stage (papermill notebooks included), that every declared output
exists, that the report table has a row for every model, and that a second `dvc repro` with nothing
changed does nothing.
"""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clsr.models.registry import model_names
from clsr.pipeline import TINY_PARAMS

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

#: what `make repro` reproduces (the Makefile's REPRO_TARGETS): every table and figure but the generator sweep,
#: which has its own test (tests/test_ceilings.py)
REPRO_TARGETS = ("report", "ablation_report", "disentanglement", "cost")


def tiny_pipeline_params() -> dict:
    with open(ROOT / "params.yaml") as f:
        params = yaml.safe_load(f)
    tiny = copy.deepcopy(TINY_PARAMS)
    params["datasets"] = tiny["datasets"]
    params["pipeline"] = {
        "datasets": ["tiny"],
        "models": model_names(),
        "seeds": [0],
        "ablation_dataset": "tiny",
        "disentanglement_dataset": "tiny",
        "counterfactual_datasets": ["tiny"],
        "oracle_datasets": ["tiny"],
    }
    params["train"].update(tiny["train"])
    params["ablations"] = tiny["ablations"]
    params["disentanglement"] = tiny["disentanglement"]
    # the generator sweep is not among the targets below; a tiny one all the same, should a plain `dvc repro` run
    params["sweep"] = {"p_short_mean": [0.5], "mean_topic_run": [8], "models": ["clsr"], "seeds": [0],
                       "source": dict(tiny["datasets"]["tiny"]["source"]), "protocol": {"test_negatives": 19, "max_len": 20},
                       "train": {"epochs": 1, "patience": 1, "batch_size": 64, "threads": 1, "full_ranking_max_items": 0}}
    return params


def _copy_project(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        # the real run's results and lock file stay behind: the tiny project starts with no outputs
        if not src.is_file() or rel.startswith(("reports/", "data/")) or rel == "dvc.lock":
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSR_TINY")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, timeout: int = 1200) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}")
    return res


def test_dvc_repro_tiny(tmp_path):
    proj = tmp_path / "proj"
    _copy_project(proj)
    with open(proj / "params.yaml", "w") as f:
        yaml.safe_dump(tiny_pipeline_params(), f, sort_keys=False)
    _run(["git", "init", "-q"], proj)
    _run(["git", "add", "-A"], proj)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], proj)

    # the runs trained side by side first (clsr prefill), then `dvc repro` only reuses them
    _run([str(VENV_BIN / "dvc"), "repro", "protocol"], proj)
    pre = _run([str(VENV_BIN / "python"), "-m", "clsr", "prefill", "--jobs", "2"], proj)
    assert "in 2 process(es)" in pre.stdout and "failed" not in pre.stdout, pre.stdout[-3000:]
    finished = {p: p.stat().st_mtime_ns for p in (proj / "runs").rglob("metrics.json")}
    assert finished, "prefill trained nothing"
    repro = _run([str(VENV_BIN / "python"), "-m", "clsr", "repro", *REPRO_TARGETS], proj)
    assert "the same run is finished" in repro.stdout + repro.stderr
    progress = [ln for ln in repro.stdout.splitlines() if ln.startswith("[stage ")]
    assert progress and progress[0].startswith("[stage 1/"), repro.stdout[-3000:]
    assert len(progress) == repro.stdout.count("Running stage '"), "a stage ran without its [stage k/N] line"
    after = {p: p.stat().st_mtime_ns for p in (proj / "runs").rglob("metrics.json")}
    assert after == finished, "dvc repro trained a run again, or a new one, after prefill"

    # every output declared in dvc.lock exists
    with open(proj / "dvc.lock") as f:
        lock = yaml.safe_load(f)
    missing = [o["path"] for st in lock["stages"].values() for o in st.get("outs", []) if not (proj / o["path"]).exists()]
    assert not missing, f"declared outputs missing after dvc repro: {missing}"

    table = (proj / "reports" / "tables" / "main.md").read_text()
    from clsr.report import MODEL_LABELS

    for m in model_names():
        assert f"| {MODEL_LABELS.get(m, m)} |" in table, f"no row for {m} in the main table:\n{table}"
    assert (proj / "reports" / "results.json").exists()
    assert list((proj / "reports" / "tables" / "ablations").glob("ablation_*.md"))
    assert (proj / "reports" / "tables" / "disentanglement.md").exists()
    assert "| **all** |" in (proj / "reports" / "tables" / "cost.md").read_text()

    # executed notebooks carry no warnings (e.g. tqdm.auto asking the kernel for ipywidgets: "IProgress not found")
    noisy = [str(p.relative_to(proj)) for p in (proj / "reports" / "notebooks").rglob("*.ipynb")
             if "Warning" in p.read_text() or "IProgress" in p.read_text()]
    assert not noisy, f"warnings in executed notebooks: {noisy}"

    status = _run([str(VENV_BIN / "dvc"), "repro", *REPRO_TARGETS], proj)
    assert "up to date" in (status.stdout + status.stderr).lower(), status.stdout

    # README: `dvc exp run -S key=value` re-runs exactly what reads the key and records the experiment
    exp = _run([str(VENV_BIN / "dvc"), "exp", "run", "-S", "models.clsr.recent_k=5", *REPRO_TARGETS], proj)
    log = exp.stdout + exp.stderr
    assert "Running stage 'train@tiny-clsr-0'" in log, log[-3000:]
    assert "Running stage 'train@tiny-ncf-0'" not in log, "a stage that does not read models.clsr re-ran"
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(_run([str(VENV_BIN / "dvc"), "exp", "show", "--csv"], proj).stdout)))
    col = next((c for c in (rows[0] if rows else {}) if c.endswith("models.clsr.recent_k")), None)
    assert col is not None, f"no models.clsr.recent_k column in dvc exp show: {list(rows[0]) if rows else rows}"
    assert {r[col] for r in rows} >= {"3", "5"}, [(r.get("Experiment"), r[col]) for r in rows]

    # a misspelled section stops `dvc repro` before any work, with one line naming it
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["trian"] = params["train"]
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bad = subprocess.run([str(VENV_BIN / "dvc"), "repro", *REPRO_TARGETS], cwd=proj, env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode != 0
    lines = [ln for ln in (bad.stdout + bad.stderr).splitlines() if "unknown section 'trian'" in ln]
    assert lines, (bad.stdout + bad.stderr)[-3000:]
    assert "did you mean 'train'" in lines[0]
    assert "Traceback" not in bad.stdout + bad.stderr


@pytest.mark.parametrize("makefile", [ROOT / "Makefile"])
def test_the_repro_targets_are_the_makefiles(makefile):
    line = next(ln for ln in makefile.read_text().splitlines() if ln.startswith("REPRO_TARGETS :="))
    assert tuple(line.split(":=", 1)[1].split()) == REPRO_TARGETS
