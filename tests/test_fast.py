"""Every fast twin of `clsr.fast` against the reference block it replaces, in float64: the same outputs and
the same gradient for every input and parameter, on small cases the twin accepts. Then the twin's recorded
source hash is compared with the reference's current one: when a reference block changes, this test fails
for each of its twins and, once the twin is equal to the changed reference again, prints the hash to
record in the registration (``checked=``).

Also: the seam itself (a configuration without a twin runs the reference and says so once, a changed
reference is not replaced by its twin, `fast.disabled` / `fast.only`).
"""
from __future__ import annotations

import copy
import logging

import pytest
import torch

from clsr import fast
from clsr.fast import native
from clsr.models import cells, layers
from clsr.models.attention import DinAttention
from clsr.models.cells import TFGRUCell, TFLSTMCell, Time4LSTMCell

NATIVE_TWINS = {"fused_tail", "din_ragged", "din_fused"}


def _lengths(B, L, g):
    n = torch.randint(1, L + 1, (B,), generator=g)
    n[0], n[-1] = L, 0
    return n


def _rnn_case(kind):
    def build(g):
        B, L, D, H = 5, 6, 4, 3
        cell = {"gru": TFGRUCell, "lstm": TFLSTMCell, "time4": Time4LSTMCell}[kind](D, H).double()
        x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
        n = _lengths(B, L, g)
        h0 = torch.randn(B, H, generator=g, dtype=torch.float64) if kind == "gru" else None
        kw = {"h0": h0, "n_steps": L - 1}
        if kind == "time4":
            kw["times"] = torch.rand(B, L, 2, generator=g, dtype=torch.float64)
        return cells.run_rnn, (cell, x, n), kw
    return build


def _gru_pair(g):
    B, L, D = 5, 6, 4
    a, b = TFGRUCell(D, 3).double(), TFGRUCell(D, 2).double()
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, 3, generator=g, dtype=torch.float64)
    return cells.run_gru_pair, (a, b, x, _lengths(B, L, g)), {"h0_a": h0}


def _augru(g):
    B, C, L, D, H = 4, 3, 5, 4, 3
    cell = TFGRUCell(D, H).double()
    x = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    att = torch.softmax(torch.randn(B, C, L, generator=g, dtype=torch.float64), -1)
    return cells.run_augru, (cell, x, att, _lengths(B, L, g)), {"n_steps": L}


def _mlp(sizes):
    def build(g):
        mlp = layers.MLP(7, sizes, "relu", True, out_dim=1).double().train()
        with torch.no_grad():
            for lin in list(mlp.linears) + [mlp.out]:
                lin.weight.normal_(generator=g)
                lin.bias.normal_(generator=g)
            for bn in mlp.norms:
                bn.weight.uniform_(0.5, 1.5, generator=g)
                bn.bias.normal_(generator=g)
        z = torch.randn(3, 4, sizes[0], generator=g, dtype=torch.float64)
        return layers.MLP.tail, (mlp, z), {}
    return build


def _din(mode, shared):
    def build(g):
        B, C, L, d, d_s = 4, 3, 5, 6, (2 if shared else 0)
        att = DinAttention(d, (5, 4)).double()
        with torch.no_grad():
            for p in att.parameters():
                p.normal_(generator=g)
            for bn in att.mlp.norms:
                bn.running_mean.normal_(generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
        att.train(mode != "eval")
        n = _lengths(B, L, g)
        mask = (torch.arange(L)[None, :] < n[:, None]).double()
        keys = torch.randn(B, L, d, generator=g, dtype=torch.float64) * mask.unsqueeze(-1)  # equal (zero) padded keys
        query = torch.randn(B, C, d - d_s, generator=g, dtype=torch.float64)
        qs = torch.randn(B, d_s, generator=g, dtype=torch.float64) if shared else None
        kw = {"query_shared": qs, "lengths": n if mode == "ragged" else None}
        return DinAttention.forward, (att, keys, mask, query), kw
    return build


#: (twin name, variant) -> case builder(generator) -> (seamed reference, args, kwargs)
CASES = {
    ("packed_rnn", "gru"): _rnn_case("gru"),
    ("packed_rnn", "lstm"): _rnn_case("lstm"),
    ("packed_rnn", "time4lstm"): _rnn_case("time4"),
    ("packed_gru_pair", "two grus"): _gru_pair,
    ("augru_shared_inputs", "augru"): _augru,
    ("fused_tail", "two layers"): _mlp([5, 4]),
    ("fused_tail", "one layer"): _mlp([5]),
    ("din_valid_only", "full query"): _din("eval", False),
    ("din_valid_only", "shared query part"): _din("eval", True),
    ("din_ragged", "full query"): _din("ragged", False),
    ("din_ragged", "shared query part"): _din("ragged", True),
    ("din_fused", "full query"): _din("fused", False),
    ("din_fused", "shared query part"): _din("fused", True),
}


def _twin(name):
    (twin,) = [t for t in fast.twins() if t.name == name]
    return twin


def _tensors(args, kw):
    """The float tensors among the arguments and the parameters of the modules among them."""
    out = []
    for a in list(args) + list(kw.values()):
        if isinstance(a, torch.nn.Module):
            out += list(a.parameters())
        elif isinstance(a, torch.Tensor) and a.is_floating_point():
            out.append(a)
    return out


def _run(fn, args, kw):
    """fn on fresh copies of the arguments (modules' running statistics included); returns the outputs as
    a flat list and the gradients of a fixed random weighting of them w.r.t. every float input."""
    args, kw = copy.deepcopy(args), copy.deepcopy(kw)
    leaves = _tensors(args, kw)
    for t in leaves:
        t.requires_grad_(True)
    out = fn(*args, **kw)
    outs = list(out) if isinstance(out, tuple) else [out]
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [o.detach() for o in outs], [None if d is None else d.detach() for d in grads]


def test_every_twin_has_an_equivalence_case():
    assert {name for name, _ in CASES} == {t.name for t in fast.twins()}


@pytest.mark.parametrize("name,variant", list(CASES), ids=[f"{n}-{v}" for n, v in CASES])
def test_twin_equals_its_reference_in_float64(name, variant):
    twin = _twin(name)
    if name in NATIVE_TWINS and not native.available():
        pytest.skip(native.status())
    ref, args, kw = CASES[name, variant](torch.Generator().manual_seed(0))
    assert fast.reference(ref) is twin.reference.reference, f"{name} is registered against another block"
    assert twin.why_not(*args, **kw) is None, f"the {variant} case must be one {name} accepts"
    with fast.disabled():
        out_ref, grad_ref = _run(fast.reference(ref), args, kw)
    out_twin, grad_twin = _run(twin.fn, args, kw)
    for a, b in zip(out_twin, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for i, (a, b) in enumerate(zip(grad_twin, grad_ref)):
        if a is None or b is None:  # unused by both, or exactly zero in the one that built no path
            assert (a is None or not a.any()) and (b is None or not b.any()), f"gradient {i}"
            continue
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"gradient {i}: {m}")
    now = fast.source_hash(*twin.sources)
    assert twin.checked == now, (
        f"{name} equals its reference, whose source changed since the twin was last checked: record "
        f'checked="{now}" in its registration (clsr/fast/)'
    )


def test_a_cell_without_a_twin_runs_the_reference_and_says_so(caplog):
    class MyGRU(TFGRUCell):  # an edited equation: the packed twin must not run it
        def forward(self, x, h):
            return 0.5 * super().forward(x, h)

    g = torch.Generator().manual_seed(0)
    cell = MyGRU(3, 2).double()
    x = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    n = torch.tensor([4, 2])
    with caplog.at_level(logging.INFO, logger="clsr.fast"):
        out, final = cells.run_rnn(cell, x, n)
        cells.run_rnn(cell, x, n)
    with fast.disabled():
        ref_out, ref_final = cells.run_rnn(cell, x, n)
    torch.testing.assert_close(final, ref_final, rtol=0, atol=0)
    lines = [r.message for r in caplog.records if "run_rnn" in r.message and "MyGRU" in r.message]
    assert len(lines) == 1, caplog.records  # once per block and reason


def test_a_changed_reference_is_not_replaced_by_its_twin(monkeypatch):
    twin = _twin("packed_rnn")
    monkeypatch.setattr(twin, "checked", "0" * 16)
    monkeypatch.setattr(twin, "_current", None)
    called = []
    monkeypatch.setattr(twin, "fn", lambda *a, **k: called.append(1))
    g = torch.Generator().manual_seed(0)
    cells.run_rnn(TFGRUCell(3, 2).double(), torch.randn(2, 4, 3, generator=g, dtype=torch.float64), torch.tensor([4, 2]))
    assert not called


def test_only_and_disabled_select_the_paths():
    with pytest.raises(ValueError, match="no twin named"):
        with fast.only("no_such_twin"):
            pass
    calls = []
    twin = _twin("packed_rnn")
    orig = twin.fn
    try:
        twin.fn = lambda *a, **k: calls.append(1) or orig(*a, **k)
        cell, x, n = TFGRUCell(3, 2), torch.randn(2, 4, 3), torch.tensor([4, 2])
        cells.run_rnn(cell, x, n)
        with fast.disabled():
            cells.run_rnn(cell, x, n)
        with fast.only("fused_tail"):
            cells.run_rnn(cell, x, n)
    finally:
        twin.fn = orig
    assert calls == [1]


def _documented():
    def f(x):
        """doc"""
        return x + 1  # comment

    return f


def _bare():
    def f(x):
        return x + 1

    return f


def _edited():
    def f(x):
        return x + 2

    return f


def test_source_hash_ignores_docstrings_and_comments():
    assert fast.source_hash(_documented()) == fast.source_hash(_bare()) != fast.source_hash(_edited())
