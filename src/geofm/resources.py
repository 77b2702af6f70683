"""What ships inside the package: the YAML configs and the sample data, read with :mod:`importlib.resources`.

They are package data, so an installed wheel finds them from any folder:

>>> config_file("finetune/tiny_flood")      # a bundled config, by name   # doctest: +SKIP
PosixPath('.../geofm/configs/finetune/tiny_flood.yaml')
>>> sample_dir() / "sen1floods11"           # the bundled sample data    # doctest: +SKIP

``{shared}`` in a config is ``$GEOFM_SHARED_DATA``, else ``../shared/data`` beside the current folder
(the project's checkout layout, where tests and benchmarks run).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def _package_dir(*parts: str) -> Path:
    return Path(str(files("geofm").joinpath(*parts)))


def sample_dir() -> Path:
    """The bundled sample data folder (``geofm/data/sample``; licences in its ``ATTRIBUTION.md``)."""
    return _package_dir("data", "sample")


def shared_dir() -> Path:
    """``$GEOFM_SHARED_DATA``, else ``../shared/data`` from the current folder (may not exist)."""
    env = os.environ.get("GEOFM_SHARED_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


def configs_dir() -> Path:
    """The bundled configs folder (``geofm/configs``: ``pretrain/*.yaml``, ``finetune/*.yaml``)."""
    return _package_dir("configs")


def bundled_configs() -> list[str]:
    """Names of the bundled configs, e.g. ``finetune/tiny_flood``."""
    root = configs_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.glob("*/*.yaml"))


def config_file(value: str | os.PathLike) -> Path:
    """``value`` as a config file: an existing path as given, else a bundled config named like
    ``finetune/tiny_flood`` (``.yaml`` and a leading ``configs/`` optional), else the path unchanged
    (the reader then reports it missing)."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    name = Path(*[p for p in path.parts if p != "."])
    if name.parts[:1] == ("configs",):
        name = Path(*name.parts[1:]) if len(name.parts) > 1 else name
    if not path.is_absolute() and name.parts:
        bundled = configs_dir() / name.with_suffix(".yaml")
        if bundled.is_file():
            return bundled
    return path


__all__ = ["bundled_configs", "config_file", "configs_dir", "sample_dir", "shared_dir"]
