"""Ingest plan: the options and their checks, then inputs -> frames -> series -> tasks (strips of chip rows).

The whole flow: :mod:`geofm.data.ingest`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geofm.bands import MODEL_BANDS
from geofm.data import hls, store
from geofm.errors import ConfigError, DataError

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
            series.append({"tile": tile, "frames": [frame_to_json(f) for f in group], "crs": grid.crs,
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


def frame_to_json(f: hls.Frame) -> dict:
    return {"sources": [list(s) for s in f.sources], "fmask": list(f.fmask) if f.fmask else None,
            "datetime": f.datetime.isoformat() if f.datetime else None, "tile": f.tile, "product": f.product,
            "granule_id": f.granule_id, "nodata": f.nodata}


def frame_from_json(d: dict) -> hls.Frame:
    return hls.Frame(sources=[(p, int(b)) for p, b in d["sources"]],
                     fmask=(d["fmask"][0], int(d["fmask"][1])) if d["fmask"] else None,
                     datetime=dt.datetime.fromisoformat(d["datetime"]) if d["datetime"] else None,
                     tile=d["tile"], product=d["product"], granule_id=d["granule_id"], nodata=d["nodata"])


def _cfg_to_json(cfg: IngestConfig) -> dict:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


