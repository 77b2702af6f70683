"""Ingest: HLS scenes -> T-frame time series -> filtered chips in a Zarr chip store.

Plan: inputs are grouped into frames (HLS granules, or stacked GeoTIFFs), frames by tile,
sorted by date and cut into disjoint series of ``frames`` consecutive acquisitions. Each
series is cut into a grid of ``chip_size`` chips (partial chips at the right/bottom edges
are dropped). One task = a strip of chip rows of one series, as many rows as make the strip
start and end on the files' block (tile) boundaries (224-px chips on 256-px COG blocks: 8
chip rows = 7 block rows), so every compressed block is decoded once. A task reads its
strip of every frame, computes the chips' metadata, keeps those within the cloud/nodata
thresholds, writes one shard per chip row and then its metadata part. Tasks run on Dask.

Resume: a task is done exactly when its metadata part exists. A rerun with the same plan
skips done tasks; a finished store (``metadata.parquet`` present) is left untouched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data import hls, store
from geofm.errors import ConfigError, DataError, GeofmError
from geofm.io import write_geotiff

log = logging.getLogger(__name__)
STORE_VERSION = 1


@dataclass
class IngestConfig:
    chip_size: int = 224
    frames: int = 3
    max_cloud: float = 0.05
    max_nodata: float = 0.0
    cloud_bits: tuple[str, ...] = hls.DEFAULT_CLOUD_BITS
    landcover: str | None = None
    stacked_bands: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    stacked_fmask_band: int | None = None
    fmask_kind: str = "hls"  # "hls" bits or "cfmask" classes (Landsat stacks)
    rows_per_task: int | None = None  # chip rows per task; None: align strips with the file blocks


def check_config(cfg: IngestConfig) -> None:
    """Every option in range and every named file readable, before anything is written.

    Raises :class:`ConfigError` naming the option (``chip_size`` is ``--chip-size`` on the command line).
    """
    for name in ("chip_size", "frames"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{_opt(name)} must be a whole number >= 1, got {value!r}")
    if cfg.rows_per_task is not None and cfg.rows_per_task < 1:
        raise ConfigError(f"{_opt('rows_per_task')} must be >= 1, got {cfg.rows_per_task}")
    for name in ("max_cloud", "max_nodata"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{_opt(name)} is a fraction of a chip's pixels and must be in [0, 1], got {value}")
    unknown = [b for b in cfg.cloud_bits if b not in hls.FMASK_BITS]
    if unknown:
        raise ConfigError(f"{_opt('cloud_bits')}: unknown Fmask condition(s) {unknown}; known: {', '.join(hls.FMASK_BITS)}")
    if len(cfg.stacked_bands) != len(MODEL_BANDS) or any(b < 1 for b in cfg.stacked_bands):
        raise ConfigError(f"{_opt('stacked_bands')} must be {len(MODEL_BANDS)} 1-based band indices (Blue, Green, Red, NIR, "
                          f"SWIR1, SWIR2), got {list(cfg.stacked_bands)}")
    if cfg.stacked_fmask_band is not None and cfg.stacked_fmask_band < 1:
        raise ConfigError(f"{_opt('stacked_fmask_band')} is 1-based and must be >= 1, got {cfg.stacked_fmask_band}")
    if cfg.fmask_kind not in ("hls", "cfmask"):
        raise ConfigError(f"{_opt('fmask_kind')} must be 'hls' or 'cfmask', got {cfg.fmask_kind!r}")
    if cfg.landcover is not None:
        if "://" not in cfg.landcover and not Path(cfg.landcover).is_file():
            raise ConfigError(f"{_opt('landcover')} map '{cfg.landcover}' does not exist")
        with hls.open_raster(cfg.landcover) as src:
            if src.crs is None:
                raise DataError(f"landcover map '{cfg.landcover}' has no CRS: expected a georeferenced GeoTIFF")


def check_scheduler(scheduler: str | None, timeout: float = 5.0) -> None:
    """A ``tcp://host:port`` (or ``host:port``) Dask scheduler answers, before anything is written."""
    if scheduler in (None, "sync"):
        return
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
    if url.scheme != "tcp":
        return  # tls://, ucx:// ... are left to Dask
    try:
        host, port = url.hostname, url.port or 8786  # Dask's default scheduler port
    except ValueError:
        host = None
    if not host:
        raise ConfigError(f"--scheduler '{scheduler}' is not a Dask scheduler address (tcp://host:port), "
                          "nor 'sync'")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise DataError(f"--scheduler '{scheduler}': no Dask scheduler answers there ({e}); give the address of "
                        "a running one, omit --scheduler for a LocalCluster, or use 'sync'") from e


def _opt(name: str) -> str:
    """An option as the library and the command line call it: ``chip_size (--chip-size)``."""
    return f"{name} (--{name.replace('_', '-')})"


def check_output(out: str, storage_options: dict | None = None) -> None:
    """``out`` can hold a chip store: a new path, an empty folder or a store of an earlier ingest.

    A local path that is a file, a non-empty folder that is not a chip store, or a place this
    process cannot write is a :class:`DataError` before anything is written.
    """
    if "://" in out:
        return
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise DataError(f"--out '{out}' is an existing file, expected a chip store folder (a new path)")
    if p.is_dir() and any(p.iterdir()) and not (p / store.PLAN).exists():
        raise DataError(f"--out '{out}' is a non-empty folder that is not a chip store (no {store.PLAN}): "
                        "choose a new path, an empty folder, or the store of an earlier ingest to resume it")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"--out '{out}' cannot be written: '{parent}' is not a writable folder")


# --------------------------------------------------------------------------- planning
def expand_inputs(inputs: Sequence[str]) -> list[str]:
    """Files of ``inputs``: folders are searched (recursively) for .tif/.tiff/.gtif; URLs pass through."""
    out: list[str] = []
    for item in inputs:
        if "://" in item:
            if item.rstrip("/").endswith((".tif", ".tiff", ".gtif")):
                out.append(item)
            else:
                import fsspec

                fs, root = fsspec.core.url_to_fs(item)
                proto = item.split("://", 1)[0]
                out += [f"{proto}://{p}" for p in sorted(fs.find(root)) if p.endswith((".tif", ".tiff", ".gtif"))]
            continue
        p = Path(item)
        if p.is_dir():
            out += sorted(os.path.abspath(f) for f in p.rglob("*")
                          if f.suffix in (".tif", ".tiff", ".gtif") and f.is_file())
        elif p.is_file():
            out.append(os.path.abspath(p))
        else:
            raise DataError(f"input '{item}' does not exist")
    return out


_LANDSAT_ID = re.compile(r"L[CETMO]\d(?P<path>\d{3})(?P<row>\d{3})(?P<year>\d{4})(?P<doy>\d{3})")
_DATE_PATTERNS = [re.compile(r"(?P<year>(19|20)\d{2})-(?P<month>\d{2})-(?P<day>\d{2})"),
                  re.compile(r"(?<!\d)(?P<year>(19|20)\d{2})(?P<month>[01]\d)(?P<day>[0-3]\d)(?!\d)")]


def date_from_name(name: str) -> dt.datetime | None:
    """Acquisition date from a file name: Landsat scene ID, YYYY-MM-DD or YYYYMMDD."""
    m = _LANDSAT_ID.search(name)
    if m:
        return dt.datetime.strptime(m["year"] + m["doy"], "%Y%j")
    for pat in _DATE_PATTERNS:
        m = pat.search(name)
        if m:
            try:
                return dt.datetime(int(m["year"]), int(m["month"]), int(m["day"]))
            except ValueError:
                continue
    return None


def discover_frames(files: Sequence[str], cfg: IngestConfig) -> tuple[list[hls.Frame], list[tuple[str, str]]]:
    """HLS granules (by name) and stacked GeoTIFFs (everything else) as frames, plus skipped inputs."""
    hls_files = [f for f in files if hls.GRANULE_RE.search(f.rsplit("/", 1)[-1])]
    frames, skipped = hls.group_granules(hls_files)
    for f in files:
        if f in hls_files:
            continue
        name = f.rsplit("/", 1)[-1]
        when = date_from_name(name)
        if when is None:
            skipped.append((f, "no acquisition date in the file name (expected a Landsat ID, YYYY-MM-DD or YYYYMMDD)"))
            continue
        m = _LANDSAT_ID.search(name)
        tile = f"p{m['path']}r{m['row']}" if m else None
        frames.append(hls.stacked_frame(f, cfg.stacked_bands, cfg.stacked_fmask_band, datetime=when, tile=tile))
    return frames, skipped


def plan_ingest(frames: Sequence[hls.Frame], cfg: IngestConfig) -> tuple[dict, list[tuple[str, str]]]:
    """Build the ingest plan: series of frames and one task per chip row. Returns (plan, skipped)."""
    skipped: list[tuple[str, str]] = []
    by_tile: dict[str, list[hls.Frame]] = {}
    for f in frames:
        key = f.tile
        if key is None:  # stacked file without tile: group by grid
            g = hls.frame_grid(f)
            key = f"grid{grid_key(g)}"
            f.tile = key
        by_tile.setdefault(key, []).append(f)
    series = []
    for tile, fs in sorted(by_tile.items()):
        fs = sorted(fs, key=lambda f: f.datetime)
        n = len(fs) // cfg.frames
        if n == 0:
            skipped.append((tile, f"only {len(fs)} acquisition(s), need {cfg.frames} per series"))
        for k in range(n):
            group = fs[k * cfg.frames:(k + 1) * cfg.frames]
            try:
                grid = hls.check_same_grid(group)
            except DataError as e:
                skipped.append((f"{tile} series {k}", str(e)))
                log.info("skipping series %d of tile %s: %s", k, tile, e)
                continue
            rows, cols = grid.height // cfg.chip_size, grid.width // cfg.chip_size
            if rows == 0 or cols == 0:
                skipped.append((f"{tile} series {k}", f"scene {grid.width}x{grid.height} smaller than a chip"))
                continue
            per_task = cfg.rows_per_task or _aligned_rows(group[0], cfg.chip_size)
            series.append({"tile": tile, "frames": [_frame_to_json(f) for f in group], "crs": grid.crs,
                           "transform": list(grid.transform), "width": grid.width, "height": grid.height,
                           "rows": rows, "cols": cols, "rows_per_task": per_task})
    if not series:
        raise DataError("nothing to ingest: " + summarize_skipped(skipped))
    shard = max(s["cols"] for s in series)
    tasks, row_id = [], 0
    for i, s in enumerate(series):
        for r0 in range(0, s["rows"], s["rows_per_task"]):
            n = min(s["rows_per_task"], s["rows"] - r0)
            tasks.append({"series": i, "row0": r0, "nrows": n, "row_id0": row_id})
            row_id += n
    plan = {"version": STORE_VERSION, "config": _cfg_to_json(cfg), "series": series, "tasks": tasks,
            "shard": shard, "n_rows": row_id, "bands": list(MODEL_BANDS)}
    return plan, skipped


def grid_key(g: hls.Grid) -> str:
    """8 digits naming a grid, the same in every process and run (Python's ``hash`` is salted per process)."""
    text = json.dumps([g.crs, [round(v, 9) for v in g.transform], g.width, g.height])
    return f"{int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) % 10**8:08d}"


def summarize_skipped(skipped: Sequence[tuple[str, str]], shown: int = 3) -> str:
    """The first ``shown`` of (what, why) pairs, and how many more there are."""
    text = "; ".join(f"{a}: {b}" for a, b in skipped[:shown])
    return text + (f" (and {len(skipped) - shown} more)" if len(skipped) > shown else "")


def _aligned_rows(frame: hls.Frame, chip: int, max_rows: int = 8) -> int:
    """Chip rows whose strip height is a multiple of the files' block height (1 if none fits)."""
    with hls.open_raster(frame.sources[0][0]) as src:
        block = src.block_shapes[0][0]
    rows = math.lcm(chip, block) // chip
    return rows if rows <= max_rows else 1


def _frame_to_json(f: hls.Frame) -> dict:
    return {"sources": [list(s) for s in f.sources], "fmask": list(f.fmask) if f.fmask else None,
            "datetime": f.datetime.isoformat() if f.datetime else None, "tile": f.tile, "product": f.product,
            "granule_id": f.granule_id, "nodata": f.nodata}


def _frame_from_json(d: dict) -> hls.Frame:
    return hls.Frame(sources=[(p, int(b)) for p, b in d["sources"]],
                     fmask=(d["fmask"][0], int(d["fmask"][1])) if d["fmask"] else None,
                     datetime=dt.datetime.fromisoformat(d["datetime"]) if d["datetime"] else None,
                     tile=d["tile"], product=d["product"], granule_id=d["granule_id"], nodata=d["nodata"])


def _cfg_to_json(cfg: IngestConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# --------------------------------------------------------------------------- one task
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
    import pyarrow as pa
    from concurrent.futures import ThreadPoolExecutor
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
    frames = [_frame_from_json(f) for f in s["frames"]]
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


# --------------------------------------------------------------------------- orchestration
@dataclass
class IngestResult:
    store: str
    tasks_total: int
    tasks_run: int
    chips: int
    rejected: dict
    bytes_read: int
    seconds: float
    skipped: list
    already_complete: bool = False


def ingest(inputs: Sequence[str], out: str, cfg: IngestConfig | None = None, *, storage_options: dict | None = None,
           scheduler: str | None = None, n_workers: int | None = None, processes: bool = True,
           progress: Callable[[int, int], None] | None = None, max_tasks: int | None = None,
           gdal_options=None) -> IngestResult:
    """Ingest ``inputs`` into the chip store ``out`` (resumable). See the module docstring.

    ``scheduler``: address of an existing Dask scheduler; ``None`` starts a LocalCluster of
    ``n_workers`` (default: CPU count) ``processes`` (or threads); ``"sync"`` runs in-process.
    ``max_tasks`` stops after that many tasks (for tests of resumption). ``gdal_options``: a
    :class:`~geofm.data.remote.stream.WorkerGdalOptions` that every task sets in its worker
    (credentials for streamed COGs on workers that did not inherit this process's environment).
    """
    t0 = time.perf_counter()
    cfg = cfg or IngestConfig()
    check_config(cfg)
    check_output(out, storage_options)
    check_scheduler(scheduler)
    loc = store.Location(out, storage_options)
    files = expand_inputs(inputs)
    if not files:
        raise DataError(f"no GeoTIFF files (.tif, .tiff, .gtif) found in {', '.join(repr(i) for i in inputs)}")
    frames, skipped = discover_frames(files, cfg)
    if not frames:
        raise DataError("no usable frames: " + summarize_skipped(skipped))
    plan, more = plan_ingest(frames, cfg)
    skipped += more
    plan_bytes = json.dumps(plan, sort_keys=True).encode()
    if loc.exists(store.PLAN):
        if loc.read_bytes(store.PLAN) != plan_bytes:
            raise DataError(f"store '{out}' was created by a different ingest (inputs or options differ); "
                            "use a new store path or delete it")
        if loc.exists(store.METADATA):
            log.info("store %s is complete: nothing to do", out)
            meta = store.read_metadata(loc)
            return IngestResult(out, len(plan["tasks"]), 0, len(meta["slot"]), {}, 0,
                                time.perf_counter() - t0, skipped, already_complete=True)
    else:
        attrs = {"version": STORE_VERSION, "bands": list(MODEL_BANDS), "frames": cfg.frames, "chip_size": cfg.chip_size,
                 "shard": plan["shard"], "complete": False, "reflectance_scale": 10000, "nodata": HLS_NODATA}
        store.create_chip_array(loc, plan["n_rows"] * plan["shard"], cfg.frames, len(MODEL_BANDS),
                                cfg.chip_size, plan["shard"], attrs)
        loc.write_bytes(store.PLAN, plan_bytes)
    done = {int(n.split("-")[1].split(".")[0]) for n in loc.listdir(store.PARTS) if n.endswith(".parquet")}
    todo = [i for i in range(len(plan["tasks"])) if i not in done]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    results = _run_tasks(loc, plan, todo, scheduler, n_workers, processes, progress, len(done), gdal_options)
    rejected = {"cloud": sum(r["rejected"]["cloud"] for r in results),
                "nodata": sum(r["rejected"]["nodata"] for r in results)}
    finished = len(done) + len(results) == len(plan["tasks"])
    n_chips = sum(r["kept"] for r in results)
    if finished:
        n_chips = consolidate(loc)
    return IngestResult(out, len(plan["tasks"]), len(results), n_chips, rejected,
                        sum(r["bytes"] for r in results), time.perf_counter() - t0, skipped)


def _run_tasks(loc, plan, todo, scheduler, n_workers, processes, progress, n_done, gdal_options=None) -> list[dict]:
    total = len(plan["tasks"])
    results: list[dict] = []
    if not todo:
        return results
    if scheduler == "sync":
        for i in todo:
            with _gdal_applied(gdal_options):
                results.append(run_task(loc.url, loc.storage_options, plan, i, decode_threads_per_task(_cpus(), 1)))
            if progress:
                progress(n_done + len(results), total)
        return results
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed import KilledWorker

    cluster = None
    if scheduler is None:
        import os

        workers = n_workers or min(len(todo), os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                               dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as e:  # unreachable (timeout) or not an address
            raise DataError(f"--scheduler '{scheduler}': cannot connect to a Dask scheduler there ({e}); give "
                            "the address of a running one (tcp://host:8786), omit it for a LocalCluster, or "
                            "use 'sync'") from e
    try:
        threads = _cluster_decode_threads(client)
        plan_future = client.scatter(plan, broadcast=True)
        futures = [client.submit(_run_task_reporting, loc.url, loc.storage_options, plan_future, i, threads,
                                 gdal_options, pure=False) for i in todo]
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except KilledWorker as e:
                raise DataError(f"an ingest task killed its Dask worker (out of memory, or a crash in GDAL on "
                                f"a damaged input?): {e}") from e
            if "error" in res:  # a data error on a worker: stop, and say it as the sync scheduler would
                client.cancel(futures)
                raise _ERRORS.get(res["kind"], DataError)(res["error"])
            results.append(res)
            if progress:
                progress(n_done + len(results), total)
    finally:
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)  # a cluster stopped mid-work logs closed connections: not news
        try:
            client.close()
            if cluster is not None:
                cluster.close()
        finally:
            logging.disable(previous)
    return results


_ERRORS = {"ConfigError": ConfigError, "DataError": DataError}


def _cpus() -> int:
    """CPUs this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_threads_per_task(cpus: int, concurrent_tasks: int) -> int:
    """Decode threads of one task when ``concurrent_tasks`` tasks share ``cpus`` CPUs (at least 1)."""
    return max(1, cpus // max(1, concurrent_tasks))


def _cluster_decode_threads(client) -> int:
    """Decode threads per task on a Dask cluster: the fewest CPUs per task slot over its hosts.

    Each worker runs ``nthreads`` tasks at once; the workers of one host share its CPUs. 1 if
    the workers cannot be asked (the ingest still runs, with less decoding overlap).
    """
    try:
        info = client.scheduler_info()["workers"]
        cpus = client.run(_cpus)
    except Exception as e:  # noqa: BLE001 - a worker that cannot answer must not stop the ingest
        log.debug("cannot ask the Dask workers for their CPUs (%s): one decode thread per task", e)
        return 1
    slots: dict[str, int] = {}
    host_cpus: dict[str, int] = {}
    for addr, w in info.items():
        host = w.get("host", addr)
        slots[host] = slots.get(host, 0) + int(w.get("nthreads", 1))
        host_cpus[host] = max(host_cpus.get(host, 0), int(cpus.get(addr, 1)))
    if not slots:
        return 1
    return min(decode_threads_per_task(host_cpus[h], n) for h, n in slots.items())


def _gdal_applied(gdal_options):
    """``gdal_options.applied()``, or nothing to do without options."""
    import contextlib

    return gdal_options.applied() if gdal_options is not None else contextlib.nullcontext()


def _run_task_reporting(store_url: str, storage_options: dict | None, plan: dict, task_id: int,
                        decode_threads: int | None = None, gdal_options=None) -> dict:
    """:func:`run_task` on a Dask worker: geofm's errors (and IO errors) come back as a plain record.

    Exceptions pass through Dask pickled, and one whose cause cannot be pickled (rasterio's) arrives
    as a bare ``Exception`` with a traceback; a record keeps the message the sync scheduler shows.
    """
    try:
        with _gdal_applied(gdal_options):
            return run_task(store_url, storage_options, plan, task_id, decode_threads)
    except GeofmError as e:
        return {"task": task_id, "error": str(e), "kind": type(e).__name__}
    except OSError as e:
        return {"task": task_id, "error": f"task {task_id} could not write to the store '{store_url}': {e}",
                "kind": "DataError"}


def consolidate(loc: store.Location) -> int:
    """Merge the metadata parts into ``metadata.parquet`` and mark the store complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [n for n in loc.listdir(store.PARTS) if n.endswith(".parquet")]
    tables = [pq.read_table(io.BytesIO(loc.read_bytes(f"{store.PARTS}/{n}"))) for n in parts]
    table = pa.concat_tables(tables).sort_by("slot") if tables else _schema().empty_table()
    loc.write_bytes(store.METADATA, store.table_to_bytes(table))
    store.set_store_attrs(loc, complete=True, n_chips=table.num_rows)
    return table.num_rows


def export_geotiffs(store_url: str, out_dir: str, slots: Sequence[int] | None = None, compress: str = "lzw",
                    storage_options: dict | None = None) -> list[Path]:
    """Write chips as per-chip GeoTIFFs (T*C bands, int16, chip CRS/transform): the paper's old format."""
    from affine import Affine

    loc = store.Location(store_url, storage_options)
    meta = store.read_metadata(loc)
    reader = store.ShardReader(loc)
    sel = np.arange(len(meta["slot"])) if slots is None else np.searchsorted(meta["slot"], slots)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in sel:
        chip = reader.read([meta["slot"][i]])[0]  # (T, C, H, W)
        t, c, h, w = chip.shape
        p = out / f"chip_{int(meta['slot'][i]):07d}.tif"
        paths.append(write_geotiff(p, chip.reshape(t * c, h, w).astype(np.int16, copy=False), crs=meta["crs"][i],
                                   transform=Affine(*meta["transform"][i]), nodata=HLS_NODATA, compress=compress,
                                   tiled=False))
    return paths
