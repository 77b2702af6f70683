"""Generator of realistic synthetic HLS v2.0 granules (tests, benchmarks, demo).

Each granule is written as NASA ships it: one tiled, compressed GeoTIFF per band named
``HLS.S30.T{tile}.{YYYYDOY}T{hhmmss}.v2.0.{band}.tif`` (int16 reflectance x10000, nodata
-9999) plus a bit-packed uint8 ``Fmask``, on the UTM grid of a real MGRS tile. Reflectance
is spatially smooth (low-frequency fields per land-cover patch, seasonal NIR), clouds are
blobs with their adjacent ring and a displaced shadow, and an optional swath edge leaves
part of the tile as nodata, as on real S30 tiles at orbit edges.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA
from geofm.data.hls import FMASK_BITS, FMASK_FILL, model_band_files
from geofm.io import write_geotiff

#: A few real MGRS tiles: tile -> (EPSG of its UTM zone, upper-left x, upper-left y) of the HLS grid.
TILES = {
    "10SEG": (32610, 499980.0, 4200000.0),  # California Central Valley
    "14RMT": (32614, 399960.0, 3300000.0),  # Texas
    "17RML": (32617, 399960.0, 3100020.0),  # Florida (Tampa Bay)
    "38PMB": (32638, 399960.0, 1700040.0),  # Horn of Africa (tile of the bundled real Fmask)
    # neighbours of 10SEG eastwards across the UTM zone 10 / 11 boundary (120 W), two rows: footprints overlap
    # by ~10 km within a zone (HLS tiles are 109.8 km on a 100 km grid) and by ~80 km across it
    "10SFG": (32610, 600000.0, 4200000.0),
    "10SGG": (32610, 699960.0, 4200000.0),
    "10SFF": (32610, 600000.0, 4100040.0),
    "10SGF": (32610, 699960.0, 4100040.0),
    "11SKB": (32611, 199980.0, 4200000.0),
    "11SKA": (32611, 199980.0, 4100040.0),
    "11SLB": (32611, 300000.0, 4200000.0),
    "11SLA": (32611, 300000.0, 4100040.0),
}
# Typical surface reflectance x10000 (B, G, R, NIR, SWIR1, SWIR2) of a few land covers.
_COVER_SPECTRA = np.array([
    [400, 700, 500, 3500, 2000, 1000],  # vegetation
    [900, 1200, 1500, 2500, 3200, 2600],  # bare/developed
    [600, 800, 700, 300, 150, 100],  # water
    [500, 800, 900, 2400, 2600, 1800],  # cropland (fallow-ish)
], dtype=np.float32)


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int = 24) -> np.ndarray:
    """(h, w) smooth random field in [0, 1] by bilinear upsampling of a coarse grid."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)

    def weights(n: int) -> np.ndarray:
        pos = np.linspace(0, cells, n, dtype=np.float32)
        i0 = np.minimum(pos.astype(int), cells - 1)
        frac = pos - i0
        m = np.zeros((n, cells + 1), np.float32)
        m[np.arange(n), i0] = 1 - frac
        m[np.arange(n), i0 + 1] = frac
        return m

    return weights(h) @ coarse @ weights(w).T


#: Names of the land-cover classes 0..3 of :func:`land_cover`.
LAND_COVER_CLASSES = ("vegetation", "bare", "water", "cropland")


def land_cover(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 land-cover classes 0..3 (vegetation, bare, water, cropland) in smooth patches."""
    a, b = _smooth_field(rng, h, w, 12), _smooth_field(rng, h, w, 8)
    cover = np.where(a > 0.62, 1, np.where(b < 0.22, 2, np.where(a < 0.4, 3, 0)))
    return cover.astype(np.uint8)


def synth_reflectance(rng: np.random.Generator, cover: np.ndarray, doy: int) -> np.ndarray:
    """(6, h, w) int16 reflectance x10000 for a land-cover map on day of year ``doy``."""
    h, w = cover.shape
    season = 0.75 + 0.25 * np.sin(2 * np.pi * (doy - 100) / 365.0)  # greener in summer
    base = _COVER_SPECTRA[cover]  # (h, w, 6)
    texture = 0.8 + 0.4 * _smooth_field(rng, h, w, 48)
    out = base * texture[..., None]
    veg = cover == 0
    out[..., 3] = np.where(veg, out[..., 3] * season, out[..., 3])
    out += rng.normal(0.0, 25.0, size=out.shape).astype(np.float32)
    return np.clip(out, 0, 15000).astype(np.int16).transpose(2, 0, 1)


def synth_fmask(rng: np.random.Generator, h: int, w: int, cloud_cover: float) -> np.ndarray:
    """(h, w) uint8 HLS Fmask with cloud blobs, their adjacent ring and a shadow offset."""
    fmask = np.full((h, w), 1 << 6, np.uint8)  # aerosol level 1 (low) everywhere
    if cloud_cover <= 0:
        return fmask
    field = _smooth_field(rng, h, w, 16)
    thr = np.quantile(field, 1 - cloud_cover)
    cloud = field > thr
    ring = (field > thr - 0.03) & ~cloud
    dy, dx = max(1, h // 60), max(1, w // 60)
    shadow = np.zeros_like(cloud)
    shadow[dy:, dx:] = cloud[:-dy, :-dx]
    shadow &= ~cloud
    fmask[cloud] |= 1 << FMASK_BITS["cloud"]
    fmask[ring] |= 1 << FMASK_BITS["adjacent"]
    fmask[shadow] |= 1 << FMASK_BITS["shadow"]
    return fmask


def write_granule(out_dir: str | Path, tile: str, when: dt.datetime, size: int = 3660, seed: int = 0,
                  cloud_cover: float = 0.1, swath_edge: float = 0.0, product: str = "S30",
                  block: int = 256, compress: str = "deflate", cover: np.ndarray | None = None,
                  pixel_size: float = 30.0) -> list[Path]:
    """Write one synthetic HLS granule (six model bands + Fmask) and return the file paths.

    ``swath_edge`` is the fraction of the tile (a corner triangle) left as nodata. ``pixel_size``
    (metres) with ``size`` sets the footprint: ``size=128, pixel_size=109800 / 128`` covers the
    real 109.8 km tile with few pixels, so that neighbouring tiles overlap as HLS tiles do.
    """
    from rasterio.transform import from_origin

    epsg, x0, y0 = TILES[tile]
    rng = np.random.default_rng(seed)
    if cover is None:
        cover = land_cover(np.random.default_rng(sum(map(ord, tile))), size, size)
    refl = synth_reflectance(rng, cover, when.timetuple().tm_yday)
    fmask = synth_fmask(rng, size, size, cloud_cover)
    if swath_edge > 0:
        yy, xx = np.mgrid[0:size, 0:size]
        edge = (xx + yy) < np.sqrt(2 * swath_edge) * size
        refl[:, edge] = HLS_NODATA
        fmask[edge] = FMASK_FILL
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"HLS.{product}.T{tile}.{when:%Y%j}T{when:%H%M%S}.v2.0"
    profile = dict(driver="GTiff", width=size, height=size, count=1, crs=f"EPSG:{epsg}",
                   transform=from_origin(x0, y0, pixel_size, pixel_size), tiled=True, blockxsize=block,
                   blockysize=block, compress=compress)
    paths = []
    for band, arr in zip(model_band_files(product), refl):
        paths.append(_write(out_dir / f"{prefix}.{band}.tif", arr, dict(profile, dtype="int16", nodata=HLS_NODATA)))
    paths.append(_write(out_dir / f"{prefix}.Fmask.tif", fmask, dict(profile, dtype="uint8", nodata=FMASK_FILL)))
    return paths


def _write(path: Path, arr: np.ndarray, profile: dict, tags: dict | None = None) -> Path:
    """``arr`` with ``profile``'s grid (crs, transform), nodata and creation options, as the profile's dtype."""
    options = {k: v for k, v in profile.items() if k not in ("driver", "width", "height", "count", "dtype")}
    return write_geotiff(path, arr.astype(profile["dtype"], copy=False), tags=tags, **options)


def write_time_series(out_dir: str | Path, tile: str = "10SEG", dates: Sequence[str] = ("2020-03-15", "2020-06-20",
                      "2020-09-10"), size: int = 3660, seed: int = 0, cloud_cover: Sequence[float] | float = 0.1,
                      swath_edge: float = 0.0, **kw) -> list[Path]:
    """Write one granule per date (same tile, same land cover) and return all file paths."""
    covers = [cloud_cover] * len(dates) if isinstance(cloud_cover, (int, float)) else list(cloud_cover)
    cover = land_cover(np.random.default_rng(seed + 7919), size, size)
    paths = []
    for i, d in enumerate(dates):
        when = dt.datetime.fromisoformat(d).replace(hour=18, minute=49, second=19)
        paths += write_granule(out_dir, tile, when, size=size, seed=seed * 1000 + i, cloud_cover=covers[i],
                               swath_edge=swath_edge, cover=cover, **kw)
    return paths


def write_landcover(path: str | Path, tile: str = "10SEG", size: int = 3660, seed: int = 0) -> Path:
    """A land-cover GeoTIFF (uint8 classes 0..3) on the tile's grid, matching :func:`write_time_series`."""
    from rasterio.transform import from_origin

    epsg, x0, y0 = TILES[tile]
    cover = land_cover(np.random.default_rng(seed + 7919), size, size)
    return _write(Path(path), cover, dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                                          crs=f"EPSG:{epsg}", transform=from_origin(x0, y0, 30.0, 30.0),
                                          tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                                          nodata=255),
                  tags={"classes": json.dumps(dict(enumerate(LAND_COVER_CLASSES)))})

def write_series_from_image(image: str | Path, out_dir: str | Path, *, bands: Sequence[int] = (2, 3, 4, 5, 6, 7),
                            rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
                            dates: int = 6, start: str = "2020-04-01", step_days: int = 16,
                            seed: int = 0, days: Sequence[int] | None = None) -> list[Path]:
    """A time series with known truth made from one real image: one 6-band GeoTIFF per date (int16
    reflectance ×10000, the image's CRS and grid) with a clear sidecar ``.Fmask.tif`` (all 0).

    The dates are ``days`` after ``start`` (default: ``dates`` dates ``step_days`` apart; irregular
    lists make S30 + L30-like series). Each date multiplies each pixel by a phenology curve
    (vegetated pixels, by their NIR/Red ratio, green up: NIR up, Red/SWIR down, following a sine
    over the days, so that linear interpolation in time is close but not exact), a smooth spatial gain field per date and band (haze,
    illumination), and adds small per-pixel noise. ``rows`` / ``cols`` = (first, stop) keep a part
    of the image (e.g. one half for training, the other held out).
    """
    import rasterio

    rng = np.random.default_rng(seed)
    with rasterio.open(image) as src:
        r0, r1 = rows or (0, src.height)
        c0, c1 = cols or (0, src.width)
        win = rasterio.windows.Window(c0, r0, c1 - c0, r1 - r0)
        img = src.read(list(bands), window=win).astype(np.float32)  # (6, h, w)
        profile = dict(driver="GTiff", width=c1 - c0, height=r1 - r0, count=6, dtype="int16", crs=src.crs,
                       transform=src.window_transform(win), nodata=HLS_NODATA, compress="deflate")
    img = np.clip(img, 1, 10000)
    _, h, w = img.shape
    veg = np.clip((img[3] / np.maximum(img[2], 1) - 1.0) / 3.0, 0, 1)  # 0 bare .. 1 dense vegetation
    response = np.array([-0.25, -0.05, -0.35, 0.45, -0.15, -0.3], np.float32)[:, None, None]  # per band at peak
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = dt.datetime.strptime(start, "%Y-%m-%d")
    days = [step_days * k for k in range(dates)] if days is None else sorted(int(v) for v in days)
    paths = []
    for k, day in enumerate(days):
        phase = np.sin(np.pi * (day - days[0]) / max(days[-1] - days[0], 1))  # 0 -> 1 (peak) -> 0
        gain = 1 + response * veg[None] * phase
        haze = 1 + 0.15 * (np.stack([_smooth_field(rng, h, w, cells=4) for _ in range(6)]) - 0.5)
        frame = img * gain * haze + rng.normal(0, 15, img.shape)
        when = first + dt.timedelta(days=day)
        path = out / f"series_{when:%Y-%m-%d}.tif"
        _write(path, np.clip(np.rint(frame), 0, 10000).astype(np.int16), profile)
        _write(out / f"series_{when:%Y-%m-%d}.Fmask.tif", np.zeros((h, w), np.uint8),
               dict(profile, count=1, dtype="uint8", nodata=FMASK_FILL))
        paths.append(path)
    return paths
