"""`clsr.data.store.atomic_path` and the atomic writers built on it."""
from __future__ import annotations

import json
import stat

import pytest

from clsr.data.store import atomic_path, atomic_write_json, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_path_success_renames_with_mode(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.bin.") and tmp.exists()
        assert not target.exists()  # nothing visible under the final name while writing
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert _mode(target) == 0o644  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]  # no temp left over


def test_atomic_path_mode_and_suffix(tmp_path):
    target = tmp_path / "data.csv"
    with atomic_path(target, mode=0o600, suffix=".part") as tmp:
        assert tmp.name.endswith(".part")
        tmp.write_text("x")
    assert _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["data.csv"]


def test_atomic_path_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_exception_keeps_existing_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    before = target.stat()
    with pytest.raises(KeyboardInterrupt):  # BaseException too
        with atomic_path(target) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_block_may_remove_its_temp(tmp_path):
    """A block that raises after deleting the temp itself still propagates its own error."""
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "x") as tmp:
            tmp.unlink()
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text_and_json(tmp_path):
    atomic_write_text(tmp_path / "a" / "t.txt", "hello\n")
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a" / "t.txt").read_text() == "hello\n"
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2], "b": 1}
    assert (tmp_path / "j.json").read_text().startswith('{\n  "a"')  # sorted, indented
    assert _mode(tmp_path / "j.json") == 0o644
    atomic_write_text(tmp_path / "a" / "t.txt", "replaced")
    assert (tmp_path / "a" / "t.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "j.json", "t.txt"]
