"""Tiny generated HLS tiles (real UTM grid of MGRS tile 10SEG) and a store ingested from them."""

from __future__ import annotations

import pytest

from geofm.data import ingest, synthetic


@pytest.fixture(scope="session")
def hls_series(tmp_path_factory):
    """Three S30 granules (6 bands + Fmask each) of 128x128 px; the third is cloudier."""
    d = tmp_path_factory.mktemp("hls")
    paths = synthetic.write_time_series(d, tile="10SEG", size=128, seed=3, cloud_cover=[0.0, 0.02, 0.2],
                                        swath_edge=0.05)
    return d, paths


@pytest.fixture(scope="session")
def tiny_store(hls_series, tmp_path_factory):
    d, _ = hls_series
    out = tmp_path_factory.mktemp("store") / "chips.zarr"
    cfg = ingest.IngestConfig(chip_size=32, frames=3, max_cloud=1.0, max_nodata=0.0, rows_per_task=1)
    res = ingest.ingest([str(d)], str(out), cfg, scheduler="sync")
    return out, res
