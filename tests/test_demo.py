"""A reduced ``geofm demo`` end to end: every step's outputs exist and are valid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geofm.demo import run_demo


@pytest.mark.slow
def test_reduced_demo_writes_valid_outputs(tmp_path):
    lines: list[str] = []
    res = run_demo(tmp_path, size=256, chip=32, mae_steps=5, scheduler="sync", echo=lines.append)
    # granules: six bands + Fmask for three dates, on the UTM 10N grid of 10SEG
    tifs = sorted((tmp_path / "granules").glob("*.tif"))
    assert len(tifs) == 21
    with rasterio.open(tifs[0]) as src:
        assert src.crs.to_epsg() == 32610 and src.width == 256
    # ingest kept some chips and rejected the cloudy ones
    assert 0 < res["ingest"]["chips"] < 64
    assert res["ingest"]["rejected"]["cloud"] > 0
    summary = json.loads((tmp_path / "explore" / "summary.json").read_text())
    assert summary["chips"] == res["ingest"]["chips"]
    for png in ["locations.png", "cloud_nodata.png", "band_histograms.png", "season_latitude.png", "landcover.png"]:
        assert (tmp_path / "explore" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stratified sample is as balanced as the strata allow
    after = np.array(list(res["sample"]["report"]["after"].values()))
    before = np.array(list(res["sample"]["report"]["before"].values()))
    assert after.sum() == max(1, summary["chips"] // 2)
    assert np.all((after == before) | (after >= after.max() - 1))
    assert (tmp_path / "mae_reconstruction.png").stat().st_size > 1000
    assert any(line.startswith("[5/5]") for line in lines) and lines[-1].startswith("done in")
