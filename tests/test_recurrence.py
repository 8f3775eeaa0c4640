"""The whole-sequence recurrences (hand-written backward) against autograd and the literal cells.

`clsr.fast.recurrence` replaces the per-step autograd loop of `cells.run_rnn` for speed. These tests
hold its Functions to the same function: gradcheck in float64 (finite differences vs the hand-written
backward), and the packed runners, with the C step kernels and with torch-op steps, equal to the
reference runners, which step each cell's `forward` under autograd (tests/test_fast.py checks the same
on the smallest cases, and the recorded source hashes).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

from clsr import fast
from clsr.fast import native
from clsr.fast.recurrence import GRUSequence, LSTMSequence, Packing, Time4Inputs, time4_projection_weights
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell, run_gru_pair, run_rnn

torch.set_num_threads(1)
f64 = torch.float64


def _randn(*shape, scale=1.0):
    return (scale * torch.randn(*shape, dtype=f64)).requires_grad_()


BATCH_SIZES = [3, 3, 2, 1]  # packed steps: 3 rows run 2 steps, then 2, then 1 (lengths 4, 3, 2)


def previous_rows(batch_sizes: list[int]) -> torch.Tensor:
    """Oracle for `Packing.prev_idx`: step t's i-th packed row continues step t−1's i-th row."""
    idx, off = [], 0
    for k_prev, k in zip(batch_sizes[:-1], batch_sizes[1:]):
        idx += range(off, off + k)
        off += k_prev
    return torch.tensor(idx, dtype=torch.long)


def test_previous_rows_points_at_each_rows_previous_step():
    # steps hold packed rows [0 1 2 | 3 4 5 | 6 7 | 8]; rows of step t continue rows of step t-1
    assert previous_rows(BATCH_SIZES).tolist() == [0, 1, 2, 3, 4, 6]


NATIVE = pytest.mark.parametrize("native", [True, False], ids=["native-kernels", "torch-ops"])


def _native(on: bool):
    """Context: the C step kernels (when they load here) or the torch-op loops."""
    return contextlib.nullcontext() if on else native.disabled()


@NATIVE
def test_gru_sequence_gradcheck(native):
    torch.manual_seed(0)
    P, B, H = sum(BATCH_SIZES), 3, 2
    prev = previous_rows(BATCH_SIZES)
    args = (_randn(P, 3 * H), _randn(3 * H), _randn(B, H), _randn(H, 2 * H), _randn(H, H))  # proj, bias, h0, W_g, W_c
    with _native(native):
        assert torch.autograd.gradcheck(lambda *a: GRUSequence.apply(*a, BATCH_SIZES, prev, True), args)


@NATIVE
@pytest.mark.parametrize("time_gates", [False, True])
def test_lstm_sequence_gradcheck(time_gates, native):
    torch.manual_seed(1)
    P, B, H = sum(BATCH_SIZES), 3, 2
    prev = previous_rows(BATCH_SIZES)
    width = (6 if time_gates else 4) * H  # 6H: + time gates g̃1, g̃2
    args = (_randn(P, width), _randn(width), _randn(B, H), _randn(H, 4 * H))  # gx, bias, h0, W
    with _native(native):
        assert torch.autograd.gradcheck(lambda *a: LSTMSequence.apply(*a, BATCH_SIZES, prev, True), args)


def test_time4_inputs_gradcheck():
    """`Time4Inputs` (the Time4LSTM's input side, hand-written backward) against autograd's numerics."""
    torch.manual_seed(4)
    P, D, H = 7, 3, 2
    args = (_randn(P, D), _randn(P, 2), _randn(D, 6 * H), _randn(2, 2 * H), _randn(2 * H), _randn(2 * H, 3 * H))
    assert torch.autograd.gradcheck(Time4Inputs.apply, args)


def test_time4_inputs_equals_the_cell_equations():
    """Y + b_x's columns are the pre-activations [i, j, f, o, g1, g2] of `Time4LSTMCell.forward` without h W."""
    torch.manual_seed(5)
    D, H, R = 3, 4, 6
    cell = Time4LSTMCell(D, H).double()
    x, tau = torch.randn(R, D, dtype=f64), torch.rand(R, 2, dtype=f64) * 5
    W_x, b_x, W_tau, b_tau, W_T = time4_projection_weights(cell)
    Y = Time4Inputs.apply(x, tau, W_x, W_tau, b_tau, W_T) + b_x
    t_first, t_now = tau[:, :1], tau[:, 1:]
    T1 = torch.tanh(t_now * cell.time_input_w1 + cell.time_input_b1)
    T2 = torch.tanh(t_first * cell.time_input_w2 + cell.time_input_b2)
    gates = x @ cell.kernel[:D] + cell.bias  # h = 0
    gates[:, 2 * H : 3 * H] += cell.forget_bias
    gates[:, 3 * H :] += T1 @ cell.o_kernel_t1 + T2 @ cell.o_kernel_t2
    g1 = x @ cell.time_kernel_w1 + T1 @ cell.time_kernel_t1 + cell.time_bias1
    g2 = x @ cell.time_kernel_w2 + T2 @ cell.time_kernel_t2 + cell.time_bias2
    torch.testing.assert_close(Y, torch.cat([gates, g1, g2], dim=1), rtol=0, atol=1e-12)


@NATIVE
@pytest.mark.parametrize("kind", ["gru", "lstm", "time4lstm"])
def test_fused_runner_equals_autograd_runner(kind, native):
    """Outputs, final states and every gradient (inputs, h0, all cell parameters) agree."""
    torch.manual_seed(2)
    B, L, D, H = 6, 7, 5, 4
    cell = {"gru": TFGRUCell(D, H), "lstm": TFLSTMCell(D, H), "time4lstm": Time4LSTMCell(D, H)}[kind].double()
    width = D + 2 if kind == "time4lstm" else D
    x = _randn(B, L, width)
    h0 = _randn(B, H)
    lengths = torch.tensor([7, 2, 0, 5, 7, 1])
    w_out, w_fin = torch.randn(B, L, H, dtype=f64), torch.randn(B, H, dtype=f64)
    results = []
    for fused in (True, False):
        with _native(native), (contextlib.nullcontext() if fused else fast.disabled()):
            outputs, final = run_rnn(cell, x, lengths, h0=h0, n_steps=7)
        loss = (outputs * w_out).sum() + (final * w_fin).sum()
        results.append((outputs, final, torch.autograd.grad(loss, [x, h0, *cell.parameters()])))
    (o1, f1, g1), (o2, f2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(f1, f2, rtol=1e-12, atol=1e-13)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_fused_runner_without_grad_equals_with_grad():
    """`train=False` (no backward factors) changes nothing in the forward values."""
    torch.manual_seed(3)
    cell = Time4LSTMCell(5, 4).double()
    x, lengths = torch.randn(3, 6, 7, dtype=f64), torch.tensor([6, 3, 1])
    with torch.no_grad():
        o1, f1 = run_rnn(cell, x, lengths)
    o2, f2 = run_rnn(cell, x, lengths)
    assert torch.equal(o1, o2) and torch.equal(f1, f2)


def test_gru_pair_equals_two_separate_grus():
    """One block-diagonal GRU of width H_a + H_b = two GRUs, values and all gradients."""
    torch.manual_seed(4)
    B, L, D = 5, 6, 4
    a, b = TFGRUCell(D, 3).double(), TFGRUCell(D, 2).double()
    x, h0 = _randn(B, L, D), _randn(B, 3)
    lengths = torch.tensor([6, 1, 0, 4, 6])
    w_a, w_b = torch.randn(B, 3, dtype=f64), torch.randn(B, 2, dtype=f64)
    params = [x, h0, *a.parameters(), *b.parameters()]
    fa, fb = run_gru_pair(a, b, x, lengths, h0_a=h0)
    g_pair = torch.autograd.grad((fa * w_a).sum() + (fb * w_b).sum(), params)
    with fast.disabled():
        sa, sb = run_rnn(a, x, lengths, h0=h0)[1], run_rnn(b, x, lengths)[1]
    g_sep = torch.autograd.grad((sa * w_a).sum() + (sb * w_b).sum(), params)
    torch.testing.assert_close(fa, sa, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fb, sb, rtol=1e-12, atol=1e-13)
    assert torch.equal(fb[2], torch.zeros(2, dtype=f64)) and torch.equal(fa[2], h0[2].detach())  # n = 0
    for g1, g2 in zip(g_pair, g_sep):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_packing_layout_and_previous_rows():
    """Rows sorted longest first; step t holds the k_t rows still running; prev_idx as previous_rows."""
    lengths = torch.tensor([2, 0, 4, 3, 4])
    plan = Packing.plan(lengths, n_steps=4, width=6)
    assert plan.perm.tolist() == [2, 4, 3, 0, 1]  # stable among equal lengths
    assert plan.batch_sizes == [4, 4, 3, 2]
    assert plan.prev_idx.tolist() == previous_rows(plan.batch_sizes).tolist()
    # every valid (row, position) packed exactly once, none of the padding
    pairs = sorted(zip(plan.rows_b.tolist(), plan.rows_t.tolist()))
    assert pairs == sorted((b, t) for b, n in enumerate(lengths.tolist()) for t in range(n))
    x = torch.arange(1, 5 * 6 + 1, dtype=f64).view(5, 6, 1)  # no zero among the values
    packed = plan.pack(x)
    assert torch.equal(plan.unpack(packed).squeeze(-1) != 0, torch.arange(6)[None] < lengths[:, None])
    h0 = torch.full((5, 1), -1.0, dtype=f64)
    final = plan.final(packed, h0[plan.perm])
    assert final.squeeze(-1).tolist() == [2.0, -1.0, 16.0, 21.0, 28.0]  # x[b, n_b − 1], h0 for n = 0


def test_tune_cpu_allocator_is_idempotent_and_can_be_disabled(monkeypatch):
    import clsr.runtime as rt

    monkeypatch.setattr(rt, "_done", None)
    monkeypatch.setenv("CLSR_KEEP_MALLOC", "1")
    assert rt.tune_cpu_allocator() is False
    monkeypatch.setattr(rt, "_done", None)
    monkeypatch.delenv("CLSR_KEEP_MALLOC")
    first = rt.tune_cpu_allocator()
    assert rt.tune_cpu_allocator() is first  # applied once, same answer after


_DENORMAL_PROBE = """
import os, sys, torch
torch.set_num_threads(2)
if sys.argv[1] == "torch-first":
    torch.ones(1 << 20).mul_(2)  # parallel work: torch's worker threads start before clsr sets flush-to-zero
import clsr
from clsr.runtime import denormal_mode
x = torch.full((1 << 18,), 1e-30)
y = x * 1e-10  # 1e-40 is a float32 denormal: flushed to 0 or kept, on every thread's share
print(denormal_mode(), int((y.view(torch.int32) == 0).sum()), y.numel())
"""


@pytest.mark.parametrize("order, keep, mode", [("clsr-first", False, "flush"), ("clsr-first", True, "keep"),
                                               ("torch-first", False, "partial")])
def test_denormals_are_flushed_on_every_thread_after_import(order, keep, mode):
    env = {k: v for k, v in os.environ.items() if k != "CLSR_KEEP_DENORMALS"}
    if keep:
        env["CLSR_KEEP_DENORMALS"] = "1"
    out = subprocess.run([sys.executable, "-c", _DENORMAL_PROBE, order], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    zeros, n = int(out[1]), int(out[2])
    assert out[0] == mode
    # the arithmetic itself, checked independently of denormal_mode
    if mode == "flush":
        assert zeros == n
    elif mode == "keep":
        assert zeros == 0
    else:
        assert 0 < zeros < n


# ------------------------------------------------------------------------------------------------
# the C step kernels (clsr/fast/kernels.c, loaded by native)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine")
def test_native_kernels_build_and_load_where_a_compiler_exists():
    assert native.available(), native.status()
    with native.disabled():
        assert not native.available()
    assert native.kernels(torch.empty(0, dtype=torch.float16)) is None  # other dtypes: torch ops


@pytest.mark.parametrize("kind", ["gru_pair", "time4lstm", "lstm", "gru"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_native_kernels_equal_torch_op_loops_on_a_real_batch_shape(kind, dtype, tol):
    """Values and every gradient: the one-call C steps against the torch-op steps (same equations)."""
    if not native.available():
        pytest.skip(native.status())
    torch.manual_seed(3)
    B, L, D, H = 64, 20, 40, 40
    x = torch.randn(B, L, D + 2, dtype=dtype).requires_grad_()
    h0 = torch.randn(B, H, dtype=dtype).requires_grad_()
    lengths = torch.randint(0, L + 1, (B,))
    if kind == "time4lstm":
        cells = [Time4LSTMCell(D, H).to(dtype)]
        run = lambda: run_rnn(cells[0], x, lengths, n_steps=L)  # noqa: E731
    elif kind in ("lstm", "gru"):
        cells = [(TFLSTMCell if kind == "lstm" else TFGRUCell)(D + 2, H).to(dtype)]
        run = lambda: run_rnn(cells[0], x, lengths, h0=h0, n_steps=L)  # noqa: E731
    else:
        cells = [TFGRUCell(D + 2, H).to(dtype), TFGRUCell(D + 2, H).to(dtype)]
        run = lambda: run_gru_pair(cells[0], cells[1], x, lengths, h0_a=h0, n_steps=L)  # noqa: E731
    params = [x, h0] + [p for c in cells for p in c.parameters()]
    results = []
    for on in (True, False):
        with _native(on):
            outs = run()
            loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=dtype).view_as(o)).sum() for o in outs)
            results.append((outs, torch.autograd.grad(loss, params, allow_unused=True)))
    (o1, g1), (o2, g2) = results
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_failed_kernel_build_leaves_no_library(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    target = tmp_path / "kernels_test.so"
    with pytest.raises(RuntimeError, match="failed"):
        native._build(target)
    assert list(tmp_path.iterdir()) == []  # neither the library nor its temporary file
