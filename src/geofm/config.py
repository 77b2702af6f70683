"""Typed YAML configurations: dataclass schemas, dotted command-line overrides, strict checks.

A run's configuration is a tree of dataclasses (the *schema*). :func:`load_config` reads a
YAML file, applies ``section.key=value`` overrides (values parsed as YAML, so ``lr=1e-4``,
``devices=2``, ``bands=[0,1,2]`` and ``checkpoint=null`` all work), and checks every key
and type against the schema before any work starts: an unknown key, a wrong type or a
missing required value raises :class:`~geofm.errors.ConfigError` naming the file and the
dotted key. :func:`save_config` writes the resolved tree beside a run.

Example (``Run`` a dataclass with an ``optim: Optim`` section and a ``steps: int``)::

    cfg = load_config(Run, "run.yaml", ["optim.lr=5e-4", "steps=20"])
    save_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from geofm.errors import ConfigError
from geofm.io import atomic_path
from geofm.resources import bundled_configs, config_file

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot, YAML 1.1 would say string) as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"""
               r"""|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_overrides(overrides: Sequence[str], source: str = "command line") -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override {item!r} on the {source}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        try:
            value = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r} on the {source}: value is not valid YAML ({e})") from e
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} on the {source}: '{part}' was already given a value")
            node = child
        node[parts[-1]] = value
    return tree


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins; neither input is modified."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping document is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = _yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}': expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(schema: type[T], data: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                 source: str = "<config>") -> T:
    """Instantiate dataclass ``schema`` from ``data`` plus dotted ``overrides``, checking keys and types."""
    tree = merge(data or {}, parse_overrides(overrides))
    return _convert(schema, tree, "", source)


def load_config(schema: type[T], path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (YAML; None = schema defaults), apply overrides, validate into ``schema``.

    ``path`` is a file, or the name of a bundled config (``finetune/tiny_flood``: see
    :func:`geofm.resources.config_file`)."""
    if path is not None:
        path = config_file(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist, and no bundled config has that name "
                              f"(bundled: {', '.join(bundled_configs())})")
    data = read_yaml(path) if path is not None else {}
    return build_config(schema, data, overrides, source=str(path) if path is not None else "<defaults>")


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dicts/lists/scalars (YAML- and JSON-safe)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


# --------------------------------------------------------------------------- validation
_MISSING = dataclasses.MISSING


def _convert(tp: Any, value: Any, key: str, source: str) -> Any:
    where = f"'{key}' in {source}" if key else source
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: a value is required, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: expected one of {list(choices)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping (section {tp.__name__}), got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            prefix = f"{key}." if key else ""
            raise ConfigError(f"unknown key(s) {', '.join(prefix + u for u in unknown)} in {source}; "
                              f"known keys{' of ' + key if key else ''}: {', '.join(sorted(fields))}")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name in value:
                kwargs[name] = _convert(hints[name], value[name], sub, source)
            elif f.default is _MISSING and f.default_factory is _MISSING:
                raise ConfigError(f"'{sub}' is required in {source} but was not given")
        try:
            return tp(**kwargs)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}: {e}") from e
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(a, v, f"{key}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_convert(kt, k, key, source): _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    return getattr(tp, "__name__", str(tp))


__all__ = ["build_config", "load_config", "merge", "parse_overrides", "read_yaml", "save_config", "to_dict"]
