"""Map a region and a season: many HLS granules -> one prediction per MGRS tile -> one mosaic + a STAC catalog.

Plan (in the calling process, before anything is written): the inputs (HLS band files or
folders, stacked GeoTIFFs, ``geofm search`` manifests streamed over HTTPS) are grouped into
granules, the granules by MGRS tile (stacked GeoTIFFs without a tile by grid). Per tile, the
frames are chosen by one rule:

* only granules dated within ``start``..``end`` (both inclusive) count, S30 and L30 alike;
* each gets a *bad fraction*: the share of its pixels that Fmask flags as cloud, adjacent to
  cloud, cloud shadow or fill (stacked files without Fmask: nodata in their first band), read
  at an overview level (at most 64 x 64 px, GDAL takes the file's overviews), not the whole file;
* a granule whose every pixel is bad is unusable; of the usable ones the ``frames`` with the
  lowest bad fraction are taken (ties: the earlier date, then the granule id) and given to the
  model in date order;
* a tile with fewer usable granules than ``frames`` is skipped, with its reason in the log and
  the summary.

With an ``aoi``, only tiles whose footprint touches it run. The mosaic's CRS is ``crs`` or the
UTM zone that holds most of the selected tiles' area (ties: the lower EPSG code).

Run: one Dask task per tile (a LocalCluster of ``workers`` processes with one thread each, or
an existing cluster at ``scheduler``, or ``"sync"`` in this process) runs
:func:`~geofm.infer.predict.predict_checkpoint` on the chosen frames into
``DIR/tiles/T<tile>_<first date>_<last date>.tif``, bitwise what ``geofm predict`` writes for
those frames. Each worker process loads the model once (a cache keyed by the checkpoint's
files and the device); tasks carry only the frames' paths. A tile file that exists is finished
and never recomputed; a tile cut short resumes from its finished blocks (see
:mod:`geofm.infer.scene`). A failing tile does not stop the others: it is reported, and the
next run of the same command does only what is missing. ``DIR/map-log.jsonl`` gets one line per
tile and run (inputs, dates chosen, seconds, worker, outcome). When no tile failed, the tiles are
mosaicked into ``DIR/mosaic.tif`` (:func:`geofm.infer.mosaic.mosaic_tiles`) and described in
``DIR/catalog.json`` (:func:`geofm.infer.catalog.write_catalog`).

>>> result = map_region("runs/flood/export", ["manifest.json"], "flood_map", start="2021-05-01",
...                     end="2021-09-30")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geofm.data import hls
from geofm.errors import ConfigError, DataError, GeofmError, OutputError
from geofm.runtime import close_dask

log = logging.getLogger(__name__)

LOG_NAME = "map-log.jsonl"
SETTINGS_NAME = "map-settings.json"  # the model and options the tiles were made with
TILES_DIR = "tiles"
MOSAIC_NAME = "mosaic.tif"
OVERVIEW_PX = 64  # side of the decimated Fmask read that scores a granule


# --------------------------------------------------------------------------- plan
@dataclass
class TilePlan:
    """One MGRS tile (or grid of stacked files): its granules in the window and the frames chosen."""

    tile: str  # MGRS id ("10SEG") or "grid<8 digits>" for stacked files without one
    candidates: list[hls.Frame]  # granules in the window, date order
    scores: dict[str, float] = field(default_factory=dict)  # granule id -> bad fraction
    frames: list[hls.Frame] = field(default_factory=list)  # chosen, date order
    reason: str | None = None  # why the tile is skipped (too few usable dates) or cannot be planned
    failed: bool = False  # planning failed on a bad file: counts as a failed tile
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None  # in ``crs``
    area_km2: float = 0.0

    @property
    def name(self) -> str:
        return self.tile if self.tile.startswith("grid") else f"T{self.tile}"

    @property
    def dates(self) -> list[dt.date]:
        return [f.datetime.date() for f in self.frames if f.datetime]

    @property
    def file_name(self) -> str:
        """``T10SEG_2020-05-02_2020-06-03.tif``: the tile and its first and last chosen dates."""
        d = self.dates
        return f"{self.name}_{d[0]:%Y-%m-%d}_{d[-1]:%Y-%m-%d}.tif" if d else f"{self.name}.tif"


def bad_fraction(frame: hls.Frame, size: int = OVERVIEW_PX) -> float:
    """Share of a granule's pixels that are cloud, adjacent, shadow or fill, from a decimated Fmask read.

    At most ``size`` x ``size`` px are read (nearest resampling; GDAL reads the file's overviews
    when it has them). Without an Fmask, the share of nodata pixels of the first band.
    """
    from rasterio.enums import Resampling

    path, band = frame.fmask if frame.fmask is not None else frame.sources[0]
    try:
        with hls.open_raster(path) as src:
            shape = (min(size, src.height), min(size, src.width))
            arr = src.read(band, out_shape=shape, resampling=Resampling.nearest)
            nodata = src.nodata
    except DataError:
        raise
    except Exception as e:  # rasterio raises several error types for damaged files
        raise DataError(f"cannot read band {band} of '{path}' (a truncated or corrupt file?): {e}") from e
    if frame.fmask is not None:
        fm = hls.fmask_to_uint8(arr, None, f"Fmask band {band} of '{path}'")
        bad = hls.cloud_mask(fm, hls.DEFAULT_CLOUD_BITS) | (fm == hls.FMASK_FILL)
    else:
        nd = frame.nodata if frame.nodata is not None else nodata
        bad = ~np.isfinite(arr) if nd is None else (arr == nd) | ~np.isfinite(arr)
    return float(bad.mean())


def choose_frames(candidates: Sequence[hls.Frame], scores: dict[str, float], n: int
                  ) -> tuple[list[hls.Frame], str | None]:
    """The ``n`` usable frames with the lowest bad fraction (ties: earlier date, then id), in date order.

    Returns (frames, None), or ([], reason) when fewer than ``n`` are usable.
    """
    usable = [f for f in candidates if scores[f.granule_id] < 1.0]
    if len(usable) < n:
        unusable = len(candidates) - len(usable)
        more = f" ({unusable} fully cloudy or nodata)" if unusable else ""
        return [], (f"{len(usable)} usable date(s) in the window{more}, the model takes {n}")
    ranked = sorted(usable, key=lambda f: (scores[f.granule_id], f.datetime or dt.datetime.min, f.granule_id))
    return sorted(ranked[:n], key=lambda f: (f.datetime or dt.datetime.min, f.granule_id)), None


def group_tiles(frames: Sequence[hls.Frame]) -> dict[str, list[hls.Frame]]:
    """Frames by MGRS tile; stacked files without a tile by their grid (``grid<8 digits>``)."""
    from geofm.data.ingest import grid_key

    out: dict[str, list[hls.Frame]] = {}
    for f in frames:
        key = f.tile
        if key is None:
            key = f"grid{grid_key(hls.frame_grid(f))}"
            f.tile = key
        out.setdefault(key, []).append(f)
    for fs in out.values():
        fs.sort(key=lambda f: (f.datetime or dt.datetime.min, f.granule_id or ""))
    return dict(sorted(out.items()))


def footprint(tp: TilePlan) -> None:
    """Fill ``crs``, ``bounds`` and ``area_km2`` of a tile: from its MGRS id (nothing read), else its first file."""
    from geofm.data.remote.stac import mgrs_tile_bounds

    if not tp.tile.startswith("grid"):
        try:
            epsg, tp.bounds = mgrs_tile_bounds(tp.tile)
            tp.crs = f"EPSG:{epsg}"
        except ConfigError:
            tp.bounds = None
    if tp.bounds is None:
        path = tp.candidates[0].sources[0][0]
        with hls.open_raster(path) as src:
            if src.crs is None:
                raise DataError(f"'{path}' has no CRS: expected a georeferenced GeoTIFF")
            name = hls.crs_name(src.crs.to_wkt())
            tp.crs = name if name.startswith("EPSG:") else src.crs.to_wkt()
            tp.bounds = tuple(src.bounds)
    x0, y0, x1, y1 = tp.bounds
    tp.area_km2 = (x1 - x0) * (y1 - y0) / 1e6


def touches_aoi(tp: TilePlan, aoi: dict, cells: int = 64) -> bool:
    """Whether the tile's footprint touches the ``aoi`` (GeoJSON geometry in EPSG:4326)."""
    from rasterio.features import geometry_mask
    from rasterio.transform import from_bounds
    from rasterio.warp import transform_geom

    x0, y0, x1, y1 = tp.bounds
    geom = transform_geom("EPSG:4326", tp.crs, aoi)
    inside = ~geometry_mask([geom], (cells, cells), from_bounds(x0, y0, x1, y1, cells, cells), all_touched=True)
    return bool(inside.any())


def default_crs(plans: Sequence[TilePlan]) -> str:
    """The CRS (UTM zone) holding most of the tiles' area; ties -> the lower EPSG code, then the name."""
    area: dict[str, float] = {}
    for tp in plans:
        area[tp.crs] = area.get(tp.crs, 0.0) + tp.area_km2

    def order(c: str):
        code = c.split(":", 1)[1] if c.startswith("EPSG:") else ""
        return (-round(area[c], 6), int(code) if code.isdigit() else 1 << 30, c)

    return min(area, key=order)


def _parse_day(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not a date (expected YYYY-MM-DD)") from None


def plan_tiles(frames: Sequence[hls.Frame], n_frames: int, start: dt.date | None = None,
               end: dt.date | None = None, aoi: dict | None = None) -> list[TilePlan]:
    """Group, window, AOI-filter and score: one :class:`TilePlan` per tile (see the module docstring).

    :class:`DataError` when the window holds no granule or the AOI touches no tile.
    """
    inside = [f for f in frames if f.datetime is None or
              ((start is None or f.datetime.date() >= start) and (end is None or f.datetime.date() <= end))]
    if not inside:
        dates = sorted(f.datetime.date() for f in frames if f.datetime)
        span = f"{dates[0]} .. {dates[-1]}" if dates else "no dates"
        raise DataError(f"--start {start or '(any)'} --end {end or '(any)'}: no granule in this window; the "
                        f"inputs' {len(frames)} granule(s) span {span}")
    plans = [TilePlan(tile, fs) for tile, fs in group_tiles(inside).items()]
    for tp in plans:
        footprint(tp)
    if aoi is not None:
        kept = [tp for tp in plans if touches_aoi(tp, aoi)]
        if not kept:
            names = ", ".join(tp.name for tp in plans[:6]) + (" ..." if len(plans) > 6 else "")
            raise DataError(f"--aoi touches none of the inputs' {len(plans)} tile(s) ({names})")
        plans = kept
    for tp in plans:
        if len(tp.candidates) < n_frames:
            tp.reason = f"{len(tp.candidates)} date(s) in the window, the model takes {n_frames}"
            continue
        try:
            tp.scores = {f.granule_id: bad_fraction(f) for f in tp.candidates}
        except DataError as e:
            tp.reason, tp.failed = str(e), True
            continue
        tp.frames, tp.reason = choose_frames(tp.candidates, tp.scores, n_frames)
    return plans


# --------------------------------------------------------------------------- worker side
_MODELS: dict = {}  # (checkpoint key, device) -> (model, info), in each worker process
MODEL_LOADS = {"count": 0}


def _checkpoint_key(checkpoint: str) -> tuple:
    """The checkpoint's path and the size and mtime of the files of its folder: a changed model loads anew."""
    p = Path(checkpoint).resolve()
    folder = p if p.is_dir() else p.parent
    stats = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir() if f.is_file()))
    return str(p), stats


def cached_model(checkpoint: str, device: str = "cpu", precision: str = "fp32"):
    """(model, info, loaded_now): the fine-tuned model, loaded once per process, device and precision."""
    from geofm.infer.precision import weights_dtype
    from geofm.models.finetuned import load_finetuned

    key = (_checkpoint_key(checkpoint), device, precision)
    if key in _MODELS:
        return (*_MODELS[key], False)
    _MODELS.clear()  # one model per process: a new checkpoint replaces the old one
    model, info = load_finetuned(checkpoint, block_dtype=weights_dtype(precision))
    _MODELS[key] = (model, info)
    MODEL_LOADS["count"] += 1
    log.info("loaded %s on %s (process %d)", checkpoint, device, os.getpid())
    return model, info, True


def worker_device(device: str) -> str:
    """``cuda`` on a Dask worker of a machine with several GPUs: the GPU of this worker (by its name)."""
    if device != "cuda":
        return device
    import torch

    n = torch.cuda.device_count()
    if n <= 1:
        return device
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return device
    index = name if isinstance(name, int) else sum(map(ord, str(name)))
    return f"cuda:{index % n}"


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid:{os.getpid()}"


def run_tile(job: dict) -> dict:
    """Predict one tile (a Dask task): the job's frames -> its output COG. Errors come back as a record."""
    import contextlib

    from geofm.data.ingest import frame_from_json
    from geofm.infer.predict import predict_checkpoint
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    t0, c0 = time.perf_counter(), time.process_time()
    out = {"tile": job["tile"], "worker": _worker_name(), "pid": os.getpid(), "model_loaded": False}
    gdal = job.get("gdal_options")
    try:
        with gdal.applied() if gdal is not None else contextlib.nullcontext():
            device = worker_device(job["device"])
            model, info, out["model_loaded"] = cached_model(job["checkpoint"], device, job["precision"])
            frames = [frame_from_json(f) for f in job["frames"]]
            predict_checkpoint(job["checkpoint"], frames, job["path"], tile=job["tile_px"], overlap=job["overlap"],
                               batch_size=job["batch_size"], probabilities=job["probabilities"], device=device,
                               block=job["block"], precision=job["precision"], loaded=(model, info))
        out.update(outcome="done")
    except GeofmError as e:
        out.update(outcome="failed", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one tile's failure (a damaged file, a server's 401) must not stop the map
        out.update(outcome="failed", reason=f"{type(e).__name__}: {e}")
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0  # of the whole worker process: one task runs in it at a time
    out["model_loads"] = MODEL_LOADS["count"]
    return out


# --------------------------------------------------------------------------- results
@dataclass
class TileOutcome:
    """What became of one tile in this run: ``done``, ``exists`` (finished earlier), ``skipped`` or ``failed``."""

    tile: str
    outcome: str
    path: Path | None
    dates: list[dt.date]
    inputs: list[str]  # granule ids of the chosen frames
    reason: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    worker: str | None = None
    area_km2: float = 0.0
    model_loaded: bool = False


@dataclass
class MapResult:
    out_dir: Path
    tiles: list[TileOutcome]
    mosaic: Path | None
    catalog: Path | None
    log: Path
    crs: str
    seconds: float
    mosaic_seconds: float = 0.0

    @property
    def failed(self) -> list[TileOutcome]:
        return [t for t in self.tiles if t.outcome == "failed"]

    @property
    def skipped(self) -> list[TileOutcome]:
        return [t for t in self.tiles if t.outcome == "skipped"]

    @property
    def predicted(self) -> list[TileOutcome]:
        return [t for t in self.tiles if t.outcome == "done"]

    @property
    def finished(self) -> list[TileOutcome]:
        return [t for t in self.tiles if t.outcome in ("done", "exists")]

    @property
    def area_km2(self) -> float:
        """Area of the tiles predicted in this run."""
        return sum(t.area_km2 for t in self.predicted)


# --------------------------------------------------------------------------- checks
def check_out_dir(out_dir: Path) -> None:
    """DIR is a folder that can be written (created if missing), before anything is read or written."""
    from geofm.io import check_output_dir

    check_output_dir(out_dir, "--out")
    for sub in (out_dir / TILES_DIR, out_dir / LOG_NAME, out_dir / MOSAIC_NAME):
        if sub.exists() and not os.access(sub, os.W_OK):
            raise OutputError(f"--out '{out_dir}': '{sub}' cannot be written (read-only)")
    if (out_dir / TILES_DIR).exists() and not (out_dir / TILES_DIR).is_dir():
        raise OutputError(f"--out '{out_dir}': '{out_dir / TILES_DIR}' is a file, expected the tiles folder")


def map_settings(checkpoint: str, info, opts: dict) -> dict:
    """What makes a tile file: the model (its files' fingerprint) and the prediction options."""
    from geofm.infer.predict import _model_files, _run_id

    keep = ("tile_px", "overlap", "batch_size", "probabilities", "block", "precision")
    return {"checkpoint": str(Path(checkpoint).resolve()), "model": _run_id(_model_files(Path(checkpoint), info)),
            **{k: opts[k] for k in keep}}


def check_settings(out_dir: Path, settings: dict) -> None:
    """The tiles already in ``out_dir`` were made with ``settings``: else they would be reused wrongly."""
    path = out_dir / SETTINGS_NAME
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"--out '{out_dir}': cannot read '{path}': {e}") from e
    diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
    if diff:
        raise DataError(f"--out '{out_dir}' holds tiles of another model or other options ({', '.join(diff)} "
                        "differ): use a new --out, or delete it")


def _check_options(frames: int | None, resolution: float, workers: int | None, tile: int | None, overlap: int,
                   batch_size: int) -> None:
    from geofm.infer.scene import check_tiling

    if frames is not None and frames < 1:
        raise ConfigError(f"--frames must be >= 1, got {frames}")
    if not resolution > 0:
        raise ConfigError(f"--resolution must be > 0 metres, got {resolution}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if tile is not None:
        check_tiling(tile, overlap, batch_size)
    elif batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")


def _manifest_items(inputs: Sequence[str]) -> dict[str, str]:
    """Granule id -> the STAC item's self href, for the items of the manifests among ``inputs``."""
    from geofm.data.remote import stac

    out: dict[str, str] = {}
    for x in inputs:
        if stac.is_manifest(x):
            for it in stac.read_manifest(x):
                self_href = next((lk.get("href") for lk in it.get("links", []) if lk.get("rel") == "self"), None)
                out[it["id"]] = self_href or f"{Path(x).resolve().as_uri()}#{it['id']}"
    return out


# --------------------------------------------------------------------------- the run
def map_region(checkpoint: str | os.PathLike, inputs: Sequence[str], out_dir: str | os.PathLike, *,
               start: str | dt.date | None = None, end: str | dt.date | None = None, frames: int | None = None,
               crs: str | None = None, resolution: float = 30.0, aoi: str | os.PathLike | dict | None = None,
               probabilities: bool = False, tile: int | None = 224, overlap: int = 32, batch_size: int = 8,
               device: str = "cpu", scheduler: str | None = None, workers: int | None = None, block: int = 512,
               progress: Callable[[int, int], None] | None = None, mosaic: bool = True,
               precision: str | None = "auto") -> MapResult:
    """Map a region: plan tiles, predict each on Dask into ``out_dir/tiles``, mosaic, catalog (see module doc).

    ``inputs``: HLS band files or folders, stacked GeoTIFFs, ``s3://``/``https://`` URLs, or ``geofm search``
    manifests (their COGs are streamed over HTTPS with the Earthdata credentials ``geofm ingest`` uses).
    ``start``/``end``: YYYY-MM-DD, inclusive. ``frames``: dates per tile (default and only accepted
    value: the model's frame count). ``crs``: the mosaic's CRS (default: the UTM zone holding most of
    the area); ``resolution``: its pixel size in metres; ``aoi``: a GeoJSON file or geometry (EPSG:4326)
    that clips the mosaic and selects the tiles. ``tile``/``overlap``/``batch_size``/``probabilities``/
    ``device``/``block``: as :func:`~geofm.infer.predict.predict_checkpoint` (``tile=None``: the model's
    size). ``scheduler``: a Dask scheduler address, or ``"sync"`` to run in this process; otherwise a
    LocalCluster of ``workers`` processes (default: one per core, at most one per tile).
    ``progress(done, total)`` is called as tiles finish. ``precision``: the weights' number format
    (:func:`~geofm.infer.precision.resolve_precision`: "auto" is resolved once, here, for ``device``, so
    every tile of a map is made alike). Nothing is written before every check passed.
    """
    from geofm.data.ingest import IngestConfig, check_scheduler, discover_frames, expand_inputs, summarize_skipped
    from geofm.data.remote import stac
    from geofm.data.remote.stream import WorkerGdalOptions, apply_gdal_env, resolve_inputs, restore_env
    from geofm.infer.mosaic import check_crs
    from geofm.infer.precision import resolve_precision
    from geofm.infer.predict import check_device

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    checkpoint = str(checkpoint)
    _check_options(frames, resolution, workers, tile, overlap, batch_size)
    start_d, end_d = _parse_day(start, "--start"), _parse_day(end, "--end")
    if start_d and end_d and end_d < start_d:
        raise ConfigError(f"--end {end_d} is before --start {start_d}")
    if crs is not None:
        check_crs(crs)
    aoi_geom = stac.read_aoi(aoi) if isinstance(aoi, (str, os.PathLike)) else aoi
    check_device(device)
    precision = resolve_precision(precision, device)
    check_out_dir(out_dir)
    check_scheduler(scheduler)
    model, info, _ = cached_model(checkpoint, device, precision)
    if info.task not in ("segmentation", "imputation"):
        raise ConfigError(f"--checkpoint '{checkpoint}' is a {info.task!r} model; geofm map needs a segmentation "
                          "or imputation model")
    del model
    if scheduler != "sync":
        _MODELS.clear()  # the workers load their own; this process keeps no copy
    n_frames = info.num_frames if frames is None else frames
    if n_frames != info.num_frames:
        raise ConfigError(f"--frames {frames}: the model '{checkpoint}' takes {info.num_frames} frame(s)")
    item_hrefs = _manifest_items(inputs)
    with tempfile.TemporaryDirectory(prefix="geofm-login-") as login_dir:
        files_in, gdal_env = resolve_inputs(list(inputs), workdir=login_dir)
        old_env = apply_gdal_env(gdal_env)  # this process (planning, sync) and the LocalCluster it starts
        try:
            files = expand_inputs(files_in)
            if not files:
                raise DataError(f"no GeoTIFF files (.tif, .tiff, .gtif) found in {', '.join(map(repr, inputs))}")
            stacked = info.stacked_bands[0] if info.stacked_bands else (1, 2, 3, 4, 5, 6)
            found, skipped_inputs = discover_frames(files, IngestConfig(stacked_bands=tuple(stacked)))
            for what, why in skipped_inputs:
                log.warning("input %s skipped: %s", what, why)
            if not found:
                raise DataError("no usable granule: " + summarize_skipped(skipped_inputs))
            plans = plan_tiles(found, n_frames, start_d, end_d, aoi_geom)
            mosaic_crs = crs or default_crs(plans)
            external = scheduler not in (None, "sync")
            opts = dict(device=device, tile_px=tile, overlap=overlap, batch_size=batch_size,
                        probabilities=probabilities, block=block, precision=precision,
                        gdal_options=WorkerGdalOptions(gdal_env) if gdal_env and external else None)
            settings = map_settings(checkpoint, info, opts)
            check_settings(out_dir, settings)
            result = _execute(plans, checkpoint, out_dir, mosaic_crs, opts, settings, scheduler, workers, progress)
        finally:
            restore_env(old_env)
    if mosaic and not result.failed and result.finished:
        t0 = time.perf_counter()
        result.mosaic, result.catalog = _mosaic_and_catalog(result, plans, checkpoint, info, resolution, aoi_geom,
                                                            item_hrefs)
        result.mosaic_seconds = time.perf_counter() - t0
    result.seconds = time.perf_counter() - t_start
    return result


def _job(tp: TilePlan, checkpoint: str, path: Path, opts: dict) -> dict:
    from geofm.data.ingest import frame_to_json

    return {"tile": tp.name, "checkpoint": checkpoint, "path": str(path),
            "frames": [frame_to_json(f) for f in tp.frames], **opts}


def _execute(plans: list[TilePlan], checkpoint: str, out_dir: Path, crs: str, opts: dict, settings: dict,
             scheduler: str | None, workers: int | None, progress) -> MapResult:
    """Run the tiles that are not finished; log every tile; return the outcomes in tile order."""
    from geofm.io import atomic_path

    tiles_dir = out_dir / TILES_DIR
    tiles_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / SETTINGS_NAME).is_file():
        with atomic_path(out_dir / SETTINGS_NAME) as tmp:
            tmp.write_text(json.dumps(settings, indent=1) + "\n")
    log_path = out_dir / LOG_NAME
    run_id = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    outcomes: dict[str, TileOutcome] = {}
    todo: list[TilePlan] = []

    def record(tp: TilePlan, oc: TileOutcome) -> None:
        outcomes[tp.name] = oc
        line = {"run": run_id, "tile": tp.name, "outcome": oc.outcome, "reason": oc.reason,
                "path": str(oc.path) if oc.path else None, "dates": [d.isoformat() for d in oc.dates],
                "inputs": oc.inputs, "candidates": {f.granule_id: round(tp.scores[f.granule_id], 6)
                                                    if f.granule_id in tp.scores else None for f in tp.candidates},
                "seconds": round(oc.seconds, 3), "cpu_seconds": round(oc.cpu_seconds, 3), "worker": oc.worker,
                "model_loaded": oc.model_loaded,
                "area_km2": round(tp.area_km2, 3)}
        with open(log_path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("tile %s %s%s", tp.name, oc.outcome, f": {oc.reason}" if oc.reason else "")

    def outcome(tp: TilePlan, kind: str, **kw) -> TileOutcome:
        return TileOutcome(tp.name, kind, tiles_dir / tp.file_name if tp.frames else None, tp.dates,
                           [f.granule_id for f in tp.frames], area_km2=tp.area_km2, **kw)

    for tp in plans:
        if tp.reason is not None:
            record(tp, outcome(tp, "failed" if tp.failed else "skipped", reason=tp.reason))
        elif (tiles_dir / tp.file_name).is_file():
            record(tp, outcome(tp, "exists"))
        else:
            todo.append(tp)
    total = sum(1 for tp in plans if tp.reason is None)
    done = total - len(todo)
    if progress is not None and total:
        progress(done, total)
    by_name = {tp.name: tp for tp in todo}
    for res in _run_jobs([_job(tp, checkpoint, tiles_dir / tp.file_name, opts) for tp in todo], scheduler, workers):
        tp = by_name[res["tile"]]
        record(tp, outcome(tp, res["outcome"], reason=res.get("reason"), seconds=res.get("seconds", 0.0),
                           cpu_seconds=res.get("cpu_seconds", 0.0), worker=res.get("worker"),
                           model_loaded=res.get("model_loaded", False)))
        done += 1
        if progress is not None:
            progress(done, total)
    return MapResult(out_dir, [outcomes[tp.name] for tp in plans], None, None, log_path, crs, 0.0)


def _run_jobs(jobs: list[dict], scheduler: str | None, workers: int | None):
    """Yield each job's result record as it finishes (sync, a LocalCluster, or the cluster at ``scheduler``)."""
    if not jobs:
        return
    if scheduler == "sync":
        for job in jobs:
            yield run_tile(job)
        return
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        n = workers or min(len(jobs), _gpu_or_cpu_count(jobs[0]["device"]))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as e:
            raise DataError(f"--scheduler '{scheduler}': cannot connect to a Dask scheduler there ({e})") from e
    try:
        futures = {client.submit(run_tile, job, pure=False, key=f"geofm-map-{job['tile']}-{os.urandom(4).hex()}"): job
                   for job in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                yield fut.result()
            except Exception as e:  # noqa: BLE001 - KilledWorker, a worker lost: this tile failed, the others go on
                yield {"tile": job["tile"], "outcome": "failed", "reason": f"{type(e).__name__}: {e}"}
    finally:
        close_dask(client, cluster)


def _gpu_or_cpu_count(device: str) -> int:
    """Workers of the default LocalCluster: one per GPU for ``cuda``, else one per core."""
    if device == "cuda":
        import torch

        return max(1, torch.cuda.device_count())
    from geofm.data.ingest import usable_cpus

    return usable_cpus()


def _mosaic_and_catalog(result: MapResult, plans: list[TilePlan], checkpoint: str, info, resolution: float,
                        aoi: dict | None, item_hrefs: dict) -> tuple[Path, Path]:
    """``DIR/mosaic.tif`` from every finished tile, then ``DIR/catalog.json`` describing tiles and mosaic."""
    from geofm.infer.catalog import TileProduct, file_sha256, write_catalog
    from geofm.infer.mosaic import mosaic_tiles
    from geofm.infer.predict import _model_files

    by_name = {tp.name: tp for tp in plans}
    finished = [t for t in result.tiles if t.outcome in ("done", "exists")]
    mosaic_path = result.out_dir / MOSAIC_NAME
    mosaic_tiles([t.path for t in finished], mosaic_path, crs=result.crs, resolution=resolution, aoi=aoi)
    products = []
    for t in finished:
        tp = by_name[t.tile]
        sources = sorted({p for f in tp.frames for p, _ in f.sources} | {f.fmask[0] for f in tp.frames if f.fmask})
        products.append(TileProduct(tile=tp.tile, path=t.path, dates=t.dates, sources=sources,
                                    source_items=[item_hrefs[g] for g in t.inputs if g in item_hrefs]))
    files = _model_files(Path(checkpoint), info)
    weights = next((f for f in files if f.suffix not in (".json", ".yaml", ".yml", ".py")), files[-1])
    name = Path(checkpoint).resolve().name
    catalog = write_catalog(result.out_dir, products, mosaic_path, model_name=name, model_path=weights,
                            model_sha256=file_sha256(weights))
    return mosaic_path, catalog


__all__ = ["MapResult", "TileOutcome", "TilePlan", "bad_fraction", "choose_frames", "default_crs", "map_region",
           "plan_tiles", "run_tile"]
