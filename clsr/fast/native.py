"""Builds, caches and loads `kernels.c`: C kernels for the two memory- and overhead-bound parts of a CLSR
training step on a CPU, each with a torch-op twin that computes the same values:

- the element-wise part of one packed GRU / LSTM step as one call (used by `clsr.fast.recurrence`);
- batch norm in training mode fused with the ReLU after it, forward and backward (`bn_relu`, used by
  `layers.MLP`), and with a following one-unit output layer (`bn_relu_dot`: the scorers' last hidden
  layer, whose activations are then never written);
- the per-(candidate, position) part of a DIN scorer's first layer, z = (a ⊙ r) W + K + Q, with its
  additions and the reductions of its backward each in one pass (`din_pair_layer`, used by
  `attention.din_first_layer`).

Which groups of kernels are here: a group stays where it beats the best torch path by ≥ 1.2× on the whole
training epoch of a model that uses it (issue 13). Epoch seconds on ml100k (2 threads) for clsr / din / slirec,
from reports/benchmarks/train.md, "What the C kernels add" (`benchmarks/bench_train.py`, TWIN_GROUPS; the
machine's load average was 1.5-2.2 during that run: another job shared its 2 cores):

| group of C kernels                  | without (s)            | with (s)               | speed-up           | kept?   |
|-------------------------------------|------------------------|------------------------|--------------------|---------|
| recurrence steps (gru_*, lstm_*)    | 110.1 / - / 72.7 (a)   | 93.7 / - / 58.8 (b)    | 1.17 / - / 1.24    | kept    |
| BN + ReLU tails and DIN scorer (c)  | 93.7 / 37.2 / 58.8 (b) | 88.6 / 27.4 / 47.5 (d) | 1.06 / 1.36 / 1.24 | kept    |
| embedding backward (index_add_rows) | 88.6 / 27.4 / 47.5 (d) | 79.4 / 27.5 / 46.2 (e) | 1.12 / 0.99 / 1.03 | removed |

(a) "C kernels off": the same twins with torch-op steps; reference tails, DIN scorer and lookup.
(b) "C only in the recurrence steps". (d) "without the C embedding backward". (e) "all fast twins, C kernels on".
(c) bn_relu_* (fused tails, `mlp.fused_tail`) with din_* / ragged_* / bn_relu_ragged_* (`attention.din_fused`,
    `din_ragged`): no configuration of the benchmark turns one on without the other, so they are one group.
The recurrence steps stay for slirec (1.24); for clsr they are just below (1.17), which is within the
measurement's noise: din has no recurrence, and its (a) and (b) epochs differ by 3 % (36.3, 37.2 s).
The embedding backward is below 1.2× for every model: `layers.lookup` runs its reference (index_select,
whose backward is an index_add). Outside a whole epoch, the same report times the fused tail of CLSR's
short-term scorer (125k rows, forward + backward): 65.1 ms, against 85.9 ms eager and 96.8 ms with
`torch.compile`.

Nothing here is needed for correctness; it is a speed path, used for CPU float32 / float64 tensors when
the library is available, and tests compare it with the torch ops (equal up to float rounding):

- built once per source version and CPU with the system C compiler (``$CC``, default ``cc``; -O3,
  -march=native, SIMD exp/tanh from glibc's libmvec, OpenMP from the process's libgomp, which is
  torch's own thread pool), about two seconds, into ``$CLSR_KERNEL_CACHE`` (default ``~/.cache/clsr``),
  written to a temporary name and renamed, so a concurrent or killed build never leaves a half-written
  library;
- ``CLSR_NATIVE=0`` turns it off (then torch ops run everywhere); `available()` says whether it is on
  and `status()` why not.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("kernels.c")
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared"]
LIBS = ["-lmvec", "-lm"]
_I, _L, _D, _P = ctypes.c_int, ctypes.c_long, ctypes.c_double, ctypes.c_void_p
_RNN = [_I, _I]  # (k rows, H) then (pointer, leading dimension) pairs
_FUNCS = {
    "gru_fwd_gates": _RNN + [_P, _I] * 4 + [_P],  # ..., input bias (or None)
    "gru_fwd_state": _RNN + [_P, _I] * 6 + [_P],
    "gru_bwd_a": _RNN + [_P, _I] * 5,
    "gru_bwd_b": _RNN + [_P, _I] * 6,
    "lstm_fwd": _RNN + [_P, _I] * 9 + [_P],
    "lstm_bwd": _RNN + [_P, _I] * 9,
    "bn_relu_fwd": [_L, _I, _I, _I, _P, _P, _P, _P, _P, _D, _P, _P, _P, _P],
    "bn_relu_bwd": [_L, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P],
    "bn_relu_dot_fwd": [_L, _I, _P, _L, _P, _P, _D, _P, _D, _P, _P, _P, _P, _P, _D],
    "bn_relu_dot_bwd": [_L, _I, _P, _P, _L, _P, _P, _P, _P, _P, _P, _L, _P, _P, _P, _P, _D],
    "ragged_prod_fwd": [_L, _I, _I, _I, _P, _P, _L, _P, _L, _L, _P, _L, _L, _P],
    "ragged_prod_bwd": [_L, _I, _I, _I, _P, _P, _L, _P, _P, _L, _L, _P, _L, _L, _P, _P],
    "bn_relu_ragged_fwd": [_L, _I, _I, _I, _P, _P, _L, _P, _P, _P, _P, _P, _D, _P, _P, _P, _P],
    "bn_relu_ragged_bwd": [_L, _I, _I, _I, _P, _P, _L, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P],
    "din_add_kq": [_L, _I, _I, _I, _P, _P, _P],
    "din_sum_kq": [_L, _I, _I, _I, _P, _P, _P],
    "din_prod_bwd": [_L, _I, _I, _I, _P, _P, _L, _L, _P, _L, _L, _P, _P],
}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lib: ctypes.CDLL | None = None
_why_not: str | None = None
_loaded = False
_enabled = os.environ.get("CLSR_NATIVE", "1") != "0"


def _cpu_tag() -> str:
    """The machine and its CPU feature flags: a library built with -march=native is only reused there."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    return platform.machine() + flags


def library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS + LIBS).encode() + _cpu_tag().encode())
    cache = Path(os.environ.get("CLSR_KERNEL_CACHE", Path.home() / ".cache" / "clsr"))
    return cache / f"kernels_{key.hexdigest()[:16]}.so"


def _build(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        cmd = [os.environ.get("CC", "cc"), *CFLAGS, "-o", tmp, str(SOURCE), *LIBS]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> None:
    global _lib, _why_not, _loaded
    _loaded = True
    try:
        path = library_path()
        if not path.exists():
            _build(path)
        lib = ctypes.CDLL(str(path))
        for name, argtypes in _FUNCS.items():
            for suf in _SUFFIX.values():
                f = getattr(lib, f"{name}_{suf}")
                f.argtypes = argtypes
                f.restype = None
        _lib = lib
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        _lib, _why_not = None, f"native kernels unavailable ({type(e).__name__}: {e}); using torch ops"


def kernels(like: torch.Tensor):
    """The kernel set for tensors like `like` (an object with the functions of kernels.c without their
    dtype suffix), or None: turned off, not buildable here, not on the CPU, or not float32/float64."""
    if not _enabled or like.device.type != "cpu" or like.dtype not in _SUFFIX:
        return None
    if not _loaded:
        _load()
    if _lib is None:
        return None
    nk = _KERNELS.get(like.dtype)
    if nk is None:  # built once per dtype (this runs on every kernel call)
        nk = _KERNELS[like.dtype] = _Kernels(_lib, _SUFFIX[like.dtype])
    return nk


class _Kernels:
    def __init__(self, lib: ctypes.CDLL, suffix: str):
        for name in _FUNCS:
            setattr(self, name, getattr(lib, f"{name}_{suffix}"))


_KERNELS: dict[torch.dtype, _Kernels] = {}


def available() -> bool:
    return kernels(torch.empty(0)) is not None


def status() -> str:
    if not _enabled:
        return "native kernels turned off (CLSR_NATIVE=0); using torch ops"
    if available():
        return f"native kernels loaded from {library_path()}"
    return _why_not or "native kernels unavailable"


@contextlib.contextmanager
def disabled():
    """Run torch ops instead of the kernels inside this block (tests and benchmarks compare the two)."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


def ptr(t: torch.Tensor | None, row: int = 0) -> int | None:
    """Address of row `row` of a 2-D (or (rows, ...)) tensor whose rows are contiguous; None for None."""
    if t is None:
        return None
    return t.data_ptr() + row * t.stride(0) * t.element_size()


def ld(t: torch.Tensor | None) -> int:
    """Leading dimension (row stride in elements) of a tensor with unit stride along its last axis."""
    return 0 if t is None else t.stride(0)


class BatchNormReLU(torch.autograd.Function):
    """relu(BN(x)) in training mode (batch statistics, biased variance), as
    ``torch.relu(F.batch_norm(x, None, None, weight, bias, training=True, eps=eps))``, in two passes
    forward and two backward (`kernels.c`). ``layout`` says what the rows of z are:
    - (B, Q, L): x = z (N, C) with (N, 1, 1), or, with the DIN first layer's structure, rows (b, q, t) and
      x[b, q, t] = z[b, q, t] + K[b, t] + R[b, q], K (B, L, C), R (B, Q, C), the sum never written;
    - a `RaggedRows`: the same sum over its rows (the padding rows weighted L − n_b in the statistics,
      their gradients totals).
    Returns (y, mean, var) with mean / var detached (for the running statistics)."""

    @staticmethod
    def forward(ctx, z, K, R, weight, bias, eps: float, layout):
        nk = kernels(z)
        ctx.nk, ctx.layout = nk, layout  # the backward needs the kernels even if they are switched off meanwhile
        C = z.shape[1]
        z = z.contiguous()
        K = None if K is None else K.contiguous()
        R = None if R is None else R.contiguous()
        y = torch.empty_like(z)
        mean, invstd, var = z.new_empty(C), z.new_empty(C), z.new_empty(C)
        w, b = weight.contiguous(), bias.contiguous()
        tail = (ptr(z), ptr(K), ptr(R), ptr(w), ptr(b), float(eps), ptr(y), ptr(mean), ptr(invstd), ptr(var))
        if isinstance(layout, RaggedRows):
            rows = layout
            nk.bn_relu_ragged_fwd(rows.B, rows.Q, rows.L, C, ptr(rows.n), ptr(rows.off), rows.V, *tail)
        else:
            nk.bn_relu_fwd(*layout, C, *tail)
        ctx.save_for_backward(z, K, R, mean, invstd, w, b)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _dmean, _dvar):
        z, K, R, mean, invstd, w, b = ctx.saved_tensors
        nk, layout = ctx.nk, ctx.layout
        C = z.shape[1]
        dy = dy.contiguous()
        dz, dw, db = torch.empty_like(z), z.new_empty(C), z.new_empty(C)
        dK = None if K is None else torch.empty_like(K)
        dR = None if R is None else torch.empty_like(R)
        tail = (ptr(dy), ptr(z), ptr(K), ptr(R), ptr(mean), ptr(invstd), ptr(w), ptr(b), ptr(dz), ptr(dK), ptr(dR),
                ptr(dw), ptr(db))
        if isinstance(layout, RaggedRows):
            rows = layout
            nk.bn_relu_ragged_bwd(rows.B, rows.Q, rows.L, C, ptr(rows.n), ptr(rows.off), rows.V, *tail)
        else:
            nk.bn_relu_bwd(*layout, C, *tail)
        return dz, dK, dR, dw, db, None, None


class BatchNormReLUDot(torch.autograd.Function):
    """s = relu(BN(x + x_bias)) w + b0 for a 2-D x in training mode, (N, 1), without materialising
    relu(BN(·)) (`kernels.c`). Returns (s, mean, var) of x + x_bias, mean / var detached.

    x_bias (C,) or None is the preceding linear layer's bias, taken on the side (a bias in that GEMM costs
    a copy pass over (N, C)): BN subtracts the batch mean, so BN(x + x_bias) = BN(x) and only the mean
    (for the running statistics) moves; its gradient is Σ_rows ∂x, as for a bias inside the GEMM."""

    @staticmethod
    def forward(ctx, x, weight, bias, w, b0, eps: float, row_weights=None, n_eff=None, x_bias=None):
        nk = kernels(x)
        ctx.nk = nk  # the backward needs the kernels even if they are switched off meanwhile
        N, C = x.shape
        ctx.n_eff = float(N if n_eff is None else n_eff)
        s = x.new_empty(N, 1)
        mean, invstd, var = x.new_empty(C), x.new_empty(C), x.new_empty(C)
        gw, gb, w = weight.contiguous(), bias.contiguous(), w.reshape(-1).contiguous()
        nk.bn_relu_dot_fwd(N, C, ptr(x), ld(x), ptr(gw), ptr(gb), float(eps), ptr(w), float(b0), ptr(s), ptr(mean),
                           ptr(invstd), ptr(var), ptr(row_weights), ctx.n_eff)
        ctx.save_for_backward(x, mean, invstd, gw, gb, w, row_weights)
        mean_out = mean if x_bias is None else mean + x_bias
        ctx.mark_non_differentiable(mean_out, var)
        return s, mean_out, var

    @staticmethod
    def backward(ctx, ds, _dmean, _dvar):
        x, mean, invstd, gw, gb, w, row_weights = ctx.saved_tensors
        nk = ctx.nk
        N, C = x.shape
        ds = ds.reshape(-1).contiguous()
        dx, dgw, dgb, dw = torch.empty_like(x), x.new_empty(C), x.new_empty(C), x.new_empty(C)
        nk.bn_relu_dot_bwd(N, C, ptr(ds), ptr(x), ld(x), ptr(mean), ptr(invstd), ptr(gw), ptr(gb), ptr(w), ptr(dx), ld(dx),
                           ptr(dgw), ptr(dgb), ptr(dw), ptr(row_weights), ctx.n_eff)
        d_xb = dx.sum(0) if ctx.needs_input_grad[8] else None
        return dx, dgw, dgb, dw.view(1, C), ds.sum().reshape(1), None, None, None, d_xb


def _update_running_stats(bn: torch.nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """nn.BatchNorm1d's update for a batch of n rows with biased variance var (it stores the unbiased one)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
        bn.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)


def _fusable(bn: torch.nn.BatchNorm1d, x: torch.Tensor) -> bool:
    return (bn.training and bn.affine and bn.track_running_stats and x.dim() == 2 and x.shape[0] >= 2
            and x.stride(1) == 1 and kernels(x) is not None)


def bn_relu_dot(bn, x, out: torch.nn.Linear, rows: "RaggedRows | None" = None,
                x_bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """out(relu(bn(x + x_bias))) for a one-unit `out` through `BatchNormReLUDot` (training-mode `bn`,
    running statistics updated as nn.BatchNorm1d does; ``rows``: x has the rows of a `RaggedRows`, weighted
    in the statistics; ``x_bias``: the preceding linear layer's bias, see `BatchNormReLUDot`), or None
    when the kernels cannot take it."""
    if out.out_features != 1 or out.bias is None or not _fusable(bn, x):
        return None
    wts, n_eff = (None, x.shape[0]) if rows is None else (rows.weights.to(x.dtype), rows.n_total)
    s, mean, var = BatchNormReLUDot.apply(x, bn.weight, bn.bias, out.weight, out.bias, bn.eps, wts, n_eff, x_bias)
    _update_running_stats(bn, mean, var, n_eff)
    return s


def can_fuse_bn_relu(bn: torch.nn.BatchNorm1d, like: torch.Tensor) -> bool:
    """Whether `bn_relu` can take `bn` (training mode, affine, tracking) on tensors like `like` (CPU
    float32 / float64, kernels loaded)."""
    return bn.training and bn.affine and bn.track_running_stats and kernels(like) is not None


def bn_relu(bn: torch.nn.BatchNorm1d, x: torch.Tensor, K=None, R=None, dims=None,
            rows: "RaggedRows | None" = None) -> torch.Tensor | None:
    """relu(bn(x)) through the fused kernels for a training-mode `bn` on a 2-D CPU float x, updating
    bn's running statistics as nn.BatchNorm1d does (over all B·Q·L rows); None when the kernels cannot
    take it (the caller then runs the torch ops). With K, R and dims = (B, Q, L): relu(bn(x + K[b, t] +
    R[b, q])) over rows (b, q, t); with K, R and ``rows`` (`RaggedRows`): the same over its rows."""
    if not _fusable(bn, x):
        return None
    if rows is not None:
        layout, n = rows, rows.n_total
    else:
        layout, n = ((x.shape[0], 1, 1) if dims is None else tuple(int(v) for v in dims)), x.shape[0]
    y, mean, var = BatchNormReLU.apply(x, K, R, bn.weight, bn.bias, bn.eps, layout)
    _update_running_stats(bn, mean, var, n)
    return y


class DinPairLayer(torch.autograd.Function):
    """z[b, c, t] = W (a[b, t] ⊙ r[b, c]) + K[b, t] + Q[b, c] as a (B·C·L, h) matrix (rows (b, c, t));
    K = Q = None leaves the two terms out (the caller adds them inside `bn_relu`):
    one product, one GEMM (torch), one pass adding K and Q; backward: dK, dQ in one pass, dW = dzᵀ prod
    and ∂prod = dz W (torch), then da, dr in one pass (`kernels.c`). a (B, L, d) and r (B, C, d) may be
    column slices of larger tensors."""

    @staticmethod
    def forward(ctx, a, r, W, K, Q):
        nk = kernels(a)
        ctx.nk = nk  # the backward needs the kernels even if they are switched off meanwhile
        B, L, d = a.shape
        C, h = r.shape[1], W.shape[0]
        prod = a.unsqueeze(1) * r.unsqueeze(2)  # (B, C, L, d)
        z = torch.mm(prod.view(-1, d), W.t().contiguous())
        ctx.with_kq = K is not None
        if ctx.with_kq:
            K, Q = K.contiguous(), Q.contiguous()
            nk.din_add_kq(B, C, L, h, ptr(z), ptr(K), ptr(Q))
        ctx.save_for_backward(a, r, W, prod)
        return z

    @staticmethod
    def backward(ctx, dz):
        a, r, W, prod = ctx.saved_tensors
        nk = ctx.nk
        B, L, d = a.shape
        C, h = r.shape[1], W.shape[0]
        dz = dz.contiguous()
        dK = dQ = None
        if ctx.with_kq:
            dK, dQ = dz.new_empty(B, L, h), dz.new_empty(B, C, h)
            nk.din_sum_kq(B, C, L, h, ptr(dz), ptr(dK), ptr(dQ))
        dW = torch.mm(dz.t(), prod.view(-1, d)) if ctx.needs_input_grad[2] else None
        da = dr = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dprod = torch.mm(dz, W)  # (B·C·L, d)
            da, dr = dz.new_empty(B, L, d), dz.new_empty(B, C, d)
            nk.din_prod_bwd(B, C, L, d, ptr(dprod), ptr(a), a.stride(0), a.stride(1), ptr(r), r.stride(0), r.stride(1),
                            ptr(da), ptr(dr))
        return da, dr, dW, dK, dQ


def din_pair_layer(a, r, W, K=None, Q=None) -> torch.Tensor | None:
    """`DinPairLayer` when the kernels can take these tensors (CPU float, unit stride along the features),
    else None (the caller runs the torch ops)."""
    if kernels(a) is None or a.stride(-1) != 1 or r.stride(-1) != 1 or r.dim() != 3:
        return None
    return DinPairLayer.apply(a, r, W, K, Q)


class RaggedRows:
    """The rows of a DIN scorer over left-aligned histories with `lengths` (B,), Q queries and width L,
    without the padded positions (`kernels.c`, "Ragged rows"): the valid (b, q, t < n_b) rows in order,
    V of them, then one row per (b, q) for the L − n_b padded positions, whose keys must all be equal
    (zero, or the padding item's), counted L − n_b times in the batch statistics.

    b_row, q_row, t_row (V,) place the valid rows in a (B, Q, L) tensor; weights (V + B·Q,) are the rows'
    multiplicities; n_total = B·Q·L."""

    def __init__(self, lengths: torch.Tensor, Q: int, L: int):
        dev = lengths.device
        self.B, self.Q, self.L = int(lengths.shape[0]), int(Q), int(L)
        n = lengths.clamp(min=0, max=L).to(torch.long).contiguous()
        cnt = n.repeat_interleave(Q)  # n_b for each (b, q)
        self.V = int(cnt.sum())
        bq = torch.arange(self.B * Q, device=dev).repeat_interleave(cnt)
        start = torch.cumsum(cnt, 0) - cnt
        self.t_row = torch.arange(self.V, device=dev) - start[bq]
        self.b_row, self.q_row = bq // Q, bq % Q
        self.n, self.off = n, (Q * (torch.cumsum(n, 0) - n)).contiguous()
        self.weights = torch.cat([torch.ones(self.V, device=dev), (L - n).repeat_interleave(Q).float()])
        self.n_total = self.B * Q * L


class RaggedProduct(torch.autograd.Function):
    """prod[row] = a[b, t] ⊙ r[b, q] over `RaggedRows` (the padding rows take a[b, min(n_b, L − 1)]); the
    gradient of a padding row is shared out equally among the padded positions' keys."""

    @staticmethod
    def forward(ctx, a, r, rows: RaggedRows):
        nk = kernels(a)
        ctx.nk, ctx.rows = nk, rows
        B, L, d = a.shape
        prod = a.new_empty(rows.V + B * rows.Q, d)
        nk.ragged_prod_fwd(B, rows.Q, L, d, ptr(rows.n), ptr(rows.off), rows.V, ptr(a), a.stride(0), a.stride(1),
                           ptr(r), r.stride(0), r.stride(1), ptr(prod))
        ctx.save_for_backward(a, r)
        return prod

    @staticmethod
    def backward(ctx, dprod):
        a, r = ctx.saved_tensors
        nk, rows = ctx.nk, ctx.rows
        B, L, d = a.shape
        dprod = dprod.contiguous()
        da, dr = a.new_empty(B, L, d), r.new_empty(B, rows.Q, d)
        nk.ragged_prod_bwd(B, rows.Q, L, d, ptr(rows.n), ptr(rows.off), rows.V, ptr(dprod), ptr(a), a.stride(0),
                           a.stride(1), ptr(r), r.stride(0), r.stride(1), ptr(da), ptr(dr))
        return da, dr, None
