"""Config schemas: plugin options are dataclasses; this module checks plain data against them.

omegaconf's structured configs stop at the first error; a user fixing a recipe wants every
problem at once, so validation here walks the whole tree and collects messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with bounds and a help line, e.g. ``target: float = option(0.78, gt=0, le=1)``.

    Mutable defaults (lists, dicts) are copied per instance.
    """
    metadata = {"ge": ge, "gt": gt, "le": le, "lt": lt, "help": help}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def check_value(value: Any, tp: Any, path: str) -> list[str]:
    """Problems with ``value`` against the annotation ``tp``; empty when it fits."""
    if tp is Any:
        return []
    origin = typing.get_origin(tp)
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return []
        results = [check_value(value, a, path) for a in args if a is not type(None)]
        if any(not r for r in results):
            return []
        if len(results) == 1:
            return results[0]
        return [f"{path}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"]
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return []
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else ""
        return [f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{more}"]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            return [f"{path}: expected a mapping of {tp.__name__} options, got {value!r}"]
        return validate_options(tp, value, path)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return [f"{path}: expected a list, got {value!r}"]
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return [f"{path}: expected {len(args)} items, got {len(value)}"]
            return [p for i, (v, a) in enumerate(zip(value, args)) for p in check_value(v, a, f"{path}[{i}]")]
        item = args[0] if args else Any
        return [p for i, v in enumerate(value) for p in check_value(v, item, f"{path}[{i}]")]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            return [f"{path}: expected a mapping, got {value!r}"]
        args = typing.get_args(tp)
        item = args[1] if len(args) == 2 else Any
        return [p for k, v in value.items() for p in check_value(v, item, f"{path}.{k}")]
    if tp is bool:
        return [] if isinstance(value, bool) else [f"{path}: expected true or false, got {value!r}"]
    if tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {value!r}"]
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r}"]
    if tp is str:
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else [f"{path}: expected {tp.__name__}, got {value!r}"]
    return []


def _check_bounds(value: Any, meta: Mapping[str, Any], path: str) -> list[str]:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return []
    problems = []
    if meta.get("ge") is not None and not value >= meta["ge"]:
        problems.append(f"{path}: {value} is out of range (must be >= {meta['ge']})")
    if meta.get("gt") is not None and not value > meta["gt"]:
        problems.append(f"{path}: {value} is out of range (must be > {meta['gt']})")
    if meta.get("le") is not None and not value <= meta["le"]:
        problems.append(f"{path}: {value} is out of range (must be <= {meta['le']})")
    if meta.get("lt") is not None and not value < meta["lt"]:
        problems.append(f"{path}: {value} is out of range (must be < {meta['lt']})")
    return problems


def unknown_key_message(path: str, key: str, known: Sequence[str]) -> str:
    hint = difflib.get_close_matches(key, list(known), n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"{path}.{key}: unknown key{more}" if path else f"{key}: unknown key{more}"


def validate_options(schema: type, options: Mapping[str, Any], path: str) -> list[str]:
    """Every problem with ``options`` against the dataclass ``schema``: keys, types, ranges."""
    hints = _hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    problems: list[str] = []
    for key in options:
        if key not in fields:
            problems.append(unknown_key_message(path, str(key), list(fields)))
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in options:
            if f.default is _MISSING and f.default_factory is _MISSING:
                problems.append(f"{where}: required option is missing")
            continue
        value = options[name]
        type_problems = check_value(value, hints[name], where)
        problems.extend(type_problems)
        if not type_problems:
            problems.extend(_check_bounds(value, f.metadata, where))
    if not problems and hasattr(schema, "check"):
        instance = instantiate_schema(schema, options)
        problems.extend(f"{path}: {msg}" if path else msg for msg in instance.check() or [])
    return problems


def _convert(value: Any, tp: Any) -> Any:
    if value is None:
        return None
    if _is_union(tp):
        for arg in typing.get_args(tp):
            if arg is not type(None) and not check_value(value, arg, ""):
                return _convert(value, arg)
        return value
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return instantiate_schema(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if args and args[-1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in value)
        return tuple(_convert(v, a) for v, a in zip(value, args)) if args else tuple(value)
    if origin in (list, Sequence):
        args = typing.get_args(tp)
        return [_convert(v, args[0] if args else Any) for v in value]
    if origin in (dict, Mapping):
        args = typing.get_args(tp)
        return {k: _convert(v, args[1] if len(args) == 2 else Any) for k, v in value.items()}
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def instantiate_schema(schema: type, options: Mapping[str, Any]) -> Any:
    """Build ``schema`` from (already validated) plain options, converting nested types."""
    hints = _hints(schema)
    kwargs = {k: _convert(v, hints[k]) for k, v in options.items() if k in hints}
    return schema(**kwargs)


def schema_defaults(schema: type) -> dict[str, Any]:
    """The schema's defaults as plain data (for docs and ``prunekit plugins --kind``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:
            value = f.default_factory()
        else:
            value = "???"
        out[f.name] = (dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type)
                      else value)
    return out
