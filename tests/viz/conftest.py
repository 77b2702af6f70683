"""Fixtures of the viewer's tests: a class map of blocks and a small HLS time series, served on a free port."""

from __future__ import annotations

from pathlib import Path

import pytest
from view_fixtures import write_class_map  # this folder is on sys.path (pytest's rootdir-relative imports)

pytest.importorskip("rio_tiler")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="session")
def view_data(tmp_path_factory) -> dict[str, Path]:
    from geofm.data import synthetic

    root = tmp_path_factory.mktemp("view")
    granules = root / "granules"
    synthetic.write_time_series(granules, tile="10SEG", size=128, seed=3, cloud_cover=[0.0, 0.3],
                                dates=("2020-03-15", "2020-06-20"))
    return {"root": root, "classes": write_class_map(root / "flood_map.tif"), "granules": granules}


@pytest.fixture(scope="module")
def view_server(view_data):
    from geofm.viz import serve

    srv = serve([view_data["granules"], view_data["classes"]], port=0)
    yield srv
    srv.stop()
