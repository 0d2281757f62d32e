"""YAML files + ``extends`` + dotted command-line overrides -> a validated, typed :class:`Config`.

Errors are one line and say where the bad key came from (the file or the command line), what
was expected, and the nearest valid key, because a typo in a 1000-GPU job should cost seconds,
not a queue slot.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Union

import yaml

from m2dist.config.schema import Config

COMMAND_LINE = "the command line"


class ConfigError(ValueError):
    """A configuration problem, phrased as a single line for the user."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if dataclasses.is_dataclass(tp):
            keys.extend(_all_keys(tp, dotted + "."))
    return keys


def _nearest(key: str, cls: type) -> str:
    candidates = _all_keys(cls)
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.0)
    return match[0] if match else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in args)
        return f"{inner} or null" if len(args) < len(typing.get_args(tp)) else inner
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args if a is not Ellipsis)}]"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise _Mismatch. Only lossless conversions are allowed."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _Mismatch
            return tuple(_coerce(v, a) for v, a in zip(value, args))
        item = args[0] if args else Any
        out = [_coerce(v, item) for v in value]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    raise _Mismatch


def _build(cls: type, data: dict, sources: dict[str, str], prefix: str = ""):
    hints = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        source = sources.get(dotted, "the config")
        if key not in hints:
            raise ConfigError(
                f"unknown config key '{dotted}' (from {source}); did you mean '{_nearest(dotted, Config)}'?"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' (from {source}) must be a mapping, got {value!r}")
            kwargs[key] = _build(tp, value, sources, dotted + ".")
            continue
        try:
            kwargs[key] = _coerce(value, tp)
        except _Mismatch:
            raise ConfigError(
                f"config key '{dotted}' (from {source}) expects {_type_name(tp)}, got {value!r}"
            ) from None
    return cls(**kwargs)


def _record_sources(data: dict, source: str, sources: dict[str, str], prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        sources[dotted] = source
        if isinstance(value, dict):
            _record_sources(value, source, sources, dotted + ".")


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, sources: dict[str, str], chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{path}: 'extends' forms a cycle ({' -> '.join(str(p) for p in chain + (path,))})")
    if not path.is_file():
        where = f" (extended by {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    bases = data.pop("extends", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / base, sources, chain + (path,)))
    _record_sources(data, str(path), sources)
    return _deep_merge(merged, data)


def _apply_override(data: dict, item: str, sources: dict[str, str]) -> None:
    if "=" not in item:
        raise ConfigError(f"override '{item}' (from {COMMAND_LINE}) must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
            # A section the override creates (a typo such as 'tranier') came from the command line too.
            sources[".".join(parts[:depth + 1])] = COMMAND_LINE
        node = nxt
    node[parts[-1]] = value
    sources[key] = COMMAND_LINE


def resolve_dict(path: str | Path | None, overrides: Iterable[str] = ()) -> tuple[dict, dict[str, str]]:
    """Merged raw mapping (files, then overrides) and where each dotted key came from."""
    sources: dict[str, str] = {}
    data = _read_yaml(Path(path), sources) if path else {}
    for item in overrides:
        _apply_override(data, item, sources)
    return data, sources


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Load ``path`` (following ``extends``), apply ``key=value`` overrides, validate, return a Config."""
    data, sources = resolve_dict(path, overrides)
    return _validated(_build(Config, data, sources), data, sources)


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config from :func:`config_to_dict` output (e.g. the copy saved in a checkpoint)."""
    return _validated(_build(Config, data, {}), data, {})


def _validated(cfg: Config, data: dict, sources: dict[str, str]) -> Config:
    from m2dist.config.model import TASK_OF_ARCH
    from m2dist.config.validate import problems

    if "kind" not in (data.get("data") or {}):
        # Not given: the reader reads what the arch trains on (a model-only file such as configs/models/*.yaml).
        cfg.data.kind = TASK_OF_ARCH[cfg.model.arch]
    found = problems(cfg, sources)
    if found:
        more = f" (and {len(found) - 1} more: {'; '.join(found[1:])})" if len(found) > 1 else ""
        raise ConfigError(found[0] + more)
    return cfg


def config_to_dict(cfg) -> dict:
    def convert(obj):
        if isinstance(obj, tuple):
            return [convert(v) for v in obj]
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj

    return convert(dataclasses.asdict(cfg))


def config_to_yaml(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
