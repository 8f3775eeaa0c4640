"""Fast twin of `layers.MLP.tail`: each batch norm + ReLU of a training step as one fused C kernel pair,
the last one together with the one-unit output layer (its activations are then never written).

`fused_tail_din` is the same tail for the DIN scorer's first layer given as its unsummed terms
(z = P + K[b, t] + Q[b, c], added inside the kernel); `clsr.fast.attention` uses it.
"""
from __future__ import annotations

import torch

from clsr import fast
from clsr.fast import native
from clsr.models.layers import MLP


def fusable(mlp, like: torch.Tensor) -> str | None:
    """None when the kernels can run `mlp`'s tail on tensors like `like`, else why not."""
    if type(mlp) is not MLP:
        return f"{type(mlp).__name__} is not a layers.MLP"
    if mlp.norms is None or not mlp.training:
        return "no batch norm in training mode"
    if any(a != "relu" for a in mlp._act_names):
        return "an activation other than relu"
    if not all(bn.affine and bn.track_running_stats for bn in mlp.norms):
        return "batch norm without affine or running statistics"
    if native.kernels(like) is None:
        return "no C kernels for " + ("this device / dtype" if native.available() else native.status())
    return None


def _tail_from(mlp: MLP, x: torch.Tensor, lead) -> torch.Tensor:
    """Layers 1.. of a fusable MLP's tail on layer 0's activations x (N, h_0)."""
    last = len(mlp.linears) - 1
    for k in range(1, last + 1):
        lin, bn = mlp.linears[k], mlp.norms[k]
        if k == last and mlp.out is not None:
            # the kernel takes the linear bias on the side (BN only moves its mean by it)
            s = native.bn_relu_dot(bn, torch.mm(x, lin.weight.t()), mlp.out, x_bias=lin.bias)
            if s is not None:
                return s.view(*lead, 1)
        x = native.bn_relu(bn, lin(x))
    if mlp.out is not None:
        x = mlp.out(x)
    return x.view(*lead, x.shape[-1])


@fast.register(MLP.tail, sources=(MLP.tail, MLP._norm_act), checked="4f5952fd8523f745")
def fused_tail(mlp, z):
    """`MLP.tail` with `native.bn_relu` / `native.bn_relu_dot`."""
    lead = z.shape[:-1]
    x = z.reshape(-1, z.shape[-1])
    if len(mlp.linears) == 1 and mlp.out is not None:
        s = native.bn_relu_dot(mlp.norms[0], x, mlp.out)
        if s is not None:
            return s.view(*lead, 1)
    return _tail_from(mlp, native.bn_relu(mlp.norms[0], x), lead)


@fused_tail.accepts
def _(mlp, z):
    if z.shape[-1] and z.numel() // z.shape[-1] < 2:
        return "fewer than two rows"
    return fusable(mlp, z)


def fused_tail_din(mlp: MLP, P: torch.Tensor, K: torch.Tensor, Q: torch.Tensor, dims) -> torch.Tensor:
    """`MLP.tail` of z = P + K[b, t] + Q[b, c] (P (B·C·L, h) rows (b, c, t), K (B, L, h), Q (B, C, h),
    dims = (B, C, L)) for a `fusable` MLP, the sum formed inside the first BN kernel. Returns (B·C·L, 1)."""
    x = native.bn_relu(mlp.norms[0], P, K, Q, dims)
    return _tail_from(mlp, x, (P.shape[0],))
