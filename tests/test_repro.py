"""clsr.repro: the [stage k/N] progress lines around DVC's output, on a scripted output and clock."""
from clsr.repro import annotate, prune_stale, stale_entries


def test_progress_lines_count_stages_and_time_them():
    dvc_out = ["Running stage 'a':\n", "> papermill ...\n", "Running stage 'b':\n", "done b\n",
               "Use `dvc push` to send your updates to remote storage.\n"]
    ticks = iter([0.0, 0.0, 60.0, 150.0])  # start, stage a starts, stage b starts, end
    written: list[str] = []
    times = annotate(dvc_out, 2, written.append, clock=lambda: next(ticks))
    assert times == [("a", 60.0), ("b", 90.0)]
    assert written[0] == "[stage 1/2] a (0.0 min elapsed)\n"
    assert written[3] == "[stage 2/2] b (1.0 min elapsed)\n"
    assert [w for w in written if not w.startswith("[stage")] == dvc_out  # DVC's lines pass unchanged


def test_more_stages_than_planned_never_print_k_above_n():
    written: list[str] = []
    annotate(["Running stage 'a':\n", "Running stage 'b':\n"], 1, written.append, clock=iter(range(10)).__next__)
    assert written[2].startswith("[stage 2/2] b")


def test_no_stage_to_run():
    written: list[str] = []
    assert annotate(["Stage 'a' didn't change, skipping\n"], 0, written.append) == []
    assert written == ["Stage 'a' didn't change, skipping\n"]


def _lock(**stages):
    return {"schema": "2.0", "stages": {n: {"cmd": "x", "outs": [{"path": p} for p in outs]} for n, outs in stages.items()}}


def test_stale_entries_are_the_stages_dvc_yaml_no_longer_renders():
    lock = _lock(**{"a@1": ["r/a_1.json", "r/shared"], "a@1-0": ["r/a_1_seed0.json", "r/shared"], "b": ["r/b.md"]})
    names, paths = stale_entries(lock, ["a@1-0", "b"])
    assert names == ["a@1"]
    assert paths == ["r/a_1.json"]  # r/shared is also an output of a current stage: kept


def test_prune_stale_deletes_only_undeclared_outputs_and_rewrites_the_lock(tmp_path):
    import io

    import yaml

    for rel in ("r/old.json", "r/new.json", "r/olddir/x.ipynb"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    lock = _lock(**{"old": ["r/old.json", "r/olddir"], "new": ["r/new.json"]})
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    out = io.StringIO()
    assert prune_stale(tmp_path, current=["new"], out=out) == ["old"]
    assert not (tmp_path / "r/old.json").exists() and not (tmp_path / "r/olddir").exists()
    assert (tmp_path / "r/new.json").exists()
    assert list(yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]) == ["new"]
    assert "dropped 1 stale dvc.lock entry (old)" in out.getvalue()
    assert prune_stale(tmp_path, current=["new"], out=out) == []  # nothing left to prune


def test_the_committed_lock_has_no_stale_entry():
    """Every dvc.lock entry is a stage dvc.yaml renders today, so nothing in reports/ is a leftover."""
    from pathlib import Path

    import yaml

    from clsr.prefill import rendered_stages

    root = Path(__file__).resolve().parent.parent
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    names, _ = stale_entries(lock, [n for n, _ in rendered_stages(root)])
    assert names == [], f"dvc.lock entries of stages dvc.yaml no longer has: {names} (python -m clsr repro prunes them)"


def test_make_readme_replaces_only_the_results_block(tmp_path):
    from clsr.report import README_END, README_START, update_readme

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n<!-- results:start (any note) -->\nold table\n{README_END}\n\nafter\n")
    assert update_readme(readme, "| new |\n")
    assert readme.read_text() == f"# x\n\nbefore\n\n{README_START}\n| new |\n{README_END}\n\nafter\n"
    assert update_readme(readme, "| new |\n")  # idempotent: the written marker is found again
    (tmp_path / "plain.md").write_text("# no markers\n")
    assert not update_readme(tmp_path / "plain.md", "| t |\n")


def test_no_output_dvc_caches_is_tracked_by_git():
    """An output DVC caches (no `cache: false`) must not be in git: `dvc repro` refuses to write such an output
    ("already tracked by SCM") and stops the pipeline there. A .gitignore left with stale names lets one in."""
    import shutil
    import subprocess
    from pathlib import Path

    import pytest
    from dvc.repo import Repo

    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = set(subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True,
                                 text=True).stdout.split("\0"))
    with Repo(str(root)) as repo:
        cached = [str(Path(o.fs_path).relative_to(root)) for st in repo.index.stages for o in st.outs if o.use_cache]
    assert cached, "no cached output found: the test reads dvc.yaml wrongly"
    both = sorted(p for p in cached if p in tracked or any(t.startswith(p + "/") for t in tracked))
    assert both == [], (f"{len(both)} DVC-cached outputs are tracked by git, e.g. {both[:3]}: "
                        "git rm -r --cached them (DVC lists them in .gitignore when it writes them)")
