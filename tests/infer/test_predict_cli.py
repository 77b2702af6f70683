"""``geofm predict`` with tiny random fine-tuned exports on generated HLS granules."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from geofm import cli
from geofm.bands import HLS_NODATA, MODEL_BANDS, NORM_STATS
from geofm.data import synthetic
from geofm.data.hls import cloud_mask, group_granules
from geofm.errors import DataError
from geofm.models import build_segmentation_model, create_model, save_finetuned

MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]


@pytest.fixture(scope="module")
def granules(tmp_path_factory):
    d = tmp_path_factory.mktemp("hls")
    synthetic.write_time_series(d, size=100, seed=5, cloud_cover=[0.0, 0.25, 0.1], swath_edge=0.05)
    return d


@pytest.fixture(scope="module")
def seg_export(tmp_path_factory):
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2)
    return save_finetuned(model, tmp_path_factory.mktemp("seg") / "export", task="segmentation", mean=MEAN, std=STD,
                          bands=MODEL_BANDS, class_names=["land", "water"], img_size=64)


def test_predict_class_map_and_probabilities(tmp_path, granules, seg_export, capsys):
    out, prob = tmp_path / "flood.tif", tmp_path / "prob.tif"
    common = ["predict", "--checkpoint", str(seg_export), "--inputs", str(granules), "--tile", "64",
              "--overlap", "16", "--batch-size", "4", "--block", "32"]
    assert cli.main([*common, "--out", str(out), "--quicklook"]) == 0
    printed = capsys.readouterr().out
    assert "predicted 100x100 px (9 tiles)" in printed and str(out) in printed
    assert cli.main([*common, "--out", str(prob), "--probabilities"]) == 0
    b02 = sorted(granules.glob("*.B02.tif"))[0]
    with rasterio.open(out) as c, rasterio.open(prob) as p, rasterio.open(b02) as src:
        assert c.crs == src.crs and c.transform == src.transform and c.nodata == 255 and c.dtypes == ("uint8",)
        assert p.count == 2 and p.descriptions == ("p_land", "p_water") and p.tags()["geofm_task"] == "segmentation"
        classes, probs, raw = c.read(1), p.read(), src.read(1)
    nodata = raw == HLS_NODATA
    assert nodata.any() and (classes[nodata] == 255).all() and set(np.unique(classes[~nodata])) <= {0, 1}
    np.testing.assert_allclose(probs[:, ~nodata].sum(0), 1.0, atol=1e-5)
    sure = np.abs(probs[0] - probs[1]) > 1e-4
    assert (probs.argmax(0)[sure & ~nodata] == classes[sure & ~nodata]).all()
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000


def test_predict_imputation_keeps_clear_pixels(tmp_path, granules):
    torch.manual_seed(0)
    export = save_finetuned(create_model("prithvi_tiny"), tmp_path / "mae", task="imputation", mean=MEAN, std=STD,
                            bands=MODEL_BANDS)
    out = tmp_path / "imputed.tif"
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", str(granules), "--out", str(out),
                     "--tile", "64", "--overlap", "16", "--block", "32", "--quicklook"]) == 0
    frames, _ = group_granules(map(str, granules.glob("*.tif")))
    frames.sort(key=lambda f: f.datetime)
    with rasterio.open(out) as dst:
        assert dst.count == 18 and dst.dtypes[0] == "int16" and dst.nodata == HLS_NODATA
        rec = dst.read()
    for t, f in enumerate(frames):
        raw = np.stack([rasterio.open(p).read(1) for p, _ in f.sources])
        nodata = (raw == HLS_NODATA).any(0)
        hidden = cloud_mask(rasterio.open(f.fmask[0]).read(1)) | nodata
        got = rec[6 * t: 6 * t + 6]
        assert (got[:, ~hidden] == raw[:, ~hidden]).all()
        assert (got[:, nodata] == HLS_NODATA).all()
        cloudy = hidden & ~nodata
        if t > 0:  # clouds are replaced by the model's reconstruction: plausible reflectance, not the cloud
            assert cloudy.sum() > 100
            assert ((got[:, cloudy] > -2000) & (got[:, cloudy] < 12000)).all()
            assert (got[:, cloudy] != raw[:, cloudy]).mean() > 0.9


def test_predict_rejects_wrong_frame_count(tmp_path, granules, seg_export, capsys):
    one = [str(p) for p in sorted(granules.glob("*.tif"))[:7]]  # a single granule (6 bands + Fmask)
    argv = ["predict", "--checkpoint", str(seg_export), "--inputs", *one, "--out", str(tmp_path / "x.tif")]
    assert cli.main(argv) == 2
    assert "takes 3 frame(s), got 1" in capsys.readouterr().err
    with pytest.raises(DataError, match="takes 3 frame"):
        cli.main(["-vv", *argv])
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_predict_stacked_sentinel2_band_subset(tmp_path, sample_dir):
    """A 13-band Sentinel-2 stack (the real Sen1Floods11 chip) with --stacked-bands picking the six model bands."""
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2, num_frames=1, img_size=64)
    export = save_finetuned(model, tmp_path / "export", task="segmentation", mean=MEAN, std=STD, bands=MODEL_BANDS,
                            img_size=64)
    s2 = sample_dir / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif"
    out = tmp_path / "spain.tif"
    args = ["predict", "--checkpoint", str(export), "--inputs", str(s2), "--out", str(out), "--tile", "128",
            "--overlap", "16", "--batch-size", "8"]
    assert cli.main([*args, "--stacked-bands", "2,3,4,9,12,13"]) == 0
    with rasterio.open(out) as c, rasterio.open(s2) as src:
        assert c.crs == src.crs and c.transform == src.transform and c.shape == src.shape == (512, 512)
        assert set(np.unique(c.read(1)).tolist()) <= {0, 1}
    # the subset must name exactly the six model bands
    bad = ["predict", "--checkpoint", str(export), "--inputs", str(s2), "--out", str(tmp_path / "x.tif"),
           "--stacked-bands", "2,3,4"]
    assert cli.main(bad) == 2 and not (tmp_path / "x.tif").exists()


@pytest.fixture(scope="module")
def cloudy_series(tmp_path_factory, sample_dir):
    """Four dates, one GeoTIFF each with a sidecar Fmask: date 2 has a cloud, the rest is clear."""
    d = tmp_path_factory.mktemp("series")
    paths = synthetic.write_series_from_image(sample_dir / "hls_chip" / "regression_test_0_input.tif", d,
                                              rows=(0, 48), cols=(0, 56), dates=4, seed=3)
    side = paths[1].with_name(paths[1].name.replace(".tif", ".Fmask.tif"))
    with rasterio.open(side, "r+") as dst:
        fmask = dst.read(1)
        fmask[10:30, 5:25] = 2  # HLS bit 1: cloud
        dst.write(fmask, 1)
    return paths


def test_predict_residual_imputer_on_the_one_series_layout(tmp_path, cloudy_series):
    """Sidecar Fmask layout, --tile 0 with the default overlap, untrained residual imputer = interpolation."""
    from geofm.models.imputer import Imputer

    torch.manual_seed(0)
    imputer = Imputer(create_model("prithvi_tiny", img_size=32), residual="linear")
    export = save_finetuned(imputer, tmp_path / "imp", task="imputation", mean=MEAN, std=STD, bands=MODEL_BANDS,
                            img_size=32)
    out = tmp_path / "filled.tif"
    inputs = [str(p) for p in cloudy_series[:3]]  # the model takes 3 dates; sidecars are found beside
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", *inputs, "--out", str(out),
                     "--tile", "0", "--block", "32"]) == 0
    raw = np.stack([rasterio.open(p).read() for p in inputs]).astype(np.float64)  # (T, C, H, W)
    with rasterio.open(out) as dst:
        got = dst.read().reshape(raw.shape)
    cloud = np.zeros(raw.shape[-2:], bool)
    cloud[10:30, 5:25] = True
    np.testing.assert_array_equal(got[1][:, ~cloud], raw[1][:, ~cloud])  # clear pixels kept
    np.testing.assert_array_equal(got[[0, 2]], raw[[0, 2]])
    linear = (raw[0] + raw[2]) / 2  # between the clear dates before and after
    assert np.abs(got[1][:, cloud] - linear[:, cloud]).max() <= 1.0  # int16 rounding
    # the same dates with the Fmask as band 7 of each file: --stacked-fmask-band gives the same output
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    for p in inputs:
        with rasterio.open(p) as src, rasterio.open(p.replace(".tif", ".Fmask.tif")) as fm:
            prof, arr = src.profile, np.concatenate([src.read(), fm.read().astype(np.int16)])
        with rasterio.open(stacked / p.rsplit("/", 1)[-1], "w", **dict(prof, count=7)) as dst:
            dst.write(arr)
    out7 = tmp_path / "filled7.tif"
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", str(stacked), "--out", str(out7),
                     "--tile", "0", "--block", "32", "--stacked-fmask-band", "7"]) == 0
    with rasterio.open(out7) as dst:
        np.testing.assert_array_equal(dst.read().reshape(raw.shape), got)


def test_predict_imputation_without_cloud_information_is_an_error(tmp_path, cloudy_series, capsys):
    export = save_finetuned(create_model("prithvi_tiny"), tmp_path / "mae", task="imputation", mean=MEAN, std=STD,
                            bands=MODEL_BANDS)
    bare = tmp_path / "bare"
    bare.mkdir()
    for p in cloudy_series[:3]:
        (bare / p.name).write_bytes(p.read_bytes())  # without the sidecar Fmask
    out = tmp_path / "x.tif"
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", str(bare), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no cloud mask" in err and "--stacked-fmask-band" in err and ".Fmask.tif" in err
    assert not out.exists()
