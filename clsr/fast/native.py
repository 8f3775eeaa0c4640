"""Builds, caches and loads `kernels.c`: C kernels for the memory- and overhead-bound parts of a CLSR
training step on a CPU, each replacing torch ops that compute the same values:

- the element-wise part of one packed GRU / LSTM step as one call (used by `clsr.fast.recurrence`);
- batch norm in training mode fused with the ReLU after it, forward and backward (`bn_relu`, used by
  `layers.MLP`), and with a following one-unit output layer (`bn_relu_dot`: the scorers' last hidden
  layer, whose activations are then never written);
- the per-(candidate, position) part of a DIN scorer's first layer, z = (a ⊙ r) W + K + Q, with its
  additions and the reductions of its backward each in one pass (`din_pair_layer`, used by
  `attention.din_first_layer`), and its ragged form (`RaggedRows`).

Which groups of kernels are here: a group stays where it beats the best torch path by ≥ 1.2× on the whole
training epoch of a model that uses it. Epoch seconds on ml100k (2 threads) for clsr / din / slirec, from
reports/benchmarks/train.md, "What the C kernels add" (`benchmarks/bench_train.py`, TWIN_GROUPS; no other job
ran; 2048³ GEMM 191 / 384 GFLOP/s at 1 / 2 threads):

| group of C kernels                  | without (s)            | with (s)               | speed-up           | kept?   |
|-------------------------------------|------------------------|------------------------|--------------------|---------|
| recurrence steps (gru_*, lstm_*)    | 68.6 / - / 42.2 (a)    | 53.6 / - / 34.3 (b)    | 1.28 / - / 1.23    | kept    |
| BN + ReLU tails and DIN scorer (c)  | 53.6 / 23.0 / 34.3 (b) | 43.5 / 16.4 / 28.2 (d) | 1.23 / 1.40 / 1.22 | kept    |

(a) "C kernels off": the same twins with torch-op steps; reference tails and DIN scorer.
(b) "C only in the recurrence steps". (d) "all fast twins, C kernels on".
(c) bn_relu_* (fused tails, `mlp.fused_tail`) with din_* / ragged_* / bn_relu_ragged_* (`attention.din_fused`,
    `din_ragged`): no configuration of the benchmark turns one on without the other, so they are one group.
din has no recurrence: its (a) and (b) epochs (23.5, 23.0 s) show the measurement's noise, about 2 %.
The embedding lookup has no C kernel: `layers.lookup` runs its reference (index_select, whose backward is
an index_add). Outside a whole epoch, the same report times the fused tail of CLSR's short-term scorer
(125k rows, forward + backward): 42.9 ms, against 62.5 ms eager and 60.3 ms with `torch.compile`.

Nothing here is needed for correctness; it is a speed path, used for CPU float32 / float64 tensors when
the library is available, and tests compare it with the torch ops (equal up to float rounding):

- `kernels.c` is written once over an element type ``real``; it is compiled twice with the system C compiler
  (``$CC``, default ``cc``; `CFLAGS`: -O3, -march=native, SIMD exp/tanh from glibc's libmvec, OpenMP from the
  process's libgomp, which is torch's own thread pool), with ``-DREAL_F32`` (functions ``*_f32``) and
  ``-DREAL_F64`` (``*_f64``), and the two objects are linked into one library, once per source version and
  CPU (a few seconds), into ``$CLSR_KERNEL_CACHE`` (default ``~/.cache/clsr``), written to a temporary
  name and renamed, so a concurrent or killed build never leaves a half-written library;
- every C function has its ctypes signature (`SIGNATURES`) and is called only through a method of `Kernels`
  that takes named tensors and checks them against what the C code assumes (dtype, CPU, shape, row-major
  layout), raising `KernelArgumentError` otherwise;
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
from typing import NoReturn

import torch

SOURCE = Path(__file__).with_name("kernels.c")
#: flags of both compilations (the element type is chosen by `TYPES`' -D flag)
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp", "-fPIC"]
LDFLAGS = ["-shared", "-fopenmp"]
LIBS = ["-lmvec", "-lm"]
#: torch dtype -> (suffix of the C functions, the -D flag selecting `real`)
TYPES = {torch.float32: ("f32", "-DREAL_F32"), torch.float64: ("f64", "-DREAL_F64")}

_I, _L, _D, _P = ctypes.c_int, ctypes.c_long, ctypes.c_double, ctypes.c_void_p
_PL = [_P, _I]  # (pointer, leading dimension) of a recurrence kernel's array
#: the C prototypes of kernels.c, in its parameter order (``real *`` and ``long *`` are `_P`)
SIGNATURES = {
    # recurrence steps: k rows, H, then the arrays in the C order
    "gru_fwd_gates": [_I, _I] + _PL * 4 + [_P],  # rz, x, hp, rh; b
    "gru_fwd_state": [_I, _I] + _PL * 6 + [_P],  # c, x, hp, rz, out, K; b
    "gru_bwd_a": [_I, _I] + _PL * 5,  # d_out, carry, K, D, dh
    "gru_bwd_b": [_I, _I] + _PL * 6,  # drh, K, rz, dh, D, tmp
    "lstm_fwd": [_I, _I] + _PL * 9 + [_P],  # g, x, g12, F, c, out, PD, KC, Q; b
    "lstm_bwd": [_I, _I] + _PL * 9,  # d_out, dh_carry, dc_carry, KC, PD, F, DG, Q, DS
    # fused batch norm + ReLU tails
    "bn_relu_fwd": [_L, _I, _I, _I,  # B, Q, L, C
                    _P, _P, _P, _P, _P, _D,  # z, K, R, gamma, beta, eps
                    _P, _P, _P, _P],  # y, mean, invstd, var
    "bn_relu_bwd": [_L, _I, _I, _I,  # B, Q, L, C
                    _P, _P, _P, _P, _P, _P, _P, _P,  # dy, z, K, R, mean, invstd, gamma, beta
                    _P, _P, _P, _P, _P],  # dz, dK, dR, dgamma, dbeta
    "bn_relu_dot_fwd": [_L, _I,  # N, C
                        _P, _L, _P, _P, _D, _P, _D,  # x, ld_x, gamma, beta, eps, w, b0
                        _P, _P, _P, _P, _P, _D],  # s, mean, invstd, var, wt, n_eff
    "bn_relu_dot_bwd": [_L, _I,  # N, C
                        _P, _P, _L, _P, _P, _P, _P, _P,  # ds, x, ld_x, mean, invstd, gamma, beta, w
                        _P, _L, _P, _P, _P, _P, _D],  # dx, ld_dx, dgamma, dbeta, dw, wt, n_eff
    # the DIN scorer's first layer
    "din_add_kq": [_L, _I, _I, _I, _P, _P, _P],  # B, C, L, h, z, K, Q
    "din_sum_kq": [_L, _I, _I, _I, _P, _P, _P],  # B, C, L, h, dz, dK, dQ
    "din_prod_bwd": [_L, _I, _I, _I, _P,  # B, C, L, d, dprod
                     _P, _L, _L, _P, _L, _L,  # a, sa_b, sa_t, r, sr_b, sr_c
                     _P, _P],  # da, dr
    "ragged_prod_fwd": [_L, _I, _I, _I, _P, _P, _L,  # B, Q, L, d, n, off, V
                        _P, _L, _L, _P, _L, _L, _P],  # a, sa_b, sa_t, r, sr_b, sr_q, prod
    "ragged_prod_bwd": [_L, _I, _I, _I, _P, _P, _L,  # B, Q, L, d, n, off, V
                        _P, _P, _L, _L, _P, _L, _L,  # dprod, a, sa_b, sa_t, r, sr_b, sr_q
                        _P, _P],  # da, dr
    "bn_relu_ragged_fwd": [_L, _I, _I, _I, _P, _P, _L,  # B, Q, L, C, n, off, V
                           _P, _P, _P, _P, _P, _D,  # z, K, R, gamma, beta, eps
                           _P, _P, _P, _P],  # y, mean, invstd, var
    "bn_relu_ragged_bwd": [_L, _I, _I, _I, _P, _P, _L,  # B, Q, L, C, n, off, V
                           _P, _P, _P, _P, _P, _P, _P, _P,  # dy, z, K, R, mean, invstd, gamma, beta
                           _P, _P, _P, _P, _P],  # dz, dK, dR, dgamma, dbeta
}

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
    """The cached library for this source, these flags and this CPU."""
    flags = " ".join(CFLAGS + LDFLAGS + LIBS + [d for _, d in TYPES.values()])
    key = hashlib.sha256(SOURCE.read_bytes() + flags.encode() + _cpu_tag().encode())
    cache = Path(os.environ.get("CLSR_KERNEL_CACHE", Path.home() / ".cache" / "clsr"))
    return cache / f"kernels_{key.hexdigest()[:16]}.so"


def build_flags() -> str:
    """The flags `_build` uses, as the benchmark records them next to its timings."""
    defines = " / ".join(d for _, d in TYPES.values())
    return f"{' '.join(CFLAGS)} (once with each of {defines}); linked with {' '.join(LDFLAGS + LIBS)}"


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()}")


def _build(path: Path) -> None:
    """Compile kernels.c once per element type of `TYPES` and link the objects into the library `path`, in a
    temporary folder next to it, renamed into place at the end (nothing is left behind on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory(prefix=path.name + ".", dir=path.parent) as tmp:
        objects = []
        for suffix, define in TYPES.values():
            obj = os.path.join(tmp, f"kernels_{suffix}.o")
            _run([cc, *CFLAGS, define, "-c", "-o", obj, str(SOURCE)])
            objects.append(obj)
        lib = os.path.join(tmp, path.name)
        _run([cc, *LDFLAGS, "-o", lib, *objects, *LIBS])
        os.chmod(lib, 0o755)
        os.replace(lib, path)


def _load() -> None:
    global _lib, _why_not, _loaded
    _loaded = True
    try:
        if ctypes.sizeof(ctypes.c_long) != 8:
            raise OSError("the kernels take int64 indices as C long, which is not 64 bits here")
        path = library_path()
        if not path.exists():
            _build(path)
        lib = ctypes.CDLL(str(path))
        for name, argtypes in SIGNATURES.items():
            for suffix, _ in TYPES.values():
                f = getattr(lib, f"{name}_{suffix}")
                f.argtypes = argtypes
                f.restype = None
        _lib = lib
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        _lib, _why_not = None, f"native kernels unavailable ({type(e).__name__}: {e}); using torch ops"


def kernels(like: torch.Tensor) -> "Kernels | None":
    """The kernels for tensors like `like` (a `Kernels` for its dtype), or None: turned off, not buildable
    here, not on the CPU, or not float32/float64."""
    if not _enabled or like.device.type != "cpu" or like.dtype not in TYPES:
        return None
    if not _loaded:
        _load()
    if _lib is None:
        return None
    nk = _KERNELS.get(like.dtype)
    if nk is None:  # built once per dtype (this runs on every kernel call)
        nk = _KERNELS[like.dtype] = Kernels(_lib, like.dtype)
    return nk


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


# --------------------------------------------------------------------------------------------------
# checked calls
# --------------------------------------------------------------------------------------------------
class KernelArgumentError(ValueError):
    """A tensor handed to a kernel is not what the C code assumes (dtype, device, shape or layout)."""


def _describe(t: torch.Tensor) -> str:
    return f"{t.dtype} {t.device.type} tensor of shape {tuple(t.shape)}, strides {t.stride()}"


class Kernels:
    """The kernels of kernels.c for one dtype. Each method takes the C function's arrays as named tensors
    (the C parameter names; sizes and leading dimensions are read from them), checks that every tensor
    has this dtype, lives on the CPU and has the shape and row-major layout the kernel assumes, raising
    `KernelArgumentError` otherwise, and then calls the C function. Optional arrays are None (NULL)."""

    def __init__(self, lib: ctypes.CDLL, dtype: torch.dtype):
        self.dtype = dtype
        suffix = TYPES[dtype][0]
        self._c = {name: getattr(lib, f"{name}_{suffix}") for name in SIGNATURES}

    # ---- the checks: each returns what the C call needs (address, and leading dimension / strides)
    def _fail(self, kernel: str, arg: str, t, want: str) -> NoReturn:
        got = "None" if t is None else _describe(t)
        raise KernelArgumentError(f"{kernel}: {arg} must be a {self.dtype} CPU tensor {want}; got {got}")

    # (each check is a handful of attribute reads: the recurrence kernels are called ~100 times a sequence)
    def _rows(self, kernel: str, arg: str, t, rows: int, cols: int) -> tuple[int, int]:
        """(address, leading dimension) of a (rows, cols) matrix with unit stride along its rows."""
        if isinstance(t, torch.Tensor) and t.dtype is self.dtype and t.is_cpu and t.shape == (rows, cols):
            stride = t.stride()
            if stride[1] == 1 or cols <= 1:
                return t.data_ptr(), stride[0]
        self._fail(kernel, arg, t, f"of shape ({rows}, {cols}) with unit stride along each row")

    def _rows_or_none(self, kernel, arg, t, rows, cols) -> tuple[int | None, int]:
        return (None, 0) if t is None else self._rows(kernel, arg, t, rows, cols)

    def _dense(self, kernel: str, arg: str, t, *shape: int) -> int:
        """Address of a contiguous tensor of this shape."""
        if not (isinstance(t, torch.Tensor) and t.dtype is self.dtype and t.is_cpu and t.shape == shape
                and t.is_contiguous()):
            self._fail(kernel, arg, t, f"of shape {shape}, contiguous")
        return t.data_ptr()

    def _dense_or_none(self, kernel, arg, t, *shape) -> int | None:
        return None if t is None else self._dense(kernel, arg, t, *shape)

    def _flat(self, kernel: str, arg: str, t, n: int) -> int:
        """Address of a contiguous tensor of n elements (a vector, or an (n, 1) column)."""
        if not (isinstance(t, torch.Tensor) and t.dtype is self.dtype and t.is_cpu and t.numel() == n
                and t.is_contiguous()):
            self._fail(kernel, arg, t, f"of {n} elements, contiguous")
        return t.data_ptr()

    def _batched_rows(self, kernel: str, arg: str, t, *shape: int) -> tuple[int, int, int]:
        """(address, stride of dim 0, stride of dim 1) of a 3-D tensor of this shape with unit stride along
        its last dimension (a column slice of a larger tensor is fine)."""
        if isinstance(t, torch.Tensor) and t.dtype is self.dtype and t.is_cpu and t.shape == shape:
            stride = t.stride()
            if stride[2] == 1 or shape[2] <= 1:
                return t.data_ptr(), stride[0], stride[1]
        self._fail(kernel, arg, t, f"of shape {shape} with unit stride along the last dimension")

    def _shape(self, kernel: str, arg: str, t, ndim: int) -> tuple[int, ...]:
        """The shape of t, which sets the sizes of the call: a tensor of this dtype on the CPU with ndim dims."""
        if not (isinstance(t, torch.Tensor) and t.dtype is self.dtype and t.is_cpu and t.dim() == ndim):
            self._fail(kernel, arg, t, f"with {ndim} dimensions")
        return t.shape

    @staticmethod
    def _index(kernel: str, arg: str, t, n: int) -> int:
        """Address of a contiguous int64 CPU vector of n entries."""
        if not (isinstance(t, torch.Tensor) and t.dtype is torch.int64 and t.is_cpu and t.shape == (n,)
                and t.is_contiguous()):
            got = "None" if t is None else _describe(t)
            raise KernelArgumentError(f"{kernel}: {arg} must be a contiguous int64 CPU vector of {n} entries; "
                                      f"got {got}")
        return t.data_ptr()

    # ---- the recurrence steps (k rows, H state units; see kernels.c and recurrence.py)
    def gru_fwd_gates(self, *, rz, x, hp, rh, b=None) -> None:
        """rz (k, 2H) <- σ(rz + x + b); rh (k, H) = r ⊙ hp, hp (k, H) the previous states."""
        f = "gru_fwd_gates"
        k, H = self._shape(f, "hp", hp, 2)
        self._c[f](k, H, *self._rows(f, "rz", rz, k, 2 * H), *self._rows(f, "x", x, k, 2 * H),
                   *self._rows(f, "hp", hp, k, H), *self._rows(f, "rh", rh, k, H),
                   self._dense_or_none(f, "b", b, 2 * H))

    def gru_fwd_state(self, *, c, x, hp, rz, out, K=None, b=None) -> None:
        """c (k, H) <- tanh(c + x + b), out = c + z ⊙ (hp − c); K (k, 3H): the backward's factors."""
        f = "gru_fwd_state"
        k, H = self._shape(f, "hp", hp, 2)
        self._c[f](k, H, *self._rows(f, "c", c, k, H), *self._rows(f, "x", x, k, H), *self._rows(f, "hp", hp, k, H),
                   *self._rows(f, "rz", rz, k, 2 * H), *self._rows(f, "out", out, k, H),
                   *self._rows_or_none(f, "K", K, k, 3 * H), self._dense_or_none(f, "b", b, H))

    def gru_bwd_a(self, *, d_out, carry, K, D, dh) -> None:
        """dh (k, H) = d_out + carry; the ∂z̃, ∂c̃ blocks of D (k, 3H) from the factors K (k, 3H)."""
        f = "gru_bwd_a"
        k, H = self._shape(f, "d_out", d_out, 2)
        self._c[f](k, H, *self._rows(f, "d_out", d_out, k, H), *self._rows(f, "carry", carry, k, H),
                   *self._rows(f, "K", K, k, 3 * H), *self._rows(f, "D", D, k, 3 * H), *self._rows(f, "dh", dh, k, H))

    def gru_bwd_b(self, *, drh, K, rz, dh, D, tmp) -> None:
        """The ∂r̃ block of D (k, 3H) from drh = ∂(r ⊙ h) (k, H); tmp (k, H) = dh ⊙ z + drh ⊙ r."""
        f = "gru_bwd_b"
        k, H = self._shape(f, "drh", drh, 2)
        self._c[f](k, H, *self._rows(f, "drh", drh, k, H), *self._rows(f, "K", K, k, 3 * H),
                   *self._rows(f, "rz", rz, k, 2 * H), *self._rows(f, "dh", dh, k, H),
                   *self._rows(f, "D", D, k, 3 * H), *self._rows(f, "tmp", tmp, k, H))

    def lstm_fwd(self, *, g, x, c, out, g12=None, F=None, PD=None, KC=None, Q=None, b=None) -> None:
        """One LSTM step after h_prev W: g (k, 4H) in and activated gates out, x (k, 4H) the input part, c
        (k, H) c_{t−1} in and c_t out, out (k, H) = h_t; with time gates g12 (k, 2H) and F (k, H); with PD
        (k, 4H), KC (k, H) (and Q (k, 2H) with time gates) the backward's factors; b (4H or 6H) or None."""
        f = "lstm_fwd"
        k, H = self._shape(f, "c", c, 2)
        timed = g12 is not None
        if (F is not None) != timed or (Q is not None and not (timed and PD is not None)) or \
                ((PD is None) != (KC is None)):
            raise KernelArgumentError(f"{f}: F goes with g12, KC with PD, Q with g12 and PD")
        self._c[f](k, H, *self._rows(f, "g", g, k, 4 * H), *self._rows(f, "x", x, k, 4 * H),
                   *self._rows_or_none(f, "g12", g12, k, 2 * H), *self._rows_or_none(f, "F", F, k, H),
                   *self._rows(f, "c", c, k, H), *self._rows(f, "out", out, k, H),
                   *self._rows_or_none(f, "PD", PD, k, 4 * H), *self._rows_or_none(f, "KC", KC, k, H),
                   *self._rows_or_none(f, "Q", Q, k, 2 * H), self._dense_or_none(f, "b", b, (6 if timed else 4) * H))

    def lstm_bwd(self, *, d_out, dh_carry, dc_carry, KC, PD, F, DG, Q=None, DS=None) -> None:
        """One LSTM backward step before dh_carry W^T: DG (k, 4H) and dc_carry (k, H) <- ∂c ⊙ F; with time
        gates Q and DS (k, 2H) their pre-activations' gradients."""
        f = "lstm_bwd"
        k, H = self._shape(f, "d_out", d_out, 2)
        if (Q is None) != (DS is None):
            raise KernelArgumentError(f"{f}: Q and DS go together")
        self._c[f](k, H, *self._rows(f, "d_out", d_out, k, H), *self._rows(f, "dh_carry", dh_carry, k, H),
                   *self._rows(f, "dc_carry", dc_carry, k, H), *self._rows(f, "KC", KC, k, H),
                   *self._rows(f, "PD", PD, k, 4 * H), *self._rows(f, "F", F, k, H),
                   *self._rows(f, "DG", DG, k, 4 * H), *self._rows_or_none(f, "Q", Q, k, 2 * H),
                   *self._rows_or_none(f, "DS", DS, k, 2 * H))

    # ---- fused batch norm + ReLU
    def bn_relu_fwd(self, *, dims, z, K, R, gamma, beta, eps: float, y, mean, invstd, var) -> None:
        """y = relu(BN(z + K[b, t] + R[b, q])) over rows (b, q, t), dims = (B, Q, L); z, y (B·Q·L, C)
        contiguous, K (B, L, C) and R (B, Q, C) contiguous or None; mean, invstd, var (C,) out."""
        f = "bn_relu_fwd"
        B, Q, L = dims
        (C,) = self._shape(f, "gamma", gamma, 1)
        N = B * Q * L
        self._c[f](B, Q, L, C, self._dense(f, "z", z, N, C), self._dense_or_none(f, "K", K, B, L, C),
                   self._dense_or_none(f, "R", R, B, Q, C), self._dense(f, "gamma", gamma, C),
                   self._dense(f, "beta", beta, C), float(eps), self._dense(f, "y", y, N, C),
                   self._dense(f, "mean", mean, C), self._dense(f, "invstd", invstd, C), self._dense(f, "var", var, C))

    def bn_relu_bwd(self, *, dims, dy, z, K, R, mean, invstd, gamma, beta, dz, dK, dR, dgamma, dbeta) -> None:
        """Backward of `bn_relu_fwd`: dz like z, dK like K, dR like R (None where K, R are), dgamma, dbeta."""
        f = "bn_relu_bwd"
        B, Q, L = dims
        (C,) = self._shape(f, "gamma", gamma, 1)
        N = B * Q * L
        if (K is None) != (dK is None) or (R is None) != (dR is None):
            raise KernelArgumentError(f"{f}: dK goes with K, dR with R")
        self._c[f](B, Q, L, C, self._dense(f, "dy", dy, N, C), self._dense(f, "z", z, N, C),
                   self._dense_or_none(f, "K", K, B, L, C), self._dense_or_none(f, "R", R, B, Q, C),
                   self._dense(f, "mean", mean, C), self._dense(f, "invstd", invstd, C),
                   self._dense(f, "gamma", gamma, C), self._dense(f, "beta", beta, C), self._dense(f, "dz", dz, N, C),
                   self._dense_or_none(f, "dK", dK, B, L, C), self._dense_or_none(f, "dR", dR, B, Q, C),
                   self._dense(f, "dgamma", dgamma, C), self._dense(f, "dbeta", dbeta, C))

    def bn_relu_dot_fwd(self, *, x, gamma, beta, eps: float, w, b0: float, s, mean, invstd, var, wt=None,
                        n_eff: float) -> None:
        """s (N) = relu(BN(x)) w + b0 for x (N, C) with unit stride along its rows; wt (N,) row weights or
        None, n_eff their sum (N without)."""
        f = "bn_relu_dot_fwd"
        N, C = self._shape(f, "x", x, 2)
        x_p, ld_x = self._rows(f, "x", x, N, C)
        self._c[f](N, C, x_p, ld_x, self._dense(f, "gamma", gamma, C), self._dense(f, "beta", beta, C), float(eps),
                   self._dense(f, "w", w, C), float(b0), self._flat(f, "s", s, N), self._dense(f, "mean", mean, C),
                   self._dense(f, "invstd", invstd, C), self._dense(f, "var", var, C),
                   self._dense_or_none(f, "wt", wt, N), float(n_eff))

    def bn_relu_dot_bwd(self, *, ds, x, mean, invstd, gamma, beta, w, dx, dgamma, dbeta, dw, wt=None,
                        n_eff: float) -> None:
        """Backward of `bn_relu_dot_fwd`: dx (N, C) with unit stride along its rows, dgamma, dbeta, dw (C,)."""
        f = "bn_relu_dot_bwd"
        N, C = self._shape(f, "x", x, 2)
        x_p, ld_x = self._rows(f, "x", x, N, C)
        dx_p, ld_dx = self._rows(f, "dx", dx, N, C)
        self._c[f](N, C, self._flat(f, "ds", ds, N), x_p, ld_x, self._dense(f, "mean", mean, C),
                   self._dense(f, "invstd", invstd, C), self._dense(f, "gamma", gamma, C),
                   self._dense(f, "beta", beta, C), self._dense(f, "w", w, C), dx_p, ld_dx,
                   self._dense(f, "dgamma", dgamma, C), self._dense(f, "dbeta", dbeta, C), self._dense(f, "dw", dw, C),
                   self._dense_or_none(f, "wt", wt, N), float(n_eff))

    # ---- the DIN scorer's first layer
    def din_add_kq(self, *, z, K, Q) -> None:
        """z[b, c, t] += K[b, t] + Q[b, c]: z (B·C·L, h), K (B, L, h), Q (B, C, h), all contiguous."""
        f = "din_add_kq"
        B, L, h = self._shape(f, "K", K, 3)
        C = self._shape(f, "Q", Q, 3)[1]
        self._c[f](B, C, L, h, self._dense(f, "z", z, B * C * L, h), self._dense(f, "K", K, B, L, h),
                   self._dense(f, "Q", Q, B, C, h))

    def din_sum_kq(self, *, dz, dK, dQ) -> None:
        """dK[b, t] = Σ_c dz[b, c, t], dQ[b, c] = Σ_t dz[b, c, t] (shapes as in `din_add_kq`)."""
        f = "din_sum_kq"
        B, L, h = self._shape(f, "dK", dK, 3)
        C = self._shape(f, "dQ", dQ, 3)[1]
        self._c[f](B, C, L, h, self._dense(f, "dz", dz, B * C * L, h), self._dense(f, "dK", dK, B, L, h),
                   self._dense(f, "dQ", dQ, B, C, h))

    def din_prod_bwd(self, *, dprod, a, r, da, dr) -> None:
        """da[b, t] = Σ_c dprod[b, c, t] ⊙ r[b, c], dr[b, c] = Σ_t dprod[b, c, t] ⊙ a[b, t]: dprod (B·C·L, d),
        da, dr contiguous; a (B, L, d), r (B, C, d) with unit stride along d."""
        f = "din_prod_bwd"
        B, L, d = self._shape(f, "a", a, 3)
        C = self._shape(f, "r", r, 3)[1]
        self._c[f](B, C, L, d, self._dense(f, "dprod", dprod, B * C * L, d), *self._batched_rows(f, "a", a, B, L, d),
                   *self._batched_rows(f, "r", r, B, C, d), self._dense(f, "da", da, B, L, d),
                   self._dense(f, "dr", dr, B, C, d))

    def _ragged(self, f: str, rows: "RaggedRows") -> tuple:
        """(B, Q, L, address of n, address of off, V) of a `RaggedRows`."""
        return (rows.B, rows.Q, rows.L, self._index(f, "rows.n", rows.n, rows.B),
                self._index(f, "rows.off", rows.off, rows.B), rows.V)

    def ragged_prod_fwd(self, *, rows: "RaggedRows", a, r, prod) -> None:
        """prod (V + B·Q, d) = a[b, t] ⊙ r[b, q] over `rows`; a (B, L, d), r (B, Q, d) unit stride along d."""
        f = "ragged_prod_fwd"
        B, Q, L, n_p, off_p, V = self._ragged(f, rows)
        d = self._shape(f, "a", a, 3)[2]
        self._c[f](B, Q, L, d, n_p, off_p, V, *self._batched_rows(f, "a", a, B, L, d),
                   *self._batched_rows(f, "r", r, B, Q, d), self._dense(f, "prod", prod, V + B * Q, d))

    def ragged_prod_bwd(self, *, rows: "RaggedRows", dprod, a, r, da, dr) -> None:
        """Backward of `ragged_prod_fwd`: da (B, L, d), dr (B, Q, d) contiguous."""
        f = "ragged_prod_bwd"
        B, Q, L, n_p, off_p, V = self._ragged(f, rows)
        d = self._shape(f, "a", a, 3)[2]
        self._c[f](B, Q, L, d, n_p, off_p, V, self._dense(f, "dprod", dprod, V + B * Q, d),
                   *self._batched_rows(f, "a", a, B, L, d), *self._batched_rows(f, "r", r, B, Q, d),
                   self._dense(f, "da", da, B, L, d), self._dense(f, "dr", dr, B, Q, d))

    def bn_relu_ragged_fwd(self, *, rows: "RaggedRows", z, K, R, gamma, beta, eps: float, y, mean, invstd,
                           var) -> None:
        """`bn_relu_fwd` over the rows of `rows` (z, y: (V + B·Q, C) contiguous; K, R required)."""
        f = "bn_relu_ragged_fwd"
        B, Q, L, n_p, off_p, V = self._ragged(f, rows)
        (C,) = self._shape(f, "gamma", gamma, 1)
        self._c[f](B, Q, L, C, n_p, off_p, V, self._dense(f, "z", z, V + B * Q, C), self._dense(f, "K", K, B, L, C),
                   self._dense(f, "R", R, B, Q, C), self._dense(f, "gamma", gamma, C), self._dense(f, "beta", beta, C),
                   float(eps), self._dense(f, "y", y, V + B * Q, C), self._dense(f, "mean", mean, C),
                   self._dense(f, "invstd", invstd, C), self._dense(f, "var", var, C))

    def bn_relu_ragged_bwd(self, *, rows: "RaggedRows", dy, z, K, R, mean, invstd, gamma, beta, dz, dK, dR,
                           dgamma, dbeta) -> None:
        """Backward of `bn_relu_ragged_fwd` (dK, dR required)."""
        f = "bn_relu_ragged_bwd"
        B, Q, L, n_p, off_p, V = self._ragged(f, rows)
        (C,) = self._shape(f, "gamma", gamma, 1)
        n_rows = V + B * Q
        self._c[f](B, Q, L, C, n_p, off_p, V, self._dense(f, "dy", dy, n_rows, C), self._dense(f, "z", z, n_rows, C),
                   self._dense(f, "K", K, B, L, C), self._dense(f, "R", R, B, Q, C), self._dense(f, "mean", mean, C),
                   self._dense(f, "invstd", invstd, C), self._dense(f, "gamma", gamma, C),
                   self._dense(f, "beta", beta, C), self._dense(f, "dz", dz, n_rows, C),
                   self._dense(f, "dK", dK, B, L, C), self._dense(f, "dR", dR, B, Q, C),
                   self._dense(f, "dgamma", dgamma, C), self._dense(f, "dbeta", dbeta, C))


_KERNELS: dict[torch.dtype, Kernels] = {}


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
        args = dict(z=z, K=K, R=R, gamma=w, beta=b, eps=eps, y=y, mean=mean, invstd=invstd, var=var)
        if isinstance(layout, RaggedRows):
            nk.bn_relu_ragged_fwd(rows=layout, **args)
        else:
            nk.bn_relu_fwd(dims=layout, **args)
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
        args = dict(dy=dy, z=z, K=K, R=R, mean=mean, invstd=invstd, gamma=w, beta=b, dz=dz, dK=dK, dR=dR,
                    dgamma=dw, dbeta=db)
        if isinstance(layout, RaggedRows):
            nk.bn_relu_ragged_bwd(rows=layout, **args)
        else:
            nk.bn_relu_bwd(dims=layout, **args)
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
        nk.bn_relu_dot_fwd(x=x, gamma=gw, beta=gb, eps=eps, w=w, b0=float(b0), s=s, mean=mean, invstd=invstd,
                           var=var, wt=row_weights, n_eff=ctx.n_eff)
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
        nk.bn_relu_dot_bwd(ds=ds, x=x, mean=mean, invstd=invstd, gamma=gw, beta=gb, w=w, dx=dx, dgamma=dgw, dbeta=dgb,
                           dw=dw, wt=row_weights, n_eff=ctx.n_eff)
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
        d = a.shape[2]
        prod = a.unsqueeze(1) * r.unsqueeze(2)  # (B, C, L, d)
        z = torch.mm(prod.view(-1, d), W.t().contiguous())
        ctx.with_kq = K is not None
        if ctx.with_kq:
            K, Q = K.contiguous(), Q.contiguous()
            nk.din_add_kq(z=z, K=K, Q=Q)
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
            nk.din_sum_kq(dz=dz, dK=dK, dQ=dQ)
        dW = torch.mm(dz.t(), prod.view(-1, d)) if ctx.needs_input_grad[2] else None
        da = dr = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            dprod = torch.mm(dz, W)  # (B·C·L, d)
            da, dr = dz.new_empty(B, L, d), dz.new_empty(B, C, d)
            nk.din_prod_bwd(dprod=dprod, a=a, r=r, da=da, dr=dr)
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
        nk.ragged_prod_fwd(rows=rows, a=a, r=r, prod=prod)
        ctx.save_for_backward(a, r)
        return prod

    @staticmethod
    def backward(ctx, dprod):
        a, r = ctx.saved_tensors
        nk, rows = ctx.nk, ctx.rows
        B, L, d = a.shape
        dprod = dprod.contiguous()
        da, dr = a.new_empty(B, L, d), r.new_empty(B, rows.Q, d)
        nk.ragged_prod_bwd(rows=rows, dprod=dprod, a=a, r=r, da=da, dr=dr)
        return da, dr, None
