"""The C kernels of `clsr.fast.native` against the torch ops they replace (values, every gradient, BN
running statistics), in float64 (to rounding) and float32, with one and two threads.

The recurrence kernels are tested in test_recurrence.py; here: fused BN + ReLU (plain, with the DIN
first layer's broadcast terms, and with a one-unit output layer), the DIN product layer, the MLP and DIN
scorer built on them, and a whole CLSR training step. (tests/test_fast.py checks
each fast twin against its reference block; here the kernels' own Functions, in both dtypes and thread
counts.) Then the C boundary: the ctypes signatures against the C prototypes, and the checked calls.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from clsr.fast import disabled as reference_only
from clsr.fast import native
from clsr.models.attention import DinAttention, din_first_layer
from clsr.models.layers import MLP

pytestmark = pytest.mark.skipif(not native.available(), reason=native.status())

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5)}
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def _bn(C, dtype, seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(C, eps=1e-4, momentum=0.05).to(dtype)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _grads(out, inputs, seed=1):
    torch.manual_seed(seed)
    w = torch.randn_like(out)
    return torch.autograd.grad((out * w).sum(), inputs)


def _close(a, b, dtype):
    torch.testing.assert_close(a, b, **TOL[dtype])


@DTYPES
def test_bn_relu_equals_batchnorm_then_relu(dtype, threads):
    bn_k, bn_t = _bn(37, dtype), _bn(37, dtype)
    x = (torch.randn(1001, 37, dtype=dtype) * 3 + 5).requires_grad_()  # mean ≫ std: no cancellation
    y_k = native.bn_relu(bn_k, x)
    y_t = torch.relu(bn_t(x))
    _close(y_k, y_t, dtype)
    for a, b in zip(_grads(y_k, [x, bn_k.weight, bn_k.bias]), _grads(y_t, [x, bn_t.weight, bn_t.bias])):
        _close(a, b, dtype)
    _close(bn_k.running_mean, bn_t.running_mean, dtype)
    _close(bn_k.running_var, bn_t.running_var, dtype)  # unbiased, as nn.BatchNorm1d keeps it
    assert int(bn_k.num_batches_tracked) == int(bn_t.num_batches_tracked) == 1


@DTYPES
def test_bn_relu_adds_the_din_broadcast_terms(dtype, threads):
    """rows (b, q, t): relu(BN(z + K[b, t] + R[b, q])) and the gradients to z, K and R."""
    B, Q, L, C = 6, 3, 7, 10
    bn_k, bn_t = _bn(C, dtype), _bn(C, dtype)
    z = torch.randn(B * Q * L, C, dtype=dtype, requires_grad=True)
    K = torch.randn(B, L, C, dtype=dtype, requires_grad=True)
    R = torch.randn(B, Q, C, dtype=dtype, requires_grad=True)
    y_k = native.bn_relu(bn_k, z, K, R, dims=(B, Q, L))
    x = (z.view(B, Q, L, C) + K.unsqueeze(1) + R.unsqueeze(2)).view(-1, C)
    y_t = torch.relu(bn_t(x))
    _close(y_k, y_t, dtype)
    for a, b in zip(_grads(y_k, [z, K, R, bn_k.weight]), _grads(y_t, [z, K, R, bn_t.weight])):
        _close(a, b, dtype)


@DTYPES
def test_bn_relu_dot_equals_batchnorm_relu_linear(dtype, threads):
    bn_k, bn_t = _bn(40, dtype), _bn(40, dtype)
    out = nn.Linear(40, 1).to(dtype)
    out_t = copy.deepcopy(out)
    x = torch.randn(999, 40, dtype=dtype, requires_grad=True)
    s_k = native.bn_relu_dot(bn_k, x, out)
    s_t = out_t(torch.relu(bn_t(x)))
    _close(s_k, s_t, dtype)
    g_k = _grads(s_k, [x, bn_k.weight, bn_k.bias, out.weight, out.bias])
    g_t = _grads(s_t, [x, bn_t.weight, bn_t.bias, out_t.weight, out_t.bias])
    for a, b in zip(g_k, g_t):
        _close(a, b, dtype)
    _close(bn_k.running_var, bn_t.running_var, dtype)


@DTYPES
def test_bn_relu_dot_takes_the_linear_bias_on_the_side(dtype, threads):
    """x_bias: out(relu(bn(x + b))) with b's gradient (Σ_rows of BN's input gradient: ~0, but not exactly,
    as with the bias inside the GEMM) and the running mean moved by b."""
    bn_k, bn_t = _bn(40, dtype), _bn(40, dtype)
    out = nn.Linear(40, 1).to(dtype)
    out_t = copy.deepcopy(out)
    x = torch.randn(999, 40, dtype=dtype, requires_grad=True)
    b_k = torch.randn(40, dtype=dtype, requires_grad=True)
    b_t = b_k.detach().clone().requires_grad_()
    s_k = native.bn_relu_dot(bn_k, x, out, x_bias=b_k)
    s_t = out_t(torch.relu(bn_t(x + b_t)))
    _close(s_k, s_t, dtype)
    (dx_k, db_k, *rest_k) = _grads(s_k, [x, b_k, bn_k.weight, bn_k.bias, out.weight])
    (dx_t, db_t, *rest_t) = _grads(s_t, [x, b_t, bn_t.weight, bn_t.bias, out_t.weight])
    for a, b in zip([dx_k, *rest_k], [dx_t, *rest_t]):
        _close(a, b, dtype)
    # db is a sum of 999 terms that cancel to rounding noise: an absolute bound, relative to the terms' size
    assert (db_k - db_t).abs().max() <= 1e3 * torch.finfo(dtype).eps * dx_t.abs().sum(0).max()
    _close(bn_k.running_mean, bn_t.running_mean, dtype)
    _close(bn_k.running_var, bn_t.running_var, dtype)


@DTYPES
@pytest.mark.parametrize("with_kq", [True, False])
def test_din_pair_layer_equals_product_matmul_and_broadcast_adds(dtype, with_kq, threads):
    B, C, L, d, h = 5, 4, 6, 3, 7
    torch.manual_seed(2)
    wide = torch.randn(B, L, 2 * d, dtype=dtype, requires_grad=True)
    a = wide[..., d:]  # a column slice, as the DIN layer passes it
    r = torch.randn(B, C, d, dtype=dtype, requires_grad=True)
    W = torch.randn(h, d, dtype=dtype, requires_grad=True)
    K = torch.randn(B, L, h, dtype=dtype, requires_grad=True)
    Q = torch.randn(B, C, h, dtype=dtype, requires_grad=True)
    z_k = native.din_pair_layer(a, r, W, K, Q) if with_kq else native.din_pair_layer(a, r, W)
    z_t = (a.unsqueeze(1) * r.unsqueeze(2)) @ W.t()  # (B, C, L, h)
    if with_kq:
        z_t = z_t + K.unsqueeze(1) + Q.unsqueeze(2)
    z_t = z_t.reshape(-1, h)
    _close(z_k, z_t, dtype)
    inputs = [wide, r, W] + ([K, Q] if with_kq else [])
    for x, y in zip(_grads(z_k, inputs), _grads(z_t, inputs)):
        _close(x, y, dtype)


@DTYPES
def test_mlp_training_step_with_kernels_equals_torch_ops(dtype, threads):
    torch.manual_seed(3)
    mlp = MLP(12, [9, 5], out_dim=1).to(dtype)
    ref = copy.deepcopy(mlp)
    x = torch.randn(300, 12, dtype=dtype, requires_grad=True)
    y = mlp(x)
    with reference_only():
        y_t = ref(x)
    _close(y, y_t, dtype)
    for a, b in zip(_grads(y, [x, *mlp.parameters()]), _grads(y_t, [x, *ref.parameters()])):
        _close(a, b, dtype)
    for bn, bn_t in zip(mlp.norms, ref.norms):
        _close(bn.running_mean, bn_t.running_mean, dtype)
        _close(bn.running_var, bn_t.running_var, dtype)


def naive_din_weights(att, keys, mask, query, query_shared):
    """The DIN scorer from its definition: MLP([a, q, a − q, a ⊙ q]) over the explicit concatenation."""
    q = torch.cat([query_shared.unsqueeze(1).expand(-1, query.shape[1], -1), query], -1)
    B, C, d = q.shape
    a = keys.unsqueeze(1).expand(B, C, keys.shape[1], d)
    qq = q.unsqueeze(2).expand_as(a)
    s = att.mlp(torch.cat([a, qq, a - qq, a * qq], -1)).squeeze(-1)
    return torch.softmax(s.masked_fill(mask.unsqueeze(1) == 0, -(2**32) + 1), -1)


def test_din_attention_with_kernels_equals_naive_concatenation_in_torch_ops(threads):
    torch.manual_seed(4)
    att = DinAttention(6, (8, 4), init_std=0.5).double()
    ref = copy.deepcopy(att)
    keys = torch.randn(4, 7, 6, dtype=torch.float64, requires_grad=True)
    mask = (torch.arange(7)[None] < torch.tensor([7, 3, 5, 1])[:, None]).double()

    def keys_pad():  # zero keys at padding, as the short-term encoder's
        return keys * mask.unsqueeze(-1)

    shared = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    per = torch.randn(4, 5, 4, dtype=torch.float64, requires_grad=True)
    w = att(keys_pad(), mask, per, query_shared=shared)
    with reference_only():
        w_t = naive_din_weights(ref, keys_pad(), mask, per, shared)
    _close(w, w_t, torch.float64)
    params = [keys, shared, per, *att.parameters()]
    params_t = [keys, shared, per, *ref.parameters()]
    for a, b in zip(_grads(w, params), _grads(w_t, params_t)):
        _close(a, b, torch.float64)


def test_din_first_layer_split_equals_the_layer_on_the_concatenation():
    torch.manual_seed(5)
    first = nn.Linear(16, 8).double()
    keys = torch.randn(3, 5, 4, dtype=torch.float64)
    query, shared = torch.randn(3, 2, 3, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    q = torch.cat([shared.unsqueeze(1).expand(3, 2, 1), query], -1).unsqueeze(2).expand(3, 2, 5, 4)
    a = keys.unsqueeze(1).expand(3, 2, 5, 4)
    _close(din_first_layer(first, keys, query, shared), first(torch.cat([a, q, a - q, a * q], -1)), torch.float64)


def test_clsr_training_step_with_kernels_equals_torch_ops():
    """float64: logits, every loss part and every parameter gradient of a whole CLSR step."""
    from tests.test_clsr_model import _loss_parts, make_batch, make_model

    model = make_model()
    ref = make_model()
    ref.load_state_dict(model.state_dict())
    b = make_batch(lengths=(8, 6, 3, 7, 1, 0), C=3, users=[1, 2, 1, 3, 4, 2])
    out_f, parts_f = _loss_parts(model, b)
    parts_f["total"].backward()
    with reference_only():
        out_r, parts_r = _loss_parts(ref, b)
        parts_r["total"].backward()
    _close(out_f["logits"], out_r["logits"], torch.float64)
    for k in parts_f:
        _close(parts_f[k], parts_r[k], torch.float64)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("pad_key", ["zero", "shared"], ids=["zero-padding-keys", "equal-padding-keys"])
def test_din_attention_folding_padded_positions_equals_dense_torch_ops(pad_key, threads):
    """`lengths` given: each instance's padded positions become one weighted row per query; the weights,
    every gradient (incl. the padded keys', shared out equally) and the BN running statistics match the
    dense computation in torch ops. Lengths cover empty and full histories."""
    torch.manual_seed(6)
    B, L, d, C = 5, 6, 4, 3
    lengths = torch.tensor([6, 0, 2, 5, 1])
    mask = (torch.arange(L)[None] < lengths[:, None]).double()
    att = DinAttention(d, (7, 5), init_std=0.5).double()
    ref = copy.deepcopy(att)
    keys_valid = torch.randn(B, L, d, dtype=torch.float64, requires_grad=True)
    pad = torch.zeros(d, dtype=torch.float64) if pad_key == "zero" else torch.randn(d, dtype=torch.float64)
    pad.requires_grad_(pad_key == "shared")
    shared = torch.randn(B, 1, dtype=torch.float64, requires_grad=True)
    per = torch.randn(B, C, d - 1, dtype=torch.float64, requires_grad=True)

    def keys():
        return torch.where(mask.unsqueeze(-1) > 0, keys_valid, pad.expand(B, L, d))

    w = att(keys(), mask, per, query_shared=shared, lengths=lengths)
    with reference_only():
        w_t = ref(keys(), mask, per, query_shared=shared)
    _close(w, w_t, torch.float64)
    inputs = [keys_valid, shared, per] + ([pad] if pad.requires_grad else [])
    for a, b in zip(_grads(w, inputs + list(att.parameters())), _grads(w_t, inputs + list(ref.parameters()))):
        _close(a, b, torch.float64)
    for bn, bn_t in zip(att.mlp.norms, ref.mlp.norms):
        _close(bn.running_mean, bn_t.running_mean, torch.float64)
        _close(bn.running_var, bn_t.running_var, torch.float64)


# ------------------------------------------------------------------------------------------------
# the C boundary: signatures and checked calls
# ------------------------------------------------------------------------------------------------
_C_TYPES = {"int": "c_int", "long": "c_long", "double": "c_double"}


def _c_prototypes() -> dict[str, list[str]]:
    """The exported functions of kernels.c (``void NAME(f)(...)``) and their parameters' ctypes names, read
    from the source: a pointer is c_void_p, int / long / double the matching scalar."""
    import re

    src = native.SOURCE.read_text()
    out = {}
    for name, params in re.findall(r"^void NAME\((\w+)\)\(([^)]*)\)", src, flags=re.M):
        types = []
        for p in params.split(","):
            words = p.replace("*", " * ").split()
            types.append("c_void_p" if "*" in words else _C_TYPES[words[-2]])
        out[name] = types
    return out


def test_signatures_match_the_c_prototypes():
    """`native.SIGNATURES` (the ctypes argtypes) lists exactly the exported kernels, each parameter with the
    type of the C prototype."""
    protos = _c_prototypes()
    assert set(protos) == set(native.SIGNATURES)
    for name, types in protos.items():
        assert [t.__name__ for t in native.SIGNATURES[name]] == types, name


def test_kernels_c_has_no_multi_line_macros():
    """Every kernel is a plain function written once over `real`: no macro continues over lines."""
    lines = native.SOURCE.read_text().splitlines()
    assert not [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith("\\")]


@DTYPES
def test_kernels_exist_in_both_dtypes(dtype):
    nk = native.kernels(torch.empty(0, dtype=dtype))
    assert nk.dtype is dtype and set(nk._c) == set(native.SIGNATURES)


def _gru_gates_args(dtype=torch.float64, k=4, H=3):
    return dict(rz=torch.zeros(k, 2 * H, dtype=dtype), x=torch.zeros(k, 2 * H, dtype=dtype),
                hp=torch.zeros(k, H, dtype=dtype), rh=torch.zeros(k, H, dtype=dtype), b=None)


def test_a_checked_call_takes_strided_rows_and_computes_the_step():
    """gru_fwd_gates on a column slice of a wider matrix (rows with a leading dimension): σ(rz + x + b) and
    r ⊙ h_prev, as torch computes them."""
    nk = native.kernels(torch.empty(0, dtype=torch.float64))
    torch.manual_seed(8)
    k, H = 4, 3
    wide = torch.randn(k, 5 * H, dtype=torch.float64)
    rz0 = torch.randn(k, 2 * H, dtype=torch.float64)
    hp, b = torch.randn(k, H, dtype=torch.float64), torch.randn(2 * H, dtype=torch.float64)
    rz, rh = rz0.clone(), torch.empty(k, H, dtype=torch.float64)
    nk.gru_fwd_gates(rz=rz, x=wide[:, H : 3 * H], hp=hp, rh=rh, b=b)
    want = torch.sigmoid(rz0 + wide[:, H : 3 * H] + b)
    _close(rz, want, torch.float64)
    _close(rh, want[:, :H] * hp, torch.float64)


@pytest.mark.parametrize("bad", ["dtype", "device", "shape", "column stride", "bias length"])
def test_a_checked_call_rejects_what_the_kernel_does_not_assume(bad):
    """A tensor of another dtype, on another device, of another shape or without unit stride along its
    rows raises KernelArgumentError naming the argument, before any C code runs (the outputs untouched)."""
    nk = native.kernels(torch.empty(0, dtype=torch.float64))
    args = _gru_gates_args()
    if bad == "dtype":
        args["x"] = args["x"].float()
    elif bad == "device":
        args["hp"] = torch.empty(4, 3, dtype=torch.float64, device="meta")
    elif bad == "shape":
        args["rh"] = torch.zeros(4, 4, dtype=torch.float64)
    elif bad == "column stride":
        args["x"] = torch.zeros(2 * 3, 4, dtype=torch.float64).t()  # (4, 6), column-major
    else:
        args["b"] = torch.zeros(3, dtype=torch.float64)
    name = {"dtype": "x", "device": "hp", "shape": "rh", "column stride": "x", "bias length": "b"}[bad]
    with pytest.raises(native.KernelArgumentError, match=rf"gru_fwd_gates: {name} must be"):
        nk.gru_fwd_gates(**args)
    assert not args["rz"].any() and not args["rh"].any()


def test_the_batch_norm_and_ragged_kernels_check_layout_and_index_type():
    """bn_relu_fwd reads z as contiguous rows: a transposed z is refused; ragged_prod_fwd reads the lengths
    as int64: int32 lengths are refused."""
    nk = native.kernels(torch.empty(0, dtype=torch.float64))
    C = 3
    stats = {k: torch.zeros(C, dtype=torch.float64) for k in ("gamma", "beta", "mean", "invstd", "var")}
    y = torch.zeros(4, C, dtype=torch.float64)
    with pytest.raises(native.KernelArgumentError, match="bn_relu_fwd: z must be .* contiguous"):
        nk.bn_relu_fwd(dims=(4, 1, 1), z=torch.ones(C, 4, dtype=torch.float64).t(), K=None, R=None, eps=1e-5, y=y,
                       **stats)
    assert not y.any()
    rows = native.RaggedRows(torch.tensor([2, 1]), 2, 3)
    rows.n = rows.n.int()
    a, r = torch.ones(2, 3, 4, dtype=torch.float64), torch.ones(2, 2, 4, dtype=torch.float64)
    prod = torch.zeros(rows.V + 4, 4, dtype=torch.float64)
    with pytest.raises(native.KernelArgumentError, match="ragged_prod_fwd: rows.n must be a contiguous int64"):
        nk.ragged_prod_fwd(rows=rows, a=a, r=r, prod=prod)
    assert not prod.any()


def test_the_library_holds_both_element_types_from_one_source(tmp_path):
    """`_build` compiles kernels.c once per element type (-DREAL_F32, -DREAL_F64) and links one library with
    both sets of functions; the build folder is gone afterwards."""
    import ctypes

    target = tmp_path / "kernels_both.so"
    native._build(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    lib = ctypes.CDLL(str(target))
    for name in native.SIGNATURES:
        for suffix, _ in native.TYPES.values():
            assert hasattr(lib, f"{name}_{suffix}")
