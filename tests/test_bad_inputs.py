"""Every bad input, through the real ``geofm`` command: exit 2, one line naming the culprit, no
traceback, and no output path created or changed.

The table below is the list of cases in ``docs/errors.md`` (regenerate that page with
``python tests/test_bad_inputs.py > docs/errors.md`` after changing a case or a message).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from geofm.resources import sample_dir

REPO = Path(__file__).resolve().parents[1]
ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes into read-only folders


@dataclass
class Case:
    id: str
    args: list[str]  # after "geofm"; "{name}" is replaced by the workspace path of that name
    culprit: list[str]  # substrings the error line must contain (the option, value or file at fault)
    outputs: list[str] = field(default_factory=list)  # workspace paths that must not appear or change
    env: dict[str, str] = field(default_factory=dict)
    skip_as_root: bool = False


INGEST = ["ingest", "{hls}", "--scheduler", "sync", "--chip-size", "32"]
PRETRAIN_BASE = ["pretrain", "--config", "pretrain/tiny", "data.store={store}",
                 "data.build_sample_store=false", "data.batch_size=2", "data.val_fraction=0"]
PRETRAIN = [*PRETRAIN_BASE, "out_dir={new}"]
FINETUNE = ["finetune", "--config", "finetune/tiny_flood", "run_dir={new}"]
EXPERIMENT = ["experiment", "--config", "finetune/tiny_flood", "--seeds", "1"]
PREDICT = ["predict", "--checkpoint", "{export}", "--inputs", "{hls}", "--out"]
MAP = ["map", "--checkpoint", "{export}", "{hls}", "--scheduler", "sync", "--tile", "64", "--overlap", "16"]

CASES = [
    # ------------------------------------------------------------------ ingest
    Case("ingest-frames-0", [*INGEST, "--out", "{new}", "--frames", "0"], ["--frames", "0"], ["new"]),
    Case("ingest-chip-size-0", ["ingest", "{hls}", "--out", "{new}", "--chip-size", "0"], ["--chip-size", "0"],
         ["new"]),
    Case("ingest-chip-size-negative", ["ingest", "{hls}", "--out", "{new}", "--chip-size", "-32"],
         ["--chip-size", "-32"], ["new"]),
    Case("ingest-cloud-bits-unknown", [*INGEST, "--out", "{new}", "--cloud-bits", "cloud,foo"],
         ["--cloud-bits", "foo"], ["new"]),
    Case("ingest-max-cloud-2", [*INGEST, "--out", "{new}", "--max-cloud", "2"], ["--max-cloud", "2"], ["new"]),
    Case("ingest-max-cloud-negative", [*INGEST, "--out", "{new}", "--max-cloud", "-0.1"], ["--max-cloud"], ["new"]),
    Case("ingest-max-nodata-negative", [*INGEST, "--out", "{new}", "--max-nodata", "-1"], ["--max-nodata", "-1"],
         ["new"]),
    Case("ingest-landcover-missing", [*INGEST, "--out", "{new}", "--landcover", "{ws}/missing_landcover.tif"],
         ["--landcover", "missing_landcover.tif"], ["new"]),
    Case("ingest-landcover-not-a-raster", [*INGEST, "--out", "{new}", "--landcover", "{file}"], ["afile.txt"],
         ["new"]),
    Case("ingest-stacked-bands-not-numbers", [*INGEST, "--out", "{new}", "--stacked-bands", "1,2,x"],
         ["--stacked-bands", "1,2,x"], ["new"]),
    Case("ingest-stacked-bands-too-few", [*INGEST, "--out", "{new}", "--stacked-bands", "1,2,3"],
         ["--stacked-bands", "[1, 2, 3]"], ["new"]),
    Case("ingest-stacked-bands-zero", [*INGEST, "--out", "{new}", "--stacked-bands", "0,1,2,3,4,5"],
         ["--stacked-bands", "1-based"], ["new"]),
    Case("ingest-stacked-fmask-band-0", [*INGEST, "--out", "{new}", "--stacked-fmask-band", "0"],
         ["--stacked-fmask-band", "0"], ["new"]),
    Case("ingest-stacked-fmask-band-beyond-file", ["ingest", "{stacks}", "--out", "{new}", "--chip-size", "2",
                                                   "--scheduler", "sync", "--stacked-fmask-band", "9"],
         ["has 8 band(s)", "at least 9"], ["new"]),
    Case("ingest-rows-per-task-0", [*INGEST, "--out", "{new}", "--rows-per-task", "0"], ["--rows-per-task"],
         ["new"]),
    Case("ingest-workers-0", ["ingest", "{hls}", "--out", "{new}", "--chip-size", "32", "--workers", "0"],
         ["--workers", "0"], ["new"]),
    Case("ingest-out-is-a-file", [*INGEST, "--out", "{file}"], ["--out", "afile.txt", "existing file"], ["file"]),
    Case("ingest-out-is-a-foreign-folder", [*INGEST, "--out", "{dir}"], ["--out", "adir", "not a chip store"],
         ["dir"]),
    Case("ingest-out-below-a-file", [*INGEST, "--out", "{file}/store.zarr"], ["--out", "afile.txt"], ["file"]),
    Case("ingest-out-read-only", [*INGEST, "--out", "{readonly}/store.zarr"], ["--out", "readonly"],
         ["readonly"], skip_as_root=True),
    Case("ingest-scheduler-unreachable", ["ingest", "{hls}", "--out", "{new}", "--scheduler", "tcp://127.0.0.1:9"],
         ["--scheduler", "tcp://127.0.0.1:9"], ["new"]),
    Case("ingest-scheduler-not-an-address", ["ingest", "{hls}", "--out", "{new}", "--scheduler", "tcp://:port"],
         ["--scheduler", "tcp://:port"], ["new"]),
    Case("ingest-input-missing", ["ingest", "{ws}/no_such_scenes", "--out", "{new}"], ["no_such_scenes"],
         ["new"]),
    Case("ingest-input-folder-without-tifs", ["ingest", "{empty}", "--out", "{new}"], ["no GeoTIFF", "empty"],
         ["new"]),
    Case("ingest-other-options-into-existing-store", ["ingest", "{hls}", "--out", "{store}", "--scheduler", "sync",
                                                      "--chip-size", "16"],
         ["store.zarr", "different ingest"], ["store"]),
    Case("ingest-band-in-another-crs", ["ingest", "{crs}", "--out", "{new}", "--chip-size", "32",
                                        "--scheduler", "sync"],
         ["B04.tif", "EPSG:32611", "EPSG:32610"], ["new"]),
    # ------------------------------------------------------------------ explore
    Case("explore-store-missing", ["explore", "{ws}/no_store.zarr", "--out", "{new}"], ["no_store.zarr"], ["new"]),
    Case("explore-store-unfinished", ["explore", "{unfinished}", "--out", "{new}"],
         ["unfinished.zarr", "did not finish"], ["new"]),
    Case("explore-metadata-corrupt", ["explore", "{corrupt}", "--out", "{new}"],
         ["corrupt.zarr/metadata.parquet", "not a readable Parquet"], ["new", "corrupt"]),
    Case("explore-out-is-a-file", ["explore", "{store}", "--out", "{file}"], ["--out", "afile.txt", "is a file"],
         ["file"]),
    Case("explore-out-read-only", ["explore", "{store}", "--out", "{readonly}/x"], ["--out", "read-only"],
         ["readonly"], skip_as_root=True),
    Case("explore-sample-chips-0", ["explore", "{store}", "--out", "{new}", "--sample-chips", "0"],
         ["--sample-chips", "0"], ["new"]),
    # ------------------------------------------------------------------ sample
    Case("sample-n-negative", ["sample", "{store}", "--n", "-5", "--out", "{new}.parquet"], ["--n", "-5"],
         ["new.parquet"]),
    Case("sample-n-zero", ["sample", "{store}", "--n", "0", "--out", "{new}.parquet"], ["--n", "0"],
         ["new.parquet"]),
    Case("sample-strata-unknown", ["sample", "{store}", "--n", "5", "--strata", "landcover,biome",
                                   "--out", "{new}.parquet"], ["--strata", "biome"], ["new.parquet"]),
    Case("sample-lat-step-0", ["sample", "{store}", "--n", "5", "--lat-step", "0", "--out", "{new}.parquet"],
         ["--lat-step", "0"], ["new.parquet"]),
    Case("sample-out-not-parquet", ["sample", "{store}", "--n", "5", "--out", "{new}.csv"], ["--out", "new.csv"],
         ["new.csv"]),
    Case("sample-out-is-a-folder", ["sample", "{store}", "--n", "5", "--out", "{pdir}"],
         ["--out", "adir.parquet", "is a folder"], ["pdir"]),
    Case("sample-out-below-a-file", ["sample", "{store}", "--n", "5", "--out", "{file}/index.parquet"],
         ["--out", "afile.txt"], ["file"]),
    Case("sample-metadata-corrupt", ["sample", "{corrupt}", "--n", "5", "--out", "{new}.parquet"],
         ["corrupt.zarr/metadata.parquet"], ["new.parquet", "corrupt"]),
    # ------------------------------------------------------------------ convert
    Case("convert-input-missing", ["convert", "{ws}/no_model.pt", "{new}"], ["no_model.pt", "not found"], ["new"]),
    Case("convert-input-not-a-checkpoint", ["convert", "{file}", "{new}"], ["afile.txt", "not a PyTorch"], ["new"]),
    Case("convert-input-carries-code", ["convert", "{evil}", "{new}"], ["evil.pt", "refusing to load"],
         ["new", "marker"], env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("convert-out-is-a-file", ["convert", "{export}", "{file}"], ["OUT", "afile.txt", "is a file"], ["file"]),
    Case("convert-unknown-model", ["convert", "{export}", "{new}", "--model", "prithvi_huge"],
         ["prithvi_huge", "available"], ["new"]),
    # ------------------------------------------------------------------ predict
    Case("predict-device-cuda-without-gpu", [*PREDICT, "{new}.tif", "--device", "cuda"], ["--device", "cuda"],
         ["new.tif"]),
    Case("predict-device-unknown", [*PREDICT, "{new}.tif", "--device", "gpu0"], ["--device", "gpu0"],
         ["new.tif"]),
    Case("predict-out-is-a-folder", [*PREDICT, "{tifdir}"], ["--out", "folder.tif", "is a folder"], ["tifdir"]),
    Case("predict-out-not-a-tif", [*PREDICT, "{file}"], ["--out", "afile.txt", ".tif"], ["file"]),
    Case("predict-out-exists", [*PREDICT, "{existing}"], ["--out", "existing.tif", "--overwrite"], ["existing"]),
    Case("predict-out-below-a-file", [*PREDICT, "{file}/map.tif"], ["--out", "afile.txt"], ["file"]),
    Case("predict-out-read-only", [*PREDICT, "{readonly}/map.tif"], ["--out", "read-only"], ["readonly"],
         skip_as_root=True),
    Case("predict-quicklook-is-a-folder", [*PREDICT, "{new}.tif", "--quicklook", "{dir}"],
         ["--quicklook", "adir", "is a folder"], ["new.tif", "dir"]),
    Case("predict-batch-size-0", [*PREDICT, "{new}.tif", "--batch-size", "0"], ["batch_size", "0"], ["new.tif"]),
    Case("predict-overlap-too-large", [*PREDICT, "{new}.tif", "--tile", "64", "--overlap", "32"],
         ["overlap=32", "tile=64"], ["new.tif"]),
    Case("predict-stacked-bands-not-numbers", [*PREDICT, "{new}.tif", "--stacked-bands", "2,3,x"],
         ["--stacked-bands", "2,3,x"], ["new.tif"]),
    Case("predict-checkpoint-missing", ["predict", "--checkpoint", "{ws}/no_export", "--inputs", "{hls}",
                                        "--out", "{new}.tif"], ["no_export"], ["new.tif"]),
    # ------------------------------------------------------------------ map
    Case("map-manifest-empty", ["map", "--checkpoint", "{export}", "{empty_manifest}", "--out", "{new}"],
         ["empty_manifest.json", "holds no granule"], ["new"]),
    Case("map-window-without-granules", [*MAP, "--out", "{new}", "--start", "2030-01-01", "--end", "2030-12-31"],
         ["--start 2030-01-01", "--end 2030-12-31", "no granule"], ["new"]),
    Case("map-end-before-start", [*MAP, "--out", "{new}", "--start", "2020-09-01", "--end", "2020-03-01"],
         ["--end 2020-03-01", "--start 2020-09-01"], ["new"]),
    Case("map-aoi-touches-no-input", [*MAP, "--out", "{new}", "--aoi", "{far_aoi}"], ["--aoi", "T10SEG"], ["new"]),
    Case("map-checkpoint-not-segmentation-or-imputation", ["map", "--checkpoint", "{classifier}", "{hls}",
                                                           "--out", "{new}"],
         ["classifier/config.json", "geofm_task", "'classification'"], ["new"]),
    Case("map-out-below-a-file", [*MAP, "--out", "{file}/map"], ["--out", "afile.txt"], ["file"]),
    Case("map-out-read-only", [*MAP, "--out", "{readonly}/map"], ["--out", "read-only"], ["readonly"],
         skip_as_root=True),
    Case("map-out-holds-another-models-tiles", [*MAP, "--out", "{othermap}"], ["--out", "othermap", "another model"],
         ["othermap"]),
    Case("map-crs-unparsable", [*MAP, "--out", "{new}", "--crs", "EPSG:99999"], ["--crs", "EPSG:99999"], ["new"]),
    Case("map-crs-geographic", [*MAP, "--out", "{new}", "--crs", "EPSG:4326"], ["--crs", "EPSG:4326", "projected"],
         ["new"]),
    Case("map-frames-not-the-models", [*MAP, "--out", "{new}", "--frames", "2"], ["--frames 2", "3 frame(s)"],
         ["new"]),
    Case("map-workers-0", [*MAP[:4], "--out", "{new}", "--workers", "0"], ["--workers", "0"], ["new"]),
    Case("map-resolution-0", [*MAP, "--out", "{new}", "--resolution", "0"], ["--resolution", "0"], ["new"]),
    # ------------------------------------------------------------------ imputation
    Case("evaluate-imputation-series-without-dates", ["evaluate-imputation", "--write-cloudy", "{new}", "--series",
                                                      "{undated}/scene_a.tif", "{undated}/scene_b.tif", "--masks",
                                                      "{undated}/scene_a.Fmask.tif"],
         ["scene_a.tif", "no acquisition date", "--equal-spacing"], ["new"]),
    Case("predict-runtime-onnxruntime-not-onnx", [*PREDICT, "{new}.tif", "--runtime", "onnxruntime"],
         ["--runtime onnxruntime", ".onnx", "export"], ["new.tif"]),
    Case("predict-onnx-file-with-torch", ["predict", "--checkpoint", "{file}.onnx", "--inputs", "{hls}", "--out",
                                          "{new}.tif", "--runtime", "torch"], ["afile.txt.onnx", "--runtime"],
         ["new.tif"]),
    # ------------------------------------------------------------------ export-onnx
    Case("export-onnx-out-not-onnx", ["export-onnx", "{export}", "{file}"], ["OUT", "afile.txt", ".onnx"], ["file"]),
    Case("export-onnx-out-is-a-folder", ["export-onnx", "{export}", "{onnxdir}"], ["OUT", "adir.onnx", "folder"],
         ["onnxdir"]),
    Case("export-onnx-opset-too-old", ["export-onnx", "{export}", "{new}.onnx", "--opset", "9"], ["--opset", "9"],
         ["new.onnx"]),
    Case("export-onnx-imputation-model", ["export-onnx", "{mae_export}", "{new}.onnx"],
         ["imputation", "segmentation"], ["new.onnx"]),
    Case("export-onnx-coords-the-model-lacks", ["export-onnx", "{export}", "{new}.onnx", "--coords", "temporal_coords"],
         ["--coords", "temporal_coords", "no coordinates"], ["new.onnx"]),
    Case("export-onnx-checkpoint-missing", ["export-onnx", "{ws}/no_export", "{new}.onnx"], ["no_export"],
         ["new.onnx"]),
    # ------------------------------------------------------------------ pretrain
    Case("pretrain-empty-index", [*PRETRAIN, "data.index={empty_index}"], ["data.index", "empty.parquet", "0 training"],
         ["new"]),
    Case("pretrain-accelerator-gpu-without-gpu", [*PRETRAIN, "trainer.accelerator=gpu"],
         ["trainer.accelerator=gpu"], ["new"]),
    Case("pretrain-store-missing", [*PRETRAIN, "data.store={ws}/no_store.zarr"], ["data.store", "no_store.zarr"],
         ["new"]),
    Case("pretrain-batch-size-0", [*PRETRAIN, "data.batch_size=0"], ["data.batch_size", "0"], ["new"]),
    Case("pretrain-unknown-key", [*PRETRAIN, "optim.lrr=1e-3"], ["optim.lrr"], ["new"]),
    Case("pretrain-resume-missing", [*PRETRAIN, "trainer.resume={ws}/no.ckpt"], ["trainer.resume", "no.ckpt"],
         ["new"]),
    Case("pretrain-resume-carries-code", [*PRETRAIN_BASE, "out_dir={evilrun}"], ["last.ckpt", "refusing to load"],
         ["evilrun", "marker"], env={"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}),
    Case("pretrain-out-dir-is-a-file", [*PRETRAIN_BASE, "out_dir={file}"], ["out_dir", "afile.txt"], ["file"]),
    # ------------------------------------------------------------------ finetune
    Case("finetune-label-fraction-0", [*FINETUNE, "data.label_fraction=0"], ["data.label_fraction", "0"], ["new"]),
    Case("finetune-accelerator-gpu-without-gpu", [*FINETUNE, "trainer.accelerator=gpu"],
         ["trainer.accelerator=gpu"], ["new"]),
    Case("finetune-batch-size-0", [*FINETUNE, "data.batch_size=0"], ["data.batch_size", "0"], ["new"]),
    Case("finetune-baseline-anchor-1", ["finetune", "--config", "finetune/tiny_imputation", "run_dir={new}",
                                        "optim.baseline_anchor=1"], ["optim.baseline_anchor", "1"], ["new"]),
    Case("finetune-dataset-folder-missing", [*FINETUNE, "data.root={ws}/no_dataset"], ["data.root", "no_dataset"],
         ["new"]),
    Case("finetune-run-dir-is-a-file", [*FINETUNE[:-1], "run_dir={file}"], ["run_dir", "afile.txt"], ["file"]),
    Case("finetune-config-missing", ["finetune", "--config", "{ws}/no_config.yaml"], ["no_config.yaml"], []),
    # ------------------------------------------------------------------ experiment
    Case("experiment-label-fractions-out-of-range", [*EXPERIMENT, "--label-fractions", "0,1.5", "--out", "{new}"],
         ["--label-fractions", "0", "1.5"], ["new"]),
    Case("experiment-label-fractions-not-numbers", [*EXPERIMENT, "--label-fractions", "1,half", "--out", "{new}"],
         ["--label-fractions", "1,half"], ["new"]),
    Case("experiment-strategy-typo", [*EXPERIMENT, "--strategies", "full,frozn", "--out", "{new}"],
         ["--strategies", "frozn"], ["new"]),
    Case("experiment-seeds-0", [*EXPERIMENT[:-2], "--seeds", "0", "--out", "{new}"], ["--seeds", "0"], ["new"]),
    Case("experiment-out-is-a-file", [*EXPERIMENT, "--out", "{file}"], ["--out", "afile.txt"], ["file"]),
    Case("experiment-bad-override-for-every-run", [*EXPERIMENT, "--out", "{new}", "data.label_fraction=2"],
         ["data.label_fraction", "2"], ["new"]),
    # ------------------------------------------------------------------ view
    Case("view-path-missing", ["view", "{ws}/missing_map.tif"], ["PATH", "missing_map.tif"], []),
    Case("view-path-not-a-geotiff", ["view", "{file}"], ["PATH", "afile.txt", "GeoTIFF"], []),
    Case("view-basemap-not-a-tile-url", ["view", "{hls}", "--basemap", "ftp://example.org/tiles"],
         ["--basemap", "ftp://example.org/tiles"], []),
    Case("view-port-out-of-range", ["view", "{hls}", "--port", "70000"], ["--port", "70000"], []),
]


class Payload:
    """Unpickling this runs ``touch <marker>``: what a code-carrying checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    w = build_workspace(tmp_path_factory.mktemp("bad_inputs"))
    yield w
    w["readonly"].chmod(0o755)


def build_workspace(root: Path) -> dict[str, Path]:
    """A workspace of good and bad inputs: scenes, a store, damaged copies, files in the way."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import rasterio
    import torch

    from geofm.bands import MODEL_BANDS, NORM_STATS
    from geofm.data import ingest, synthetic
    from geofm.models import build_segmentation_model, save_finetuned

    w = {"ws": root, "new": root / "new", "file": root / "afile.txt", "dir": root / "adir",
         "pdir": root / "adir.parquet", "empty": root / "empty", "readonly": root / "readonly",
         "existing": root / "existing.tif", "tifdir": root / "folder.tif", "marker": root / "PAYLOAD_RAN"}
    w["file"].write_text("not a raster, not a checkpoint\n")
    w["dir"].mkdir()
    (w["dir"] / "keep.txt").write_text("someone's file\n")
    w["pdir"].mkdir()
    w["tifdir"].mkdir()
    w["empty"].mkdir()
    w["readonly"].mkdir()
    w["readonly"].chmod(0o555)
    w["existing"].write_bytes(b"an earlier prediction")
    w["hls"] = root / "hls"
    synthetic.write_time_series(w["hls"], size=64, seed=1, cloud_cover=0.0)
    w["store"] = root / "store.zarr"
    ingest.ingest([str(w["hls"])], str(w["store"]), ingest.IngestConfig(chip_size=32, max_cloud=1.0),
                  scheduler="sync")
    w["corrupt"] = root / "corrupt.zarr"
    shutil.copytree(w["store"], w["corrupt"])
    (w["corrupt"] / "metadata.parquet").write_bytes(b"PAR1 this is not parquet")
    w["unfinished"] = root / "unfinished.zarr"
    shutil.copytree(w["store"], w["unfinished"])
    (w["unfinished"] / "metadata.parquet").unlink()
    w["empty_index"] = root / "empty.parquet"
    pq.write_table(pa.table({"slot": pa.array(np.zeros(0, np.int64))}), w["empty_index"])
    # one band of a granule in another UTM zone
    w["crs"] = root / "crs"
    shutil.copytree(w["hls"], w["crs"])
    victim = sorted(w["crs"].glob("*.B04.tif"))[1]
    with rasterio.open(victim) as src:
        arr, profile = src.read(), src.profile
    profile["crs"] = "EPSG:32611"
    with rasterio.open(victim, "w", **profile) as dst:
        dst.write(arr)
    # a series of 6-band GeoTIFFs with sidecar Fmask and no date anywhere
    from rasterio.transform import from_origin

    w["undated"] = root / "undated"
    w["undated"].mkdir()
    prof = dict(driver="GTiff", width=8, height=8, count=6, dtype="int16", crs="EPSG:32610",
                transform=from_origin(500000.0, 4200000.0, 30, 30), nodata=-9999)
    for name in ("scene_a", "scene_b"):
        with rasterio.open(w["undated"] / f"{name}.tif", "w", **prof) as dst:
            dst.write(np.full((6, 8, 8), 1000, np.int16))
        with rasterio.open(w["undated"] / f"{name}.Fmask.tif", "w", **dict(prof, count=1, dtype="uint8",
                                                                            nodata=255)) as dst:
            dst.write(np.zeros((1, 8, 8), np.uint8))
    # 8-band Landsat stacks bundled with the repository (real, 5x5 px)
    w["stacks"] = sample_dir() / "landsat_p035r032" / "images"
    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2)
    mean, std = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
    w["export"] = save_finetuned(model, root / "export", task="segmentation", mean=mean, std=std, bands=MODEL_BANDS,
                                 class_names=["land", "water"], img_size=64)
    w["empty_manifest"] = root / "empty_manifest.json"
    w["empty_manifest"].write_text('{"type": "FeatureCollection", "features": []}')
    w["far_aoi"] = root / "far.geojson"  # Horn of Africa, far from tile 10SEG
    w["far_aoi"].write_text('{"type": "Polygon", "coordinates": [[[44, 15], [45, 15], [45, 16], [44, 16], [44, 15]]]}')
    w["othermap"] = root / "othermap"  # the output folder of a map with another model
    w["othermap"].mkdir()
    (w["othermap"] / "map-settings.json").write_text('{"checkpoint": "/models/other", "model": "0123456789abcdef"}')
    w["classifier"] = root / "classifier"  # a geofm export of a task that maps nothing
    shutil.copytree(w["export"], w["classifier"])
    cfg = json.loads((w["classifier"] / "config.json").read_text())
    (w["classifier"] / "config.json").write_text(json.dumps(dict(cfg, geofm_task="classification")))
    from geofm.models import create_model

    w["mae_export"] = save_finetuned(create_model("prithvi_tiny"), root / "mae_export", task="imputation", mean=mean,
                                     std=std, bands=MODEL_BANDS)
    w["onnxdir"] = root / "adir.onnx"
    w["onnxdir"].mkdir()
    (w["onnxdir"] / "keep.txt").write_text("someone's file\n")
    w["evil"] = root / "evil.pt"
    torch.save({"weight": torch.zeros(2), "extra": Payload(w["marker"])}, w["evil"])
    w["evilrun"] = root / "evilrun"
    (w["evilrun"] / "checkpoints").mkdir(parents=True)
    shutil.copy(w["evil"], w["evilrun"] / "checkpoints" / "last.ckpt")
    return w


def geofm_command() -> list[str]:
    exe = Path(sys.executable).parent / "geofm"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "geofm.cli"]


def fill(text: str, w: dict[str, Path]) -> str:
    return text.format(**{k: str(v) for k, v in w.items()})


def snapshot(path: Path):
    """Existence, and for files size + content hash, for folders every entry below: what "changed" means."""
    if not path.exists():
        return None
    if path.is_file():
        return ("file", path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    return ("dir", sorted((str(p.relative_to(path)), p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest())
                          for p in path.rglob("*")))


def run_case(case: Case, w: dict[str, Path]) -> subprocess.CompletedProcess:
    env = dict(os.environ, GEOFM_PROGRESS="plain", **case.env)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(geofm_command() + [fill(a, w) for a in case.args], capture_output=True, text=True,
                          env=env, cwd=w["ws"], timeout=120)


def test_the_table_has_at_least_40_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, ws):
    if case.skip_as_root and ROOT_USER:
        pytest.skip("root may write into read-only folders")
    outputs = {name: Path(fill("{" + name.split(".")[0] + "}", ws) + name[len(name.split(".")[0]):])
               for name in case.outputs}
    before = {name: snapshot(p) for name, p in outputs.items()}
    res = run_case(case, ws)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert len(lines) == 1, res.stderr
    command = case.args[0]
    assert lines[0].startswith(f"geofm {command}: error: "), lines[0]
    for culprit in case.culprit:
        assert fill(culprit, ws) in lines[0], (culprit, lines[0])
    for name, p in outputs.items():
        assert snapshot(p) == before[name], f"{p} was created or changed"


FAULTS = """
## Faults and data errors (tests/test_hardening.py)

| case | what happens |
|---|---|
| a truncated COG read by a worker of the default LocalCluster | `geofm ingest: error: cannot read band 1 of '.../HLS.S30.T10SEG.2020172T184919.v2.0.B04.tif' (a truncated or corrupt file?): Read failed. ...`, exit 2, the same line as with `--scheduler sync`; after the file is restored the same command resumes and completes the store |
| a float Fmask with fractions (0.9) | `Fmask band 7 of '...' has float32 values that are not whole numbers (e.g. 0.9), expected integer Fmask codes 0-255: is this band really the Fmask?` (a cast made 0.9 "clear"); whole-number floats are read; -9999 (a stack's nodata) is fill |
| an Fmask value above 255 | `Fmask band 7 of 'x.tif' has values above 255 (e.g. 300), expected Fmask codes 0-255` |
| a stacked-GeoTIFF store rerun in a new process, or with the folder given absolute instead of relative | completes / "already complete" (the tile key is a sha256 of the grid, input paths are absolute) |
| `--cloud-bits cloud,foo`, a missing `--landcover`, `--chip-size 0` | nothing written, so the corrected command runs |
| an index of 0 chips for `geofm pretrain` | refused before the run folder exists; a run that took 0 optimizer steps never exports |
| a code-carrying `last.ckpt` with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` | `refusing to load '.../last.ckpt': it carries more than tensors and plain values, which could run code when unpickled (Trying to load unsupported GLOBAL posix.system ...)`; the payload never runs (Lightning's checkpoint IO reads through the same reader) |
| `geofm experiment --strategies full,frozn` | refused before the first run trains |
| an existing `geofm predict --out` without `--overwrite` | refused before the model is read; the library call replaces it with a warning |
"""


def _markdown() -> str:
    """docs/errors.md: every case with the message it gets (runs the table in a scratch workspace)."""
    import tempfile

    out = ["# Bad inputs and their messages", "",
           "Every case below runs through the real `geofm` command in `tests/test_bad_inputs.py`: exit code 2, "
           "one line on stderr naming the culprit, no traceback, and no output path created or changed. "
           "Paths are shown relative to the test's scratch folder.", "",
           "| case | command | message |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        w = build_workspace(Path(tmp))
        for case in CASES:
            if case.skip_as_root and ROOT_USER:
                message = "(read-only folders cannot be tested as root)"
            else:
                res = run_case(case, w)
                message = res.stderr.strip().replace(str(w["ws"]) + "/", "").replace(str(REPO) + "/", "")
            args = " ".join(fill(a, w).replace(str(w["ws"]) + "/", "").replace(str(REPO) + "/", "")
                            for a in case.args)
            message = message.replace("|", "\\|")
            out.append(f"| {case.id} | `geofm {args}` | {message} |")
        w["readonly"].chmod(0o755)
    out += ["", FAULTS.strip()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(_markdown())
