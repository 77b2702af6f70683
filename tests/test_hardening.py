"""Defects found by trying bad inputs and faults as a new user would (issue #14), one test each."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geofm.data import ingest, store, synthetic
from geofm.errors import CheckpointError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def geofm(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "geofm"
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "geofm.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, GEOFM_PROGRESS="plain", **(env or {})), timeout=300)


def write_stacks(folder: Path, *, fmask_dtype: str = "uint8", fmask_values=None, size: int = 8) -> list[Path]:
    """Three 7-band stacked GeoTIFFs (6 bands int16 reflectance + Fmask) named by date, no tile in the name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k, date in enumerate(("2020-03-15", "2020-06-20", "2020-09-01")):
        refl = rng.integers(100, 3000, (6, size, size)).astype(np.float32)
        fmask = np.zeros((size, size), np.float32) if fmask_values is None else np.asarray(fmask_values[k], np.float32)
        dtype = "float32" if fmask_dtype == "float32" else "int16"
        p = folder / f"scene_{date}.tif"
        with rasterio.open(p, "w", driver="GTiff", width=size, height=size, count=7, dtype=dtype, crs="EPSG:32610",
                           transform=from_origin(500000, 4200000, 30, 30), nodata=-9999) as dst:
            dst.write(np.concatenate([refl, fmask[None]]).astype(dtype))
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- 1. stacked stores rerun
def test_stacked_store_reruns_in_a_new_process_and_from_another_working_folder(tmp_path):
    """The tile key of stacked inputs is the same in every process (Python's hash() is salted per process),
    and a folder given relative then absolute is the same input."""
    write_stacks(tmp_path / "stacks")
    first = geofm("ingest", "stacks", "--out", "s.zarr", "--chip-size", "4", "--stacked-fmask-band", "7",
                  "--scheduler", "sync", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tiles = store.read_metadata(tmp_path / "s.zarr")["tile"].tolist()
    again = geofm("ingest", tmp_path / "stacks", "--out", tmp_path / "s.zarr", "--chip-size", "4",
                  "--stacked-fmask-band", "7", "--scheduler", "sync", cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "already complete" in again.stdout
    assert store.read_metadata(tmp_path / "s.zarr")["tile"].tolist() == tiles
    assert tiles[0].startswith("grid") and len(set(tiles)) == 1
    code = ("import sys; from geofm.data import hls, ingest; "
            "f = hls.stacked_frame(sys.argv[1], fmask_band=7); print(ingest.grid_key(hls.frame_grid(f)))")
    keys = {subprocess.run([sys.executable, "-c", code, str(next((tmp_path / "stacks").iterdir()))],
                           capture_output=True, text=True, check=True).stdout for _ in range(2)}
    assert len(keys) == 1 and tiles[0] == "grid" + keys.pop().strip()


# --------------------------------------------------------------------------- 2. the default LocalCluster
def test_data_error_on_the_default_local_cluster_is_a_message_then_the_fixed_input_resumes(tmp_path):
    """A truncated COG read by a worker of the default LocalCluster: exit 2 with the file named (as with
    --scheduler sync), no traceback; after the file is restored the same command finishes the store."""
    good = tmp_path / "good"
    synthetic.write_time_series(good, size=64, seed=4, cloud_cover=0.0)
    scenes = tmp_path / "scenes"
    shutil.copytree(good, scenes)
    victim = sorted(scenes.glob("*.B04.tif"))[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) * 2 // 3])  # header intact, pixel blocks cut
    args = ("ingest", scenes, "--out", tmp_path / "s.zarr", "--chip-size", "32", "--max-cloud", "1",
            "--workers", "1")
    res = geofm(*args, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "Compute Failed" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geofm ingest: error: ") and victim.name in lines[0]
    assert not (tmp_path / "s.zarr" / "metadata.parquet").exists()
    shutil.copy(good / victim.name, victim)
    res = geofm(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert store.read_metadata(tmp_path / "s.zarr")["slot"].size == 4


# --------------------------------------------------------------------------- 3./4. validate before writing
@pytest.mark.parametrize("bad, fixed", [
    (["--cloud-bits", "cloud,foo"], ["--cloud-bits", "cloud,shadow"]),
    (["--landcover", "missing.tif"], ["--landcover", "landcover.tif"]),
    (["--chip-size", "0"], ["--chip-size", "32"]),
])
def test_a_failed_start_writes_nothing_so_the_corrected_command_runs(tmp_path, bad, fixed):
    synthetic.write_time_series(tmp_path / "hls", size=64, seed=2, cloud_cover=0.0)
    synthetic.write_landcover(tmp_path / "landcover.tif", size=64)
    common = ["ingest", "hls", "--out", "s.zarr", "--scheduler", "sync", "--max-cloud", "1"]
    with_size = [] if "--chip-size" in bad else ["--chip-size", "32"]
    res = geofm(*common, *with_size, *bad, cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "s.zarr").exists()
    res = geofm(*common, *with_size, *fixed, cwd=tmp_path)
    assert res.returncode == 0, res.stderr


# --------------------------------------------------------------------------- 5. no silent wrong results
def test_fmask_of_another_dtype_is_checked_not_cast(tmp_path):
    """0.9 in a float Fmask would become 0 (clear) by a cast: refused. Whole-number floats and int16
    with -9999 (fill) are read as the codes they are."""
    cloud = 1 << 1
    vals = [np.full((8, 8), 0.9), np.zeros((8, 8)), np.zeros((8, 8))]
    write_stacks(tmp_path / "frac", fmask_dtype="float32", fmask_values=vals)
    cfg = ingest.IngestConfig(chip_size=4, stacked_fmask_band=7, max_cloud=1.0, max_nodata=1.0)
    with pytest.raises(DataError, match=r"not whole numbers \(e\.g\. 0\.9\)"):
        ingest.ingest([str(tmp_path / "frac")], str(tmp_path / "a.zarr"), cfg, scheduler="sync")
    whole = [np.full((8, 8), cloud), np.zeros((8, 8)), np.zeros((8, 8))]
    whole[1][:4] = -9999  # int16 stack nodata in the Fmask band: fill, not code 241
    write_stacks(tmp_path / "whole", fmask_dtype="int16", fmask_values=whole)
    ingest.ingest([str(tmp_path / "whole")], str(tmp_path / "b.zarr"), cfg, scheduler="sync")
    meta = store.read_metadata(tmp_path / "b.zarr")
    # 4 chips of 4x4 px x 3 frames; frame 0 all cloud; frame 1 top half fill (chips of row 0)
    np.testing.assert_allclose(sorted(meta["nodata_frac"]), [0, 0, 1 / 3, 1 / 3])
    np.testing.assert_allclose(meta["cloud_frac"], [1 / 3] * 4)
    with pytest.raises(DataError, match="above 255"):
        from geofm.data.hls import fmask_to_uint8

        fmask_to_uint8(np.array([[0, 300]], np.int16), what="Fmask band 7 of 'x.tif'")


def test_thresholds_and_counts_out_of_range_are_refused():
    for kwargs, option in (({"max_nodata": -1.0}, "--max-nodata"), ({"max_cloud": 2.0}, "--max-cloud"),
                           ({"frames": 0}, "--frames")):
        with pytest.raises(ConfigError, match=option):
            ingest.check_config(ingest.IngestConfig(**kwargs))
    from geofm.data.sampling import stratified_sample

    with pytest.raises(ConfigError, match="--n"):
        stratified_sample({"slot": np.arange(3)}, [], -5)


def test_pretraining_never_exports_an_untrained_model(tmp_path, sample_dir):
    """An empty index used to train 0 steps and export the random MAE as 'exported MAE'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geofm.data.sample_store import build_sample_store
    from geofm.tasks.pretrain import load_pretrain_config, run_pretrain

    chips = build_sample_store(tmp_path / "chips.zarr", sample_dir=sample_dir)
    pq.write_table(pa.table({"slot": pa.array(np.zeros(0, np.int64))}), tmp_path / "empty.parquet")
    cfg = load_pretrain_config("pretrain/tiny",
                               [f"data.store={chips}", f"data.index={tmp_path / 'empty.parquet'}",
                                f"out_dir={tmp_path / 'run'}", "data.build_sample_store=false"])
    with pytest.raises(ConfigError, match="0 training chip"):
        run_pretrain(cfg)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 6. safe resume
def test_lightning_checkpoint_io_refuses_code_whatever_the_environment(tmp_path, monkeypatch):
    import torch

    from geofm.tasks.distributed import SafeCheckpointIO

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": {"x": Payload()}}, tmp_path / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refusing to load .*last.ckpt.*posix.system"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "last.ckpt")
    assert not (tmp_path / "ran").exists()
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 3}, tmp_path / "plain.ckpt")
    assert SafeCheckpointIO().load_checkpoint(tmp_path / "plain.ckpt")["epoch"] == 3


# --------------------------------------------------------------------------- 7. experiment grid first
def test_experiment_checks_the_whole_grid_before_the_first_run(tmp_path, monkeypatch):
    from geofm.tasks import experiment

    calls = []
    monkeypatch.setattr(experiment, "run_finetune", lambda cfg, stage: calls.append(cfg))
    with pytest.raises(ConfigError, match="frozn"):
        experiment.run_experiment("finetune/tiny_flood", ["full", "frozn"], [1.0], 1,
                                  out_dir=tmp_path / "exp")
    with pytest.raises(ConfigError, match="1.5"):
        experiment.run_experiment("finetune/tiny_flood", ["full"], [0.5, 1.5], 1,
                                  out_dir=tmp_path / "exp")
    assert calls == [] and not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------- 9. messages that name the culprit
def test_messages_name_the_crs_the_folder_and_the_missing_path(tmp_path):
    from geofm.data.datasets.sen1floods11 import all_pairs
    from geofm.data.hls import Grid, grid_difference
    from geofm.models.checkpoints import resolve_path

    a = Grid("EPSG:32610", (30.0, 0.0, 500000.0, 0.0, -30.0, 4200000.0), 64, 64)
    b = Grid("EPSG:32611", a.transform, 64, 64)
    assert "in CRS EPSG:32611, expected EPSG:32610" in grid_difference(b, a)
    (tmp_path / "flood" / "S2Hand").mkdir(parents=True)
    with pytest.raises(DataError, match="no chips found: .*flood/S2Hand"):
        all_pairs(tmp_path / "flood")
    for missing in (tmp_path / "model.pt", "./outputs/model", str(tmp_path / "run" / "export")):
        with pytest.raises(CheckpointError) as err:
            resolve_path(missing)
        assert "huggingface-cli" not in str(err.value) and "not found" in str(err.value)


def test_predict_keeps_an_existing_output_unless_asked(tmp_path):
    from geofm.errors import OutputError
    from geofm.infer.predict import check_prediction_paths

    out = tmp_path / "map.tif"
    out.write_bytes(b"earlier")
    with pytest.raises(OutputError, match="--overwrite"):
        check_prediction_paths(out, overwrite=False)
    check_prediction_paths(out, overwrite=True)  # the library default replaces it, with a warning
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_prediction_paths(tmp_path / "folder.tif", overwrite=True)
