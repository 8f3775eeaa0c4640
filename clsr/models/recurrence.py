"""Whole-sequence GRU and LSTM recurrences with a hand-written backward (fast path of `cells.run_rnn`).

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
`cells.Time4LSTMCell` (tests check values and gradients against those cells stepped under autograd,
and `torch.autograd.gradcheck` in float64). `cells.run_rnn` packs, unpacks and reads final states.

Notation: gx holds the input part of the gate pre-activations (x_t W_x + b, any constant bias folded
in), W_h the recurrent kernel (H × k·H, TF layout), σ the logistic function.
"""
from __future__ import annotations

import torch

from clsr.models import native
from clsr.models.native import ld, ptr


def _one(like: torch.Tensor) -> torch.Tensor:
    return torch.ones((), dtype=like.dtype, device=like.device)


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
    W_c (H, H); batch_sizes (k_t per step); prev_idx from `cells.Packing` (each row's packed row at the step before); ``train`` False skips the
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
            b_rz = b_c = None
            if bias is not None:
                bias = bias.contiguous()
                b_rz, b_c = ptr(bias), ptr(bias) + 2 * H * bias.element_size()
            prev_off = None
            for off, k in step_slices(batch_sizes):
                rows = slice(off, off + k)
                hp_p = ptr(h0) if prev_off is None else ptr(out, prev_off)
                # the matmuls write h W alone; the kernels add the input part (no copy of it first)
                torch.mm(h[:k], W_g, out=RZ[rows])
                nk.gru_fwd_gates(k, H, ptr(RZ, off), 2 * H, ptr(proj, off), ld(proj), hp_p, H, ptr(RH, off), H, b_rz)
                torch.mm(RH[rows], W_c, out=c_buf[:k])
                nk.gru_fwd_state(k, H, ptr(c_buf), H, ptr(proj, off) + 2 * H * proj.element_size(), ld(proj), hp_p, H,
                                 ptr(RZ, off), 2 * H, ptr(out, off), H, ptr(K, off), ld(K), b_c)
                h, prev_off = out[rows], off
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
            for off, k in reversed(step_slices(batch_sizes)):
                rows = slice(off, off + k)
                nk.gru_bwd_a(k, H, ptr(d_out, off), H, ptr(carry), H, ptr(K, off), 3 * H, ptr(D, off), 3 * H,
                             ptr(dh_buf), H)
                torch.mm(D[rows, 2 * H :], W_c_t, out=drh_buf[:k])
                nk.gru_bwd_b(k, H, ptr(drh_buf), H, ptr(K, off), 3 * H, ptr(RZ, off), 2 * H, ptr(dh_buf), H,
                             ptr(D, off), 3 * H, ptr(carry), H)
                carry[:k].addmm_(D[rows, : 2 * H], W_g_t)
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
            g12 = gx[:, 4 * H :] if timed else None
            bias = bias.contiguous() if bias is not None else None
            for off, k in step_slices(batch_sizes):
                rows = slice(off, off + k)
                torch.mm(h[:k], W, out=G[rows])  # h W alone; the kernel adds the input part gx
                nk.lstm_fwd(k, H, ptr(G, off), 4 * H, ptr(gx, off), ld(gx), ptr(g12, off), ld(g12), ptr(F_eff, off), ld(F_eff),
                            ptr(c), H, ptr(out, off), H, ptr(PD, off), ld(PD), ptr(KC, off), ld(KC),
                            ptr(Q, off), ld(Q), ptr(bias))
                h = out[rows]
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
            for off, k in reversed(step_slices(batch_sizes)):
                rows = slice(off, off + k)
                nk.lstm_bwd(k, H, ptr(d_out, off), H, ptr(dh_carry), H, ptr(dc_carry), H, ptr(KC, off), ld(KC),
                            ptr(PD, off), ld(PD), ptr(f_all, off), ld(f_all), ptr(DG, off), ld(DG),
                            ptr(Q, off), ld(Q), ptr(DS, off), ld(DS))
                torch.mm(DG[rows], W_t, out=dh_carry[:k])
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
    """The input side of a Time4LSTM for all packed rows at once (`cells.Time4LSTMCell.projection_weights`):

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
