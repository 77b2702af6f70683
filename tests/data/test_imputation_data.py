"""Imputation data: one series layout (Fmask band or sidecar), random windows per series, the fixed protocol."""

import numpy as np
import pytest
import rasterio
import torch

from geofm.bands import MODEL_BANDS
from geofm.data.datasets.imputation import CloudMaskBank, FixedGaps, ImputationDataModule, RandomGaps, mask_bank
from geofm.data.hls import FMASK_BITS, cfmask_to_hls_fmask
from geofm.data.series import frames_from_inputs, load_series
from geofm.errors import DataError

MEAN, STD = [1000.0] * 6, [1000.0] * 6


@pytest.fixture(scope="module")
def landsat(sample_dir):
    return sorted(str(p) for p in (sample_dir / "landsat_p035r032" / "images").glob("*/*_stack.gtif"))


def sidecar_copy(paths, out):
    """The same dates as 6-band GeoTIFFs + sidecar X.Fmask.tif (HLS bits): the other layout."""
    out.mkdir()
    for p in paths:
        with rasterio.open(p) as src:
            prof = src.profile
            bands, cf = src.read([1, 2, 3, 4, 5, 6]), src.read(8)
        name = p.rsplit("/", 1)[-1].replace("_stack.gtif", "")
        with rasterio.open(out / f"{name}.tif", "w", **dict(prof, count=6)) as dst:
            dst.write(bands)
        with rasterio.open(out / f"{name}.Fmask.tif", "w", **dict(prof, count=1, dtype="uint8", nodata=255)) as dst:
            dst.write(cfmask_to_hls_fmask(np.where(cf == -9999, 255, cf))[None])
    return out


def test_fmask_band_and_sidecar_layouts_read_the_same(landsat, tmp_path):
    band = load_series([",".join(landsat[:6])], stacked_fmask_band=8, fmask_kind="cfmask")[0]
    side = load_series([str(sidecar_copy(landsat[:6], tmp_path / "side"))])[0]
    assert len(band) == len(side) == 6 and (band.height, band.width) == (5, 5)
    assert [f.date_str for f in side.frames] == [f.date_str for f in band.frames] == sorted(
        f.date_str for f in band.frames)
    assert all(f.fmask[0].endswith(".Fmask.tif") for f in side.frames)  # sidecars attached, not frames
    a, b = band.read(0, 6, -1, -2, 8, 8), side.read(0, 6, -1, -2, 8, 8)  # window beyond the grid: padded
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    raw, nodata, cloud = a
    with rasterio.open(landsat[0]) as src:
        cf = src.read(8)
    np.testing.assert_array_equal(cloud[0, 1:6, 2:7], (cf == 4) | (cf == 2))  # cloud or shadow in CFmask
    assert nodata[:, 0].all() and nodata[:, 1, 2].all()  # padding; pixel (0, 0) is -9999 in every stack
    assert cloud[0].sum() == 24  # 2011-04-20 is all cloud
    # without any cloud information there is no Fmask (predict refuses it, see tests/infer)
    assert frames_from_inputs(landsat[:1])[0].fmask is None


def test_random_windows_per_series_with_real_masks(landsat, shared_data):
    series = load_series([",".join(landsat)], stacked_fmask_band=8, fmask_kind="cfmask")
    bank = mask_bank([str(shared_data / "instageo" / "fmask.tif")], series)
    assert bank.names[0].endswith("fmask.tif") and len(bank) > 3 and all("(own)" in n for n in bank.names[1:])
    ds = RandomGaps(series, bank, frames=3, size=16, mean=MEAN, std=STD, samples_per_epoch=5)
    assert len(ds) == 5
    seen = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].shape == (6, 3, 16, 16)
        gap, valid = s["gap"].numpy(), s["valid"].numpy()
        assert not (gap & ~valid).any() and (gap.reshape(3, -1).any(1).sum() <= 1)  # one date gets the gap
        seen.add(round(s["image"].sum().item(), 3))
    assert len(seen) > 1  # different dates / places drawn


def test_fixed_protocol_is_deterministic_and_counts_every_item(landsat):
    series = load_series([",".join(landsat[:9])], stacked_fmask_band=8, fmask_kind="cfmask")
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:3] = True
    bank = CloudMaskBank([])
    bank.add(mask, "m")
    ds = FixedGaps(series, bank, frames=3, size=8, mean=MEAN, std=STD, stride=1)
    assert len(ds) == 7  # windows starting at dates 0..6, middle date, one mask, one tile
    a, b = ds[4], ds[4]
    assert all(np.array_equal(a[k], b[k]) for k in ("image", "valid", "gap"))
    gap = a["gap"].numpy()
    assert not gap[0].any() and not gap[2].any()
    np.testing.assert_array_equal(gap[1, :5, :5], mask & a["valid"].numpy()[1, :5, :5])  # as big as the series
    assert len(FixedGaps(series, bank, frames=3, size=8, mean=MEAN, std=STD)) == 3  # stride T: 0, 3, 6
    with pytest.raises(DataError, match="has 9 date"):
        FixedGaps(series, bank, frames=10, size=8, mean=MEAN, std=STD)


def test_module_on_the_real_instageo_stack(shared_data):
    chip = str(shared_data / "instageo" / "chip_178_022.tif")
    with pytest.raises(DataError, match=r"no acquisition date for '.*chip_178_022.tif'.*--equal-spacing"):
        load_series([chip], stack_frames=3)  # the chip has no dates: refused unless equal spacing is allowed
    series = load_series([chip], stack_frames=3, equal_spacing=True)
    dm = ImputationDataModule(series=series, fmask=[str(shared_data / "instageo" / "fmask.tif")], frames=3,
                              crop_size=32, samples_per_epoch=4, min_hidden=0.0)
    assert len(dm.train_set) == 4 and len(dm.test_set) == 1
    s = dm.test_set[0]
    assert s["image"].shape == (len(MODEL_BANDS), 3, 32, 32)
    assert not s["valid"][0].any() and s["valid"][1:].all()  # frame 1 of the chip is all -9999
    assert 0.2 < s["gap"][1].float().mean() < 0.3  # the real Fmask window closest to 25 % cloud
    assert torch.isnan(s["temporal_coords"]).all()  # undated: equally spaced
    with pytest.raises(DataError, match="expected 18 bands .* got 1 in"):
        load_series([str(shared_data / "instageo" / "fmask.tif")], stack_frames=3)


def test_fmask_bits_of_the_converted_cfmask():
    assert cfmask_to_hls_fmask(np.array([4]))[0] == 1 << FMASK_BITS["cloud"]


def test_mask_fitted_to_a_series_is_deterministic():
    m = np.zeros((40, 40), bool)
    m[:10, :10] = True  # a cloud in one corner
    bank = CloudMaskBank([])
    bank.add(m, "corner")
    w = bank.placed(0, 20, 20)  # larger mask: the 20 x 20 window with a cloudy fraction closest to 25 %
    assert w.shape == (20, 20) and w.mean() == 0.25 and np.array_equal(w, bank.placed(0, 20, 20))
    small = bank.placed(0, 50, 90)  # smaller: tiled
    assert small.shape == (50, 90) and np.array_equal(small[:40, :40], m)
    assert np.array_equal(small[:10, 40:50], m[:10, :10])


def test_series_dates_must_share_crs_and_transform(tmp_path):
    """Dates of one size but another place are refused, not trained on as if aligned."""
    from rasterio.transform import from_origin

    from geofm.data.hls import stacked_frame
    from geofm.data.series import Series

    paths = []
    for i, x0 in enumerate((500000.0, 500300.0)):  # the second date 10 px further east
        p = tmp_path / f"d{i}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=6, dtype="int16", crs="EPSG:32610",
                           transform=from_origin(x0, 4200000.0, 30, 30), nodata=-9999) as dst:
            dst.write(np.full((6, 8, 8), 1000, np.int16))
        paths.append(str(p))
    with pytest.raises(DataError, match="d1.tif' is not on the grid of"):
        Series.of("s", [stacked_frame(p) for p in paths])
    assert Series.of("s", [stacked_frame(paths[0])] * 2, equal_spacing=True).height == 8


def test_store_series_sizes_from_the_array_not_the_chips(tiny_store, monkeypatch):
    from geofm.data import store
    from geofm.data.datasets.imputation import store_series

    path, res = tiny_store
    reads = []
    real_read = store.ShardReader.read
    monkeypatch.setattr(store.ShardReader, "read", lambda self, slots: reads.append(list(slots)) or real_read(self, slots))
    series = store_series(path)
    assert len(series) == res.chips and reads == []  # no chip read to learn the sizes
    s = series[1]
    assert (len(s), s.height, s.width) == (3, 32, 32)
    raw, nodata, cloud = s.read(0, 2, -4, 8, 16, 16)  # a window partly outside the chip
    chip = real_read(store.ShardReader(str(path)), [s.slot])[0]
    np.testing.assert_array_equal(raw[:, :, 4:, :], chip[:2, :, :12, 8:24])
    assert (raw[:, :, :4] == -9999).all() and nodata[:, :4].all() and not cloud.any()
    assert reads == [[s.slot]]
    meta = store.read_metadata(str(path))  # the dates of the chip store's metadata
    np.testing.assert_array_equal(s.temporal_coords([0, 2]), np.stack([meta["year"][1], meta["doy"][1]], 1)[[0, 2]])


def test_dates_from_tags_and_irregular_training_windows(landsat, tmp_path):
    """Dates come from a GeoTIFF tag when the name has none (a T x 6 stack: its DATES tag); training windows
    take T of T + k consecutive dates, so they see the series' real spacings and longer ones."""
    import datetime as dt

    import torch

    from geofm.data.series import frames_of_stack

    folder = tmp_path / "tagged"
    folder.mkdir()
    for i, p in enumerate(landsat[4:10]):
        with rasterio.open(p) as src:
            prof, data, when = src.profile, src.read(), p.rsplit("/", 1)[-1][9:16]
        day = dt.datetime.strptime(when, "%Y%j")
        with rasterio.open(folder / f"scene{i}.tif", "w", **prof) as dst:
            dst.write(data)
            dst.update_tags(ACQUISITION_DATE=day.strftime("%Y-%m-%dT10:00:00Z"))
    tagged = load_series([str(folder)], stacked_fmask_band=8, fmask_kind="cfmask")[0]
    named = load_series([",".join(landsat[4:10])], stacked_fmask_band=8, fmask_kind="cfmask")[0]
    assert [f.date_str for f in tagged.frames] == [f.date_str for f in named.frames]
    stack = tmp_path / "stack.tif"
    with rasterio.open(stack, "w", driver="GTiff", width=4, height=4, count=12, dtype="int16") as dst:
        dst.write(np.ones((12, 4, 4), np.int16))
        dst.update_tags(DATES="2015-07-11,2015-08-30")
    assert [f.date_str for f in frames_of_stack(str(stack), 2)] == ["2015-07-11", "2015-08-30"]
    with rasterio.open(stack, "r+") as dst:
        dst.update_tags(DATES="2015-07-11")
    with pytest.raises(DataError, match="expected 2 comma-separated dates .* DATES tag"):
        frames_of_stack(str(stack), 2)
    ds = RandomGaps([named], mask_bank([], [named]), frames=3, size=8, mean=MEAN, std=STD, samples_per_epoch=40,
                    skip_dates=2)
    torch.manual_seed(0)
    spans = set()
    for i in range(40):
        tc = ds[i]["temporal_coords"]
        assert torch.isfinite(tc).all() and (tc[1:, 1] > tc[:-1, 1]).all()  # dated, in order
        spans.add(int(tc[-1, 1] - tc[0, 1]))
    days = [f.datetime for f in named.frames]
    consecutive = {(days[i + 2] - days[i]).days for i in range(len(days) - 2)}
    assert min(spans) == min(consecutive) and max(spans) > max(consecutive)  # windows of 3 dates, and longer
