"""Typed YAML configs: overrides, unknown keys, wrong types, required values, round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from geofm.config import build_config, load_config, parse_overrides, save_config, to_dict
from geofm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Data:
    store: str
    bands: list[int] | None = None
    normalize: Literal["v1", "v2"] = "v1"


@dataclass
class Run:
    data: Data
    optim: Optim = field(default_factory=Optim)
    steps: int = 10
    compile: bool = False


def test_overrides_parse_yaml_values():
    tree = parse_overrides(["optim.lr=1e-4", "data.bands=[0, 2]", "data.store=null", "steps=3"])
    assert tree == {"optim": {"lr": 1e-4}, "data": {"bands": [0, 2], "store": None}, "steps": 3}


def test_file_then_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("data:\n  store: a.zarr\noptim:\n  lr: 1.0e-3\n")
    cfg = load_config(Run, p, ["optim.lr=5e-4", "data.bands=[1,2,3]", "steps=20"])
    assert cfg.optim.lr == 5e-4 and cfg.data.bands == [1, 2, 3] and cfg.steps == 20
    assert cfg.optim.betas == (0.9, 0.95) and cfg.data.normalize == "v1"
    out = save_config(cfg, tmp_path / "resolved.yaml")
    again = build_config(Run, yaml.safe_load(out.read_text()))
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize("overrides, match", [
    (["optim.lrr=1"], r"unknown key\(s\) optim\.lrr"),
    (["steps=ten"], r"'steps'.*expected an integer, got 'ten'"),
    (["compile=1"], r"'compile'.*expected true/false"),
    (["data.normalize=v3"], r"'data\.normalize'.*one of \['v1', 'v2'\]"),
    (["optim.betas=[0.9]"], r"'optim\.betas'.*expected 2 values"),
    (["data.bands=5"], r"'data\.bands'.*expected list"),
    (["novalue"], r"expected KEY=VALUE"),
])
def test_bad_values_name_the_key(tmp_path, overrides, match):
    p = tmp_path / "run.yaml"
    p.write_text("data:\n  store: a.zarr\n")
    with pytest.raises(ConfigError, match=match):
        load_config(Run, p, overrides)


def test_missing_required_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"'data' is required"):
        build_config(Run, {})
    with pytest.raises(ConfigError, match=r"'data\.store' is required"):
        build_config(Run, {"data": {}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")
