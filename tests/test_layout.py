"""The house is described where a newcomer looks: the README's layout names every module, and each
package's docstring names what the package holds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import geofm

SRC = Path(geofm.__file__).resolve().parent
README = Path(__file__).resolve().parents[1] / "README.md"
PACKAGES = sorted(p.parent for p in SRC.rglob("__init__.py"))


def members(package: Path) -> list[str]:
    """The modules and subpackages directly in ``package`` (private ones, ``_x``, excluded)."""
    out = [p.stem for p in package.glob("*.py") if not p.stem.startswith("_")]
    out += [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    return sorted(out)


def test_readme_layout_names_every_module():
    text = README.read_text()
    layout = text[text.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    missing = [f"{pkg.relative_to(SRC.parent)}/{m}" for pkg in PACKAGES for m in members(pkg)
               if not re.search(rf"\b{re.escape(m)}\b", layout)]
    assert not missing, f"README's Layout section does not name: {missing}"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: str(p.relative_to(SRC.parent)))
def test_package_docstring_says_what_is_in_it(package):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    missing = [m for m in members(package) if not re.search(rf"\b{re.escape(m)}\b", doc)]
    assert doc and not missing, f"{package.relative_to(SRC.parent)}/__init__.py docstring does not name {missing}"
