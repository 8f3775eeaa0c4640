"""The whole-sequence recurrences (hand-written backward) against autograd and the literal cells.

`clsr.models.recurrence` replaces the per-step autograd loop of `layers.run_rnn` for speed. These tests
hold it to the same function: gradcheck in float64 (finite differences vs the hand-written backward),
and values + gradients equal to the unfused runner, which steps each cell's `step` under autograd
(itself tested against the cell equations in test_layers.py).
"""
from __future__ import annotations

import pytest
import torch

from clsr.models.layers import TFGRUCell, TFLSTMCell, Time4LSTMCell, run_gru_pair, run_rnn
from clsr.models.recurrence import GRUSequence, LSTMSequence

torch.set_num_threads(1)
f64 = torch.float64


def _randn(*shape, scale=1.0):
    return (scale * torch.randn(*shape, dtype=f64)).requires_grad_()


BATCH_SIZES = [3, 3, 2, 1]  # packed steps: 3 rows run 2 steps, then 2, then 1 (lengths 4, 3, 2)


def test_previous_rows_points_at_each_rows_previous_step():
    from clsr.models.recurrence import previous_rows

    # steps hold packed rows [0 1 2 | 3 4 5 | 6 7 | 8]; rows of step t continue rows of step t-1
    assert previous_rows(BATCH_SIZES).tolist() == [0, 1, 2, 3, 4, 6]


def test_gru_sequence_gradcheck():
    from clsr.models.recurrence import previous_rows

    torch.manual_seed(0)
    P, B, H = sum(BATCH_SIZES), 3, 2
    prev = previous_rows(BATCH_SIZES)
    args = (_randn(P, 3 * H), _randn(B, H), _randn(H, 2 * H), _randn(H, H))
    assert torch.autograd.gradcheck(lambda *a: GRUSequence.apply(*a, BATCH_SIZES, prev, True), args)


@pytest.mark.parametrize("time_gates", [False, True])
def test_lstm_sequence_gradcheck(time_gates):
    from clsr.models.recurrence import previous_rows

    torch.manual_seed(1)
    P, B, H = sum(BATCH_SIZES), 3, 2
    prev = previous_rows(BATCH_SIZES)
    s12 = torch.rand(P, 2 * H, dtype=f64).requires_grad_() if time_gates else None
    args = (_randn(P, 4 * H), s12, _randn(B, H), _randn(H, 4 * H))
    assert torch.autograd.gradcheck(lambda *a: LSTMSequence.apply(*a, BATCH_SIZES, prev, True), args)


@pytest.mark.parametrize("kind", ["gru", "lstm", "time4lstm"])
def test_fused_runner_equals_autograd_runner(kind):
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
        outputs, final = run_rnn(cell, x, lengths, h0=h0, n_steps=7, fused=fused)
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
    sa, sb = run_rnn(a, x, lengths, h0=h0, fused=False)[1], run_rnn(b, x, lengths, fused=False)[1]
    g_sep = torch.autograd.grad((sa * w_a).sum() + (sb * w_b).sum(), params)
    torch.testing.assert_close(fa, sa, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fb, sb, rtol=1e-12, atol=1e-13)
    assert torch.equal(fb[2], torch.zeros(2, dtype=f64)) and torch.equal(fa[2], h0[2].detach())  # n = 0
    for g1, g2 in zip(g_pair, g_sep):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_packing_layout_and_previous_rows():
    """Rows sorted longest first; step t holds the k_t rows still running; prev_idx as previous_rows."""
    from clsr.models.layers import Packing
    from clsr.models.recurrence import previous_rows

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
