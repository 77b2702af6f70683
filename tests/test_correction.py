"""Auto-correction at prediction time: the model's fill is written only in the bands where it beats the baseline."""

import numpy as np
import pytest
import rasterio
import torch

from geofm import cli
from geofm.bands import MODEL_BANDS, NORM_STATS
from geofm.data import synthetic
from geofm.errors import DataError
from geofm.io import write_geotiff
from geofm.infer.predict import predict_checkpoint
from geofm.models import create_model, save_finetuned
from geofm.models.imputer import Imputer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
DAYS = [0, 50, 60]  # 2020-04-01, 2020-05-21, 2020-05-31: 50 days, then 10


def export(path, kind):
    """An untrained tiny imputer made harmful (adds 2 std to every gap pixel) or helpful (adds the local
    residual: the miss of the baseline at the clear pixels of the same date nearby)."""
    torch.manual_seed(0)
    imputer = Imputer(create_model("prithvi_tiny", img_size=32), residual="linear")
    with torch.no_grad():
        if kind == "harmful":
            imputer.mae.decoder.decoder_pred.bias.fill_(2.0)
        else:
            imputer.residual_gain[:len(MODEL_BANDS)] = 1.0 / Imputer.GAIN_SCALE  # gain 1 on the 5x5 residual
    return save_finetuned(imputer, path, task="imputation", mean=MEAN, std=STD, bands=MODEL_BANDS, img_size=32)


@pytest.fixture(scope="module")
def cloudy_series(sample_dir, tmp_path_factory):
    """3 dates 50 then 10 days apart from the real HLS chip, each date brightened by its own offset (so the
    baseline misses, the local residual does not); every date has a cloud blob in its Fmask, over real data.
    Returns (files, truth (T, 6, H, W), cloud (T, H, W))."""
    out = tmp_path_factory.mktemp("series")
    files = synthetic.write_series_from_image(sample_dir / "hls_chip" / "regression_test_0_input.tif", out,
                                              rows=(0, 64), cols=(0, 64), days=DAYS, seed=3)
    truth, cloud = [], []
    for t, f in enumerate(files):
        with rasterio.open(f) as src:
            prof, data = src.profile, src.read()
        data = np.clip(data.astype(np.int32) + [0, 600, 150][t], 0, 10000).astype(np.int16)
        with rasterio.open(f, "w", **prof) as dst:
            dst.write(data)
        m = np.zeros((64, 64), bool)
        m[8 + 12 * t:28 + 12 * t, 10 + 14 * t:30 + 14 * t] = True
        synthetic._write(f.with_name(f.name.replace(".tif", ".Fmask.tif")), (m * 2).astype(np.uint8)[None][0],
                         dict(prof, count=1, dtype="uint8", nodata=255))
        truth.append(data)
        cloud.append(m)
    return [str(f) for f in files], np.stack(truth), np.stack(cloud)


def fill_error(path, truth, cloud):
    """Per band MAE (reflectance x10000) of the written fill on the cloud pixels, and the file's tags."""
    with rasterio.open(path) as src:
        pred, tags = src.read().reshape(truth.shape).astype(np.float64), src.tags()
    err = np.abs(pred - truth).transpose(1, 0, 2, 3)[:, cloud]  # (C, cloud pixels)
    return err.mean(1), tags, pred


def test_harmful_correction_falls_back_to_the_baseline(cloudy_series, tmp_path):
    files, truth, cloud = cloudy_series
    ckpt = export(tmp_path / "harmful", "harmful")
    outs = {}
    for mode in ("auto", "never", "always"):
        outs[mode] = fill_error(predict_checkpoint(ckpt, files, tmp_path / f"{mode}.tif", tile=32, overlap=8,
                                                   correction=mode).path, truth, cloud)
    auto_err, tags, auto_pred = outs["auto"]
    never_err, never_tags, never_pred = outs["never"]
    dates = ["2020-04-01", "2020-05-21", "2020-05-31"]
    assert tags["geofm_correction"] == "auto"
    assert tags["geofm_correction_bands"] == "; ".join(f"{d}: none" for d in dates)  # no band of any date kept
    assert all(int(v.split(": ")[1]) > 100 for v in tags["geofm_correction_pixels"].split("; "))

    def per_date(tag):  # "date: BLUE=0.01,...; date: ..." -> {date: {band: mae}}
        return {d: {b: float(v) for b, v in (p.split("=") for p in rest.split(","))}
                for d, rest in (part.split(": ") for part in tag.split("; "))}

    mae_model, mae_base = per_date(tags["geofm_correction_mae_model"]), per_date(tags["geofm_correction_mae_baseline"])
    assert sorted(mae_model) == dates
    assert all(mae_model[d][b] > mae_base[d][b] for d in dates for b in MODEL_BANDS)
    np.testing.assert_array_equal(auto_pred, never_pred)  # zero loss vs the baseline
    assert never_tags["geofm_correction"] == "never" and "geofm_correction_mae_model" not in never_tags
    assert (outs["always"][0] > 2 * never_err).all()  # the harmful correction, written when forced
    assert tags["geofm_dates"] == "2020-04-01,2020-05-21,2020-05-31"


def test_helpful_correction_is_kept(cloudy_series, tmp_path, capsys):
    files, truth, cloud = cloudy_series
    ckpt = export(tmp_path / "helpful", "helpful")
    out = tmp_path / "auto.tif"
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--inputs", *files, "--out", str(out), "--tile", "32",
                     "--overlap", "8"]) == 0  # --correction auto is the default
    assert "correction auto, model's fill per date: 2020-04-01: BLUE" in capsys.readouterr().out
    auto_err, tags, _ = fill_error(out, truth, cloud)
    kept = dict(v.split(": ") for v in tags["geofm_correction_bands"].split("; "))
    assert kept["2020-04-01"] == kept["2020-05-21"] == ",".join(MODEL_BANDS)  # helps on the first two dates
    never = predict_checkpoint(ckpt, files, tmp_path / "never.tif", tile=32, overlap=8, correction="never")
    never_err, _, _ = fill_error(never.path, truth, cloud)
    assert (auto_err < never_err).all()  # better than the baseline in every band


def test_partial_choice_and_undated_inputs(cloudy_series, tmp_path, capsys):
    """Per date and band: a correction that helps in some bands and harms the others is kept only in the former;
    inputs without dates are refused unless --equal-spacing."""
    from geofm.data.series import Series, frames_from_inputs
    from geofm.correction import choose_correction

    files, truth, cloud = cloudy_series
    torch.manual_seed(0)
    imputer = Imputer(create_model("prithvi_tiny", img_size=32), residual="linear").eval()
    with torch.no_grad():
        imputer.residual_gain[:len(MODEL_BANDS)] = 1.0 / Imputer.GAIN_SCALE
        imputer.residual_gain[[0, 3]] = -1.0 / Imputer.GAIN_SCALE  # BLUE, NIR: the miss added with the wrong sign
    series = Series.of("s", frames_from_inputs(files))
    choice = choose_correction(imputer, series, mean=MEAN, std=STD, bands=MODEL_BANDS, tile=32)
    kept = [False, True, True, False, True, True]
    assert choice.use_model == [kept] * 3
    undated = tmp_path / "undated"
    undated.mkdir()
    for i, f in enumerate(files):
        for suffix in (".tif", ".Fmask.tif"):
            (undated / f"d{i}{suffix}").write_bytes(open(f.replace(".tif", suffix), "rb").read())
    ckpt = export(tmp_path / "h", "harmful")
    inputs = [str(undated / f"d{i}.tif") for i in range(3)]
    with pytest.raises(DataError, match=r"no acquisition date for '.*d0.tif'"):
        predict_checkpoint(ckpt, inputs, tmp_path / "u.tif", tile=32)
    assert not (tmp_path / "u.tif").exists()
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--inputs", *inputs, "--out", str(tmp_path / "u.tif"),
                     "--tile", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--equal-spacing" in err and "Traceback" not in err
    assert cli.main(["predict", "--checkpoint", str(ckpt), "--inputs", *inputs, "--out", str(tmp_path / "u.tif"),
                     "--tile", "32", "--overlap", "8", "--equal-spacing"]) == 0


@pytest.mark.parametrize("kind", ["harmful", "helpful"])
def test_predict_on_an_irregular_real_series_is_no_worse_than_linear(kind, sample_dir, tmp_path):
    """``evaluate-imputation --write-cloudy`` on real Landsat dates 8 then 48 days apart, filled by ``geofm predict``
    (auto-correction), scores at least as well as linear interpolation by day on the same pixels."""
    import json

    images = sample_dir / "landsat_p035r032" / "images"
    stacks = [str(images / d / f"{d}_stack.gtif") for d in
              ("LE70350322011206EDC00", "LT50350322011214PAC01", "LT50350322011262PAC01")]
    mask = tmp_path / "cloud.tif"
    m = np.zeros((5, 5), np.uint8)
    m[1:4, 2:5] = 2
    with rasterio.open(stacks[0]) as src:  # the mask on the series' grid
        write_geotiff(mask, m, crs=src.crs, transform=src.transform)
    common = ["--series", *stacks, "--stacked-fmask-band", "8", "--fmask-kind", "cfmask", "--masks", str(mask)]
    assert cli.main(["evaluate-imputation", "--write-cloudy", str(tmp_path / "cloudy"), *common]) == 0
    cloudy = sorted(str(p) for p in (tmp_path / "cloudy").glob("*[0-9].tif"))
    assert [p.rsplit("_", 1)[-1] for p in cloudy] == ["2011-07-25.tif", "2011-08-02.tif", "2011-09-19.tif"]
    pred = tmp_path / "pred.tif"
    assert cli.main(["predict", "--checkpoint", str(export(tmp_path / kind, kind)), "--inputs", *cloudy,
                     "--out", str(pred), "--tile", "0"]) == 0
    out = tmp_path / "s.json"
    assert cli.main(["evaluate-imputation", "--predictions", str(pred), *common, "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["pixels"] >= 8 and s["mae_linear"] > 0
    assert s["mae"] <= s["mae_linear"] + 1e-4 and s["ssim"] >= s["ssim_linear"] - 1e-4  # int16 rounding


def test_evaluate_with_auto_correction_drops_a_harmful_model(cloudy_series, tmp_path):
    from geofm.data.datasets.imputation import mask_bank
    from geofm.data.series import load_series
    from geofm.tasks.evaluate_imputation import evaluate_checkpoint

    files, _, _ = cloudy_series
    series = load_series([",".join(files)])
    masks = mask_bank([], series)
    ckpt = export(tmp_path / "harmful", "harmful")
    raw = evaluate_checkpoint(ckpt, series, masks, tile=32)
    auto = evaluate_checkpoint(ckpt, series, masks, tile=32, correction="auto")
    assert raw["mae"] > 2 * raw["mae_linear"]
    assert auto["mae"] == pytest.approx(auto["mae_linear"], abs=1e-7) and auto["pixels"] == raw["pixels"] > 100
