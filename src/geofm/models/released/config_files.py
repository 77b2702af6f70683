"""The released models' configuration files, read without running them.

* :func:`read_python_config` — an mmseg/mmcv config (``<name>.py`` of hls-foundation-os): its
  top-level assignments of literal-like expressions are evaluated with :mod:`ast`; anything else
  (imports, calls of unknown functions, comprehensions) becomes :data:`UNKNOWN`.
* :func:`read_yaml_config` — a TerraTorch ``config.yaml`` (safe YAML).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from geofm.errors import CheckpointError


class _Unknown:
    """A value of a config file that geofm does not evaluate (a call, an import, os.path ...)."""

    def __repr__(self) -> str:
        return "<not evaluated>"


UNKNOWN = _Unknown()
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Mod: lambda a, b: a % b,
           ast.Pow: lambda a, b: a ** b}
_CALLS = {"dict": dict, "list": list, "tuple": tuple, "len": len, "int": int, "float": float, "str": str,
          "round": round, "abs": abs, "min": min, "max": max}


def _eval_node(node: ast.AST, env: dict[str, Any]) -> Any:
    """Value of a literal-like expression; anything else is :data:`UNKNOWN` (never executed)."""
    ev = lambda n: _eval_node(n, env)  # noqa: E731
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return env.get(node.id, UNKNOWN)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [ev(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            return UNKNOWN
        keys = [ev(k) for k in node.keys]
        if any(k is UNKNOWN or isinstance(k, (list, dict)) for k in keys):
            return UNKNOWN
        return {k: ev(v) for k, v in zip(keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = ev(node.operand)
        if isinstance(v, (int, float)):
            return -v if isinstance(node.op, ast.USub) else v
        return UNKNOWN
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = ev(node.left), ev(node.right)
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        try:
            return _BINOPS[type(node.op)](a, b)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            return UNKNOWN
    if isinstance(node, ast.JoinedStr):
        parts = []
        for v in node.values:
            x = ev(v.value) if isinstance(v, ast.FormattedValue) else ev(v)
            if x is UNKNOWN:
                return UNKNOWN
            parts.append(str(x))
        return "".join(parts)
    if isinstance(node, ast.Subscript):
        base, key = ev(node.value), ev(node.slice)
        try:
            return UNKNOWN if base is UNKNOWN or key is UNKNOWN else base[key]
        except (KeyError, IndexError, TypeError):
            return UNKNOWN
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        args = [ev(a) for a in node.args]
        kwargs: dict[str, Any] = {}
        for k in node.keywords:
            v = ev(k.value)
            if k.arg is not None:
                kwargs[k.arg] = v
            elif isinstance(v, dict):  # dict(type="X", **other_dict)
                kwargs.update(v)
            else:
                return UNKNOWN
        if node.func.id == "dict":  # keep what is known; a dict(...) is never executed
            if not args:
                return kwargs
            return {**args[0], **kwargs} if len(args) == 1 and isinstance(args[0], dict) else UNKNOWN
        if any(a is UNKNOWN for a in args) or any(v is UNKNOWN for v in kwargs.values()):
            return UNKNOWN
        try:
            return _CALLS[node.func.id](*args, **kwargs)
        except (TypeError, ValueError):
            return UNKNOWN
    return UNKNOWN


def read_python_config(path: str | os.PathLike) -> dict[str, Any]:
    """Top-level assignments of an mmcv/mmseg ``.py`` config, read with ``ast``: the file is never executed.

    Literals, ``dict(...)``/``len``/``int`` calls, arithmetic and f-strings over earlier names are
    evaluated; anything else (imports, ``os.path.join``, comprehensions) becomes :data:`UNKNOWN`.
    """
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot parse config '{path}': {e}") from e
    env: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            value = _eval_node(stmt.value, env)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    env[target.id] = value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            env[stmt.target.id] = _eval_node(stmt.value, env)
    return env


def read_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """A TerraTorch ``config.yaml`` (Lightning CLI layout) as a dict, read with ``yaml.safe_load``."""
    import yaml

    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot parse '{path}': {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"'{path}' is not a YAML mapping")
    return cfg


__all__ = ["UNKNOWN", "read_python_config", "read_yaml_config"]
