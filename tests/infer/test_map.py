"""``geofm map`` on generated HLS granules of 5 real MGRS tiles across UTM zones 10 and 11.

The granules are 96 px of 1143.75 m, so each covers its real 109.8 km tile and neighbours
overlap as HLS tiles do (10SGG and 11SKB by ~80 km across the zone boundary). Tiles run with a
tiny random segmentation export; the mosaic and catalog steps are checked too.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio

from geofm import cli
from geofm.data import synthetic
from geofm.data.hls import group_granules
from geofm.infer import region

SIZE = 96
PIXEL = 109_800 / SIZE
# per tile: (date, product, cloud cover); 10SGF has too few dates and is skipped
SEASON = [("2021-05-03", "S30", 0.3), ("2021-05-20", "L30", 0.0), ("2021-06-12", "S30", 0.1),
          ("2021-07-02", "S30", 0.05)]
REGION = {"10SFG": SEASON, "10SGG": SEASON[1:] + [("2021-07-20", "S30", 0.2)], "11SKB": SEASON,
          "11SKA": SEASON[:3], "10SGF": SEASON[:2]}
EXPECTED = {"T10SFG": "T10SFG_2021-05-20_2021-07-02.tif", "T10SGG": "T10SGG_2021-05-20_2021-07-02.tif",
            "T11SKB": "T11SKB_2021-05-20_2021-07-02.tif", "T11SKA": "T11SKA_2021-05-03_2021-06-12.tif"}
OPTS = ["--tile", "64", "--overlap", "16", "--batch-size", "4", "--resolution", "2000"]


def write_region(d: Path, tiles=REGION, size=SIZE) -> Path:
    for i, (tile, dates) in enumerate(sorted(tiles.items())):
        for k, (day, product, cloud) in enumerate(dates):
            when = dt.datetime.fromisoformat(day).replace(hour=18, minute=49, second=19)
            synthetic.write_granule(d, tile, when, size=size, seed=100 * i + k, cloud_cover=cloud, product=product,
                                    pixel_size=109_800 / size)
    return d


@pytest.fixture(scope="module")
def granules(tmp_path_factory):
    return write_region(tmp_path_factory.mktemp("region"))


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "map-log.jsonl").read_text().splitlines()]


def runs(lines: list[dict]) -> list[list[dict]]:
    order = list(dict.fromkeys(r["run"] for r in lines))
    return [[r for r in lines if r["run"] == run] for run in order]


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, granules, land_water_export):
    """One ``geofm map`` through the CLI with a LocalCluster of 2 workers: (out dir, stdout)."""
    out = tmp_path_factory.mktemp("map") / "out"
    argv = ["map", "--checkpoint", str(land_water_export), str(granules), "--out", str(out), "--workers", "2", *OPTS]
    proc = subprocess.run([sys.executable, "-m", "geofm.cli", *argv], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, GEOFM_PROGRESS="plain"))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


# --------------------------------------------------------------------------- the rule
def _frame(day: str, gid: str):
    from geofm.data.hls import Frame

    return Frame(sources=[], fmask=None, datetime=dt.datetime.fromisoformat(day), granule_id=gid)


def test_frame_choice_rule_lowest_bad_fraction_ties_to_the_earlier_date():
    fs = [_frame("2021-05-01", "a"), _frame("2021-05-10", "b"), _frame("2021-05-20", "c"), _frame("2021-06-01", "d"),
          _frame("2021-06-10", "e")]
    scores = {"a": 0.2, "b": 0.05, "c": 0.2, "d": 1.0, "e": 0.01}
    chosen, reason = region.choose_frames(fs, scores, 3)
    assert reason is None and [f.granule_id for f in chosen] == ["a", "b", "e"]  # a ties c: earlier wins; date order
    chosen, reason = region.choose_frames(fs, scores, 5)
    assert chosen == [] and "4 usable date(s)" in reason and "1 fully cloudy" in reason


def test_plan_scores_from_the_fmask_overview_and_picks_the_zone_with_most_area(granules):
    frames, skipped = group_granules(str(p) for p in granules.glob("*.tif"))
    assert not skipped
    plans = {tp.name: tp for tp in region.plan_tiles(frames, 3)}
    assert sorted(plans) == ["T10SFG", "T10SGF", "T10SGG", "T11SKA", "T11SKB"]
    assert {n: tp.file_name for n, tp in plans.items() if tp.reason is None} == EXPECTED
    assert plans["T10SGF"].reason.startswith("2 date(s) in the window")
    assert {f.product for f in plans["T10SFG"].frames} == {"S30", "L30"}
    for f in plans["T10SFG"].candidates:  # the overview score is close to the full-resolution fraction
        with rasterio.open(f.fmask[0]) as src:
            fm = src.read(1)
        full = (region.hls.cloud_mask(fm) | (fm == 255)).mean()
        assert abs(plans["T10SFG"].scores[f.granule_id] - full) < 0.05
    assert region.default_crs(list(plans.values())) == "EPSG:32610"  # 3 tiles in zone 10, 2 in zone 11
    assert region.default_crs([plans["T11SKA"], plans["T11SKB"], plans["T10SFG"]]) == "EPSG:32611"
    window = region.plan_tiles(frames, 3, start=dt.date(2021, 5, 15), end=dt.date(2021, 7, 10))
    assert {tp.name: tp.file_name for tp in window if tp.reason is None} == {
        "T10SFG": EXPECTED["T10SFG"], "T10SGG": EXPECTED["T10SGG"], "T11SKB": EXPECTED["T11SKB"]}
    # an AOI around the zone boundary at 37.5 N touches 10SGG and 11SKB only
    aoi = {"type": "Polygon", "coordinates": [[[-120.1, 37.4], [-119.9, 37.4], [-119.9, 37.6], [-120.1, 37.6],
                                               [-120.1, 37.4]]]}
    assert sorted(tp.name for tp in region.plan_tiles(frames, 3, aoi=aoi)) == ["T10SGG", "T11SKB"]


# --------------------------------------------------------------------------- end to end
def test_map_cli_tiles_equal_geofm_predict_and_log_every_tile(mapped, land_water_export, granules, tmp_path):
    out, stdout = mapped
    assert sorted(p.name for p in (out / "tiles").iterdir()) == sorted(EXPECTED.values())
    assert "skipped T10SGF: 2 date(s) in the window, the model takes 3" in stdout
    assert "5 tile(s): 4 predicted, 0 already done, 1 skipped, 0 failed" in stdout and "km²/s" in stdout
    assert "map: 4/4 tiles (100%)" in stdout
    from geofm.infer.precision import resolve_precision

    precision = resolve_precision("auto", "cpu")  # printed, resolved once for every tile, as geofm predict's
    assert f"precision {precision} (auto)" in stdout
    lines = {r["tile"]: r for r in read_log(out)}
    assert lines["T10SGF"]["outcome"] == "skipped" and all(lines[t]["outcome"] == "done" for t in EXPECTED)
    # the model is loaded once per worker, never per task
    workers = {lines[t]["worker"] for t in EXPECTED}
    assert sum(lines[t]["model_loaded"] for t in EXPECTED) == len(workers) <= 2
    for name, file_name in EXPECTED.items():
        rec = lines[name]
        assert rec["dates"] == [d[:10] for d in rec["dates"]] and len(rec["inputs"]) == 3
        assert rec["seconds"] > 0 and rec["path"].endswith(file_name)
        inputs = [str(p) for gid in rec["inputs"] for p in granules.glob(f"{gid}.*.tif")]
        ref = tmp_path / f"{name}.tif"
        assert cli.main(["predict", "--checkpoint", str(land_water_export), "--inputs", *inputs, "--out", str(ref),
                         "--tile", "64", "--overlap", "16", "--batch-size", "4"]) == 0
        assert (out / "tiles" / file_name).read_bytes() == ref.read_bytes(), name
        with rasterio.open(ref) as src:
            assert src.crs.to_epsg() == (32610 if name.startswith("T10") else 32611) and src.width == SIZE
            assert src.tags()["geofm_precision"] == precision


def test_the_viewer_shows_a_map_folder_with_the_inputs_its_catalog_names(mapped, granules):
    """``geofm view DIR`` on a map folder: the mosaic, the tiles and the source granules of every tile."""
    from geofm.viz.layers import discover

    out, _ = mapped
    layers = discover([out])
    names = {la.name for la in layers}
    assert {"mosaic", *(Path(f).stem for f in EXPECTED.values())} <= names
    granule_layers = {la.name for la in layers if la.kind == "reflectance"}
    assert granule_layers == {f"HLS {t}" for t in EXPECTED}  # the skipped tile's granules are no map input
    by_name = {la.name: la for la in layers}
    assert by_name["mosaic"].kind == "classes" and len(by_name["HLS T10SFG"].dates) == 3


def test_map_mosaic_and_catalog(mapped):
    """At each tile's centre (no other tile covers it) the mosaic holds the tile's value, reprojected nearest."""
    from pystac import read_file
    from rasterio.warp import transform as reproject_points

    out, _ = mapped
    with rasterio.open(out / "mosaic.tif") as m:
        assert m.crs.to_epsg() == 32610 and m.res == (2000.0, 2000.0)
        mosaic = m.read(1)
        for file_name in EXPECTED.values():
            with rasterio.open(out / "tiles" / file_name) as t:
                (mx,), (my,) = reproject_points(t.crs, m.crs, *map(list, zip(t.xy(t.height // 2, t.width // 2))))
                r, c = m.index(mx, my)
                (tx,), (ty,) = reproject_points(m.crs, t.crs, *map(list, zip(m.xy(r, c))))
                value = next(t.sample([(tx, ty)]))[0]
            assert mosaic[r, c] == value != m.nodata, file_name
    cat = read_file(str(out / "catalog.json"))
    assert len(list(cat.get_items(recursive=True))) == len(EXPECTED) + 1


def _run(argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "geofm.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, GEOFM_PROGRESS="plain"), **kw)


def test_kill_9_mid_run_then_rerun_recomputes_no_finished_tile(mapped, granules, land_water_export, tmp_path):
    out = tmp_path / "out"
    argv = ["map", "--checkpoint", str(land_water_export), str(granules), "--out", str(out), "--workers", "1",
            "--batch-size", "1", *OPTS[:4], *OPTS[6:]]
    proc = _run(argv, start_new_session=True)
    log_file = out / "map-log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if log_file.exists() and '"outcome": "done"' in log_file.read_text():
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its Dask workers
    proc.wait()
    first = [r for r in read_log(out) if r["outcome"] == "done"]
    assert 1 <= len(first) < len(EXPECTED), "the run was not cut in the middle"
    mtimes = {r["tile"]: Path(r["path"]).stat().st_mtime_ns for r in first}
    again = _run(argv)
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    second = runs(read_log(out))[-1]
    outcome = {r["tile"]: r["outcome"] for r in second}
    assert all(outcome[r["tile"]] == "exists" for r in first)  # finished tiles are not recomputed
    assert sorted(t for t, o in outcome.items() if o == "done") == sorted(set(EXPECTED) - set(mtimes))
    assert {t: Path(r["path"]).stat().st_mtime_ns for t, r in ((r["tile"], r) for r in first)} == mtimes
    ref, _ = mapped
    for file_name in EXPECTED.values():
        assert (out / "tiles" / file_name).read_bytes() == (ref / "tiles" / file_name).read_bytes()
    assert not list((out / "tiles").glob(".*"))  # no part folder or temporary file left
    assert (out / "mosaic.tif").read_bytes() == (ref / "mosaic.tif").read_bytes()


def test_external_dask_cluster_gives_the_same_tiles_and_loads_the_model_once_per_worker(mapped, granules,
                                                                                        land_water_export,
                                                                                        tmp_path):
    sched_file = tmp_path / "scheduler.json"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--scheduler-file", str(sched_file), "--port", "0",
                               "--host", "127.0.0.1", "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for _ in range(2):
            procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1",
                                           "--no-dashboard", "--host", "127.0.0.1"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
            out = tmp_path / "out"
            assert cli.main(["map", "--checkpoint", str(land_water_export), str(granules), "--out", str(out),
                             "--scheduler", address, *OPTS]) == 0
            loads = client.run(lambda: __import__("geofm.infer.region", fromlist=["x"]).MODEL_LOADS["count"])
        assert len(loads) == 2 and all(n <= 1 for n in loads.values()) and sum(loads.values()) >= 1
        lines = [r for r in read_log(out) if r["outcome"] == "done"]
        assert {r["worker"] for r in lines} <= set(loads) and sum(r["model_loaded"] for r in lines) == \
            sum(loads.values())
        ref, _ = mapped
        for file_name in EXPECTED.values():
            assert (out / "tiles" / file_name).read_bytes() == (ref / "tiles" / file_name).read_bytes()
        assert (out / "mosaic.tif").read_bytes() == (ref / "mosaic.tif").read_bytes()
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_truncated_band_file_fails_its_tile_only_and_the_rerun_finishes_it(granules, land_water_export, tmp_path,
                                                                              capsys):
    src = tmp_path / "granules"
    shutil.copytree(granules, src)
    victim = next(src.glob("HLS.S30.T11SKB.2021163T184919.v2.0.B04.tif"))
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    argv = ["map", "--checkpoint", str(land_water_export), str(src), "--out", str(out), "--scheduler", "sync", *OPTS]
    assert cli.main(argv) == 1
    printed = capsys.readouterr().out
    assert "FAILED T11SKB: cannot read band 1 of" in printed and "B04.tif" in printed
    assert "1 failed" in printed and "mosaic not written" in printed
    assert sorted(p.name for p in (out / "tiles").glob("*.tif")) == sorted(
        v for k, v in EXPECTED.items() if k != "T11SKB")
    assert not (out / "mosaic.tif").exists()
    victim.write_bytes(good)
    assert cli.main(argv) == 0
    second = {r["tile"]: r["outcome"] for r in runs(read_log(out))[-1]}
    assert second == {"T10SFG": "exists", "T10SGG": "exists", "T11SKA": "exists", "T11SKB": "done",
                      "T10SGF": "skipped"}
    assert (out / "tiles" / EXPECTED["T11SKB"]).is_file()
