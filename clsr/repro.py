"""`dvc repro` with a progress line per stage: `[stage k/N] name (elapsed)`, and a closing table of the
stages' wall times (`make repro` runs it after the runs are trained side by side, `clsr.prefill`).

    python -m clsr repro report ablation_report disentanglement cost

N comes from `dvc repro --dry` on the same targets: the stages that will run, downstream ones included (a
lower bound when the dry run cannot see past a dependency that an earlier stage writes).
DVC's own output passes through unchanged; the exit status is DVC's.

Before it runs, stale lock entries are pruned (`prune_stale`): DVC keeps the dvc.lock entry of a stage that
dvc.yaml no longer renders (a renamed stage, a matrix that changed its keys), and that entry's outputs stay in
reports/, where a report reading a folder would take them for current results. Their outputs that no current
stage declares are deleted, and the entries dropped; the removed paths are printed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, TextIO

import yaml

RUNNING = re.compile(r"^Running stage '([^']+)'")


def planned_stages(targets: list[str], dvc: str = "dvc") -> list[str]:
    """The stages `dvc repro targets` would run, in order (from `dvc repro --dry`)."""
    out = subprocess.run([dvc, "repro", "--dry", *targets], capture_output=True, text=True)
    # a dry run stops at the first stage whose dependency an earlier stage has yet to write (e.g. the report's
    # oracle metrics): the stages listed up to there are a lower bound, and the count grows as stages start
    return [m.group(1) for line in out.stdout.splitlines() if (m := RUNNING.match(line))]


def annotate(lines: Iterable[str], total: int, write: Callable[[str], object],
             clock: Callable[[], float] = time.monotonic) -> list[tuple[str, float]]:
    """Pass DVC's output `lines` to `write`, with a `[stage k/total]` line before each stage it starts;
    returns (stage, seconds) of every stage started (the last one up to the end of the output)."""
    t0 = last = clock()
    times: list[tuple[str, float]] = []
    current = None
    for line in lines:
        m = RUNNING.match(line)
        if m:
            now = clock()
            if current is not None:
                times.append((current, now - last))
            current, last = m.group(1), now
            write(f"[stage {len(times) + 1}/{max(total, len(times) + 1)}] {current} "
                  f"({(now - t0) / 60:.1f} min elapsed)\n")
        write(line)
    if current is not None:
        times.append((current, clock() - last))
    return times


def stale_entries(lock: dict, current: Iterable[str]) -> tuple[list[str], list[str]]:
    """(names, paths): the lock entries whose stage is not in `current`, and those entries' outputs that no
    current entry declares as well."""
    current = set(current)
    stages = lock.get("stages", {})
    names = [n for n in stages if n not in current]
    kept = {o["path"] for n, st in stages.items() if n in current for o in st.get("outs", [])}
    paths = list(dict.fromkeys(o["path"] for n in names for o in stages[n].get("outs", []) if o["path"] not in kept))
    return names, paths


def prune_stale(root: str | Path = ".", current: Iterable[str] | None = None, out: TextIO = sys.stdout) -> list[str]:
    """Drop dvc.lock entries of stages dvc.yaml no longer renders and delete their outputs that no current
    stage declares; returns the stage names dropped. `current` defaults to DVC's rendering of dvc.yaml."""
    root = Path(root)
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        return []
    if current is None:
        from clsr.prefill import rendered_stages

        current = [name for name, _ in rendered_stages(root)]
    lock = yaml.safe_load(lock_path.read_text()) or {}
    names, paths = stale_entries(lock, current)
    if not names:
        return []
    for rel in paths:
        p = root / rel
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for n in names:
        del lock["stages"][n]
    tmp = lock_path.with_name(lock_path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(lock, sort_keys=False, default_flow_style=False))
    tmp.replace(lock_path)
    out.write(f"[repro] dropped {len(names)} stale dvc.lock entr{'y' if len(names) == 1 else 'ies'} "
              f"({', '.join(names)}) and {len(paths)} output(s) no current stage declares\n")
    return names


def repro(targets: list[str], dvc: str = "dvc", out: TextIO = sys.stdout) -> int:
    """Run `dvc repro targets` with stage progress lines; returns DVC's exit status."""
    prune_stale(out=out)
    stages = planned_stages(targets, dvc)
    out.write(f"[repro] {len(stages)} stage(s) to run for {' '.join(targets) or 'every stage'}\n")
    out.flush()
    # unbuffered: DVC's "Running stage" line must reach the pipe before the stage's own output
    proc = subprocess.Popen([dvc, "repro", *targets], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None

    def write(s: str) -> None:
        out.write(s)
        out.flush()

    times = annotate(proc.stdout, len(stages), write)
    rc = proc.wait()
    if times:
        slow = sorted(times, key=lambda t: -t[1])[:10]
        write(f"[repro] {len(times)} stage(s) in {sum(s for _, s in times) / 60:.1f} min; the slowest: "
              + ", ".join(f"{n} {s:.0f} s" for n, s in slow) + "\n")
    return rc
