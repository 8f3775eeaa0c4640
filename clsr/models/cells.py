"""Recurrent cells with TF1 semantics and the ``dynamic_rnn``-like runners shared by CLSR and the baselines.

Contents
--------
- `TFGRUCell`, `TFLSTMCell`, `Time4LSTMCell` and the runner `run_rnn`:
  TF1 ``GRUCell`` / ``LSTMCell`` / SLi-Rec ``Time4LSTMCell`` semantics with ``dynamic_rnn``'s
  ``sequence_length`` behaviour (outputs zero past the length, state frozen at step length-1).
- `run_gru_pair`: two GRUs reading the same inputs, run as one block-diagonal GRU.
- `augru_step`, `run_augru`: the AUGRU (released ``VecAttGRUCell``) of DIEN and SURGE.

Layout conventions: recurrent kernels are stored in TF's layout (in, out) so that their glorot limits,
which depend on the full kernel shape, match the released code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clsr.models.layers import glorot_uniform_
from clsr.models.recurrence import GRUSequence, LSTMSequence, Time4Inputs


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

    `forward(x, h)` is the textbook one-step form; `precompute` + `step` is the runner's form, with
    the input projection of all steps done in one matmul outside the time loop.
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

    def input_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d) -> ([x W_g,x ‖ x W_c,x] (R, 3H), one matmul; its bias [b_g ‖ b_c] (3H,)), for the
        fused recurrence, which adds the bias itself."""
        D = self.input_dim
        W_x = torch.cat([self.gate_kernel[:D], self.cand_kernel[:D]], dim=1)  # (D, 3H)
        return torch.mm(x, W_x), torch.cat([self.gate_bias, self.cand_bias])

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, d) -> [x W_g,x + b_g ‖ x W_c,x + b_c] (R, 3H)."""
        proj, bias = self.input_part(x)
        return proj + bias

    def input_projection(self, x: torch.Tensor):
        """x (B, L, d) -> time-major (x_t W_g,x + b_g (L, B, 2H), x_t W_c,x + b_c (L, B, H))."""
        H = self.hidden_size
        proj = self.project_rows(x.transpose(0, 1).reshape(-1, self.input_dim))
        return proj.view(x.shape[1], x.shape[0], 3 * H).split([2 * H, H], dim=-1)

    def precompute(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per step t: (x_t W_g,x + b_g, x_t W_c,x + b_c). Split and unbound outside the loop: a slice's
        backward is a zero fill + copy + accumulate, split/unbind backpropagate as one cat/stack."""
        gx, cx = self.input_projection(x)
        return list(zip(gx.unbind(0), cx.unbind(0)))

    def step_weights(self):
        D = self.input_dim
        return self.gate_kernel[D:], self.cand_kernel[D:]

    def step(self, pre, state, weights):
        """h' from the precomputed input part; weights = (W_g,h, W_c,h) sliced once per sequence."""
        gx, cx = pre
        Wg_h, Wc_h = weights
        r, z = torch.sigmoid(torch.addmm(gx, state, Wg_h)).chunk(2, dim=-1)
        c = torch.tanh(torch.addmm(cx, r * state, Wc_h))
        h = torch.lerp(c, state, z)  # c + z (h − c) = z h + (1 − z) c
        return h, h


class TFLSTMCell(nn.Module):
    """TF1 ``tf.nn.rnn_cell.LSTMCell`` (no peepholes, no projection), forget bias +1:

        [i, j, f, o] = [x ‖ h] W + b                 (split order i, j, f, o; b = 0)
        c' = σ(f + 1) ⊙ c + σ(i) ⊙ tanh(j)
        h' = σ(o) ⊙ tanh(c')

    W ((d+H) × 4H) is glorot-uniform. The state is (h, c); the output is h. `Time4LSTMCell` reuses
    `step` with two extra multiplicative time gates. Forms as in `TFGRUCell`.
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

    def input_part(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d) -> (x W_x (R, 4H), its bias b with the forget bias folded into the f block (4H,)),
        for the fused recurrence, which adds the bias itself."""
        D, H = self.input_dim, self.hidden_size
        shift = torch.zeros_like(self.bias)
        shift[2 * H : 3 * H] = self.forget_bias
        return torch.mm(x, self.kernel[:D]), self.bias + shift

    def project_rows(self, x: torch.Tensor) -> torch.Tensor:
        """x (R, d) -> the gates' input part x W_x + b (R, 4H), forget bias folded into the f block."""
        gx, bias = self.input_part(x)
        return gx + bias

    def precompute(self, x: torch.Tensor):
        """Per step (gates' input part (B, 4H), None): no scaling of the gates."""
        B, L = x.shape[0], x.shape[1]
        gx = self.project_rows(x.transpose(0, 1).reshape(L * B, x.shape[2])).view(L, B, -1)
        return [(g, None) for g in gx.unbind(0)]

    def step_weights(self):
        return self.kernel[self.input_dim :]

    def step(self, pre, state, W_h):
        """gates = pre + h W_h; with scale (Time4LSTM), σ(i), σ(f) are multiplied by σ(g1), σ(g2)."""
        gx, scale = pre
        h, c = state
        g = torch.addmm(gx, h, W_h)
        s = torch.sigmoid(g)  # σ of all four blocks in one op; the j block is not used
        if scale is not None:
            s = s * scale  # [σ(g1), 1, σ(g2), 1] in the (i, j, f, o) slots
        si, _, sf, so = s.chunk(4, dim=1)
        c = torch.addcmul(sf * c, si, torch.tanh(g.chunk(4, dim=1)[1]))
        h = so * torch.tanh(c)
        return h, (h, c)


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
    b = 0. Nothing in T1, T2, g1, g2 depends on h, so they are all computed for every step at once in
    `input_projection`; the time loop only does the LSTM recurrence, scaled by [σ(g1), 1, σ(g2), 1].
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

    def projection_weights(self):
        """The input side of the cell as three linear maps (rows τ = [τ^first, τ^now]):
            [T1 ‖ T2] = tanh(τ W_τ + b_τ),           W_τ = [[0, w2], [w1, 0]] (2 × 2H), b_τ = [b1 ‖ b2]
            A = x W_x + b_x,                          W_x = [W_lstm,x | W_x1 | W_x2] (D × 6H),
                                                      b_x = [b (+1 on f) | c1 | c2]
            [o | g1 | g2] += [T1 ‖ T2] W_T,           W_T = [[W_o1, W_t1, 0], [W_o2, 0, W_t2]] (2H × 3H)
        so that A's columns are the pre-activations [i, j, f, o, g1, g2] minus their h part.
        Returns (W_x, b_x, W_τ, b_τ, W_T)."""
        D, H = self.input_dim, self.hidden_size
        zH = self.time_input_w1.new_zeros(H)
        W_tau = torch.stack([torch.cat([zH, self.time_input_w2]), torch.cat([self.time_input_w1, zH])])
        b_tau = torch.cat([self.time_input_b1, self.time_input_b2])
        shift = torch.zeros_like(self.bias)
        shift[2 * H : 3 * H] = self.forget_bias
        W_x = torch.cat([self.kernel[:D], self.time_kernel_w1, self.time_kernel_w2], dim=1)
        b_x = torch.cat([self.bias + shift, self.time_bias1, self.time_bias2])
        zHH = self.o_kernel_t1.new_zeros(H, H)
        W_T = torch.cat(
            [torch.cat([self.o_kernel_t1, self.time_kernel_t1, zHH], 1),
             torch.cat([self.o_kernel_t2, zHH, self.time_kernel_t2], 1)], 0
        )
        return W_x, b_x, W_tau, b_tau, W_T

    def input_part(self, x: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (R, d), tau (R, 2) = [τ^first, τ^now] -> (the input part of every pre-activation
        [i, j, f, o, g1, g2] without its bias (R, 6H), that bias b_x (6H,)) (`projection_weights`), for all
        rows (steps) at once, in one hand-differentiated Function (`recurrence.Time4Inputs`: no
        concatenations either way); the fused recurrence adds the bias itself."""
        W_x, b_x, W_tau, b_tau, W_T = self.projection_weights()
        return Time4Inputs.apply(x, tau, W_x, W_tau, b_tau, W_T), b_x

    def precompute(self, inputs: torch.Tensor):
        """Per step (gates' input part (B, 4H), scale [σ(g1), 1, σ(g2), 1] (B, 4H)) for `step`, with torch
        ops (the reference path; the fused one uses `project_rows`)."""
        B, L, H = inputs.shape[0], inputs.shape[1], self.hidden_size
        x, tau = inputs.transpose(0, 1).reshape(L * B, -1).split([self.input_dim, 2], dim=1)
        W_x, b_x, W_tau, b_tau, W_T = self.projection_weights()
        T = torch.tanh(tau @ W_tau + b_tau)
        A = x @ W_x + b_x
        A = torch.cat([A[:, : 3 * H], A[:, 3 * H :] + T @ W_T], dim=1).view(L, B, 6 * H)
        s1, s2 = torch.sigmoid(A[..., 4 * H : 5 * H]), torch.sigmoid(A[..., 5 * H :])
        ones = torch.ones_like(s1)
        scale = torch.cat([s1, ones, s2, ones], dim=-1)
        return list(zip(A[..., : 4 * H].unbind(0), scale.unbind(0)))




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


class Packing:
    """Rows sorted by length (longest first) and their valid positions stacked step after step, as
    `clsr.models.recurrence` expects (the layout of ``torch.nn.utils.rnn.PackedSequence``).

    perm[i] is the original row of sorted row i; batch_sizes[t] = k_t, the rows still running at step t;
    packed row p holds position rows_t[p] of original row rows_b[p]; prev_idx[p − k_0] the packed row of
    row p's previous step (for the rows of steps 1..); last[i] the packed row of sorted row i's final step.
    """

    def __init__(self, perm, inv, sorted_len, batch_sizes, rows_b, rows_t, prev_idx, last, width):
        self.perm, self.inv, self.sorted_len = perm, inv, sorted_len
        self.batch_sizes, self.rows_b, self.rows_t = batch_sizes, rows_b, rows_t
        self.prev_idx, self.last, self.width = prev_idx, last, width
        self.flat = rows_b * width + rows_t  # position in a (B·L, ...) view
        self._packed = None  # (input, its packed rows) of the last `pack`

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (P, d). index_select, whose backward is an index_add (the positions are distinct).
        The last result is kept: the forward's recurrent nets that read the same tensor share one packed
        copy (and its gradients add up there, before one index_add)."""
        if self._packed is not None and self._packed[0] is x:
            return self._packed[1]
        packed = x.reshape(-1, x.shape[-1]).index_select(0, self.flat)
        self._packed = (x, packed)
        return packed

    @classmethod
    def plan(cls, lengths: torch.Tensor, n_steps: int, width: int) -> "Packing":
        """Packing of rows with `lengths` over the first `n_steps` positions of a width-`width` layout."""
        dev = lengths.device
        n = lengths.clamp(min=0, max=n_steps)
        sorted_len, perm = torch.sort(n, descending=True, stable=True)
        steps = torch.arange(n_steps, device=dev)
        live = steps.unsqueeze(1) < sorted_len.unsqueeze(0)  # (n_steps, B), time-major
        batch_sizes = [k for k in live.sum(1).tolist() if k > 0]  # one host sync
        t_idx, i_idx = live.nonzero(as_tuple=True)  # ordered by step, then sorted row
        offsets = torch.tensor([0] + batch_sizes[:-1], device=dev, dtype=torch.long).cumsum(0)
        last = (
            offsets[(sorted_len - 1).clamp(min=0)] + torch.arange(len(n), device=dev)
            if batch_sizes else sorted_len.new_zeros(len(n))
        )
        k0 = batch_sizes[0] if batch_sizes else 0
        prev_idx = offsets[t_idx[k0:] - 1] + i_idx[k0:]  # step t's i-th row continues step t−1's i-th row
        return cls(perm, torch.argsort(perm), sorted_len, batch_sizes, perm[i_idx], t_idx, prev_idx, last, width)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Packed (P, H) -> (B, L, H), zero at every position that was not packed."""
        B, H = len(self.perm), packed.shape[1]
        return packed.new_zeros(B * self.width, H).index_copy(0, self.flat, packed).view(B, self.width, H)

    def final(self, packed: torch.Tensor, h0_sorted: torch.Tensor) -> torch.Tensor:
        """State after each row's last step, in the original row order; h0 where the length is 0."""
        fin = torch.where((self.sorted_len > 0).unsqueeze(1), packed[self.last], h0_sorted)
        return fin[self.inv]


def run_rnn(
    cell: nn.Module,
    inputs: torch.Tensor,
    lengths: torch.Tensor,
    h0: torch.Tensor | None = None,
    n_steps: int | None = None,
    fused: bool = True,
    plan: Packing | None = None,
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
    all padding and return zeros.

    ``fused`` (default) runs `TFGRUCell` / `TFLSTMCell` / `Time4LSTMCell` through the whole-sequence
    recurrences of `clsr.models.recurrence` (packed valid positions, hand-written backward; same function,
    faster on CPU: benchmarks/bench_train.py times both);
    ``fused=False`` and any other cell step the cell's `step` under autograd (the reference).
    ``plan``: a `Packing.plan(lengths, n_steps, L)` the caller already built for these lengths (one per
    forward serves all the recurrent nets reading the same histories).
    ``times`` (B, L, 2) = [τ^first, τ^now] for a `Time4LSTMCell`, whose inputs are then x alone (without
    it, the last two input columns are the times, as in the cell's own `forward`).
    """
    B, L = inputs.shape[0], inputs.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    H = cell.hidden_size
    start = inputs.new_zeros(B, H) if h0 is None else h0
    if n_steps == 0:
        return inputs.new_zeros(B, L, H), start
    if fused and isinstance(cell, (TFGRUCell, TFLSTMCell)):  # Time4LSTMCell is a TFLSTMCell
        plan = Packing.plan(lengths, n_steps, L) if plan is None else plan
        if not plan.batch_sizes:  # every history empty
            return inputs.new_zeros(B, L, H), start
        h0_sorted = start[plan.perm]
        if isinstance(cell, Time4LSTMCell):
            if times is None:
                inputs, times = inputs.split([cell.input_dim, 2], dim=-1)
            gx, bias = cell.input_part(plan.pack(inputs), plan.pack(times))  # (P, 6H), packed
        else:
            gx, bias = cell.input_part(plan.pack(inputs))  # the valid positions, packed step after step
        W_h = cell.step_weights()  # GRU: (W_g, W_c); LSTM: W
        sequence, W_h = (GRUSequence, W_h) if isinstance(cell, TFGRUCell) else (LSTMSequence, (W_h,))
        out = sequence.apply(gx, bias, h0_sorted, *W_h, plan.batch_sizes, plan.prev_idx, torch.is_grad_enabled())
        return plan.unpack(out), plan.final(out, h0_sorted)
    if times is not None:
        inputs = torch.cat([inputs, times], dim=-1)
    pre = cell.precompute(inputs[:, :n_steps])
    weights = cell.step_weights()
    state = cell.init_state(h0, B, inputs)
    outs = []
    for t in range(n_steps):
        out, state = cell.step(pre[t], state, weights)
        outs.append(out)
    outputs = torch.stack(outs, dim=1)  # (B, n_steps, H)
    final = _final_states(outputs, lengths, start)
    outputs = outputs * length_mask(lengths, n_steps, outputs.dtype).unsqueeze(-1)
    if n_steps < L:
        outputs = F.pad(outputs, (0, 0, 0, L - n_steps))
    return outputs, final


def run_gru_pair(
    cell_a: TFGRUCell,
    cell_b: TFGRUCell,
    x: torch.Tensor,
    lengths: torch.Tensor,
    h0_a: torch.Tensor | None = None,
    n_steps: int | None = None,
    plan: Packing | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Final states (B, H_a), (B, H_b) of two GRUs with separate parameters reading the same inputs,
    as ``run_rnn(cell_a, x, lengths, h0_a)[1], run_rnn(cell_b, x, lengths)[1]`` (cell_b starts from
    zeros, as CLSR's fusion GRU) — computed as ONE GRU of width H_a + H_b.

    Why: the time loop costs per op, not per element (see `clsr.models.recurrence`), so two GRUs in
    one loop cost little more than one. The joint GRU's kernels are block-diagonal in the two state
    halves, with gate columns ordered [r_a ‖ r_b ‖ z_a ‖ z_b] and candidate columns [c_a ‖ c_b]; the
    zero blocks add exact zeros, so each half follows its own cell's equations (the result differs
    from two separate runs only by the summation order inside the matmuls).
    """
    B, L = x.shape[0], x.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    Ha, Hb, D = cell_a.hidden_size, cell_b.hidden_size, cell_a.input_dim
    if cell_b.input_dim != D:
        raise ValueError(f"run_gru_pair: input widths differ ({D} vs {cell_b.input_dim})")
    start_a = x.new_zeros(B, Ha) if h0_a is None else h0_a
    start_b = x.new_zeros(B, Hb)
    if n_steps == 0:
        return start_a, start_b

    def cols(cell, W):  # a (rows, 3H) block [r ‖ z ‖ c] -> r, z, c column blocks
        H = cell.hidden_size
        return W[..., :H], W[..., H : 2 * H], W[..., 2 * H :]

    Wa = torch.cat([cell_a.gate_kernel, cell_a.cand_kernel], dim=1)  # (D + Ha, 3 Ha)
    Wb = torch.cat([cell_b.gate_kernel, cell_b.cand_kernel], dim=1)
    ra, za, ca = cols(cell_a, Wa[:D])
    rb, zb, cb = cols(cell_b, Wb[:D])
    W_x = torch.cat([ra, rb, za, zb, ca, cb], dim=1)  # (D, 3 (Ha + Hb))
    ba, bb = torch.cat([cell_a.gate_bias, cell_a.cand_bias]), torch.cat([cell_b.gate_bias, cell_b.cand_bias])
    (rba, zba, cba), (rbb, zbb, cbb) = cols(cell_a, ba), cols(cell_b, bb)
    bias = torch.cat([rba, rbb, zba, zbb, cba, cbb])
    plan = Packing.plan(lengths, n_steps, L) if plan is None else plan  # as in run_rnn
    if not plan.batch_sizes:
        return start_a, start_b
    proj = torch.mm(plan.pack(x), W_x)  # (P, 3 (Ha + Hb)), packed; the recurrence adds the bias
    Wg_a, Wg_b = cell_a.gate_kernel[D:], cell_b.gate_kernel[D:]
    zab, zba_ = Wg_a.new_zeros(Ha, Hb), Wg_a.new_zeros(Hb, Ha)
    W_g = torch.cat(
        [torch.cat([Wg_a[:, :Ha], zab, Wg_a[:, Ha:], zab], dim=1),
         torch.cat([zba_, Wg_b[:, :Hb], zba_, Wg_b[:, Hb:]], dim=1)], dim=0
    )  # (Ha + Hb, 2 (Ha + Hb)), columns [r_a r_b z_a z_b]
    W_c = torch.block_diag(cell_a.cand_kernel[D:], cell_b.cand_kernel[D:])
    h0 = torch.cat([start_a, start_b], dim=1)[plan.perm]
    out = GRUSequence.apply(proj, bias, h0, W_g, W_c, plan.batch_sizes, plan.prev_idx, torch.is_grad_enabled())
    final = plan.final(out, h0)
    return final[:, :Ha], final[:, Ha:]


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


def run_augru(cell: TFGRUCell, x: torch.Tensor, att: torch.Tensor, lengths: torch.Tensor,
              n_steps: int | None = None) -> torch.Tensor:
    """Final AUGRU states (B, C, H) for inputs x (B, L, D) shared by C attention sequences att (B, C, L).

    ``dynamic_rnn`` semantics: zero initial state, the state is frozen after step n_b − 1 (so the
    result is the state at n_b − 1, zeros for n_b = 0). The input projections x_t W_x + b are computed
    once per instance for all steps; each step does the two recurrent products on B·C rows.
    """
    B, L = x.shape[0], x.shape[1]
    C, H = att.shape[1], cell.hidden_size
    n_steps = L if n_steps is None else min(int(n_steps), L)
    h = x.new_zeros(B, C, H)
    if n_steps == 0:
        return h
    pre = cell.precompute(x[:, :n_steps])  # per step: (x_t W_g,x + b_g (B, 2H), x_t W_c,x + b_c (B, H))
    Wg_h, Wc_h = cell.step_weights()
    # per-step views made by unbind (one stacked gradient in backward, no per-step zero fill)
    keep_gate = (1.0 - att[:, :, :n_steps]).unsqueeze(-1).unbind(2)  # T × (B, C, 1): (1 − a_t)
    live = (torch.arange(n_steps, device=x.device)[None, :] < lengths[:, None]).view(B, 1, n_steps, 1).unbind(2)
    for t in range(n_steps):
        gx, cx = pre[t]
        r, u = torch.sigmoid(torch.matmul(h, Wg_h).add_(gx.unsqueeze(1))).chunk(2, dim=-1)  # (B, C, H) each
        c = torch.tanh(torch.matmul(r * h, Wc_h).add_(cx.unsqueeze(1)))
        h_new = torch.lerp(c, h, u * keep_gate[t])  # u' h + (1 − u') c with u' = (1 − a_t) u
        h = torch.where(live[t], h_new, h)
    return h
