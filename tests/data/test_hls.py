import datetime as dt

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geofm.data import hls, synthetic
from geofm.errors import DataError


def test_parse_granule_name():
    g = hls.parse_granule_name("s3://lp-prod/HLS.S30.T10SEG.2020123T184919.v2.0.B8A.tif")
    assert (g.product, g.tile, g.band, g.version) == ("S30", "10SEG", "B8A", "2.0")
    assert g.datetime == dt.datetime(2020, 5, 2, 18, 49, 19)
    assert g.granule_id == "HLS.S30.T10SEG.2020123T184919.v2.0"
    with pytest.raises(DataError, match="not an HLS v2.0 band file name"):
        hls.parse_granule_name("LC08_L2SP_035032_20200101.tif")


def test_band_mapping():
    assert hls.model_band_files("L30") == ("B02", "B03", "B04", "B05", "B06", "B07")
    assert hls.model_band_files("S30") == ("B02", "B03", "B04", "B8A", "B11", "B12")


def test_group_granules_and_missing_band(hls_series, tmp_path):
    d, paths = hls_series
    frames, skipped = hls.group_granules(paths)
    assert len(frames) == 3 and skipped == []
    f = frames[0]
    assert [p.rsplit(".", 2)[-2] for p, _ in f.sources] == ["B02", "B03", "B04", "B8A", "B11", "B12"]
    frames2, skipped2 = hls.group_granules([p for p in paths if not str(p).endswith("T184919.v2.0.B11.tif")
                                            or "2020075" not in str(p)])
    assert len(frames2) == 2
    assert "missing band file(s) ['B11']" in skipped2[0][1]


def test_read_window_and_grid(hls_series):
    _, paths = hls_series
    frames, _ = hls.group_granules(paths)
    grid = hls.check_same_grid(frames)
    assert (grid.width, grid.height) == (128, 128)
    assert rasterio.crs.CRS.from_wkt(grid.crs).to_epsg() == 32610
    data, fmask = hls.read_frame_window(frames[1], Window(10, 20, 16, 8))
    assert data.shape == (6, 8, 16) and data.dtype == np.int16 and fmask.shape == (8, 16)
    with rasterio.open(frames[1].sources[3][0]) as src:  # B8A
        np.testing.assert_array_equal(data[3], src.read(1, window=Window(10, 20, 16, 8)))


def test_mismatched_frames_are_refused(tmp_path):
    a = synthetic.write_granule(tmp_path / "a", "10SEG", dt.datetime(2020, 1, 1), size=64)
    b = synthetic.write_granule(tmp_path / "b", "10SEG", dt.datetime(2020, 2, 1), size=96)
    frames, _ = hls.group_granules(a + b)
    with pytest.raises(DataError, match="is not on the grid of"):
        hls.check_same_grid(frames)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_missing_crs_and_corrupt_file(tmp_path):
    p = tmp_path / "nocrs.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=6, dtype="int16") as dst:
        dst.write(np.zeros((6, 8, 8), np.int16))
    with pytest.raises(DataError, match="has no CRS"):
        hls.frame_grid(hls.stacked_frame(str(p)))
    bad = tmp_path / "HLS.S30.T10SEG.2020001T000000.v2.0.B02.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(DataError, match="cannot open raster"):
        hls.open_raster(str(bad))
    geo = tmp_path / "geo.tif"
    with rasterio.open(geo, "w", driver="GTiff", width=8, height=8, count=6, dtype="int16", crs="EPSG:32610",
                       transform=rasterio.transform.from_origin(500000, 4200000, 30, 30)) as dst:
        dst.write(np.zeros((6, 8, 8), np.int16))
    with pytest.raises(DataError, match="has 6 band"):
        hls.frame_grid(hls.stacked_frame(str(geo), bands=(2, 3, 4, 5, 6, 7)))


def test_fmask_bits_on_synthetic_values():
    f = np.array([0, 1, 2, 4, 8, 16, 32, 64 + 2, 128 + 8, 255], np.uint8)
    m = hls.decode_fmask(f)
    assert m["cirrus"].tolist() == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert m["cloud"].tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0]
    assert m["adjacent"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert m["shadow"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert m["snow_ice"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert m["water"].tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert m["aerosol"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 2, 3]
    assert m["fill"].tolist() == [0] * 9 + [1]
    assert hls.cloud_mask(f).tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1, 0]


@pytest.mark.shared_data
def test_real_hls_fmask(shared_data):
    """The real S30 Fmask of tile T38PMB (2022-05-25): counts from SOURCES.md."""
    with rasterio.open(shared_data / "instageo" / "fmask.tif") as src:
        f = src.read(1)
    m = hls.decode_fmask(f)
    # values 130/134/194/198 carry the cloud bit: 4 + 2 + 40 + 29
    assert int(m["cloud"].sum()) == 75
    # adjacent bit (4): 132,134,140,196,198,204 -> 173 + 2 + 14 + 852 + 29 + 24
    assert int(m["adjacent"].sum()) == 1094
    # shadow bit (8): 136, 140, 200, 204 -> 19 + 14 + 56 + 24
    assert int(m["shadow"].sum()) == 113
    assert int(m["water"].sum()) == 0 and int(m["snow_ice"].sum()) == 0
    assert set(np.unique(m["aerosol"])) == {1, 2, 3}
    assert int(hls.cloud_mask(f).sum()) == 75 + 1094 + 113 - (2 + 29) - 14 - 24


def test_cfmask_conversion_of_real_landsat_stack(sample_dir):
    path = sample_dir / "landsat_p035r032" / "images" / "LE70350322011142EDC00" / "LE70350322011142EDC00_stack.gtif"
    with rasterio.open(path) as src:
        cf = src.read(8)
    f = hls.cfmask_to_hls_fmask(np.where(cf == -9999, 255, cf))
    m = hls.decode_fmask(f)
    # SOURCES.md: -9999: 1, 0: 1, 2: 9, 3: 3, 255: 11
    assert int(m["shadow"].sum()) == 9 and int(m["snow_ice"].sum()) == 3 and int(m["fill"].sum()) == 12
