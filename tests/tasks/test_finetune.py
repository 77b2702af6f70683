"""End-to-end fine-tuning in CI size: every task fits, validates, tests, predicts and exports."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch

from geofm import cli
from geofm.data.datasets import sen1floods11
from geofm.data.datasets.synthetic_layouts import write_burn_scars, write_crops
from geofm.errors import ConfigError, DataError
from geofm.models import create_model, load_finetuned, save_pretrained
from geofm.resources import configs_dir, sample_dir
from geofm.tasks import experiment
from geofm.tasks.finetune import build_datamodule, build_task, load_finetune_config, run_finetune

CONFIGS = configs_dir() / "finetune"
FAST = ["trainer.max_epochs=1", "trainer.log_every_n_steps=1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_flood_on_real_chip_fit_test_predict(tmp_path):
    cfg = load_finetune_config(CONFIGS / "tiny_flood.yaml", [f"run_dir={tmp_path}", "trainer.max_epochs=2",
                                                              "trainer.limit_train_batches=2", "predict.quicklooks=2"])
    export = run_finetune(cfg, "fit")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/mIoU"] <= 1.0 and metrics["n_train"] == 44  # 70 % of 64 tiles
    assert metrics["best_epoch"] in (0, 1) and 0.0 <= metrics["val"]["val/IoU_water"] <= 1.0
    model, info = load_finetuned(export)
    assert (info.task, info.class_names, info.num_frames, info.img_size) == ("segmentation", ["dry", "water"], 1, 64)
    assert info.mean == pytest.approx(list(sen1floods11.MEAN))
    # the export reproduces the scores measured at the end of fit
    again = json.loads(run_finetune(cfg, "test").read_text())
    assert again["test/mIoU"] == pytest.approx(metrics["test"]["test/mIoU"], abs=1e-6)
    out = run_finetune(cfg, "predict")
    tifs, pngs = sorted(out.glob("*_pred.tif")), sorted(out.glob("*.png"))
    assert len(tifs) == 10 and len(pngs) == 2
    dm = build_datamodule(cfg, tmp_path)
    crs, transform, _ = dm.test_set.geo(0)
    with rasterio.open(tifs[0]) as src:  # tiles sorted by name: the first test tile's window
        assert src.crs.to_epsg() == 4326 and src.dtypes[0] == "uint8"
        pred = src.read(1)
        names = [t.name for t in tifs]
        i = names.index(f"Spain_7370579_r{dm.test_set.windows[0][1]}_c{dm.test_set.windows[0][2]}_pred.tif")
    with rasterio.open(tifs[i]) as src:
        assert src.transform.almost_equals(transform) and set(np.unique(src.read(1))) <= {0, 1}
    assert pred.shape == (64, 64)


@pytest.mark.slow
def test_frozen_keeps_pretrained_encoder_scratch_ignores_it(tmp_path):
    torch.manual_seed(0)
    mae = create_model("prithvi_tiny", num_frames=1)
    save_pretrained(mae, tmp_path / "pre")
    common = [*FAST, "trainer.limit_train_batches=2", f"model.checkpoint={tmp_path / 'pre'}", "model.name=null"]
    cfg = load_finetune_config(CONFIGS / "tiny_flood.yaml", [*common, "optim.strategy=frozen",
                                                              f"run_dir={tmp_path / 'frozen'}"])
    dm = build_datamodule(cfg, tmp_path)
    task = build_task(cfg, dm)
    task.train()
    assert not task.model.encoder.training and task.model.head.training  # frozen encoder stays in eval
    model, _ = load_finetuned(run_finetune(cfg, "fit"))
    for k, v in mae.encoder.state_dict().items():
        torch.testing.assert_close(model.encoder.state_dict()[k], v)
    scratch = build_task(load_finetune_config(CONFIGS / "tiny_flood.yaml", [*common, "optim.strategy=scratch"]), dm)
    full = build_task(load_finetune_config(CONFIGS / "tiny_flood.yaml", [*common, "optim.strategy=full"]), dm)
    w = "blocks.0.attn.qkv.weight"
    assert torch.equal(full.model.encoder.state_dict()[w], mae.encoder.state_dict()[w])
    assert not torch.equal(scratch.model.encoder.state_dict()[w], mae.encoder.state_dict()[w])
    assert all(p.requires_grad for p in scratch.model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["burn_scars", "crops"])
def test_burn_scars_and_crops_fit_in_ci_size(tmp_path, dataset):
    root = tmp_path / "data"
    (write_burn_scars if dataset == "burn_scars" else write_crops)(root, n_train=3, n_val=1, size=32)
    frames = 1 if dataset == "burn_scars" else 3
    overrides = [*FAST, f"run_dir={tmp_path / 'run'}", f"data.root={root}", "data.crop_size=null", "data.batch_size=2",
                 "model.checkpoint=null", f"model.options={{num_frames: {frames}, img_size: 32}}",
                 "model.neck_channels=[32, 32, 32]", "model.head_channels=16"]
    if dataset == "burn_scars":
        overrides += ["model.neck=upernet", "model.neck_channels=[32]"]
    cfg = load_finetune_config(CONFIGS / f"{dataset}.yaml", [*overrides, "model.name=prithvi_tiny",
                                                              "trainer.precision=32-true"])
    export = run_finetune(cfg, "fit")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["test/aAcc"] <= 1.0
    model, info = load_finetuned(export)
    assert info.num_classes == (2 if dataset == "burn_scars" else 13) and info.num_frames == frames
    with torch.no_grad():
        assert model(torch.zeros(1, 6, frames, 32, 32)).shape == (1, info.num_classes, 32, 32)
    out = run_finetune(cfg, "predict")
    with rasterio.open(sorted(out.glob("*_pred.tif"))[0]) as src:
        assert src.crs.to_epsg() == 32610 and src.res == (30.0, 30.0)


@pytest.mark.slow
def test_imputation_fit_scores_baselines_and_predicts(tmp_path):
    """The shipped tiny config in CI size: real Landsat series + generated series, fixed-mask test protocol."""
    cfg = load_finetune_config(CONFIGS / "tiny_imputation.yaml", [
        *FAST, f"run_dir={tmp_path}", "data.samples_per_epoch=2", "data.val_samples=4", "predict.quicklooks=1",
        "data.test_stride=3"])
    export = run_finetune(cfg, "fit")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    test = metrics["test"]
    assert metrics["n_train"] == 4  # 2 series (Landsat April-July 2011, generated) x samples_per_epoch
    for m in ("ssim", "ssim_nearest", "ssim_linear", "mae", "mae_nearest", "psnr_linear", "mae_linear_NIR_NARROW",
              "ssim_SWIR_2"):
        assert np.isfinite(test[f"test/{m}"])
    assert -1.0 <= test["test/ssim"] <= 1.0 and test["test/mae"] >= 0 and test["test/pixels"] > 1000
    model, info = load_finetuned(export)
    assert info.task == "imputation" and info.num_frames == 3 and info.patch_size == (1, 8, 8)
    assert model.residual == "linear"
    # geofm evaluate-imputation on the real held-out Landsat dates 8, 48, 8 days apart: what geofm predict
    # writes (--correction auto) is no worse than linear interpolation by day
    images = sample_dir() / "landsat_p035r032" / "images"
    irregular = [str(p) for d in ("2011206", "2011214", "2011262", "2011270") for p in images.glob(f"*{d}*/*.gtif")]
    fmask = tmp_path / "cloud.tif"
    with rasterio.open(fmask, "w", driver="GTiff", width=5, height=5, count=1, dtype="uint8") as dst:
        dst.write(np.pad(np.full((3, 3), 2, np.uint8), 1)[None])  # a 3x3 cloud (HLS bit 1)
    scores = tmp_path / "irregular.json"
    assert cli.main(["evaluate-imputation", "--checkpoint", str(export), "--series", *irregular,
                     "--stacked-fmask-band", "8", "--fmask-kind", "cfmask", "--masks", str(fmask), "--own-masks",
                     "--stride", "1", "--correction", "auto", "--out", str(scores)]) == 0
    s = json.loads(scores.read_text())
    assert len(irregular) == 4 and s["pixels"] > 15
    assert s["mae"] <= s["mae_linear"] + 1e-9 and s["ssim"] >= s["ssim_linear"] - 1e-9
    # the export reproduces the test scores (same fixed protocol)
    again = json.loads(run_finetune(cfg, "test").read_text())
    assert again["test/mae"] == pytest.approx(test["test/mae"], rel=1e-5)
    assert again["test/mae_linear"] == pytest.approx(test["test/mae_linear"], rel=1e-9)
    # the same test stage with DDP on 2 processes: each scores its share once, the sums are reduced
    overrides = [*FAST, f"run_dir={tmp_path}", "data.samples_per_epoch=2", "data.val_samples=4",
                 "data.test_stride=3", "trainer.strategy=ddp", "trainer.devices=2"]
    proc = subprocess.run([sys.executable, "-m", "geofm.cli", "finetune", "--config",
                           str(CONFIGS / "tiny_imputation.yaml"), "--stage", "test", *overrides],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "metrics_test.json").read_text())
    assert ddp["test/pixels"] == again["test/pixels"]
    for k in ("test/mae", "test/mae_linear", "test/ssim", "test/rmse_nearest", "test/ssim_SWIR_2"):
        assert ddp[k] == pytest.approx(again[k], rel=1e-9, abs=1e-12), k
    out = run_finetune(cfg, "predict")
    recon = sorted(out.glob("*_recon.tif"))
    assert len(recon) >= 1 and len(list(out.glob("*.png"))) == 1
    with rasterio.open(recon[0]) as src:
        assert src.count == 18 and src.dtypes[0] == "int16"


def test_imputation_config_errors(tmp_path):
    cfg = load_finetune_config(CONFIGS / "tiny_imputation.yaml", [f"run_dir={tmp_path}", "data.series=[]",
                                                                   "data.generate_from_image=null"])
    with pytest.raises(DataError, match="at least one series"):
        build_datamodule(cfg, tmp_path)
    bad = load_finetune_config(CONFIGS / "tiny_imputation.yaml", [f"run_dir={tmp_path}"])
    bad.data.series = [{"inputs": "x.tif", "fmask_band": 3}]
    with pytest.raises(ConfigError, match="may set"):
        build_datamodule(bad, tmp_path)


@pytest.mark.slow
def test_experiment_grid_csv_plots_and_resume(tmp_path, monkeypatch):
    overrides = [*FAST, "trainer.limit_train_batches=2"]
    paths = experiment.run_experiment(CONFIGS / "tiny_flood.yaml", ["full", "scratch"], [1.0, 0.5], 1, overrides,
                                      tmp_path)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], float(r["label_fraction"])) for r in rows] == [
        ("full", 1.0), ("full", 0.5), ("scratch", 1.0), ("scratch", 0.5)]
    assert all(0 <= float(r["test/mIoU"]) <= 1 for r in rows)
    assert int(rows[1]["n_train"]) == round(int(rows[0]["n_train"]) * 0.5)
    assert paths["plot"].stat().st_size > 1000 and paths["curves"].stat().st_size > 1000

    def no_more_runs(*a, **k):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr(experiment, "run_finetune", no_more_runs)
    again = experiment.run_experiment(CONFIGS / "tiny_flood.yaml", ["full", "scratch"], [1.0, 0.5], 1, overrides,
                                      tmp_path)
    with open(again["csv"]) as f:
        assert list(csv.DictReader(f)) == rows


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*optim.learning_rate"):
        load_finetune_config(CONFIGS / "tiny_flood.yaml", ["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="does not fit task"):
        load_finetune_config(CONFIGS / "tiny_flood.yaml", ["optim.loss=l1"])
    with pytest.raises(ConfigError, match="expected one of"):
        load_finetune_config(CONFIGS / "tiny_flood.yaml", ["optim.strategy=partial"])
    cfg = load_finetune_config(CONFIGS / "tiny_flood.yaml", [f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="run the fit stage first"):
        run_finetune(cfg, "test")
