"""Fast twins of the recurrent runners of `clsr.models.cells`: whole-sequence GRU and LSTM recurrences
with a hand-written backward over packed valid positions (`packed_rnn` for `run_rnn`, `packed_gru_pair`
for `run_gru_pair`), and the AUGRU with its input side computed once per instance (`augru_shared_inputs`
for `run_augru`).

Why: on a CPU, the time loop of a small RNN (B = 500 rows, H = 40) is bound by per-op overhead and
memory traffic, not by arithmetic. Under autograd every step records ~10 nodes, and the backward pays
for each of them plus a `cat` per `chunk` and zero-filled gradients for unused gate blocks. Here the
forward loop runs without autograd, writing every step into preallocated buffers and forming the
local derivative factors the backward will need while the step's values are in cache; the backward
loop does only what is sequential (the carried ∂h, ∂c and one matmul per step), and the weight
gradients are one GEMM over all steps.

Packed layout (as ``torch.nn.utils.rnn.PackedSequence``): the rows are sorted by length, longest
first, and step t holds only the k_t rows still running (k_0 ≥ k_1 ≥ ...), stacked step after step,
so padded positions are neither projected nor stepped (≈ 22 % of the positions of an ml100k batch).
Each row's state at step t continues from its own state at t − 1: the first k_t rows of step t − 1.

The functions compute exactly the cells of `cells.TFGRUCell` / `cells.TFLSTMCell` /
`cells.Time4LSTMCell` (tests/test_fast.py checks values and gradients against the reference runners in
float64, tests/test_recurrence.py the Functions with `torch.autograd.gradcheck`). On a CPU the
element-wise work of a step runs in the C kernels of `clsr.fast.native` when they are loaded (the same
values; torch ops otherwise, and on other devices).

Notation: gx holds the input part of the gate pre-activations (x_t W_x + b, any constant bias folded
in), W_h the recurrent kernel (H × k·H, TF layout), σ the logistic function.
"""
from __future__ import annotations

import torch

from clsr import fast
from clsr.fast import native
from clsr.models import cells
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell


def _one(like: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=like.dtype, device=like.device)


def per_step(t: torch.Tensor | None, batch_sizes: list[int]) -> list:
    """The packed rows of t step by step (views, one `split`: cheaper than a slice per step), or a None per
    step for None (an optional array of a step kernel)."""
    return [None] * len(batch_sizes) if t is None else t.split(batch_sizes)


def step_slices(batch_sizes: list[int]) -> list[tuple[int, int]]:
    """(offset, k_t) of every step in the packed rows."""
    out, off = [], 0
    for k in batch_sizes:
        out.append((off, k))
        off += k
    return out


def _weight_grad(h0, out, D, batch_sizes, prev_idx):
    """Σ_t h_{t−1}ᵀ D_t over packed rows: h0's first k_0 rows for step 0, then out[prev_idx]."""
    k0 = batch_sizes[0]
    dW = torch.mm(h0[:k0].t(), D[:k0])
    if len(batch_sizes) > 1:
        dW.addmm_(out.index_select(0, prev_idx).t(), D[k0:])
    return dW


class GRUSequence(torch.autograd.Function):
    """TF1 GRU over packed steps (reset applied before the recurrent matmul):

        [r, z] = σ(gx_t + h_{t−1} W_g),   c = tanh(cx_t + (r ⊙ h_{t−1}) W_c),   h_t = c + z ⊙ (h_{t−1} − c)

    Backward, with ∂h = ∂out_t + (carried from step t+1):
        ∂z̃ = ∂h ⊙ (h_{t−1} − c) ⊙ z(1−z),   ∂c̃ = ∂h ⊙ (1−z) ⊙ (1−c²),   ∂(r⊙h) = ∂c̃ W_cᵀ,
        ∂r̃ = ∂(r⊙h) ⊙ h_{t−1} ⊙ r(1−r),     carried ∂h_{t−1} = ∂h ⊙ z + ∂(r⊙h) ⊙ r + [∂r̃ ‖ ∂z̃] W_gᵀ,
        ∂proj_t = [∂r̃ ‖ ∂z̃ ‖ ∂c̃],  ∂W_g = Σ_t h_{t−1}ᵀ [∂r̃ ‖ ∂z̃],  ∂W_c = Σ_t (r⊙h_{t−1})ᵀ ∂c̃.
    The factors [h_{t−1} r(1−r), (h_{t−1} − c) z(1−z), (1−z)(1−c²)] are formed in the forward loop.

    Inputs: proj (P, 3H) = [gx ‖ cx] packed and its bias (3H,) or None (added inside the loop: a bias in
    the projection GEMM costs a copy pass over (P, 3H)); h0 (B, H) in packed (sorted) row order; W_g (H, 2H),
    W_c (H, H); batch_sizes (k_t per step); prev_idx from `Packing` (each row's packed row at the step before); ``train`` False skips the
    backward's factors (no gradient will be asked for: the caller knows, the function cannot see the
    grad mode). Returns the packed states h_t (P, H).
    """

    @staticmethod
    def forward(ctx, proj, bias, h0, W_g, W_c, batch_sizes, prev_idx, train: bool = True):
        P, H3 = proj.shape
        H = H3 // 3
        B = h0.shape[0]
        out = proj.new_empty(P, H)
        RZ = proj.new_empty(P, 2 * H)  # [r ‖ z]
        RH = proj.new_empty(P, H)  # r ⊙ h_{t−1}
        K = proj.new_empty(P, 3, H) if train else None  # local factors for the backward
        c_buf, hc_buf = proj.new_empty(B, H), proj.new_empty(B, H)
        one = _one(proj)
        h0 = h0.contiguous()
        h = h0
        nk = native.kernels(proj)
        if nk is not None:  # the element-wise work of a step as two calls (kernels.c), same values
            proj = proj if proj.stride(1) == 1 else proj.contiguous()  # the kernels read rows with unit stride
            x_rz, x_c = proj[:, : 2 * H], proj[:, 2 * H :]
            b_rz = b_c = None
            if bias is not None:
                b_rz, b_c = bias[: 2 * H].contiguous(), bias[2 * H :].contiguous()
            steps = zip(RZ.split(batch_sizes), RH.split(batch_sizes), x_rz.split(batch_sizes), x_c.split(batch_sizes),
                        out.split(batch_sizes), per_step(None if K is None else K.view(P, 3 * H), batch_sizes))
            for rz, rh, xg, xc, h_t, kk in steps:
                k = rz.shape[0]
                hp, c = h[:k], c_buf[:k]
                # the matmuls write h W alone; the kernels add the input part (no copy of it first)
                torch.mm(hp, W_g, out=rz)
                nk.gru_fwd_gates(rz=rz, x=xg, hp=hp, rh=rh, b=b_rz)
                torch.mm(rh, W_c, out=c)
                nk.gru_fwd_state(c=c, x=xc, hp=hp, rz=rz, out=h_t, K=kk, b=b_c)
                h = h_t
        else:
            if bias is not None:
                proj = proj + bias
            for off, k in step_slices(batch_sizes):
                rows = slice(off, off + k)
                hp, c, hc = h[:k], c_buf[:k], hc_buf[:k]
                rz = torch.addmm(proj[rows, : 2 * H], hp, W_g, out=RZ[rows]).sigmoid_()
                r, z = rz[:, :H], rz[:, H:]
                torch.mul(r, hp, out=RH[rows])
                torch.addmm(proj[rows, 2 * H :], RH[rows], W_c, out=c).tanh_()
                torch.sub(hp, c, out=hc)
                if train:
                    kk = K[rows]
                    dsig = torch.addcmul(rz, rz, rz, value=-1.0)  # [r(1−r) ‖ z(1−z)]
                    torch.mul(hp, dsig[:, :H], out=kk[:, 0])
                    torch.mul(hc, dsig[:, H:], out=kk[:, 1])
                    one_c2 = torch.addcmul(one, c, c, value=-1.0)
                    torch.addcmul(one_c2, z, one_c2, value=-1.0, out=kk[:, 2])  # (1 − z)(1 − c²)
                h = torch.addcmul(c, z, hc, out=out[rows])
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(out, RZ, RH, K, h0, W_g, W_c, prev_idx)
        return out

    @staticmethod
    def backward(ctx, d_out):
        out, RZ, RH, K, h0, W_g, W_c, prev_idx = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        H = out.shape[1]
        D = out.new_empty(out.shape[0], 3 * H)  # ∂proj = [∂r̃ ‖ ∂z̃ ‖ ∂c̃]
        W_g_t, W_c_t = W_g.t().contiguous(), W_c.t().contiguous()  # a transposed view takes a slower GEMM path
        carry = torch.zeros_like(h0)  # rows that have not started (backwards) yet carry exact zeros
        nk = native.kernels(out)
        if nk is not None:
            d_out = d_out.contiguous()
            dh_buf, drh_buf = torch.empty_like(h0), torch.empty_like(h0)
            steps = zip(d_out.split(batch_sizes), D.split(batch_sizes), D[:, : 2 * H].split(batch_sizes),
                        D[:, 2 * H :].split(batch_sizes), K.view(-1, 3 * H).split(batch_sizes), RZ.split(batch_sizes))
            for g, d, d_rz, d_c, kk, rz in reversed(list(steps)):
                k = g.shape[0]
                dh, drh, cr = dh_buf[:k], drh_buf[:k], carry[:k]
                nk.gru_bwd_a(d_out=g, carry=cr, K=kk, D=d, dh=dh)
                torch.mm(d_c, W_c_t, out=drh)
                nk.gru_bwd_b(drh=drh, K=kk, rz=rz, dh=dh, D=d, tmp=cr)
                cr.addmm_(d_rz, W_g_t)
        else:
            for off, k in reversed(step_slices(batch_sizes)):
                rows = slice(off, off + k)
                dh = d_out[rows] + carry[:k]
                d, kk = D[rows], K[rows]
                torch.mul(dh, kk[:, 1], out=d[:, H : 2 * H])  # ∂z̃
                torch.mul(dh, kk[:, 2], out=d[:, 2 * H :])  # ∂c̃
                d_rh = torch.mm(d[:, 2 * H :], W_c_t)
                torch.mul(d_rh, kk[:, 0], out=d[:, :H])  # ∂r̃
                r, z = RZ[rows, :H], RZ[rows, H:]
                torch.addmm(torch.addcmul(dh * z, d_rh, r), d[:, : 2 * H], W_g_t, out=carry[:k])
        dW_g = _weight_grad(h0, out, D[:, : 2 * H], batch_sizes, prev_idx) if ctx.needs_input_grad[3] else None
        dW_c = torch.mm(RH.t(), D[:, 2 * H :]) if ctx.needs_input_grad[4] else None
        d_bias = D.sum(0) if ctx.needs_input_grad[1] else None
        return D, d_bias, carry, dW_g, dW_c, None, None, None


class LSTMSequence(torch.autograd.Function):
    """TF1 LSTM over packed steps (gate order i, j, f, o), optionally with Time4LSTM's time gates:

        [ĩ, j̃, f̃, õ] = gx_t + h_{t−1} W,   i = σ(ĩ) s1_t,  f = σ(f̃) s2_t,  j = tanh(j̃),  o = σ(õ)
        c_t = f ⊙ c_{t−1} + i ⊙ j,   h_t = o ⊙ tanh(c_t)          (c_0 = 0; s1 = s2 = 1 without time gates)

    with s1, s2 = σ(g̃1), σ(g̃2), the time gates' pre-activations given as gx's columns 4H..6H.
    Backward, with ∂h = ∂out_t + carried ∂h, ∂c = carried ∂c + ∂h ⊙ o (1 − tanh² c_t):
        ∂ĩ = ∂c ⊙ j s1 σ(ĩ)(1−σ(ĩ)),   ∂j̃ = ∂c ⊙ i (1 − j²),   ∂f̃ = ∂c ⊙ c_{t−1} s2 σ(f̃)(1−σ(f̃)),
        ∂õ = ∂h ⊙ tanh c_t ⊙ o(1−o),   carried ∂c_{t−1} = ∂c ⊙ f,   carried ∂h_{t−1} = ∂g Wᵀ,
        ∂g̃1 = ∂c ⊙ j σ(ĩ) s1(1−s1),   ∂g̃2 = ∂c ⊙ c_{t−1} σ(f̃) s2(1−s2),   ∂W = Σ_t h_{t−1}ᵀ ∂g.
    The factors multiplying ∂c (three blocks, and the two time-gate blocks) and ∂h (one block) are
    formed in the forward loop.

    Inputs: gx (P, 4H), or (P, 6H) = [gates' input part ‖ g̃1 ‖ g̃2] with time gates (forget bias folded
    in either way), its bias (gx's width) or None (added inside the loop, as in `GRUSequence`), h0 (B, H),
    W (H, 4H), batch_sizes, prev_idx and ``train`` as in `GRUSequence`.
    Returns the packed h_t (P, H); the gradient of gx has gx's width.
    """

    @staticmethod
    def forward(ctx, gx, bias, h0, W, batch_sizes, prev_idx, train: bool = True):
        P, width = gx.shape
        H = W.shape[0]
        if width not in (4 * H, 6 * H):
            raise ValueError(f"LSTMSequence: gx has {width} columns, expected 4H or 6H with H = {H}")
        timed = width == 6 * H
        B = h0.shape[0]
        out = gx.new_empty(P, H)
        G = gx.new_empty(P, 4 * H)  # [σ(ĩ), j, σ(f̃), σ(õ)]
        F_eff = gx.new_empty(P, H) if timed else None  # f = σ(f̃) s2
        PD = gx.new_empty(P, 4 * H) if train else None  # ∂g = [∂c, ∂c, ∂c, ∂h] ⊙ PD
        KC = gx.new_empty(P, H) if train else None  # ∂c += ∂h ⊙ KC
        Q = gx.new_empty(P, 2 * H) if (train and timed) else None  # [∂g̃1 ‖ ∂g̃2] = [∂c ‖ ∂c] ⊙ Q
        i_buf, tc_buf = gx.new_empty(B, H), gx.new_empty(B, H)
        one = _one(gx)
        h, c = h0, torch.zeros_like(h0)
        nk = native.kernels(gx)
        if nk is not None:  # the element-wise work of a step as one call (kernels.c), same values
            gx = gx if gx.stride(1) == 1 else gx.contiguous()  # the kernel reads rows with unit stride
            x4, g12 = gx[:, : 4 * H], (gx[:, 4 * H :] if timed else None)
            bias = bias.contiguous() if bias is not None else None
            steps = zip(G.split(batch_sizes), x4.split(batch_sizes), out.split(batch_sizes), per_step(g12, batch_sizes),
                        per_step(F_eff, batch_sizes), per_step(PD, batch_sizes), per_step(KC, batch_sizes),
                        per_step(Q, batch_sizes))
            for g, x, h_t, g_s, f, pd, kc, q in steps:
                k = g.shape[0]
                torch.mm(h[:k], W, out=g)  # h W alone; the kernel adds the input part gx
                nk.lstm_fwd(g=g, x=x, c=c[:k], out=h_t, g12=g_s, F=f, PD=pd, KC=kc, Q=q, b=bias)
                h = h_t
        else:
            if bias is not None:
                gx = gx + bias
            s12 = torch.sigmoid(gx[:, 4 * H :]) if timed else None  # [s1 ‖ s2]
            Qv = Q.view(P, 2, H) if Q is not None else None
            for off, k in step_slices(batch_sizes):
                rows = slice(off, off + k)
                hp, cp, tc = h[:k], c[:k], tc_buf[:k]
                g = torch.addmm(gx[rows, : 4 * H], hp, W, out=G[rows])
                s_i, j, s_f, s_o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
                j.tanh_()
                s_i.sigmoid_()
                g[:, 2 * H :].sigmoid_()
                if s12 is None:
                    i, f = s_i, s_f
                else:
                    s1, s2 = s12[rows, :H], s12[rows, H:]
                    i = torch.mul(s_i, s1, out=i_buf[:k])
                    f = torch.mul(s_f, s2, out=F_eff[rows])
                if train:
                    pd = PD[rows]
                    dact = torch.addcmul(g, g, g, value=-1.0, out=pd)  # x − x² per block (j fixed below)
                    torch.addcmul(one, j, j, value=-1.0, out=pd[:, H : 2 * H])
                    torch.mul(dact[:, H : 2 * H], i, out=pd[:, H : 2 * H])  # i (1 − j²)
                    if s12 is None:
                        pd[:, :H].mul_(j)  # j σ'(ĩ)
                        pd[:, 2 * H : 3 * H].mul_(cp)  # c_{t−1} σ'(f̃)
                    else:
                        q = Qv[rows]
                        torch.mul(j, s_i, out=q[:, 0])  # ∂g̃1 / ∂c before σ'(g̃1), applied after the loop
                        torch.mul(cp, s_f, out=q[:, 1])
                        pd[:, :H].mul_(j).mul_(s1)
                        pd[:, 2 * H : 3 * H].mul_(cp).mul_(s2)
                c = torch.addcmul(f * cp, i, j)
                torch.tanh(c, out=tc)
                if train:
                    pd[:, 3 * H :].mul_(tc)  # tanh(c_t) σ'(õ)
                    torch.addcmul(one, tc, tc, value=-1.0, out=KC[rows]).mul_(s_o)  # σ(õ)(1 − tanh² c_t)
                h = torch.mul(s_o, tc, out=out[rows])
            if Q is not None:
                Q.mul_(s12 - s12 * s12)  # σ'(g̃) = s (1 − s)
        f_all = G[:, 2 * H : 3 * H] if not timed else F_eff
        ctx.batch_sizes = batch_sizes
        ctx.save_for_backward(out, f_all, PD, KC, Q, h0, W, prev_idx)
        return out

    @staticmethod
    def backward(ctx, d_out):
        out, f_all, PD, KC, Q, h0, W, prev_idx = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        P, H = out.shape
        B = h0.shape[0]
        DX = out.new_empty(P, 6 * H if Q is not None else 4 * H)  # ∂gx: [∂ĩ, ∂j̃, ∂f̃, ∂õ (‖ ∂g̃1, ∂g̃2)]
        DG = DX[:, : 4 * H]  # ∂ of the pre-activations [ĩ, j̃, f̃, õ]
        DS = DX[:, 4 * H :] if Q is not None else None
        M_buf = out.new_empty(B, 4, H)  # [∂c, ∂c, ∂c, ∂h]
        W_t = W.t().contiguous()  # a transposed view takes a slower GEMM path
        dh_carry = torch.zeros_like(h0)  # rows not started (backwards) yet carry exact zeros
        dc_carry = torch.zeros_like(h0)
        nk = native.kernels(out)
        if nk is not None:  # everything but the matmul of a step as one call (kernels.c)
            d_out = d_out.contiguous()
            steps = zip(d_out.split(batch_sizes), KC.split(batch_sizes), PD.split(batch_sizes),
                        f_all.split(batch_sizes), DG.split(batch_sizes), per_step(Q, batch_sizes),
                        per_step(DS, batch_sizes))
            for g, kc, pd, f, dg, q, ds in reversed(list(steps)):
                k = g.shape[0]
                nk.lstm_bwd(d_out=g, dh_carry=dh_carry[:k], dc_carry=dc_carry[:k], KC=kc, PD=pd, F=f, DG=dg, Q=q, DS=ds)
                torch.mm(dg, W_t, out=dh_carry[:k])
        else:
            for off, k in reversed(step_slices(batch_sizes)):
                rows = slice(off, off + k)
                M = M_buf[:k]
                dh = torch.add(d_out[rows], dh_carry[:k], out=M[:, 3])
                dc = torch.addcmul(dc_carry[:k], dh, KC[rows], out=M[:, 0])
                M[:, 1:3] = dc.unsqueeze(1)
                if Q is not None:
                    torch.mul(dc.unsqueeze(1), Q[rows].view(k, 2, H), out=DS[rows].view(k, 2, H))
                torch.mul(M.view(k, 4 * H), PD[rows], out=DG[rows])
                torch.mul(dc, f_all[rows], out=dc_carry[:k])
                torch.mm(DG[rows], W_t, out=dh_carry[:k])
        dW = _weight_grad(h0, out, DG, batch_sizes, prev_idx) if ctx.needs_input_grad[3] else None
        d_bias = DX.sum(0) if ctx.needs_input_grad[1] else None
        return DX, d_bias, dh_carry, dW, None, None, None


class Time4Inputs(torch.autograd.Function):
    """The input side of a Time4LSTM for all packed rows at once (`time4_projection_weights`):

        T = tanh(τ W_τ + b_τ)  (P, 2H),    Y = x W_x  (P, 6H),    Y[:, 3H:] += T W_T

    Y's columns are the pre-activations [i, j, f, o, g1, g2] without their h part and without their bias
    b_x, as `LSTMSequence` takes them (it adds b_x). Backward, with ∂Y_T = ∂Y[:, 3H:]:
        ∂W_x = xᵀ ∂Y,  ∂x = ∂Y W_xᵀ,  ∂W_T = Tᵀ ∂Y_T,  ∂T̃ = ∂Y_T W_Tᵀ ⊙ (1 − T²),
        ∂W_τ = τᵀ ∂T̃,  ∂b_τ = Σ ∂T̃,  ∂τ = ∂T̃ W_τᵀ.
    Why a Function: written with autograd ops, the slices, splits and concatenations of this layout
    cost a pass over a (P, ≥ 3H) tensor each, forward and backward (≈ 10 % of a CLSR step on CPU).
    """

    @staticmethod
    def forward(ctx, x, tau, W_x, W_tau, b_tau, W_T):
        T = torch.addmm(b_tau, tau, W_tau).tanh_()
        Y = torch.mm(x, W_x)
        Y[:, Y.shape[1] - W_T.shape[1] :].addmm_(T, W_T)  # the o, g1, g2 columns: + T W_T
        ctx.save_for_backward(x, tau, T, W_x, W_tau, W_T)
        return Y

    @staticmethod
    def backward(ctx, dY):
        x, tau, T, W_x, W_tau, W_T = ctx.saved_tensors
        need = ctx.needs_input_grad
        dY = dY.contiguous()
        dY_T = dY[:, dY.shape[1] - W_T.shape[1] :]
        dT = torch.mm(dY_T, W_T.t().contiguous())  # (P, 2H); a transposed view takes a slower GEMM path
        dT.mul_(torch.addcmul(_one(T), T, T, value=-1.0))  # ∂ of tanh's pre-activation
        return (
            torch.mm(dY, W_x.t().contiguous()) if need[0] else None,
            torch.mm(dT, W_tau.t()) if need[1] else None,
            torch.mm(x.t(), dY) if need[2] else None,
            torch.mm(tau.t(), dT) if need[3] else None,
            dT.sum(0) if need[4] else None,
            torch.mm(T.t(), dY_T) if need[5] else None,
        )


# --------------------------------------------------------------------------------------------------
# packing, and the cells' weights in the fused layouts
# --------------------------------------------------------------------------------------------------
class Packing:
    """Rows sorted by length (longest first) and their valid positions stacked step after step, as
    the sequence Functions above expect (the layout of ``torch.nn.utils.rnn.PackedSequence``).

    perm[i] is the original row of sorted row i; batch_sizes[t] = k_t, the rows still running at step t;
    packed row p holds position rows_t[p] of original row rows_b[p]; prev_idx[p − k_0] the packed row of
    row p's previous step (for the rows of steps 1..); last[i] the packed row of sorted row i's final step.
    """

    def __init__(self, perm, inv, sorted_len, batch_sizes, rows_b, rows_t, prev_idx, last, width):
        self.perm, self.inv, self.sorted_len = perm, inv, sorted_len
        self.batch_sizes, self.rows_b, self.rows_t = batch_sizes, rows_b, rows_t
        self.prev_idx, self.last, self.width = prev_idx, last, width
        self.flat = rows_b * width + rows_t  # position in a (B·L, ...) view

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (P, d). index_select, whose backward is an index_add (the positions are distinct)."""
        return x.reshape(-1, x.shape[-1]).index_select(0, self.flat)

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


_last_plan: tuple | None = None  # (lengths, n_steps, width, plan) of the last `plan_for`


def plan_for(lengths: torch.Tensor, n_steps: int, width: int) -> Packing:
    """`Packing.plan`, reused while the same `lengths` tensor comes back (the recurrent nets of one
    forward read the same histories: one packing serves them all). A plan holds index tensors only."""
    global _last_plan
    if _last_plan is not None and _last_plan[0] is lengths and _last_plan[1:3] == (n_steps, width):
        return _last_plan[3]
    plan = Packing.plan(lengths, n_steps, width)
    _last_plan = (lengths, n_steps, width, plan)
    return plan


def gru_weights(cell: TFGRUCell):
    """(W_x (D, 3H) = [W_g,x ‖ W_c,x], bias [b_g ‖ b_c] (3H,), W_g,h (H, 2H), W_c,h (H, H)) of a TF GRU."""
    D = cell.input_dim
    W_x = torch.cat([cell.gate_kernel[:D], cell.cand_kernel[:D]], dim=1)
    return W_x, torch.cat([cell.gate_bias, cell.cand_bias]), cell.gate_kernel[D:], cell.cand_kernel[D:]


def lstm_weights(cell: TFLSTMCell):
    """(W_x (D, 4H), bias (4H,) with the forget bias folded into the f block, W_h (H, 4H)) of a TF LSTM."""
    D, H = cell.input_dim, cell.hidden_size
    shift = torch.zeros_like(cell.bias)
    shift[2 * H : 3 * H] = cell.forget_bias
    return cell.kernel[:D], cell.bias + shift, cell.kernel[D:]


def time4_projection_weights(cell: Time4LSTMCell):
    """The input side of a `Time4LSTMCell` as three linear maps (rows τ = [τ^first, τ^now]):
        [T1 ‖ T2] = tanh(τ W_τ + b_τ),           W_τ = [[0, w2], [w1, 0]] (2 × 2H), b_τ = [b1 ‖ b2]
        A = x W_x + b_x,                          W_x = [W_lstm,x | W_x1 | W_x2] (D × 6H),
                                                  b_x = [b (+1 on f) | c1 | c2]
        [o | g1 | g2] += [T1 ‖ T2] W_T,           W_T = [[W_o1, W_t1, 0], [W_o2, 0, W_t2]] (2H × 3H)
    so that A's columns are the pre-activations [i, j, f, o, g1, g2] minus their h part.
    Returns (W_x, b_x, W_τ, b_τ, W_T)."""
    H = cell.hidden_size
    zH = cell.time_input_w1.new_zeros(H)
    W_tau = torch.stack([torch.cat([zH, cell.time_input_w2]), torch.cat([cell.time_input_w1, zH])])
    b_tau = torch.cat([cell.time_input_b1, cell.time_input_b2])
    W_lstm, b_lstm, _ = lstm_weights(cell)
    W_x = torch.cat([W_lstm, cell.time_kernel_w1, cell.time_kernel_w2], dim=1)
    b_x = torch.cat([b_lstm, cell.time_bias1, cell.time_bias2])
    zHH = cell.o_kernel_t1.new_zeros(H, H)
    W_T = torch.cat(
        [torch.cat([cell.o_kernel_t1, cell.time_kernel_t1, zHH], 1),
         torch.cat([cell.o_kernel_t2, zHH, cell.time_kernel_t2], 1)], 0
    )
    return W_x, b_x, W_tau, b_tau, W_T


# --------------------------------------------------------------------------------------------------
# the twins
# --------------------------------------------------------------------------------------------------
_CELLS = (TFGRUCell, TFLSTMCell, Time4LSTMCell)


def _why_not_cell(cell) -> str | None:
    # the exact classes: a subclass may have edited an equation
    return None if type(cell) in _CELLS else f"cell {type(cell).__name__} has no packed recurrence"


@fast.register(
    cells.run_rnn,
    sources=(cells.run_rnn, cells._final_states, TFGRUCell.forward, TFLSTMCell.gates, TFLSTMCell.forward,
             Time4LSTMCell.time_gates, Time4LSTMCell.forward),
    checked="3d2385b266374d45",
)
def packed_rnn(cell, inputs, lengths, h0=None, n_steps=None, times=None):
    """`cells.run_rnn` over packed valid positions with `GRUSequence` / `LSTMSequence`."""
    B, L = inputs.shape[0], inputs.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    H = cell.hidden_size
    start = inputs.new_zeros(B, H) if h0 is None else h0
    plan = plan_for(lengths, n_steps, L) if n_steps else None
    if plan is None or not plan.batch_sizes:  # no step, or every history empty
        return inputs.new_zeros(B, L, H), start
    h0_sorted = start[plan.perm]
    train = torch.is_grad_enabled()
    if type(cell) is Time4LSTMCell:
        if times is None:
            inputs, times = inputs.split([cell.input_dim, 2], dim=-1)
        W_x, b_x, W_tau, b_tau, W_T = time4_projection_weights(cell)
        gx = Time4Inputs.apply(plan.pack(inputs), plan.pack(times), W_x, W_tau, b_tau, W_T)  # (P, 6H)
        out = LSTMSequence.apply(gx, b_x, h0_sorted, cell.kernel[cell.input_dim :], plan.batch_sizes,
                                 plan.prev_idx, train)
    elif type(cell) is TFLSTMCell:
        W_x, bias, W_h = lstm_weights(cell)
        gx = torch.mm(plan.pack(inputs), W_x)  # the valid positions, packed step after step
        out = LSTMSequence.apply(gx, bias, h0_sorted, W_h, plan.batch_sizes, plan.prev_idx, train)
    else:
        W_x, bias, W_g, W_c = gru_weights(cell)
        out = GRUSequence.apply(torch.mm(plan.pack(inputs), W_x), bias, h0_sorted, W_g, W_c, plan.batch_sizes,
                                plan.prev_idx, train)
    return plan.unpack(out), plan.final(out, h0_sorted)


@packed_rnn.accepts
def _(cell, inputs, lengths, h0=None, n_steps=None, times=None):
    return _why_not_cell(cell)


@fast.register(
    cells.run_gru_pair,
    sources=(cells.run_gru_pair, cells.run_rnn, cells._final_states, TFGRUCell.forward),
    checked="0505fe41ab7dfa7b",
)
def packed_gru_pair(cell_a, cell_b, x, lengths, h0_a=None, n_steps=None):
    """`cells.run_gru_pair` as ONE GRU of width H_a + H_b over packed valid positions.

    Why: the time loop costs per op, not per element, so two GRUs in one loop cost little more than
    one. The joint GRU's kernels are block-diagonal in the two state halves, with gate columns ordered
    [r_a ‖ r_b ‖ z_a ‖ z_b] and candidate columns [c_a ‖ c_b]; the zero blocks add exact zeros, so each
    half follows its own cell's equations (only the summation order inside the matmuls differs)."""
    B, L = x.shape[0], x.shape[1]
    n_steps = L if n_steps is None else min(int(n_steps), L)
    Ha, Hb, D = cell_a.hidden_size, cell_b.hidden_size, cell_a.input_dim
    start_a = x.new_zeros(B, Ha) if h0_a is None else h0_a
    start_b = x.new_zeros(B, Hb)
    plan = plan_for(lengths, n_steps, L) if n_steps else None
    if plan is None or not plan.batch_sizes:
        return start_a, start_b

    def cols(H, W):  # a (rows, 3H) block [r ‖ z ‖ c] -> r, z, c column blocks
        return W[..., :H], W[..., H : 2 * H], W[..., 2 * H :]

    Wxa, ba, Wga, Wca = gru_weights(cell_a)
    Wxb, bb, Wgb, Wcb = gru_weights(cell_b)
    (ra, za, ca), (rb, zb, cb) = cols(Ha, Wxa), cols(Hb, Wxb)
    W_x = torch.cat([ra, rb, za, zb, ca, cb], dim=1)  # (D, 3 (Ha + Hb))
    (rba, zba, cba), (rbb, zbb, cbb) = cols(Ha, ba), cols(Hb, bb)
    bias = torch.cat([rba, rbb, zba, zbb, cba, cbb])
    proj = torch.mm(plan.pack(x), W_x)  # (P, 3 (Ha + Hb)), packed; the recurrence adds the bias
    zab, zba_ = Wga.new_zeros(Ha, Hb), Wga.new_zeros(Hb, Ha)
    W_g = torch.cat(
        [torch.cat([Wga[:, :Ha], zab, Wga[:, Ha:], zab], dim=1),
         torch.cat([zba_, Wgb[:, :Hb], zba_, Wgb[:, Hb:]], dim=1)], dim=0
    )  # (Ha + Hb, 2 (Ha + Hb)), columns [r_a r_b z_a z_b]
    W_c = torch.block_diag(Wca, Wcb)
    h0 = torch.cat([start_a, start_b], dim=1)[plan.perm]
    out = GRUSequence.apply(proj, bias, h0, W_g, W_c, plan.batch_sizes, plan.prev_idx, torch.is_grad_enabled())
    final = plan.final(out, h0)
    return final[:, :Ha], final[:, Ha:]


@packed_gru_pair.accepts
def _(cell_a, cell_b, x, lengths, h0_a=None, n_steps=None):
    if type(cell_a) is not TFGRUCell or type(cell_b) is not TFGRUCell:
        return "cells are not both TFGRUCell"
    return None if cell_a.input_dim == cell_b.input_dim else "input widths differ"


@fast.register(cells.run_augru, sources=(cells.run_augru, cells.augru_step), checked="237a4d4226639376")
def augru_shared_inputs(cell, x, att, lengths, n_steps=None):
    """`cells.run_augru` with the input projections x_t W_x + b computed once per instance for all steps
    (not once per candidate row); each step does the two recurrent products on the B·C rows."""
    B, L = x.shape[0], x.shape[1]
    C, H = att.shape[1], cell.hidden_size
    n_steps = L if n_steps is None else min(int(n_steps), L)
    h = x.new_zeros(B, C, H)
    if n_steps == 0:
        return h
    W_x, bias, Wg_h, Wc_h = gru_weights(cell)
    xs = x[:, :n_steps].transpose(0, 1).reshape(n_steps * B, x.shape[2])
    proj = torch.addmm(bias, xs, W_x).view(n_steps, B, 3 * H)
    # per-step views made by unbind (one stacked gradient in backward, no per-step zero fill)
    gx_all, cx_all = proj.split([2 * H, H], dim=-1)
    gx_steps, cx_steps = gx_all.unbind(0), cx_all.unbind(0)
    keep_gate = (1.0 - att[:, :, :n_steps]).unsqueeze(-1).unbind(2)  # T × (B, C, 1): (1 − a_t)
    live = (torch.arange(n_steps, device=x.device)[None, :] < lengths[:, None]).view(B, 1, n_steps, 1).unbind(2)
    for t in range(n_steps):
        r, u = torch.sigmoid(torch.matmul(h, Wg_h).add_(gx_steps[t].unsqueeze(1))).chunk(2, dim=-1)  # (B, C, H) each
        c = torch.tanh(torch.matmul(r * h, Wc_h).add_(cx_steps[t].unsqueeze(1)))
        h_new = torch.lerp(c, h, u * keep_gate[t])  # u' h + (1 − u') c with u' = (1 − a_t) u
        h = torch.where(live[t], h_new, h)
    return h


@augru_shared_inputs.accepts
def _(cell, x, att, lengths, n_steps=None):
    return None if type(cell) is TFGRUCell else f"cell {type(cell).__name__} is not a TFGRUCell"
