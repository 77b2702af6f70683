"""geofm as an installed wheel (not the editable checkout): every command's ``--help`` and a short
``geofm demo`` from a folder outside the repository, with the bundled configs and sample data read as
package data.

The wheel is built from a copy of this checkout's sources and installed with ``pip install --target`` into a fresh folder.
The commands run with ``python -S``: the project environment's ``.pth`` files (among them the editable
install's path to ``src/``) are not read, and ``PYTHONPATH`` lists only the installed wheel, then the
environment's site-packages for the dependencies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from geofm.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    source, wheels, target, cwd = tmp / "source", tmp / "dist", tmp / "site", tmp / "elsewhere"
    cwd.mkdir()
    # built from a copy: setuptools' build/ folder in the checkout could carry stale modules into the wheel
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(wheels)], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("geofm-*.whl")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GEOFM_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(target), *sorted(deps)]), GEOFM_PROGRESS="plain",
               OMP_NUM_THREADS="1")
    return {"target": target, "cwd": cwd, "env": env}


def geofm(installed: dict, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", "-m", "geofm.cli", *args], capture_output=True, text=True,
                          cwd=installed["cwd"], env=installed["env"], timeout=timeout)


@pytest.mark.slow
def test_the_wheel_runs_from_any_folder(installed):
    where = subprocess.run([sys.executable, "-S", "-c", "import geofm, geofm.resources as r; print(geofm.__file__); "
                            "print(r.sample_dir()); print(len(r.bundled_configs()))"], capture_output=True,
                           text=True, cwd=installed["cwd"], env=installed["env"], timeout=60)
    assert where.returncode == 0, where.stderr
    module, sample, n_configs = where.stdout.split()
    assert Path(module).is_relative_to(installed["target"]), module  # the wheel, not src/
    assert (Path(sample) / "ATTRIBUTION.md").is_file() and Path(sample).is_relative_to(installed["target"])
    assert int(n_configs) == len(list((REPO / "src" / "geofm" / "configs").glob("*/*.yaml")))

    top = geofm(installed, "--help")
    assert top.returncode == 0, top.stderr
    for name in COMMANDS:
        assert name in top.stdout
        res = geofm(installed, name, "--help")
        assert res.returncode == 0 and res.stdout.startswith("usage: geofm"), (name, res.stderr[-2000:])

    # a bundled config by name, checked before any work (the store is the sample store, built on use)
    bad = geofm(installed, "finetune", "--config", "finetune/tiny_flood", "run_dir=r", "data.batch_size=0")
    assert bad.returncode == 2 and "data.batch_size must be >= 1" in bad.stderr and not (installed["cwd"] / "r").exists()

    out = installed["cwd"] / "demo"
    demo = geofm(installed, "demo", "--out", str(out), "--size", "256", "--pretrain-steps", "4",
                 "--finetune-epochs", "1", timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "[8/8]" in demo.stdout and "done in" in demo.stdout
    for name in ("flood_map_spain.tif", "flood_map_10SEG.tif", "finetune/export/model.safetensors",
                 "pretrain/export/model.safetensors", "explore/summary.json"):
        assert (out / name).is_file(), name
    assert not (installed["cwd"] / "outputs").exists()  # everything went under --out
