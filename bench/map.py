"""``geofm map`` on a region of 9 MGRS tiles: 1 vs 2 Dask workers, memory per worker, the user's alternative.

    .venv/bin/python bench/map.py [--size 256] [--rounds 3]

Generates (once, into bench/_data/map/) 3 dates of synthetic HLS granules for each of 9 real
MGRS tiles across UTM zones 10 and 11 (10SEG 10SFG 10SGG 10SFF 10SGF 11SKB 11SKA 11SLB 11SLA),
``--size`` px over the real 109.8 km footprint, and a tiny random segmentation export
(prithvi_tiny, tile 64, overlap 16, batch 8). In one process, interleaved:

1. ``map_region`` on a LocalCluster of 1 worker (1 thread) started beforehand (its start and the
   workers' imports are not timed; each worker loads the model in the run), 9 tiles;
2. the same on 2 workers (1 thread each): parallel efficiency = t1 / (2 t2); the tasks' CPU seconds
   (their worker's ``process_time``) show whether 2 workers do more work, or only wait for cores;
3. 1 worker on the first 3 tiles only: the worker's peak RSS (``ru_maxrss``) after 3 and after 9
   tiles (fresh clusters) shows whether memory grows with the number of tiles;
4. the user's alternative in this process with 1 torch thread: a loop of ``predict_checkpoint``
   over the same frames, then ``rasterio.merge`` of the tiles reprojected to the mosaic CRS by
   ``WarpedVRT`` (what a user writes without ``geofm map``).

Steps 1, 2 and 4 repeat ``--rounds`` times, interleaved; each row reports its fastest round (on a
shared machine the other rounds measure the neighbours' load). The mosaic's share of the map run
is printed when ``geofm.infer.mosaic`` is installed (else the runs are tiles only). km²/s counts
the tiles' 109.8 km footprints (so it depends on ``--size``); Mpx/s counts input pixels per frame.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO / "bench" / "_data" / "map"
OUT = REPO / "bench" / "_out" / "map"
TILES = ("10SEG", "10SFG", "10SGG", "10SFF", "10SGF", "11SKB", "11SKA", "11SLB", "11SLA")
DATES = (("2021-05-03", "S30", 0.05), ("2021-05-20", "L30", 0.1), ("2021-06-12", "S30", 0.02))
OPTS = dict(tile=64, overlap=16, batch_size=8, resolution=2000.0)


def make_data(size: int) -> tuple[Path, Path]:
    from geofm.data import synthetic

    region = DATA / f"region_{size}"
    if not (region / ".done").exists():
        shutil.rmtree(region, ignore_errors=True)
        for i, tile in enumerate(TILES):
            for k, (day, product, cloud) in enumerate(DATES):
                when = dt.datetime.fromisoformat(day).replace(hour=18, minute=49, second=19)
                synthetic.write_granule(region / tile, tile, when, size=size, seed=10 * i + k, cloud_cover=cloud,
                                        product=product, pixel_size=109_800 / size)
        (region / ".done").touch()
    export = DATA / "export_tiny"
    if not (export / "config.json").is_file():
        import torch

        from geofm.bands import MODEL_BANDS, NORM_STATS
        from geofm.models import build_segmentation_model, save_finetuned

        torch.manual_seed(0)
        save_finetuned(build_segmentation_model("prithvi_tiny", num_classes=2), export, task="segmentation",
                       mean=NORM_STATS["v1"]["mean"], std=NORM_STATS["v1"]["std"], bands=MODEL_BANDS,
                       class_names=["land", "water"], img_size=64)
    return region, export


def _warm() -> int:
    import geofm.infer.predict  # noqa: F401  (torch, rasterio: imported before the clock starts)
    import geofm.infer.region  # noqa: F401

    return 0


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_map(region: Path, export: Path, tiles, workers: int, out: Path, mosaic: bool) -> dict:
    from dask.distributed import Client, LocalCluster

    from geofm.infer.region import map_region

    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(_warm)
        t0 = time.perf_counter()
        res = map_region(export, [str(region / t) for t in tiles], out, scheduler=cluster.scheduler_address,
                         mosaic=mosaic, **OPTS)
        seconds = time.perf_counter() - t0
        rss = client.run(_peak_rss_mib)
    assert not res.failed and len(res.predicted) == len(tiles), res.tiles
    return {"seconds": seconds, "mosaic_seconds": res.mosaic_seconds, "rss": max(rss.values()),
            "cpu": sum(t.cpu_seconds for t in res.predicted),
            "km2": res.area_km2, "result": res}


def run_alternative(region: Path, export: Path, res, out: Path) -> dict:
    """A loop of predict_checkpoint on the frames map chose, then rasterio.merge of WarpedVRTs."""
    import rasterio
    import torch
    from rasterio.merge import merge
    from rasterio.vrt import WarpedVRT

    from geofm.infer.predict import predict_checkpoint

    torch.set_num_threads(1)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    paths = []
    for t in res.tiles:
        files = [str(p) for gid in t.inputs for p in (region / t.tile[1:]).glob(f"{gid}.*.tif")]
        path = out / f"{t.tile}.tif"
        predict_checkpoint(export, files, path, tile=OPTS["tile"], overlap=OPTS["overlap"],
                           batch_size=OPTS["batch_size"])
        paths.append(path)
    t_tiles = time.perf_counter() - t0
    srcs = [rasterio.open(p) for p in paths]
    vrts = [WarpedVRT(s, crs=res.crs, resampling=rasterio.enums.Resampling.nearest) for s in srcs]
    arr, transform = merge(vrts, res=OPTS["resolution"], nodata=255)
    with rasterio.open(out / "mosaic.tif", "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=1,
                       dtype=arr.dtype, crs=res.crs, transform=transform, nodata=255, tiled=True,
                       compress="deflate") as dst:
        dst.write(arr)
    for v in vrts + srcs:
        v.close()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tiles_seconds": t_tiles, "mosaic_seconds": seconds - t_tiles}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="px per tile side (over 109.8 km)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (the fastest is reported)")
    args = ap.parse_args()
    region, export = make_data(args.size)
    mosaic = importlib.util.find_spec("geofm.infer.mosaic") is not None
    few = run_map(region, export, TILES[:3], 1, OUT / "w1_3tiles", mosaic)
    ones, twos, alts = [], [], []
    for r in range(args.rounds):
        ones.append(run_map(region, export, TILES, 1, OUT / "w1", mosaic))
        twos.append(run_map(region, export, TILES, 2, OUT / "w2", mosaic))
        alts.append(run_alternative(region, export, ones[-1]["result"], OUT / "alternative"))
        print(f"round {r + 1}: 1 worker {ones[-1]['seconds']:.1f} s, 2 workers {twos[-1]['seconds']:.1f} s, "
              f"loop {alts[-1]['seconds']:.1f} s", flush=True)
    one, two, alt = (min(rs, key=lambda x: x["seconds"]) for rs in (ones, twos, alts))
    mpx = len(TILES) * args.size ** 2 / 1e6
    eff = one["seconds"] / (2 * two["seconds"])
    rows = [("geofm map, 1 worker", one), ("geofm map, 2 workers", two)]
    print(f"region: {len(TILES)} tiles x 3 dates, {args.size} px over 109.8 km ({109_800 / args.size:.0f} m), "
          f"tiny model, tile 64 / overlap 16 / batch 8; mosaic step {'on' if mosaic else 'not installed (tiles only)'}")
    print("| run | wall s | km²/s | Mpx/s | mosaic share | peak RSS per worker |")
    print("|---|---|---|---|---|---|")
    for name, r in rows:
        share = f"{100 * r['mosaic_seconds'] / r['seconds']:.1f} %" if mosaic else "n/a"
        print(f"| {name} | {r['seconds']:.1f} | {r['km2'] / r['seconds']:,.0f} | {mpx / r['seconds']:.2f} | {share} "
              f"| {r['rss']:.0f} MiB |")
    print(f"| loop of predict_checkpoint + rasterio.merge (1 thread) | {alt['seconds']:.1f} | "
          f"{one['km2'] / alt['seconds']:,.0f} | {mpx / alt['seconds']:.2f} | "
          f"{100 * alt['mosaic_seconds'] / alt['seconds']:.1f} % | {_peak_rss_mib():.0f} MiB (this process) |")
    print(f"parallel efficiency 1 -> 2 workers: {100 * eff:.0f} % (target >= 80 %); CPU seconds of the tile tasks: "
          f"{one['cpu']:.1f} (1 worker), {two['cpu']:.1f} (2 workers): {two['cpu'] / one['cpu']:.2f}x the work")
    print(f"peak RSS of the worker: {few['rss']:.0f} MiB after 3 tiles, {one['rss']:.0f} MiB after 9 tiles "
          f"({one['rss'] / few['rss']:.2f}x)")
    print(f"geofm map 1 worker vs the loop: {alt['seconds'] / one['seconds']:.2f}x the loop's speed")


if __name__ == "__main__":
    main()
