"""A catalogue of mistakes a user can make, walked through the command line.

For each: exit code 2, no traceback, one line on stderr that names the culprit (file, key, column, row or
value), and no file created, changed or left half-written in the project folder.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clsr.cli import main

TINY = {
    "pipeline": {"datasets": ["tiny"], "models": ["clsr"], "seeds": [0], "ablation_dataset": "tiny",
                 "disentanglement_dataset": "tiny", "counterfactual_datasets": ["tiny"]},
    "datasets": {
        "tiny": {"source": {"name": "synthetic", "n_users": 40, "n_items": 80, "n_categories": 5,
                            "mean_events": 20, "seed": 0},
                 "protocol": {"valid_negatives": 4, "test_negatives": 9, "max_len": 10, "seed": 0}},
        "log": {"source": {"name": "csv", "path": "raw/log.csv",
                           "columns": {"user": "u", "item": "i", "category": "c", "ts": "t"}},
                "protocol": {"valid_negatives": 2, "test_negatives": 2, "max_len": 10}},
    },
    "train": {"epochs": 1, "patience": 1, "batch_size": 32, "eval_batch_size": 64, "threads": 1, "progress": False},
}

GOOD_CSV = "u,i,c,t\n" + "".join(f"{u},{i},{i % 3},{100 * k}\n" for u in range(6) for k, i in enumerate(range(u, u + 8)))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime; a run folder's `.lock` is left out (taking the lock writes the holder's pid)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.name != ".lock"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A folder with params.yaml, a good CSV log and the tiny dataset prepared and trained once."""
    root = tmp_path_factory.mktemp("proj")
    (root / "raw").mkdir()
    (root / "raw" / "log.csv").write_text(GOOD_CSV)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare", "--dataset", "tiny", "--raw-dir", "raw", "--out-dir", "prepared"]) == 0
        assert main(["train", "--dataset", "tiny", "--model", "clsr", "--prepared-dir", "prepared",
                     "--run-dir", "runs/ok"]) == 0
    finally:
        os.chdir(cwd)
    return root


def run_bad(project: Path, tmp_path: Path, capsys, argv: list[str], culprit: str, params_text: str | None = None,
            setup=None):
    """Copy the project, break it (params / setup), run the CLI and check the four promises."""
    import shutil

    root = tmp_path / "p"
    shutil.copytree(project, root)
    if params_text is not None:
        (root / "params.yaml").write_text(params_text)
    if setup is not None:
        setup(root)
    before = snapshot(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        capsys.readouterr()
        code = main(argv)
    finally:
        os.chdir(cwd)
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert code == 2, f"exit code {code}; stderr:\n{out.err}"
    assert "Traceback" not in out.err + out.out
    assert len(lines) == 1, f"expected one line on stderr, got:\n{out.err}"
    assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert snapshot(root) == before, "files were created or changed by a failed command"
    return lines[0]


def with_params(**edits) -> str:
    params = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in edits.items():
        node = params
        *head, last = dotted.split("/")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return yaml.safe_dump(params, sort_keys=False)


def write(rel: str, content: bytes | str):
    def setup(root: Path):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    return setup


def truncate(rel: str, keep: float = 0.5):
    def setup(root: Path):
        p = root / rel
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * keep)])
    return setup


class Boom:
    """A pickle that would create a marker file when unpickled with weights_only=False."""

    def __reduce__(self):
        return (open, ("PWNED", "w"))


def crafted_checkpoint(rel: str):
    def setup(root: Path):
        with open(root / rel, "wb") as f:
            pickle.dump({"model": Boom()}, f)
    return setup


PREPARE_CSV = ["prepare", "--dataset", "log", "--raw-dir", ".", "--out-dir", "prepared"]
TRAIN = ["train", "--dataset", "tiny", "--prepared-dir", "prepared"]

CASES = {
    # params.yaml
    "malformed yaml": (["check-params"], "params.yaml", "train:\n  epochs: [1\n", None),
    "misspelled section": (["check-params"], "trian", with_params().replace("train:", "trian:"), None),
    "misspelled model section": (TRAIN, "model", with_params().replace("\ntrain:", "\nmodel: {}\ntrain:"), None),
    "missing params file": (TRAIN + ["--params", "nope.yaml"], "nope.yaml", None, None),
    "rec_loss foo": (TRAIN + ["--set", "model.rec_loss=foo"], "rec_loss", None, None),
    "device gpu": (TRAIN + ["--set", "train.device=gpu"], "device", None, None),
    "threads -1": (TRAIN + ["--set", "train.threads=-1"], "threads", None, None),
    "lr 0": (TRAIN + ["--set", "train.lr=0"], "lr", None, None),
    "lr nan": (TRAIN + ["--set", "train.lr=.nan"], "lr", None, None),
    "seed -1": (TRAIN + ["--seed", "-1"], "seed", None, None),
    "eval_batch_size 0": (TRAIN + ["--set", "train.eval_batch_size=0"], "eval_batch_size", None, None),
    "batch smaller than 1 + n_neg": (TRAIN + ["--set", "train.batch_size=3"], "batch_size", None, None),
    "unknown override key": (TRAIN + ["--set", "model.contrastiv=bpr"], "contrastiv", None, None),
    "override without =": (TRAIN + ["--set", "model.contrastive"], "model.contrastive", None, None),
    "override outside train/model": (TRAIN + ["--set", "optim.lr=1"], "optim.lr", None, None),
    "unknown model": (TRAIN + ["--model", "clrs"], "clrs", None, None),
    "unknown dataset": (["train", "--dataset", "tiyn", "--prepared-dir", "prepared"], "tiyn", None, None),
    "recent_k >= max_len": (TRAIN + ["--set", "model.recent_k=10"], "recent_k", None, None),
    "dataset not prepared": (["train", "--dataset", "log", "--prepared-dir", "prepared"], "log", None, None),
    "empty valid split": (PREPARE_CSV, "valid_fraction",
                          with_params(**{"datasets/log/protocol/split": "time_fraction",
                                         "datasets/log/protocol/valid_fraction": 0.0}), None),
    # raw CSV files
    "0-byte csv": (PREPARE_CSV, "log.csv", None, write("raw/log.csv", b"")),
    "non-utf8 csv": (PREPARE_CSV, "log.csv", None, write("raw/log.csv", GOOD_CSV.encode() + b"7,\xff\xfe,1,5\n")),
    "directory as csv": (PREPARE_CSV, "log.csv", None, lambda r: ((r / "raw/log.csv").unlink(), (r / "raw/log.csv").mkdir())),
    "ragged rows": (PREPARE_CSV, "line", None, write("raw/log.csv", GOOD_CSV + "9,1,2,3,4,5\n")),
    "missing column": (PREPARE_CSV, "'c'", None, write("raw/log.csv", "u,i,t\n1,2,3\n")),
    "blank item id": (PREPARE_CSV, "i", None, write("raw/log.csv", GOOD_CSV + "3,,1,999\n")),
    "NaN user id": (PREPARE_CSV, "u", None, write("raw/log.csv", GOOD_CSV + "NaN,5,1,999\n")),
    "missing csv": (PREPARE_CSV, "log.csv", None, lambda r: (r / "raw/log.csv").unlink()),
    # stored data and checkpoints
    "truncated arrays": (TRAIN, "tiny", None, lambda r: [truncate(str(p.relative_to(r)))(r)
                                                         for p in (r / "prepared/tiny").glob("*.npz")]),
    "truncated last.pt": (TRAIN + ["--run-dir", "runs/ok"], "last.pt", None, truncate("runs/ok/last.pt")),
    "crafted best.pt": (["evaluate", "--run-dir", "runs/ok", "--prepared-dir", "prepared"], "best.pt", None,
                        crafted_checkpoint("runs/ok/best.pt")),
    "evaluate without a run": (["evaluate", "--run-dir", "runs/none", "--prepared-dir", "prepared"], "runs/none",
                               None, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_in_one_line(case, project, tmp_path, capsys):
    argv, culprit, params_text, setup = CASES[case]
    run_bad(project, tmp_path, capsys, argv, culprit, params_text, setup)
    assert not (tmp_path / "p" / "PWNED").exists()


def test_evaluate_refuses_other_data(project, tmp_path, capsys):
    """A run evaluated against a dataset prepared with another protocol seed: refused, naming the run."""
    def reprepare(root: Path):
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["datasets"]["tiny"]["protocol"]["seed"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            assert main(["prepare", "--dataset", "tiny", "--raw-dir", "raw", "--out-dir", "prepared"]) == 0
        finally:
            os.chdir(cwd)
    line = run_bad(project, tmp_path, capsys, ["evaluate", "--run-dir", "runs/ok", "--prepared-dir", "prepared"],
                   "runs/ok", setup=reprepare)
    assert "allow-other-data" in line


def test_debug_shows_the_traceback(project, tmp_path):
    """Through a real process: exit code 2 and one line; with --debug the traceback."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "clsr", "train", "--dataset", "tiny", "--prepared-dir", "prepared",
           "--set", "train.device=gpu"]
    res = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "device" in res.stderr
    res = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], cwd=project, env=env, capture_output=True, text=True,
                         timeout=120)
    assert "Traceback" in res.stderr
