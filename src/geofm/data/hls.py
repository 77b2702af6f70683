"""HLS v2.0 granules as NASA ships them, stacked GeoTIFFs, and Fmask decoding.

An HLS granule is one Cloud-Optimized GeoTIFF per band, named
``HLS.{L30|S30}.T{tile}.{YYYYDOY}T{hhmmss}.v2.0.{band}.tif``: int16 surface reflectance
x10000 with nodata -9999, plus a uint8 ``Fmask`` layer. The six model bands are
Blue, Green, Red, NIR-narrow, SWIR1, SWIR2 = L30 B02-B07 = S30 B02 B03 B04 B8A B11 B12.

Fmask bits (LSB first): 0 cirrus, 1 cloud, 2 adjacent to cloud/shadow, 3 cloud shadow,
4 snow/ice, 5 water, 6-7 aerosol level; 255 is fill.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from geofm.bands import HLS_NODATA, L30_BANDS, MODEL_BANDS, S30_BANDS
from geofm.errors import DataError

log = logging.getLogger(__name__)

GRANULE_RE = re.compile(
    r"HLS\.(?P<product>L30|S30)\.T(?P<tile>[0-9]{2}[A-Z]{3})\.(?P<date>[0-9]{7})T(?P<time>[0-9]{6})"
    r"\.v(?P<version>[0-9]+\.[0-9]+)\.(?P<band>B[0-9A]{2}|Fmask|SAA|SZA|VAA|VZA)\.tif$")
FMASK_FILL = 255
FMASK_BITS = {"cirrus": 0, "cloud": 1, "adjacent": 2, "shadow": 3, "snow_ice": 4, "water": 5}
#: Fmask conditions that make a pixel unusable for pretraining (cirrus is kept, as HLS users usually do).
DEFAULT_CLOUD_BITS = ("cloud", "adjacent", "shadow")


# --------------------------------------------------------------------------- names and granules
@dataclass(frozen=True)
class GranuleName:
    product: str  # "L30" or "S30"
    tile: str  # MGRS tile, e.g. "10SEG"
    datetime: dt.datetime
    version: str
    band: str

    @property
    def granule_id(self) -> str:
        return (f"HLS.{self.product}.T{self.tile}.{self.datetime:%Y%j}T{self.datetime:%H%M%S}.v{self.version}")


def parse_granule_name(path: str) -> GranuleName:
    """Parse an HLS v2.0 band file name; raises :class:`DataError` if it is not one."""
    name = str(path).rsplit("/", 1)[-1]
    m = GRANULE_RE.search(name)
    if not m:
        raise DataError(f"'{path}' is not an HLS v2.0 band file name "
                        "(expected HLS.{L30|S30}.T{tile}.{YYYYDOY}T{hhmmss}.v2.0.{band}.tif)")
    when = dt.datetime.strptime(m["date"] + m["time"], "%Y%j%H%M%S")
    return GranuleName(m["product"], m["tile"], when, m["version"], m["band"])


def model_band_files(product: str) -> tuple[str, ...]:
    """Band file suffixes of the six model bands for ``product`` (L30 or S30), in model order."""
    table = L30_BANDS if product == "L30" else S30_BANDS
    return tuple(table[b] for b in MODEL_BANDS)


@dataclass
class Frame:
    """One acquisition of a time series: six band sources (+ optional Fmask) on one grid.

    ``sources`` are (path, 1-based band index) pairs in model band order; for HLS granules
    each is its own file, for stacked GeoTIFFs they point into one file.
    """

    sources: list[tuple[str, int]]
    fmask: tuple[str, int] | None
    datetime: dt.datetime | None
    tile: str | None = None
    product: str | None = None
    granule_id: str | None = None
    nodata: float | None = HLS_NODATA
    meta: dict = field(default_factory=dict)

    @property
    def date_str(self) -> str:
        return self.datetime.strftime("%Y-%m-%d") if self.datetime else ""


def group_granules(paths: Iterable[str]) -> tuple[list[Frame], list[tuple[str, str]]]:
    """Group HLS band files into granule :class:`Frame` s.

    Returns ``(frames, skipped)`` where ``skipped`` lists ``(granule_id or path, reason)`` for
    incomplete granules (a missing band file or Fmask) and names that are not HLS files.
    """
    by_id: dict[str, dict[str, str]] = {}
    names: dict[str, GranuleName] = {}
    skipped: list[tuple[str, str]] = []
    for p in paths:
        try:
            g = parse_granule_name(p)
        except DataError as e:
            skipped.append((str(p), str(e)))
            continue
        by_id.setdefault(g.granule_id, {})[g.band] = str(p)
        names[g.granule_id] = g
    frames = []
    for gid, files in sorted(by_id.items()):
        g = names[gid]
        need = model_band_files(g.product)
        missing = [b for b in (*need, "Fmask") if b not in files]
        if missing:
            skipped.append((gid, f"missing band file(s) {missing}"))
            log.warning("skipping granule %s: missing band file(s) %s", gid, missing)
            continue
        frames.append(Frame(sources=[(files[b], 1) for b in need], fmask=(files["Fmask"], 1),
                            datetime=g.datetime, tile=g.tile, product=g.product, granule_id=gid))
    return frames, skipped


def stacked_frame(path: str, bands: Sequence[int] = (1, 2, 3, 4, 5, 6), fmask_band: int | None = None,
                  datetime: dt.datetime | None = None, tile: str | None = None,
                  nodata: float | None = None) -> Frame:
    """A :class:`Frame` reading the six model bands (1-based ``bands``) of one stacked GeoTIFF."""
    if len(bands) != len(MODEL_BANDS):
        raise DataError(f"a stacked frame needs {len(MODEL_BANDS)} band indices, got {len(bands)} for '{path}'")
    return Frame(sources=[(str(path), int(b)) for b in bands],
                 fmask=(str(path), int(fmask_band)) if fmask_band else None, datetime=datetime, tile=tile,
                 nodata=nodata, granule_id=str(path).rsplit("/", 1)[-1])


# --------------------------------------------------------------------------- grids and reading
@dataclass(frozen=True)
class Grid:
    crs: str  # WKT or EPSG string
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f)
    width: int
    height: int

    def same_as(self, other: Grid, tol: float = 1e-6) -> bool:
        return (self.width, self.height) == (other.width, other.height) and np.allclose(
            self.transform, other.transform, atol=tol) and _same_crs(self.crs, other.crs)


def _same_crs(a: str, b: str) -> bool:
    if a == b:
        return True
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def open_raster(path: str):
    """``rasterio.open`` with a :class:`DataError` naming the file on failure (fsspec URLs accepted)."""
    import rasterio

    try:
        return rasterio.open(_gdal_path(path))
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot open raster '{path}': {e}") from e


def _gdal_path(path: str) -> str:
    if path.startswith("s3://"):
        return "/vsis3/" + path[5:]
    if path.startswith(("http://", "https://")):
        return "/vsicurl/" + path
    return path


def frame_grid(frame: Frame) -> Grid:
    """The common grid of a frame's sources; :class:`DataError` if they differ or lack a CRS."""
    grid = None
    paths = sorted({p for p, _ in frame.sources} | ({frame.fmask[0]} if frame.fmask else set()))
    for p in paths:
        with open_raster(p) as src:
            if src.crs is None:
                raise DataError(f"'{p}' has no CRS: expected a georeferenced GeoTIFF")
            g = Grid(src.crs.to_wkt(), tuple(src.transform)[:6], src.width, src.height)
            wanted = [b for q, b in frame.sources if q == p] + ([frame.fmask[1]] if frame.fmask and
                                                                 frame.fmask[0] == p else [])
            if max(wanted, default=0) > src.count:
                raise DataError(f"'{p}' has {src.count} band(s), expected at least {max(wanted)}"
                                f"{' (the Fmask band)' if frame.fmask and frame.fmask == (p, max(wanted)) else ''}")
            if frame.nodata is None and src.nodata is not None and any(q == p for q, _ in frame.sources):
                frame.nodata = src.nodata  # from a band file, never from the Fmask (whose fill is 255)
        if grid is None:
            grid = g
        elif not grid.same_as(g):
            raise DataError(f"'{p}' is not on the grid of '{paths[0]}': {grid_difference(g, grid)}")
    return grid


def crs_name(crs: str) -> str:
    """A short name of a CRS: ``EPSG:32610`` when it has one, else the start of its WKT."""
    from rasterio.crs import CRS

    try:
        c = CRS.from_user_input(crs)
    except Exception:  # noqa: BLE001  (rasterio raises CRSError or its own base class)
        return str(crs)[:60]
    epsg = c.to_epsg()
    return f"EPSG:{epsg}" if epsg else c.to_wkt()[:60]


def grid_difference(g: Grid, ref: Grid) -> str:
    """What differs between grid ``g`` and the reference grid ``ref``, in words (CRS first)."""
    if not _same_crs(g.crs, ref.crs):
        return (f"it is in CRS {crs_name(g.crs)}, expected {crs_name(ref.crs)} (reproject it onto the "
                f"reference grid first, e.g. gdalwarp -t_srs {crs_name(ref.crs)})")
    return (f"{g.width}x{g.height} px at {g.transform[2]:.1f},{g.transform[5]:.1f} ({g.transform[0]:g} m "
            f"pixels) vs {ref.width}x{ref.height} px at {ref.transform[2]:.1f},{ref.transform[5]:.1f} "
            f"({ref.transform[0]:g} m pixels)")


def check_same_grid(frames: Sequence[Frame]) -> Grid:
    """All frames of a time series must share CRS, transform and shape."""
    grids = [frame_grid(f) for f in frames]
    for f, g in zip(frames[1:], grids[1:]):
        if not g.same_as(grids[0]):
            raise DataError(f"frame '{f.granule_id}' is not on the grid of '{frames[0].granule_id}': "
                            f"{grid_difference(g, grids[0])}")
    return grids[0]


def read_frame_window(frame: Frame, window, datasets: dict | None = None, out: np.ndarray | None = None,
                      nodata_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a window: (6, h, w) int16 reflectance x10000 with nodata as -9999, and Fmask (h, w) or None.

    ``window`` is a rasterio Window; ``datasets`` caches open datasets across calls. ``out``
    (6, h, w) int16 receives the bands without an extra copy; ``nodata_out`` (h, w) bool is
    OR-ed with the pixels that are nodata in any band.
    """
    own = datasets is None
    datasets = {} if own else datasets
    h, w = int(window.height), int(window.width)
    data = np.empty((len(frame.sources), h, w), np.int16) if out is None else out
    try:
        def ds(p):
            if p not in datasets:
                datasets[p] = open_raster(p)
            return datasets[p]

        for i, (p, b) in enumerate(frame.sources):
            src = ds(p)
            try:
                if src.dtypes[b - 1] == "int16":
                    src.read(b, window=window, out=data[i])
                    arr = data[i]
                    if frame.nodata is not None and frame.nodata != HLS_NODATA:
                        arr[arr == frame.nodata] = HLS_NODATA
                else:
                    data[i] = _to_int16(src.read(b, window=window), frame.nodata, p)
            except DataError:
                raise
            except Exception as e:  # rasterio raises several error types for corrupt data
                raise DataError(f"cannot read band {b} of '{p}' (a truncated or corrupt file?): {e}") from e
            if nodata_out is not None:
                nodata_out |= data[i] == HLS_NODATA
        fmask = None
        if frame.fmask is not None:
            p, b = frame.fmask
            try:
                raw = ds(p).read(b, window=window)
            except Exception as e:
                raise DataError(f"cannot read Fmask band {b} of '{p}': {e}") from e
            fmask = fmask_to_uint8(raw, frame.nodata, f"Fmask band {b} of '{p}'")
        return data, fmask
    finally:
        if own:
            for d in datasets.values():
                d.close()


def _to_int16(arr: np.ndarray, nodata: float | None, path: str) -> np.ndarray:
    """Float or other integer reflectance -> int16 with -9999 for nodata (and non-finite) pixels."""
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if nodata is not None:
            bad |= arr == nodata
        return np.where(bad, HLS_NODATA, np.clip(np.rint(arr), -32768, 32767)).astype(np.int16)
    if arr.dtype.kind not in "iu":
        raise DataError(f"'{path}' has dtype {arr.dtype}, expected int16 reflectance x10000")
    bad = arr == nodata if nodata is not None else np.zeros(arr.shape, bool)
    return np.where(bad, HLS_NODATA, np.clip(arr, -32768, 32767)).astype(np.int16)


# --------------------------------------------------------------------------- Fmask
def fmask_to_uint8(fmask: np.ndarray, nodata: float | None = None, what: str = "Fmask") -> np.ndarray:
    """An Fmask layer of any numeric dtype as uint8 codes, checked: no value is silently changed.

    Values must be whole numbers in 0-255; negative values and ``nodata`` (e.g. -9999 in an int16
    stack) become fill (255). A fraction (0.9 in a float band) or a value above 255 is a
    :class:`DataError`: casting would turn it into another condition (0.9 -> 0, clear).
    """
    if fmask.dtype == np.uint8:
        return fmask
    if fmask.dtype.kind not in "iuf":
        raise DataError(f"{what} has dtype {fmask.dtype}, expected integer Fmask codes 0-255")
    fill = fmask < 0
    if nodata is not None:
        fill |= fmask == nodata
    if fmask.dtype.kind == "f":
        fill |= np.isnan(fmask)
        ok = fill | (fmask == np.floor(fmask))
        if not ok.all():
            bad = fmask[~ok].ravel()[0]
            raise DataError(f"{what} has {fmask.dtype} values that are not whole numbers (e.g. {bad:g}), expected "
                            "integer Fmask codes 0-255: is this band really the Fmask?")
    over = ~fill & (fmask > 255)
    if over.any():
        raise DataError(f"{what} has values above 255 (e.g. {fmask[over].ravel()[0]:g}), expected Fmask "
                        f"codes 0-255: is this band really the Fmask?")
    return np.where(fill, FMASK_FILL, fmask).astype(np.uint8)


def decode_fmask(fmask: np.ndarray) -> dict[str, np.ndarray]:
    """Bit-decode an HLS Fmask array into boolean masks (+ ``aerosol`` level 0-3 and ``fill``)."""
    f = np.asarray(fmask).astype(np.uint8)
    out = {name: (f >> bit) & 1 == 1 for name, bit in FMASK_BITS.items()}
    out["aerosol"] = (f >> 6) & 3
    out["fill"] = f == FMASK_FILL
    for name in FMASK_BITS:
        out[name] &= ~out["fill"]
    return out


def cloud_mask(fmask: np.ndarray, bits: Sequence[str] = DEFAULT_CLOUD_BITS) -> np.ndarray:
    """True where any of the named Fmask conditions is set (fill pixels excluded)."""
    unknown = set(bits) - set(FMASK_BITS)
    if unknown:
        raise ValueError(f"unknown Fmask condition(s) {sorted(unknown)}; known: {sorted(FMASK_BITS)}")
    f = np.asarray(fmask).astype(np.uint8)
    bitmask = np.uint8(sum(1 << FMASK_BITS[b] for b in bits))
    return ((f & bitmask) != 0) & (f != FMASK_FILL)


def cfmask_to_hls_fmask(cfmask: np.ndarray) -> np.ndarray:
    """Convert a Landsat CFmask class layer (0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill) to HLS bits."""
    c = np.asarray(cfmask)
    out = np.zeros(c.shape, np.uint8)
    out[c == 1] = 1 << FMASK_BITS["water"]
    out[c == 2] = 1 << FMASK_BITS["shadow"]
    out[c == 3] = 1 << FMASK_BITS["snow_ice"]
    out[c == 4] = 1 << FMASK_BITS["cloud"]
    out[(c == 255) | (c < 0)] = FMASK_FILL
    return out
