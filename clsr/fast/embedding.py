"""Fast twin of `layers.lookup`: the embedding lookup whose backward adds the rows in one C loop
(`native.EmbeddingLookup`)."""
from __future__ import annotations

import torch

from clsr import fast
from clsr.fast import native
from clsr.models import layers


@fast.register(layers.lookup, sources=(layers.lookup,), checked="368c46f7786c9ee9")
def native_lookup(table, idx):
    """`layers.lookup` with the `index_add_rows` kernel in the backward."""
    return native.lookup(table.weight, idx)


@native_lookup.accepts
def _(table, idx):
    w = table.weight
    if native.kernels(w) is None:
        return "no C kernels for this device / dtype"
    if idx.dtype != torch.long or w.dim() != 2 or w.stride(1) != 1:
        return "indices not int64 or table not row-major"
    return None
