"""``geofm evaluate-imputation``: the fixed-mask protocol for an export, and for predictions of ``geofm predict``."""

import json

import numpy as np
import pytest
import torch

from geofm import cli
from geofm.bands import MODEL_BANDS, NORM_STATS
from geofm.data import synthetic
from geofm.models import create_model, save_finetuned
from geofm.models.imputer import Imputer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    imputer = Imputer(create_model("prithvi_tiny", img_size=32), residual="linear")  # untrained = linear
    return save_finetuned(imputer, tmp_path_factory.mktemp("imp") / "export", task="imputation", mean=MEAN, std=STD,
                          bands=MODEL_BANDS, img_size=32)


def test_checkpoint_on_the_real_landsat_series(export, sample_dir, tmp_path, capsys):
    stacks = sorted(str(p) for p in (sample_dir / "landsat_p035r032" / "images").glob("*/*_stack.gtif"))
    out = tmp_path / "scores.json"
    assert cli.main(["evaluate-imputation", "--checkpoint", str(export), "--series", *stacks,
                     "--stacked-fmask-band", "8", "--fmask-kind", "cfmask", "--masks", str(stacks[6].replace(
                         "_stack.gtif", "_missing.tif")), "--own-masks"]) == 2  # a missing mask file: exit 2
    assert "does not exist" in capsys.readouterr().err
    fmask = tmp_path / "m.tif"
    synthetic._write(fmask, np.pad(np.ones((3, 3), np.uint8) * 2, 1), dict(
        driver="GTiff", width=5, height=5, count=1, dtype="uint8"))  # a 3x3 cloud (HLS bit 1)
    assert cli.main(["evaluate-imputation", "--checkpoint", str(export), "--series", *stacks,
                     "--stacked-fmask-band", "8", "--fmask-kind", "cfmask", "--masks", str(fmask), "--stride", "1",
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    s = json.loads(out.read_text())
    assert "| model |" in printed and "| NIR_NARROW |" in printed
    assert s["pixels"] > 50 and s["mae"] == pytest.approx(s["mae_linear"], abs=1e-6)  # untrained = baseline
    assert s["ssim"] == pytest.approx(s["ssim_linear"], abs=1e-6) and s["mae_nearest"] != s["mae_linear"]
    for b in MODEL_BANDS:
        assert 0 < s[f"mae_linear_{b}"] < 0.5 and -1 <= s[f"ssim_nearest_{b}"] <= 1


def test_predictions_of_geofm_predict_score_like_the_model(export, sample_dir, tmp_path, capsys):
    series = tmp_path / "series"
    synthetic.write_series_from_image(sample_dir / "hls_chip" / "regression_test_0_input.tif", series,
                                      rows=(100, 148), cols=(60, 124), dates=3, seed=4)
    mask = tmp_path / "cloud.Fmask.tif"
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:44] = 2
    synthetic._write(mask, m, dict(driver="GTiff", width=64, height=48, count=1, dtype="uint8"))
    common = ["--series", str(series), "--masks", str(mask)]
    assert cli.main(["evaluate-imputation", "--write-cloudy", str(tmp_path / "cloudy"), *common]) == 0
    cloudy = sorted((tmp_path / "cloudy").glob("*[0-9].tif"))
    assert len(cloudy) == 3 and len(list((tmp_path / "cloudy").glob("*.Fmask.tif"))) == 3
    pred = tmp_path / "pred.tif"
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", *map(str, cloudy), "--out", str(pred),
                     "--tile", "0", "--block", "32"]) == 0
    out = tmp_path / "s.json"
    assert cli.main(["evaluate-imputation", "--predictions", str(pred), *common, "--out", str(out)]) == 0
    s = json.loads(out.read_text())
    assert s["pixels"] == 20 * 24
    assert s["mae"] == pytest.approx(s["mae_linear"], abs=1e-4)  # int16 rounding of the written prediction
    assert s["mae_linear"] > 0.001 and s["mae_nearest"] > s["mae_linear"]


def test_predict_fills_the_cfmask_clouds_of_landsat_stacks(export, sample_dir, tmp_path):
    """``geofm predict --fmask-kind cfmask`` on real Landsat stacks (CFmask classes in band 8)."""
    import rasterio

    from geofm.data.hls import cfmask_to_hls_fmask, cloud_mask

    images = sample_dir / "landsat_p035r032" / "images"
    stacks = [str(images / d / f"{d}_stack.gtif") for d in
              ("LE70350322011142EDC00", "LE70350322011158EDC00", "LE70350322011174EDC00")]
    out = tmp_path / "filled.tif"
    assert cli.main(["predict", "--checkpoint", str(export), "--inputs", *stacks, "--stacked-fmask-band", "8",
                     "--fmask-kind", "cfmask", "--tile", "0", "--out", str(out)]) == 0
    with rasterio.open(out) as src:
        filled = src.read().reshape(3, 6, src.height, src.width)
    changed = 0
    for t, p in enumerate(stacks):
        with rasterio.open(p) as src:
            raw, cf = src.read([1, 2, 3, 4, 5, 6]), src.read(8)
        nodata = (raw == -9999).any(0)
        hidden = cloud_mask(cfmask_to_hls_fmask(cf)) & ~nodata
        clear = ~hidden & ~nodata
        assert (filled[t][:, clear] == raw[:, clear]).all()  # clear pixels kept
        changed += int((filled[t][:, hidden] != raw[:, hidden]).any(0).sum())
    assert changed > 0  # CFmask clouds/shadows were filled
