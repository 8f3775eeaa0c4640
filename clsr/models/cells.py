"""Recurrent cells with TF1 semantics and the ``dynamic_rnn``-like runners shared by CLSR and the baselines.

Contents
--------
- `TFGRUCell`, `TFLSTMCell`, `Time4LSTMCell`: TF1 ``GRUCell`` / ``LSTMCell`` / SLi-Rec ``Time4LSTMCell``,
  each equation written once, in the cell's `forward` (one step).
- `run_rnn`: ``dynamic_rnn`` with ``sequence_length`` behaviour (outputs zero past the length, state
  frozen at step length-1), stepping the cell's `forward`.
- `run_gru_pair`: two GRUs reading the same inputs.
- `augru_step`, `run_augru`: the AUGRU (released ``VecAttGRUCell``) of DIEN and SURGE.

The runners are reference blocks (`clsr.fast.seam`): their fast twins in `clsr.fast.recurrence` (packed
valid positions, hand-written backward, C step kernels on a CPU) compute the same function and are
tested equal to them in float64.

Layout conventions: recurrent kernels are stored in TF's layout (in, out) so that their glorot limits,
which depend on the full kernel shape, match the released code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clsr import fast
from clsr.models.layers import glorot_uniform_


# --------------------------------------------------------------------------------------------------
# recurrent cells (TF1 semantics) and the dynamic_rnn-like runner
# --------------------------------------------------------------------------------------------------
class TFGRUCell(nn.Module):
    """TF1 ``tf.nn.rnn_cell.GRUCell``:

        [r, z] = σ([x ‖ h] W_g + b_g)          (split order r, z; b_g initialised to 1.0)
        c      = tanh([x ‖ r ⊙ h] W_c + b_c)    (reset applied BEFORE the matmul; b_c = 0)
        h'     = z ⊙ h + (1 − z) ⊙ c

    Kernels W_g ((d+H) × 2H) and W_c ((d+H) × H) are glorot-uniform over their full TF shapes.
    PyTorch's ``nn.GRUCell`` applies r after the recurrent matmul, so it is not the same function.
    """

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.input_dim, self.hidden_size = input_dim, hidden_size
        D, H = input_dim, hidden_size
        self.gate_kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, 2 * H)))
        self.gate_bias = nn.Parameter(torch.ones(2 * H))
        self.cand_kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, H)))
        self.cand_bias = nn.Parameter(torch.zeros(H))

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One step, literally the equations above."""
        H = self.hidden_size
        rz = torch.sigmoid(torch.cat([x, h], -1) @ self.gate_kernel + self.gate_bias)
        r, z = rz[..., :H], rz[..., H:]
        c = torch.tanh(torch.cat([x, r * h], -1) @ self.cand_kernel + self.cand_bias)
        return z * h + (1 - z) * c

    def init_state(self, h0: torch.Tensor | None, batch: int, like: torch.Tensor):
        return like.new_zeros(batch, self.hidden_size) if h0 is None else h0

    @staticmethod
    def output(state: torch.Tensor) -> torch.Tensor:
        """The step's output: the state h itself."""
        return state

class TFLSTMCell(nn.Module):
    """TF1 ``tf.nn.rnn_cell.LSTMCell`` (no peepholes, no projection), forget bias +1:

        [i, j, f, o] = [x ‖ h] W + b                 (split order i, j, f, o; b = 0)
        c' = σ(f + 1) ⊙ c + σ(i) ⊙ tanh(j)
        h' = σ(o) ⊙ tanh(c')

    W ((d+H) × 4H) is glorot-uniform. The state is (h, c); the output is h.
    """

    forget_bias = 1.0

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.input_dim, self.hidden_size = input_dim, hidden_size
        D, H = input_dim, hidden_size
        self.kernel = nn.Parameter(glorot_uniform_(torch.empty(D + H, 4 * H)))
        self.bias = nn.Parameter(torch.zeros(4 * H))

    def gates(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, h], -1) @ self.kernel + self.bias

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step, literally the equations above. state = (h, c) -> returns (h', c')."""
        h, c = state
        i, j, f, o = self.gates(x, h).chunk(4, -1)
        c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c

    def init_state(self, h0: torch.Tensor | None, batch: int, like: torch.Tensor):
        z = like.new_zeros(batch, self.hidden_size)
        return (z if h0 is None else h0), z

    @staticmethod
    def output(state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The step's output h of the state (h, c)."""
        return state[0]

class Time4LSTMCell(TFLSTMCell):
    """SLi-Rec ``Time4LSTMCell`` (docs/protocol.md §6.3). Input per step: [x_t ‖ τ^first_t ‖ τ^now_t]
    (d + 2 columns; the last column is τ^now, "time_now", the one before it τ^first, "time_last"):

        T1 = tanh(τ^now · w_1 + b_1),   T2 = tanh(τ^first · w_2 + b_2)            (w, b ∈ R^H)
        g1 = x_t W_x1 + T1 W_t1 + c_1,  g2 = x_t W_x2 + T2 W_t2 + c_2
        [i, j, f, o] = [x_t ‖ h_{t−1}] W + b                                        (i, j, f, o order)
        o ← o + T1 W_o1 + T2 W_o2
        c_t = σ(f + 1) ⊙ σ(g2) ⊙ c_{t−1} + σ(i) ⊙ σ(g1) ⊙ tanh(j)
        h_t = σ(o) ⊙ tanh(c_t)

    All variables are glorot-uniform (the 1-D ones with l = sqrt(6/(2H))), except the ``_Linear`` bias
    b = 0. (Nothing in T1, T2, g1, g2 depends on h: the fast twin computes them for every step at once.)
    """

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__(input_dim, hidden_size)
        D, H = input_dim, hidden_size

        def g(*shape):
            return nn.Parameter(glorot_uniform_(torch.empty(*shape)))

        self.time_input_w1, self.time_input_b1 = g(H), g(H)
        self.time_input_w2, self.time_input_b2 = g(H), g(H)
        self.time_kernel_w1, self.time_kernel_t1, self.time_bias1 = g(D, H), g(H, H), g(H)
        self.time_kernel_w2, self.time_kernel_t2, self.time_bias2 = g(D, H), g(H, H), g(H)
        self.o_kernel_t1, self.o_kernel_t2 = g(H, H), g(H, H)

    def time_gates(self, inputs: torch.Tensor):
        """(x, T1, T2, σ(g1), σ(g2)) for inputs (..., d+2)."""
        x, t_first, t_now = inputs[..., :-2], inputs[..., -2:-1], inputs[..., -1:]
        T1 = torch.tanh(t_now * self.time_input_w1 + self.time_input_b1)
        T2 = torch.tanh(t_first * self.time_input_w2 + self.time_input_b2)
        g1 = x @ self.time_kernel_w1 + T1 @ self.time_kernel_t1 + self.time_bias1
        g2 = x @ self.time_kernel_w2 + T2 @ self.time_kernel_t2 + self.time_bias2
        return x, T1, T2, torch.sigmoid(g1), torch.sigmoid(g2)

    def forward(self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """One step, literally the equations above. inputs (B, d+2), state (h, c) -> (h', c')."""
        h, c = state
        x, T1, T2, s1, s2 = self.time_gates(inputs)
        i, j, f, o = self.gates(x, h).chunk(4, -1)
        o = o + T1 @ self.o_kernel_t1 + T2 @ self.o_kernel_t2
        c = torch.sigmoid(f + self.forget_bias) * s2 * c + torch.sigmoid(i) * s1 * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c

def length_mask(lengths: torch.Tensor, L: int, dtype=torch.float32) -> torch.Tensor:
    """m[b, t] = 1 if t < n_b else 0, shape (B, L)."""
    return (torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)


def _final_states(states: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """states (..., B, n, H) -> the state at step n_b − 1 (..., B, H); ``start`` where n_b = 0."""
    n, H = states.shape[-2], states.shape[-1]
    B = lengths.shape[0]
    idx = (lengths.clamp(min=1, max=n) - 1).view(B, 1, 1).expand(*states.shape[:-3], B, 1, H)
    final = states.gather(-2, idx).squeeze(-2)
    return torch.where((lengths > 0).view(B, 1), final, start)




@fast.seam
def run_rnn(
    cell: nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor | None = None,
    n_steps: int | None = None,
    times: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tf.nn.dynamic_rnn(cell, inputs, sequence_length=lengths, initial_state=h0)`` for left-aligned
    sequences (valid steps 0..n_b−1, padding after).

    Returns (outputs (B, L, H), final (B, H)):
        outputs[b, t] = h_t for t < n_b and 0 beyond (TF zeroes outputs past the length);
        final[b] = h_{n_b − 1} (TF freezes the state past the length), and h0 (zeros if None) for n_b = 0.

    Exactness without a per-step mask: padding comes only *after* the valid steps, so the unmasked
    recurrence agrees with TF's frozen one on every valid step; whatever it computes past n_b is
    discarded (outputs zeroed, final state read at n_b − 1), so those steps get no gradient either.
    ``n_steps`` (default L) lets the caller stop at the batch's longest history; steps beyond it are
    all padding and return zeros. ``times`` (B, L, 2) = [τ^first, τ^now] for a `Time4LSTMCell`, whose
    inputs are then x alone (without it, the last two input columns are the times, as in the cell's
    own `forward`).
    """
    B, L = inputs.shape[0], inputs.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    H = cell.hidden_size
    start = inputs.new_zeros(B, H) if h0 is None else h0
    if n_steps == 0:
        return inputs.new_zeros(B, L, H), start
    if times is not None:
        inputs = torch.cat([inputs, times], dim=-1)
    state = cell.init_state(h0, B, inputs)
    outs = []
    for t in range(n_steps):
        state = cell(inputs[:, t], state)
        outs.append(cell.output(state))
    outputs = torch.stack(outs, dim=1)  # (B, n_steps, H)
    final = _final_states(outputs, lengths, start)
    outputs = outputs * length_mask(lengths, n_steps, outputs.dtype).unsqueeze(-1)
    if n_steps < L:
        outputs = F.pad(outputs, (0, 0, 0, L - n_steps))
    return outputs, final


@fast.seam
def run_gru_pair(
    cell_a: TFGRUCell,
    cell_b: TFGRUCell,
    x: torch.Tensor,
    lengths: torch.Tensor,
    h0_a: torch.Tensor | None = None,
    n_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final states (B, H_a), (B, H_b) of two GRUs with separate parameters reading the same inputs x,
    cell_a from h0_a and cell_b from zeros (CLSR's intention and fusion GRUs). (Its fast twin runs both
    as one block-diagonal GRU.)"""
    return run_rnn(cell_a, x, lengths, h0=h0_a, n_steps=n_steps)[1], run_rnn(cell_b, x, lengths, n_steps=n_steps)[1]


# --------------------------------------------------------------------------------------------------
# AUGRU (released VecAttGRUCell) over inputs shared by C attention sequences
# --------------------------------------------------------------------------------------------------
def augru_step(cell: TFGRUCell, x: torch.Tensor, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """One VecAttGRUCell step, literally: x (N, D), h (N, H), a (N, 1) -> h' (N, H)."""
    H = cell.hidden_size
    rz = torch.sigmoid(torch.cat([x, h], -1) @ cell.gate_kernel + cell.gate_bias)
    r, u = rz[:, :H], rz[:, H:]
    c = torch.tanh(torch.cat([x, r * h], -1) @ cell.cand_kernel + cell.cand_bias)
    u = (1.0 - a) * u
    return u * h + (1.0 - u) * c


@fast.seam
def run_augru(cell: TFGRUCell, x: torch.Tensor, att: torch.Tensor, lengths: torch.Tensor,
              n_steps: int | None = None) -> torch.Tensor:
    """Final AUGRU states (B, C, H) for inputs x (B, L, D) shared by C attention sequences att (B, C, L).

    ``dynamic_rnn`` semantics: zero initial state, the state is frozen after step n_b − 1 (so the
    result is the state at n_b − 1, zeros for n_b = 0). Each of the B·C rows steps `augru_step`.
    """
    B, L = x.shape[0], x.shape[1]
    C, H = att.shape[1], cell.hidden_size
    n_steps = L if n_steps is None else min(int(n_steps), L)
    h = x.new_zeros(B * C, H)
    for t in range(n_steps):
        x_t = x[:, t].unsqueeze(1).expand(B, C, x.shape[2]).reshape(B * C, -1)
        h_new = augru_step(cell, x_t, h, att[:, :, t].reshape(B * C, 1))
        live = (lengths > t).repeat_interleave(C).unsqueeze(1)
        h = torch.where(live, h_new, h)
    return h.view(B, C, H)
