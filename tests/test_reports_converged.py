"""The committed reports come from converged runs: every run behind reports/tables/main.md and
reports/tables/ablations/ used all training instances and stopped by patience, not at the epoch cap."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
METRICS = ROOT / "reports" / "metrics"
RUN_FILES = sorted((METRICS / "main").rglob("*.json")) + sorted((METRICS / "ablation").rglob("*.json"))


def test_there_are_runs_behind_the_tables():
    assert len(list((METRICS / "main").rglob("*.json"))) > 0 and len(list((METRICS / "ablation").rglob("*.json"))) > 0


@pytest.mark.parametrize("path", RUN_FILES, ids=[str(p.relative_to(METRICS)) for p in RUN_FILES])
def test_run_used_every_instance_and_stopped_by_patience(path):
    m = json.loads(path.read_text())
    train = m["config"]["train"]
    assert train["max_train_instances"] == 0, f"{path}: trained on a subset of {train['max_train_instances']}"
    assert m["stop_reason"] == "patience", f"{path}: stopped at the epoch cap ({m['epochs_run']} epochs)"
    assert m["epochs_run"] == m["best_epoch"] + train["patience"], path  # stopped by patience, exactly
    assert m["epochs_run"] < train["epochs"], path


def test_main_table_has_every_protocol_and_the_paired_intervals():
    md = (ROOT / "reports" / "tables" / "main.md").read_text()
    for heading in ("negatives sampled by popularity", "negatives sampled uniformly", "full ranking",
                    "Paired differences", "Do the protocols order the models alike?"):
        assert heading in md, heading


def test_every_run_comes_from_one_training_code_and_the_readme_names_it():
    hashes = {json.loads(p.read_text())["code_hash"] for p in RUN_FILES}
    assert len(hashes) == 1, f"the tables mix runs of several training codes: {sorted(hashes)}; run `make repro`"
    readme = (ROOT / "README.md").read_text()
    results = readme[readme.index("## Results"):readme.index("<!-- results:start")]
    assert f"`{hashes.pop()}`" in results, "the README's Results section must name the training-code hash of the runs"
