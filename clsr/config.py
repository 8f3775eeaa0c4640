"""Typed configuration: dataclasses built from plain dicts (params.yaml sections) with clear errors.

Every config in the project is a dataclass whose defaults are documented next to their values.
`from_dict` builds one from a mapping, casting the YAML 1.1 quirks papermill hands us (``"1e-4"`` as a
string, ints for floats) and refusing unknown keys with the list of allowed ones, so a typo in
params.yaml fails loudly instead of silently running the default.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter is missing, unknown or has a value of the wrong type / outside its allowed set."""


def suggest(word: Any, choices) -> str:
    """' (did you mean 'train'?)' when `word` is a near miss of one of `choices`, else ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _cast(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if typ is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _cast(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not fit {typ}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_cast(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(typ):
        return from_dict(typ, value, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-4 as a string
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str = "config") -> T:
    """Build dataclass `cls` from `data`; unknown keys and bad values raise ConfigError naming the key."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data):
        data = dataclasses.asdict(data)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}{suggest(unknown[0], fields)}; allowed keys are {sorted(fields)}"
        )
    kwargs = {k: _cast(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{where}: {e}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(where)
    return obj


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def with_overrides(obj: T, overrides: Mapping[str, Any], where: str = "override") -> T:
    """Return a copy of dataclass `obj` with dotted-key overrides applied (``{"contrastive.k": 5}``)."""
    data = to_dict(obj)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise ConfigError(f"{where}: unknown key {key!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            allowed = sorted(node) if isinstance(node, dict) else []
            raise ConfigError(f"{where}: unknown key {key!r}; allowed at that level: {allowed}")
        node[parts[-1]] = value
    return from_dict(type(obj), data, where)


def parse_set_args(items: list[str] | None) -> dict[str, Any]:
    """Parse CLI ``--set key=value`` pairs; values are read as YAML (``5``, ``0.1``, ``bpr``, ``true``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def config_hash(obj: Any) -> str:
    """Short stable hash of a (nested) config, recorded with every run."""
    blob = json.dumps(obj if isinstance(obj, dict) else to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml, validated section by section and normalised (clsr.params.check)."""
    from clsr.params import load

    return load(path)


def section(params: Mapping[str, Any], *keys: str, where: str = "params.yaml") -> Any:
    """Walk nested keys of params, naming the missing key and what exists instead."""
    node: Any = params
    path = []
    for k in keys:
        path.append(k)
        if not isinstance(node, Mapping) or k not in node:
            have = sorted(node) if isinstance(node, Mapping) else []
            raise ConfigError(f"{where}: missing key {'.'.join(path)!r}; present: {have}")
        node = node[k]
    return node
