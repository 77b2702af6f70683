"""Ingest throughput vs raw GeoTIFF decoding of the same files, measured in the same run.

    .venv/bin/python bench/ingest.py [--size 3660] [--workers 2]

Generates (once, into bench/_data/) three full HLS S30 granules of MGRS tile 10SEG
(3660x3660 px, 6 bands + Fmask, UTM 10N, tiled deflate GeoTIFFs as NASA ships them), then
measures with the same number of worker processes:
  * raw decode: every band and Fmask file read whole with rasterio (the floor of any ingest),
    by a pool of long-lived worker processes;
  * geofm ingest: plan + read + cloud/nodata stats + filter + Zarr shards + metadata, on a
    Dask LocalCluster started (and warmed up) once.
Throughput is decoded raster bytes (int16 bands + uint8 Fmask) per wall-clock second. Both
run in interleaved rounds and the best round of each is reported (the machine may be shared).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def make_data(root: Path, size: int) -> list[Path]:
    from geofm.data import synthetic

    d = root / f"hls_{size}"
    files = sorted(d.glob("*.tif"))
    if len(files) == 21:
        return files
    shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    synthetic.write_time_series(d, tile="10SEG", size=size, seed=1, cloud_cover=[0.02, 0.05, 0.1],
                                swath_edge=0.05)
    print(f"generated 3 granules of {size}x{size} in {time.perf_counter() - t0:.0f} s -> {d}", flush=True)
    return sorted(d.glob("*.tif"))


def _decode(path: str) -> int:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1).nbytes


def _warm_imports() -> None:
    import geofm.data.ingest  # noqa: F401
    import numcodecs.blosc  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import rasterio  # noqa: F401
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # the raw decode gets the malloc settings geofm's ingest tasks apply to their workers


def raw_decode(files: list[Path], pool) -> tuple[float, int]:
    """Decode every file whole in ``pool`` (None: in this process)."""
    t0 = time.perf_counter()
    if pool is None:
        nbytes = sum(_decode(str(f)) for f in files)
    else:
        nbytes = sum(pool.map(_decode, [str(f) for f in files], chunksize=1))
    return time.perf_counter() - t0, nbytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3660)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best of each reported)")
    ap.add_argument("--data", default=str(REPO / "bench" / "_data"))
    args = ap.parse_args()
    import os

    from dask.distributed import Client, LocalCluster

    from geofm.data.ingest import IngestConfig, ingest
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    files = make_data(Path(args.data), args.size)
    in_mb = sum(f.stat().st_size for f in files) / 1e6
    for f in files:  # warm the page cache so both sides read from memory, not disk
        f.read_bytes()
    out = REPO / "bench" / "_out" / "ingest_store.zarr"
    cfg = IngestConfig(chip_size=224, frames=3, max_cloud=0.2, max_nodata=0.0)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    # one-off per worker process: import geofm's ingest stack (rasterio/GDAL, pyarrow, numcodecs), as the
    # workers of a long ingest have long done; counted with the cluster start-up, on its own row
    with Client(cluster) as warm:
        warm.run(_warm_imports)
    t_start = time.perf_counter() - t0
    # the raw decode gets the same treatment: long-lived worker processes with rasterio imported
    pool = mp.get_context("spawn").Pool(args.workers, initializer=_warm_imports)
    pool.map(_decode, [str(files[-1])] * args.workers)
    best: dict[str, tuple[float, int]] = {}
    per_round: list[float] = []  # ingest throughput / raw 2-process throughput, round by round

    def keep(name: str, t: float, nbytes: int) -> None:
        if name not in best or t < best[name][0]:
            best[name] = (t, nbytes)

    try:
        for r in range(args.rounds):  # interleaved: load changes on a shared machine hit both sides alike
            t1 = raw_decode(files, None)
            t2 = raw_decode(files, pool)
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            res = ingest([str(f) for f in files], str(out), cfg, scheduler=cluster.scheduler_address)
            t3 = (time.perf_counter() - t0, res.bytes_read)
            keep("raw rasterio decode, 1 process", *t1)
            keep(f"raw rasterio decode, {args.workers} processes", *t2)
            keep(f"geofm ingest, Dask LocalCluster {args.workers} processes", *t3)
            per_round.append((t3[1] / t3[0]) / (t2[1] / t2[0]))
            print(f"  round {r + 1}: raw decode {t1[0]:.2f} s (1 process), {t2[0]:.2f} s ({args.workers}); "
                  f"ingest {t3[0]:.2f} s ({per_round[-1] * 100:.0f}% of raw); load average {os.getloadavg()[0]:.1f}",
                  flush=True)
    finally:
        pool.close()
        cluster.close()
    rows = [(name, t, nb) for name, (t, nb) in best.items()]
    rows.append(("  same, counting cluster start-up + imports", rows[-1][1] + t_start, rows[-1][2]))
    base = rows[1]
    store_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6

    print(f"\n3 granules x (6 bands + Fmask), {args.size}x{args.size} px: {in_mb:.0f} MB of GeoTIFF on disk, "
          f"{base[2] / 1e6:.0f} MB decoded")
    print(f"ingest: {res.chips} chips kept, rejected {res.rejected}, {res.tasks_run} tasks; store {store_mb:.0f} MB")
    print(f"best of {args.rounds} interleaved rounds; load average before {load0[0]:.1f}, after "
          f"{os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs)\n")
    print(f"| {'work':48s} | {'seconds':>7s} | {'MB/s decoded':>12s} | {'vs raw decode':>13s} |")
    print(f"|{'-' * 50}|{'-' * 9}|{'-' * 14}|{'-' * 15}|")
    for name, secs, nb in rows:
        print(f"| {name:48s} | {secs:7.2f} | {nb / 1e6 / secs:12.1f} | "
              f"{(nb / secs) / (base[2] / base[1]) * 100:12.0f}% |")
    ratio = (rows[2][2] / rows[2][1]) / (base[2] / base[1])
    print(f"\ningest throughput = {ratio * 100:.0f}% of raw decode with the same {args.workers} processes "
          f"(target >= 55%); the cluster start-up and worker imports ({t_start:.1f} s) are a one-off cost shown "
          f"on their own row; median of the per-round ratios {statistics.median(per_round) * 100:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
