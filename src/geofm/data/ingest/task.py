"""One ingest task: a strip of chip rows of one series, read, filtered and written as shards + a metadata part.

The whole flow: :mod:`geofm.data.ingest`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from geofm.data import hls, store
from geofm.data.ingest.plan import frame_from_json

log = logging.getLogger(__name__)


def run_task(store_url: str, storage_options: dict | None, plan: dict, task_id: int,
             decode_threads: int | None = None) -> dict:
    """Read one strip of chip rows of one series, filter its chips, write its shards and metadata part.

    The strip is processed chip row by chip row in a three-stage pipeline so that the cores are
    not idle while a shard is compressed and written: frames of row r+1 are decoded (GDAL
    releases the GIL and its block cache serves blocks that straddle two rows), while row r's
    masks, filter and statistics are computed, while row r-1's chips are Blosc-compressed and
    written (one writer thread; Blosc and file writes release the GIL).

    ``decode_threads``: threads decoding frames at once (default: one per frame), at most the
    cores this task has to itself (see :func:`decode_threads_per_task`): more only contend
    (measurements: ``bench/README.md``, "Ingest and loader").
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    from rasterio.windows import Window

    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # this worker process's malloc: chip rows are MBs, each a fresh mmap + page faults otherwise
    t0, c0 = time.perf_counter(), time.process_time()
    loc = store.Location(store_url, storage_options)
    cfg = plan["config"]
    task = plan["tasks"][task_id]
    s = plan["series"][task["series"]]
    size, cols = cfg["chip_size"], s["cols"]
    row0, nrows = task["row0"], task["nrows"]
    frames = [frame_from_json(f) for f in s["frames"]]
    window = Window(0, row0 * size, cols * size, nrows * size)
    landcover = _landcover_strip(cfg["landcover"], s, window) if cfg["landcover"] else None
    rows_meta: dict[str, list] = {k: [] for k in _schema().names}
    encoder = store.ShardEncoder(loc)
    rejected = {"cloud": 0, "nodata": 0}
    datasets: list[dict] = [{} for _ in frames]  # one set of open files per frame: one thread at a time uses it
    bytes_in = 0
    try:
        n_readers = len(frames) if decode_threads is None else max(1, min(len(frames), decode_threads))
        with ThreadPoolExecutor(n_readers, thread_name_prefix="geofm-decode") as readers, \
                ThreadPoolExecutor(1, thread_name_prefix="geofm-write") as writer:
            def read_row(i: int):
                win = Window(0, (row0 + i) * size, cols * size, size)
                return [readers.submit(_read_frame_row, f, win, datasets[t], cfg) for t, f in enumerate(frames)]

            pending = read_row(0)
            written = None
            for i in range(nrows):
                parts = [fut.result() for fut in pending]  # [(bands (C, h, w), nodata, cloud, bytes)] per frame
                if i + 1 < nrows:
                    pending = read_row(i + 1)
                bytes_in += sum(p[3] for p in parts)
                keep = _select_row(task, s, cfg, plan["shard"], frames, i, parts, landcover, rows_meta, rejected)
                if written is not None:
                    written.result()  # one row in flight: bounded memory, errors surface here
                written = writer.submit(_write_row, encoder, task["row_id0"] + i, keep, plan["shard"])
            if written is not None:
                written.result()
    finally:
        for ds in datasets:
            for d in ds.values():
                d.close()
    table = pa.table(rows_meta, schema=_schema())
    loc.write_bytes(f"{store.PARTS}/task-{task_id:06d}.parquet", store.table_to_bytes(table))
    return {"task": task_id, "kept": len(rows_meta["slot"]), "rejected": rejected, "bytes": bytes_in,
            "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


def _read_frame_row(frame: hls.Frame, window, datasets: dict, cfg: dict):
    """One frame's chip row: (bands (C, h, w) int16, nodata (h, w), cloud (h, w), bytes decoded)."""
    h, w = int(window.height), int(window.width)
    nodata = np.zeros((h, w), bool)
    bands, fmask = hls.read_frame_window(frame, window, datasets, nodata_out=nodata)
    nbytes = bands.nbytes
    if fmask is None:
        return bands, nodata, np.zeros((h, w), bool), nbytes
    nbytes += fmask.nbytes
    if cfg["fmask_kind"] == "cfmask":
        fmask = hls.cfmask_to_hls_fmask(fmask)
    nodata |= fmask == hls.FMASK_FILL
    return bands, nodata, hls.cloud_mask(fmask, cfg["cloud_bits"]), nbytes


def _select_row(task: dict, s: dict, cfg: dict, shard: int, frames: list, i: int, parts: list, landcover,
                rows_meta: dict, rejected: dict) -> list[tuple[int, np.ndarray]]:
    """Filter the chips of chip row ``i`` of the task, append the kept ones' metadata; returns [(col, chip)]."""
    size, cols = cfg["chip_size"], s["cols"]
    n_t = len(frames)
    row = task["row0"] + i
    width = cols * size
    nodata = np.stack([p[1][:, :width] for p in parts])  # (T, size, W)
    cloud = np.stack([p[2][:, :width] for p in parts])
    # per-chip fractions in one pass: (T, y, col, x) -> (col,); the same sums as chip by chip
    nd4 = nodata.reshape(n_t, size, cols, size)
    nodata_frac = nd4.mean(axis=(0, 1, 3))
    cloud_frac = (cloud & ~nodata).reshape(n_t, size, cols, size).mean(axis=(0, 1, 3))
    a, b, c, d, e, f = s["transform"]
    xs_c = [c + a * (col * size + size / 2) + b * (row * size + size / 2) for col in range(cols)]
    ys_c = [f + d * (col * size + size / 2) + e * (row * size + size / 2) for col in range(cols)]
    lons, lats = _to_lonlat(s["crs"], xs_c, ys_c)
    dates = [fr.datetime for fr in frames]
    keep: list[tuple[int, np.ndarray]] = []
    for col in range(cols):
        if nodata_frac[col] > cfg["max_nodata"]:
            rejected["nodata"] += 1
            continue
        if cloud_frac[col] > cfg["max_cloud"]:
            rejected["cloud"] += 1
            continue
        xs = slice(col * size, (col + 1) * size)
        chip = np.stack([p[0][:, :, xs] for p in parts])  # (T, C, size, size), C-contiguous
        keep.append((col, chip))
        mean, std = _band_stats(chip, ~nodata[:, :, xs])
        rows_meta["slot"].append((task["row_id0"] + i) * shard + col)
        rows_meta["tile"].append(s["tile"])
        rows_meta["series"].append(task["series"])
        rows_meta["chip_row"].append(row)
        rows_meta["chip_col"].append(col)
        rows_meta["crs"].append(s["crs"])
        rows_meta["transform"].append([a, b, c + a * col * size + b * row * size, d, e,
                                       f + d * col * size + e * row * size])
        rows_meta["dates"].append([x.strftime("%Y-%m-%d") for x in dates])
        rows_meta["year"].append([x.year for x in dates])
        rows_meta["doy"].append([x.timetuple().tm_yday for x in dates])
        rows_meta["lat"].append(lats[col])
        rows_meta["lon"].append(lons[col])
        rows_meta["cloud_frac"].append(float(cloud_frac[col]))
        rows_meta["nodata_frac"].append(float(nodata_frac[col]))
        rows_meta["band_mean"].append(mean.tolist())
        rows_meta["band_std"].append(std.tolist())
        ys = slice(i * size, (i + 1) * size)
        rows_meta["landcover"].append(_majority(landcover[ys, xs]) if landcover is not None else -1)
        rows_meta["granules"].append([fr.granule_id or "" for fr in frames])
    return keep


def _write_row(encoder: store.ShardEncoder, shard_id: int, keep: list[tuple[int, np.ndarray]], shard: int) -> None:
    """Compress the kept chips of one chip row and write its shard (nothing if none was kept)."""
    if not keep:
        return
    chunks: list[bytes | None] = [None] * shard
    for col, chip in keep:
        chunks[col] = encoder.compress(chip)
    encoder.write(shard_id, chunks)


def _band_stats(chip: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and std (float64) of a (T, C, H, W) int16 chip over ``valid`` (T, H, W) pixels.

    The sums are exact: each band is copied to float64 and summed, and its sum of squares is one
    BLAS dot product; every partial sum is an integer below 2**53 (at most T*H*W * 2**30), so
    the result does not depend on the order of the additions and equals int64 arithmetic.
    0.87 ms per 224 px chip of 3 dates against 1.16 ms for int32 squares summed in int64.
    """
    t, c = chip.shape[:2]
    x = chip.reshape(t, c, -1)
    if valid.all():
        n = t * x.shape[2]
    else:
        n = int(valid.sum())
        if n == 0:
            return np.full(c, np.nan), np.full(c, np.nan)
        x = np.where(valid.reshape(t, 1, -1), x, np.int16(0))
    s1, s2 = np.empty(c), np.empty(c)
    buf = np.empty((t, x.shape[2]))
    flat = buf.reshape(-1)
    for band in range(c):
        np.copyto(buf, x[:, band])
        s1[band] = flat.sum()
        s2[band] = np.dot(flat, flat)
    mean = s1 / n
    return mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))


def _schema():
    import pyarrow as pa

    return pa.schema([("slot", pa.int64()), ("tile", pa.string()), ("series", pa.int32()), ("chip_row", pa.int32()),
                      ("chip_col", pa.int32()), ("crs", pa.string()), ("transform", pa.list_(pa.float64(), 6)),
                      ("dates", pa.list_(pa.string())), ("year", pa.list_(pa.int32())), ("doy", pa.list_(pa.int32())),
                      ("lat", pa.float64()), ("lon", pa.float64()), ("cloud_frac", pa.float64()),
                      ("nodata_frac", pa.float64()), ("band_mean", pa.list_(pa.float64())),
                      ("band_std", pa.list_(pa.float64())), ("landcover", pa.int32()),
                      ("granules", pa.list_(pa.string()))])


def _to_lonlat(crs: str, xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    from rasterio.warp import transform

    lons, lats = transform(crs, "EPSG:4326", xs, ys)
    return list(lons), list(lats)


def _majority(classes: np.ndarray) -> int:
    vals = classes[classes >= 0]
    if vals.size == 0:
        return -1
    return int(np.bincount(vals.astype(np.int64)).argmax())


def _landcover_strip(path: str, series: dict, window) -> np.ndarray:
    """Land-cover classes on the strip's grid (nearest resampling if the map's grid differs); -1 = none."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    a, b, c, d, e, f = series["transform"]
    from affine import Affine

    strip_tf = Affine(a, b, c, d, e, f) @ Affine.translation(window.col_off, window.row_off)
    out = np.full((int(window.height), int(window.width)), -1, dtype=np.int32)
    with hls.open_raster(path) as src:
        nodata = src.nodata
        src_arr = rasterio.band(src, 1)
        reproject(src_arr, out, src_transform=src.transform, src_crs=src.crs, dst_transform=strip_tf,
                  dst_crs=series["crs"], dst_nodata=-1, resampling=Resampling.nearest)
    if nodata is not None:
        out[out == nodata] = -1
    return out


