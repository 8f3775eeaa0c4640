"""`dvc repro` with a progress line per stage: `[stage k/N] name (elapsed)`, and a closing table of the
stages' wall times (`make repro` runs it after the runs are trained side by side, `clsr.prefill`).

    python -m clsr repro report ablation_report disentanglement cost

N comes from `dvc repro --dry` on the same targets: the stages that will run, downstream ones included (a
lower bound when the dry run cannot see past a dependency that an earlier stage writes).
DVC's own output passes through unchanged; the exit status is DVC's.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Callable, Iterable, TextIO

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


def repro(targets: list[str], dvc: str = "dvc", out: TextIO = sys.stdout) -> int:
    """Run `dvc repro targets` with stage progress lines; returns DVC's exit status."""
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
