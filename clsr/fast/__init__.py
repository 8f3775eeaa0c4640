"""The one seam between the models' reference blocks and their fast twins.

`clsr.models` holds every block once, as plain torch code under autograd: the reference a reader checks
against the paper. A reference block that has faster equivalents is marked with `seam`; its fast twins
live in this package (`recurrence`: packed recurrences with a hand-written backward; `mlp`: fused batch
norm + ReLU tails; `attention`: the DIN scorer's fused, ragged and folded paths; `native` + `kernels.c`:
the C kernels some of them call) and register against it with `register`:

    @fast.seam                                         # in clsr/models/cells.py
    def run_rnn(cell, inputs, lengths, ...): ...       # the reference

    @register(cells.run_rnn, sources=(cells.run_rnn, cells.TFGRUCell.forward, ...), checked="3f0c…")
    def packed_rnn(cell, inputs, lengths, ...): ...    # in clsr/fast/recurrence.py: same signature
    @packed_rnn.accepts
    def _(cell, inputs, lengths, ...): return None or "why not"

Calling the reference runs the first registered twin that accepts the arguments; when none does (a new
cell class, evaluation instead of training, no C compiler, ...) the reference runs and the log says so,
once per block and reason. `reference(fn)` (or ``fn.reference``) is the reference itself; inside
`disabled()` every seam runs its reference.

Why twins cannot drift from their reference: each registration records ``checked``, a hash of the
source of every reference object the twin reproduces (`source_hash`: the code's syntax tree, so
comments and docstrings do not count). If a reference changes, the hash differs, and

- at run time the twin is not used (the reference runs, and a warning names the block);
- `tests/test_fast.py` fails for that twin. The test first checks the twin against the reference in
  float64 (forward and every gradient) and only then compares the hash, printing the new value to
  record: the hash can only be updated from a run of the equivalence test that passed.

So: edit a reference, run ``pytest tests/test_fast.py``, and copy the printed hash into the
registration's ``checked=`` once the twin has been updated and the test passes.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib
import inspect
import logging
import textwrap
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger("clsr.fast")

#: the modules holding registrations, imported on the first call through a seam
TWIN_MODULES = ("clsr.fast.recurrence", "clsr.fast.mlp", "clsr.fast.attention")


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_hash(*objs) -> str:
    """16 hex digits of sha256 over the syntax trees (docstrings and comments left out) of `objs`'
    source (functions, methods, classes; a seamed function stands for its reference)."""
    h = hashlib.sha256()
    for obj in objs:
        obj = getattr(obj, "reference", obj)
        tree = _strip_docstrings(ast.parse(textwrap.dedent(inspect.getsource(obj))))
        h.update(ast.dump(tree, annotate_fields=False).encode())
    return h.hexdigest()[:16]


@dataclass
class Twin:
    """A fast path registered against the reference block `reference` (a seamed function)."""

    name: str
    reference: Callable
    fn: Callable
    sources: tuple
    checked: str
    _accepts: Callable | None = None
    _current: bool | None = field(default=None, repr=False)

    def accepts(self, fn: Callable) -> Callable:
        """Decorator: fn(*args, **kw) -> None when this twin takes the reference's arguments, else a short
        reason (logged once)."""
        self._accepts = fn
        return fn

    def why_not(self, *args, **kw) -> str | None:
        return None if self._accepts is None else self._accepts(*args, **kw)

    def current(self) -> bool:
        """Whether the references' source still hashes to `checked` (computed once per process)."""
        if self._current is None:
            self._current = source_hash(*self.sources) == self.checked
            if not self._current:
                log.warning("fast twin %s: its reference %s changed since the twin was checked; running the "
                            "reference (update the twin, run tests/test_fast.py, record the hash it prints)",
                            self.name, _qualname(self.reference))
        return self._current

    def __call__(self, *args, **kw):
        return self.fn(*args, **kw)


_TWINS: dict[str, list[Twin]] = {}
_loaded = False
_enabled = True
_only: set[str] | None = None  # names of the twins allowed to run (None: all)
_logged: set[tuple[str, str]] = set()


def _qualname(fn: Callable) -> str:
    fn = getattr(fn, "reference", fn)
    return f"{fn.__module__}.{fn.__qualname__}"


def register(reference: Callable, sources: tuple, checked: str, name: str | None = None):
    """Decorator registering a fast twin of the seamed `reference`: same signature, same values (float
    rounding aside), and `sources` the reference objects it reproduces (hashed into `checked`)."""

    def deco(fn: Callable) -> Twin:
        twin = Twin(name or fn.__name__, reference, fn, tuple(sources), checked)
        _TWINS.setdefault(_qualname(reference), []).append(twin)
        return twin

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for mod in TWIN_MODULES:
            importlib.import_module(mod)


def twins(reference: Callable | None = None) -> list[Twin]:
    """The registered twins of `reference` (all of them when None), in preference order."""
    _load()
    if reference is None:
        return [t for ts in _TWINS.values() for t in ts]
    return list(_TWINS.get(_qualname(reference), []))


def _log_once(ref: str, reason: str) -> None:
    if (ref, reason) not in _logged:
        _logged.add((ref, reason))
        log.info("no fast twin for %s (%s): running the reference", ref, reason)


def seam(fn: Callable) -> Callable:
    """Mark `fn` as a reference block that fast twins may replace (see the module docstring)."""
    ref = _qualname(fn)

    @functools.wraps(fn)
    def call(*args, **kw):
        if _enabled:
            _load()
            reasons = []
            for twin in _TWINS.get(ref, ()):
                if _only is not None and twin.name not in _only:
                    reasons.append(f"{twin.name}: turned off")
                    continue
                why = twin.why_not(*args, **kw)
                if why is None and twin.current():
                    return twin.fn(*args, **kw)
                reasons.append(f"{twin.name}: {why or 'reference changed'}")
            _log_once(ref, "; ".join(reasons) or "none registered")
        return fn(*args, **kw)

    call.reference = fn
    return call


def reference(fn: Callable) -> Callable:
    """The reference behind a seamed function (the function itself otherwise)."""
    return getattr(fn, "reference", fn)


@contextlib.contextmanager
def disabled():
    """Every seam runs its reference inside this block (tests and benchmarks compare the two)."""
    global _enabled
    old, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = old


@contextlib.contextmanager
def only(*names: str):
    """Only the twins named here may run inside this block (the others fall back, as if absent)."""
    global _only
    _load()
    unknown = set(names) - {t.name for t in twins()}
    if unknown:
        raise ValueError(f"fast.only: no twin named {sorted(unknown)}; known: {sorted(t.name for t in twins())}")
    old, _only = _only, set(names)
    try:
        yield
    finally:
        _only = old
