"""clsr.repro: the [stage k/N] progress lines around DVC's output, on a scripted output and clock."""
from clsr.repro import annotate


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
