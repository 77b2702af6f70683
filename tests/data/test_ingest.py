import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
import zarr

from geofm import cli
from geofm.data import hls, ingest, store, synthetic
from geofm.errors import DataError


def test_store_contents_match_sources(hls_series, tiny_store):
    _, paths = hls_series
    out, res = tiny_store
    assert res.tasks_total == 4 and res.tasks_run == 4
    meta = store.read_metadata(out)
    n = len(meta["slot"])
    assert n == res.chips and 0 < n < 16  # the swath edge removes some chips (max_nodata 0)
    assert (meta["nodata_frac"] == 0).all()
    frames, _ = hls.group_granules(paths)
    reader = store.ShardReader(out)
    assert reader.fast
    chips = reader.read(meta["slot"])
    assert chips.shape == (n, 3, 6, 32, 32)
    from rasterio.windows import Window

    for i in [0, n - 1]:
        r, c = int(meta["chip_row"][i]), int(meta["chip_col"][i])
        for t in range(3):
            data, _ = hls.read_frame_window(frames[t], Window(c * 32, r * 32, 32, 32))
            np.testing.assert_array_equal(chips[i, t], data)
        # georeferencing of the chip
        with rasterio.open(frames[0].sources[0][0]) as src:
            x, y = src.xy(r * 32, c * 32, offset="ul")
        assert meta["transform"][i][2] == pytest.approx(x) and meta["transform"][i][5] == pytest.approx(y)
        assert rasterio.crs.CRS.from_wkt(meta["crs"][i]).to_epsg() == 32610
        np.testing.assert_allclose(meta["band_mean"][i], chips[i].transpose(1, 0, 2, 3).reshape(6, -1).mean(1))
    assert 37.0 < meta["lat"].min() < meta["lat"].max() < 38.0  # tile 10SEG, California
    assert meta["dates"][0].tolist() == ["2020-03-15", "2020-06-20", "2020-09-10"]
    assert meta["doy"][0].tolist() == [75, 172, 254]
    # zarr-python reads what the fast reader reads
    arr = zarr.open_array(str(out), path="chips", mode="r")
    np.testing.assert_array_equal(arr[int(meta["slot"][0])], chips[0])
    assert arr.shards[0] == 4 and arr.chunks[0] == 1
    attrs = store.store_attrs(store.as_location(out))
    assert attrs["complete"] and attrs["n_chips"] == n and attrs["bands"][3] == "NIR_NARROW"


def test_thresholds_filter_chips(hls_series, tmp_path):
    d, _ = hls_series
    strict = ingest.ingest([str(d)], str(tmp_path / "s"), ingest.IngestConfig(chip_size=32, max_cloud=0.0),
                           scheduler="sync")
    loose = ingest.ingest([str(d)], str(tmp_path / "l"), ingest.IngestConfig(chip_size=32, max_cloud=1.0,
                                                                             max_nodata=1.0), scheduler="sync")
    assert loose.chips == 16
    assert strict.chips < loose.chips and strict.rejected["cloud"] > 0
    meta = store.read_metadata(tmp_path / "s")
    assert (meta["cloud_frac"] == 0).all()


def test_rerun_is_a_noop_and_other_plan_refused(hls_series, tiny_store):
    d, _ = hls_series
    out, res = tiny_store
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = ingest.ingest([str(d)], str(out), ingest.IngestConfig(chip_size=32, max_cloud=1.0, rows_per_task=1), scheduler="sync")
    assert again.already_complete and again.tasks_run == 0 and again.chips == res.chips
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="different ingest"):
        ingest.ingest([str(d)], str(out), ingest.IngestConfig(chip_size=16), scheduler="sync")


def _store_snapshot(path):
    meta = store.read_metadata(path)
    chips = store.ShardReader(path).read(meta["slot"])
    return meta, chips


SLOW_INGEST = """
import sys, time
import geofm.data.ingest as ing
import geofm.data.ingest.run as ing_run
orig = ing_run.run_task
def slow(*a):
    r = orig(*a)
    time.sleep(0.4)
    return r
ing_run.run_task = slow
ing.ingest([sys.argv[1]], sys.argv[2], ing.IngestConfig(chip_size=16, max_cloud=1.0, rows_per_task=1), scheduler="sync")
"""


@pytest.mark.slow
def test_kill_9_then_resume_equals_clean_run(hls_series, tmp_path):
    d, _ = hls_series
    clean = tmp_path / "clean"
    ingest.ingest([str(d)], str(clean), ingest.IngestConfig(chip_size=16, max_cloud=1.0, rows_per_task=1), scheduler="sync")
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(d), str(out)])
    parts = out / "meta" / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and (not parts.exists() or len(list(parts.glob("*.parquet"))) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(parts.glob("*.parquet")))
    assert 3 <= n_done < 8 and not (out / "metadata.parquet").exists()
    # a crash in the middle of a shard write leaves a truncated shard file behind: simulate it
    shard = out / "chips" / "c" / str(n_done) / "0" / "0" / "0" / "0"
    shard.parent.mkdir(parents=True, exist_ok=True)
    shard.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="did not finish"):
        store.read_metadata(out)
    res = ingest.ingest([str(d)], str(out), ingest.IngestConfig(chip_size=16, max_cloud=1.0, rows_per_task=1), scheduler="sync")
    assert res.tasks_run == 8 - n_done
    m1, c1 = _store_snapshot(clean)
    m2, c2 = _store_snapshot(out)
    for k in m1:
        np.testing.assert_array_equal(m1[k], m2[k])
    np.testing.assert_array_equal(c1, c2)


def test_partial_run_then_resume(hls_series, tmp_path):
    d, _ = hls_series
    out = tmp_path / "p"
    cfg = ingest.IngestConfig(chip_size=32, max_cloud=1.0, rows_per_task=1)
    first = ingest.ingest([str(d)], str(out), cfg, scheduler="sync", max_tasks=2)
    assert first.tasks_run == 2 and not (out / "metadata.parquet").exists()
    second = ingest.ingest([str(d)], str(out), cfg, scheduler="sync")
    assert second.tasks_run == 2 and (out / "metadata.parquet").exists()


@pytest.mark.slow
def test_dask_local_cluster_with_processes(hls_series, tmp_path):
    d, _ = hls_series
    res = ingest.ingest([str(d)], str(tmp_path / "dask"), ingest.IngestConfig(chip_size=32, max_cloud=1.0),
                        n_workers=2, processes=True)
    ref = ingest.ingest([str(d)], str(tmp_path / "sync"), ingest.IngestConfig(chip_size=32, max_cloud=1.0),
                        scheduler="sync")
    assert res.chips == ref.chips
    m1, c1 = _store_snapshot(tmp_path / "dask")
    m2, c2 = _store_snapshot(tmp_path / "sync")
    np.testing.assert_array_equal(c1, c2)


def test_landcover_majority(hls_series, tmp_path):
    d, _ = hls_series
    lc = synthetic.write_landcover(tmp_path / "lc.tif", tile="10SEG", size=128, seed=3)
    ingest.ingest([str(d)], str(tmp_path / "s"), ingest.IngestConfig(chip_size=32, max_cloud=1.0, max_nodata=1.0,
                                                                     landcover=str(lc)), scheduler="sync")
    meta = store.read_metadata(tmp_path / "s")
    with rasterio.open(lc) as src:
        cover = src.read(1)
    for i in range(len(meta["slot"])):
        r, c = meta["chip_row"][i], meta["chip_col"][i]
        block = cover[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
        assert meta["landcover"][i] == np.bincount(block.ravel()).argmax()


def test_real_landsat_stacks_with_cfmask(sample_dir, tmp_path):
    """22 real Landsat 5/7 stacks (5x5 px, EPSG:32613) with their CFmask band (0 clear, 1 water,
    2 shadow, 3 snow, 4 cloud, 255 fill; SLC-off gaps are fill)."""
    images = sample_dir / "landsat_p035r032" / "images"
    res = ingest.ingest([str(images)], str(tmp_path / "ls"),
                        ingest.IngestConfig(chip_size=4, frames=3, max_cloud=1.0, max_nodata=0.2,
                                            stacked_fmask_band=8, fmask_kind="cfmask"), scheduler="sync")
    meta = store.read_metadata(tmp_path / "ls")
    assert res.tasks_total == 7  # 22 dates -> 7 series of 3
    # independent expectation from the raw stacks (4x4 chip at the upper left)
    stacks = sorted(images.glob("*/*.gtif"), key=lambda p: ingest.date_from_name(p.name))
    expected = []
    for k in range(7):
        arrs = [rasterio.open(p).read()[:, :4, :4] for p in stacks[3 * k:3 * k + 3]]
        nodata = np.stack([(a[:6] == -9999).any(0) | (a[7] == 255) | (a[7] == -9999) for a in arrs])
        cloud = np.stack([np.isin(a[7], [2, 4]) for a in arrs]) & ~nodata  # shadow, cloud (snow is not cloud)
        if nodata.mean() <= 0.2:
            expected.append((k, cloud.mean(), nodata.mean()))
    assert meta["series"].tolist() == [k for k, _, _ in expected]
    np.testing.assert_allclose(meta["cloud_frac"], [c for _, c, _ in expected])
    np.testing.assert_allclose(meta["nodata_frac"], [n for _, _, n in expected])
    assert meta["tile"][0] == "p035r032" and meta["dates"][0].tolist() == ["2011-04-20", "2011-04-28", "2011-05-14"]
    assert rasterio.crs.CRS.from_wkt(meta["crs"][0]).to_epsg() == 32613


def test_bad_inputs(tmp_path, hls_series):
    with pytest.raises(DataError, match="does not exist"):
        ingest.ingest([str(tmp_path / "nope")], str(tmp_path / "s"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no GeoTIFF files"):
        ingest.ingest([str(tmp_path / "empty")], str(tmp_path / "s"))
    d, paths = hls_series
    # only one granule: not enough acquisitions for a series of 3
    one = [str(p) for p in paths if "2020075" in str(p)]
    with pytest.raises(DataError, match="only 1 acquisition"):
        ingest.ingest(one, str(tmp_path / "s1"), scheduler="sync")
    # a truncated band file: the granule's series is refused with the file named
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in paths:
        (bad / p.name).write_bytes(p.read_bytes())
    victim = next(bad.glob("*2020172*.B04.tif"))
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DataError, match="B04.tif"):
        ingest.ingest([str(bad)], str(tmp_path / "s2"), ingest.IngestConfig(chip_size=32), scheduler="sync")
    assert not (tmp_path / "s2" / "metadata.parquet").exists()


def test_cli_ingest(hls_series, tmp_path, capsys):
    d, _ = hls_series
    out = tmp_path / "cli"
    assert cli.main(["ingest", str(d), "--out", str(out), "--chip-size", "32", "--max-cloud", "1",
                     "--rows-per-task", "1", "--scheduler", "sync"]) == 0
    text = capsys.readouterr().out
    assert "ingested 4/4 tasks" in text and "chips kept" in text
    assert cli.main(["ingest", str(d), "--out", str(out), "--chip-size", "32", "--max-cloud", "1",
                     "--rows-per-task", "1", "--scheduler", "sync"]) == 0
    assert "already complete" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["config"]["chip_size"] == 32 and len(plan["series"]) == 1


def test_tasks_align_strips_with_file_blocks(tmp_path):
    """224-px chips on 256-px blocks: 8 chip rows (1792 px = 7 blocks) per task."""
    src = tmp_path / "hls"
    synthetic.write_time_series(src, size=1800, seed=2, cloud_cover=0.0)
    frames, _ = ingest.discover_frames(ingest.expand_inputs([str(src)]), ingest.IngestConfig())
    plan, _ = ingest.plan_ingest(frames, ingest.IngestConfig(chip_size=224))
    assert [(t["row0"], t["nrows"]) for t in plan["tasks"]] == [(0, 8)]
    assert plan["n_rows"] == 8 and plan["shard"] == 8
    plan, _ = ingest.plan_ingest(frames, ingest.IngestConfig(chip_size=100))  # lcm(100, 256) = 6400: no fit
    assert all(t["nrows"] == 1 for t in plan["tasks"]) and len(plan["tasks"]) == 18


def test_band_stats_are_exact_integer_sums():
    """Per-chip band mean/std equal int64 arithmetic bit for bit, masked or not, at the int16 extremes."""
    rng = np.random.default_rng(3)
    for low, high in [(-100, 9000), (-32768, 32768)]:
        chip = rng.integers(low, high, (3, 6, 64, 48)).astype(np.int16)
        for valid in (np.ones((3, 64, 48), bool), rng.random((3, 64, 48)) > 0.3):
            x = np.where(valid[:, None], chip, 0).astype(np.int64).transpose(1, 0, 2, 3).reshape(6, -1)
            n = int(valid.sum())
            mean = x.sum(1).astype(np.float64) / n
            std = np.sqrt(np.maximum((x * x).sum(1).astype(np.float64) / n - mean * mean, 0.0))
            got_mean, got_std = ingest.task._band_stats(chip, valid)
            np.testing.assert_array_equal(got_mean, mean)
            np.testing.assert_array_equal(got_std, std)
    m, s = ingest.task._band_stats(chip, np.zeros((3, 64, 48), bool))
    assert np.isnan(m).all() and np.isnan(s).all()


def test_decode_threads_follow_the_cores_a_task_has(hls_series, tmp_path):
    """Tasks sharing the cores decode with fewer threads (no contention); the store is the same bytes."""
    from dask.distributed import Client, LocalCluster

    assert ingest.decode_threads_per_task(2, 2) == 1 and ingest.decode_threads_per_task(16, 4) == 4
    assert ingest.decode_threads_per_task(1, 3) == 1
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert ingest.run._cluster_decode_threads(client) == max(1, ingest.run.usable_cpus() // 2)
    d, _ = hls_series
    cfg = ingest.IngestConfig(chip_size=32, max_cloud=1.0)
    plan, _ = ingest.plan_ingest(ingest.discover_frames(ingest.expand_inputs([str(d)]), cfg)[0], cfg)
    shards = []
    for threads in (1, 3):
        out = tmp_path / f"t{threads}"
        ingest.ingest([str(d)], str(out), cfg, scheduler="sync", max_tasks=0)  # creates the empty store
        ingest.run_task(str(out), None, plan, 0, threads)
        files = sorted(p for p in (out / "chips" / "c").rglob("*") if p.is_file())
        shards.append({p.relative_to(out): p.read_bytes() for p in files})
    assert shards[0] and shards[0] == shards[1]
