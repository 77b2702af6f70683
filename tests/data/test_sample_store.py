"""The chip store cut from the bundled real sample images (data/sample)."""

from __future__ import annotations

import numpy as np
import rasterio

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data import store
from geofm.data.loader import ChipDataset
from geofm.data.sample_store import build_sample_store


def test_sample_store_holds_the_real_pixels(sample_dir, tmp_path):
    out = build_sample_store(tmp_path / "s.zarr", chip_size=32, shard=16, sample_dir=sample_dir)
    attrs = store.store_attrs(store.as_location(out))
    assert attrs["bands"] == list(MODEL_BANDS) and attrs["frames"] == 1 and attrs["chip_size"] == 32
    meta = store.read_metadata(out)
    assert len(meta["slot"]) == 49 + 256  # 7x7 chips of the 224 px HLS chip, 16x16 of the 512 px S2 chip
    reader = store.ShardReader(out)
    with rasterio.open(sample_dir / "hls_chip" / "regression_test_0_input.tif") as src:
        hls = src.read([2, 3, 4, 5, 6, 7], window=((32, 64), (64, 96)))  # chip row 1, col 2
        hls_crs = src.crs.to_string()
    slot = int(meta["slot"][(meta["tile"] == "hls_regression_test_0") & (meta["chip_row"] == 1)
                            & (meta["chip_col"] == 2)][0])
    np.testing.assert_array_equal(reader.read([slot])[0, 0], np.rint(hls).astype(np.int16))
    with rasterio.open(sample_dir / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif") as src:
        s2 = src.read([2, 3, 4, 9, 12, 13], window=((480, 512), (0, 32)))  # B2 B3 B4 B8A B11 B12
    s2_slot = int(meta["slot"][(meta["tile"] == "s2_spain_7370579") & (meta["chip_row"] == 15)
                               & (meta["chip_col"] == 0)][0])
    expect = np.where((s2 == 0).any(axis=0), HLS_NODATA, s2)
    np.testing.assert_array_equal(reader.read([s2_slot])[0, 0], expect)
    is_hls = meta["tile"] == "hls_regression_test_0"
    assert set(meta["crs"][is_hls]) == {hls_crs}
    assert np.all((meta["lat"][is_hls] > 28) & (meta["lat"][is_hls] < 29) & (meta["lon"][is_hls] < -99))  # Texas
    assert np.all((meta["lat"][~is_hls] > 37) & (meta["lat"][~is_hls] < 39) & (np.abs(meta["lon"][~is_hls]) < 2))
    ds = ChipDataset(out, return_coords=True, shuffle=False)
    assert len(ds) == 305 and next(iter(ds))["image"].shape == (6, 1, 32, 32)
    mtime = (out / store.METADATA).stat().st_mtime_ns
    assert build_sample_store(out) == out and (out / store.METADATA).stat().st_mtime_ns == mtime  # reused


def test_dihedral_variants(sample_dir, tmp_path):
    out = build_sample_store(tmp_path / "x8.zarr", sample_dir=sample_dir, dihedral=True)
    meta = store.read_metadata(out)
    assert len(meta["slot"]) == 8 * 305
    chips = store.ShardReader(out).read(list(range(8)))  # the 8 variants of the first chip
    base = chips[0, 0]
    np.testing.assert_array_equal(chips[2, 0], np.rot90(base, 1, axes=(1, 2)))
    np.testing.assert_array_equal(chips[1, 0], base[..., ::-1])
    assert list(meta["granules"][:2, 0]) == ["regression_test_0_input.tif#r0", "regression_test_0_input.tif#r0f"]
