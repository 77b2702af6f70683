"""Many tile predictions -> one seamless map on one grid (``geofm map``'s mosaic step).

The inputs are the COGs :func:`~geofm.infer.scene.predict_scene` wrote, each on its own grid
(an HLS tile's UTM zone). The output grid has the CRS ``crs`` and square ``resolution`` m
pixels aligned on multiples of the resolution (so 30 m HLS tiles of that zone fall on it
pixel for pixel); it spans the union of the tiles' footprints (or the AOI's bounds) in that
CRS, snapped outwards to the grid.

The output is computed in windows of ``block`` x ``block`` px. For each window, each tile
whose footprint meets it is read for that window only: tiles on the output grid (same CRS,
resolution and pixel alignment) by a plain windowed read, others through a
:class:`rasterio.vrt.WarpedVRT` onto the output grid (nearest for class maps, bilinear for
probabilities and reflectance; the source's nodata pixels take no part). Memory therefore
holds a few windows, whatever the size of the region.

Overlap rule ``"nearest-centre"``: an output pixel takes its value from the tile whose
footprint centre (the tile's centre pixel position, transformed to the output CRS) is
nearest to the pixel centre, among the tiles that have valid (not nodata) data at that
pixel; equal distances go to the tile whose file name sorts first. Two overlapping tiles
thus meet along the perpendicular bisector of their centres, in the middle of their
overlap, where both predictions had full context. Pixels no tile covers are nodata, and so
are pixels whose centre lies outside ``aoi`` when one is given.

The result is one COG (:func:`geofm.io.write_cog`) with overviews (nearest for class maps,
average otherwise), the tiles' nodata, band descriptions and the tags they share (``classes``
of a class map among them), the colour table of a class map when the tiles carry one, and
``geofm_mosaic_rule`` / ``geofm_mosaic_tiles`` (tile file names). The same inputs give the
same bytes.

>>> r = mosaic_tiles(["tiles/T10SEG.tif", "tiles/T11SKA.tif"], "mosaic.tif", crs="EPSG:32610")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geofm.errors import ConfigError, DataError
from geofm.io import write_cog

if TYPE_CHECKING:
    from rasterio.crs import CRS

log = logging.getLogger(__name__)

RULES = ("nearest-centre",)
KINDS = ("classes", "probabilities", "reflectance", "raw")


@dataclass
class MosaicResult:
    """What :func:`mosaic_tiles` wrote: the grid (``transform`` an :class:`affine.Affine`, ``bounds``
    (left, bottom, right, top) in ``crs``), the output kind and the number of pixels not nodata."""

    path: Path
    crs: str
    transform: object
    width: int
    height: int
    bounds: tuple[float, float, float, float]
    kind: str
    pixels_covered: int
    tiles: list[str] = field(default_factory=list)


@dataclass
class _Tile:
    """One input COG: its name, grid, footprint box and centre in the output CRS."""

    path: str
    name: str
    crs: object
    transform: object
    width: int
    height: int
    box: tuple[float, float, float, float]  # (left, bottom, right, top) in the output CRS
    centre: tuple[float, float]  # in the output CRS
    aligned: tuple[int, int] | None = None  # (column, row) offset of the tile on the output grid


# --------------------------------------------------------------------------- grid helpers
def majority_utm_crs(footprints: Sequence) -> str:
    """``"EPSG:326zz"`` / ``"EPSG:327zz"``: the UTM zone holding most of the footprints' area.

    ``footprints``: GeoJSON geometries (EPSG:4326 lon/lat) or (west, south, east, north) boxes in
    degrees. Each footprint's bounding box is split along the 6-degree zone boundaries; the
    zone with the largest summed area (on the sphere) wins, ties going to the lower zone number.
    The hemisphere is the one holding most of that zone's area. The Norway/Svalbard exceptions
    to the zone grid are not applied.
    """
    if not footprints:
        raise DataError("no footprints given: cannot choose a UTM zone")
    area: dict[tuple[int, bool], float] = {}
    for fp in footprints:
        w, s, e, n = _lonlat_box(fp)
        if e - w <= 0 or n - s <= 0:  # a point or a line: a tiny box around it
            w, s, e, n = w - 1e-9, s - 1e-9, e + 1e-9, n + 1e-9
        for zone in range(_utm_zone(w), _utm_zone(e) + 1):
            dlon = min(e, -180.0 + 6 * zone) - max(w, -180.0 + 6 * (zone - 1))
            if dlon <= 0:
                continue
            for north, (a, b) in ((True, (max(s, 0.0), max(n, 0.0))), (False, (min(s, 0.0), min(n, 0.0)))):
                part = dlon * (math.sin(math.radians(b)) - math.sin(math.radians(a)))  # box area on the sphere
                if part > 0:
                    area[(zone, north)] = area.get((zone, north), 0.0) + part
    by_zone: dict[int, float] = {}
    for (zone, _), a in area.items():
        by_zone[zone] = by_zone.get(zone, 0.0) + a
    zone = min(by_zone, key=lambda z: (-by_zone[z], z))
    north = area.get((zone, True), 0.0) >= area.get((zone, False), 0.0)
    return f"EPSG:{(32600 if north else 32700) + zone}"


def _utm_zone(lon: float) -> int:
    return min(60, max(1, int((lon + 180.0) // 6) + 1))


def _lonlat_box(fp) -> tuple[float, float, float, float]:
    if isinstance(fp, dict):
        geom = fp.get("geometry", fp) if fp.get("type") == "Feature" else fp
        xs, ys = [], []
        _collect_coords(geom.get("coordinates", []), xs, ys)
        if not xs:
            raise DataError(f"footprint has no coordinates: {str(fp)[:80]}")
        return min(xs), min(ys), max(xs), max(ys)
    w, s, e, n = (float(v) for v in fp)
    return w, s, e, n


def _collect_coords(c, xs: list, ys: list) -> None:
    if len(c) and isinstance(c[0], (int, float)):
        xs.append(float(c[0]))
        ys.append(float(c[1]))
        return
    for sub in c:
        _collect_coords(sub, xs, ys)


def _densify(geom: dict, step: float = 0.01) -> dict:
    """A copy of a GeoJSON geometry with points every ``step`` degrees along its edges, so that
    its edges stay the lon/lat lines they were once transformed to a projected CRS."""
    def ring(coords):
        out = []
        for (x0, y0, *_), (x1, y1, *_) in zip(coords[:-1], coords[1:]):
            n = max(1, math.ceil(max(abs(x1 - x0), abs(y1 - y0)) / step))
            out.extend((x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n))
        return out + [tuple(coords[-1][:2])] if coords else out

    kind = geom.get("type")
    if kind == "Polygon":
        return {"type": kind, "coordinates": [ring(r) for r in geom["coordinates"]]}
    if kind == "MultiPolygon":
        return {"type": kind, "coordinates": [[ring(r) for r in poly] for poly in geom["coordinates"]]}
    return geom


def check_crs(crs: str | CRS) -> CRS:
    """``crs`` (``"EPSG:32610"``, WKT, a :class:`rasterio.crs.CRS`) as a projected CRS; else
    :class:`ConfigError` naming ``--crs`` (call it before any work to validate the option)."""
    import rasterio
    from rasterio.crs import CRS

    try:
        with rasterio.Env():  # GDAL's messages go to rasterio's logger, not to stderr
            out = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    except Exception as e:  # noqa: BLE001  (CRSError, or rasterio's base class for PROJ failures)
        raise ConfigError(f"--crs '{crs}' is not a coordinate reference system (expected e.g. EPSG:32610, "
                          f"a WKT or a PROJ string): {e}") from None
    if not out.is_projected:
        raise ConfigError(f"--crs '{crs}' is not a projected CRS: expected metres, e.g. a UTM zone (EPSG:326zz)")
    return out


def _snap_out(box: tuple[float, float, float, float], res: float) -> tuple[float, float, float, float]:
    """Grow (left, bottom, right, top) outwards to multiples of ``res``."""
    eps = 1e-6
    return (math.floor(box[0] / res + eps) * res, math.floor(box[1] / res + eps) * res,
            math.ceil(box[2] / res - eps) * res, math.ceil(box[3] / res - eps) * res)


# --------------------------------------------------------------------------- reading tiles
def _open_tiles(paths: Sequence[str], dst_crs, res: float) -> tuple[list[_Tile], dict]:
    """Read every tile's header; check they agree on bands, dtype and nodata; the shared metadata."""
    import rasterio
    from rasterio.warp import transform as warp_transform
    from rasterio.warp import transform_bounds

    tiles: list[_Tile] = []
    meta: dict | None = None
    for p in sorted(paths, key=lambda q: (Path(q).name, q)):
        try:
            src = rasterio.open(p)
        except rasterio.errors.RasterioIOError as e:
            raise DataError(f"cannot read tile '{p}': {e}") from e
        with src:
            if src.crs is None:
                raise DataError(f"tile '{p}' has no CRS: expected a georeferenced prediction GeoTIFF")
            tags = src.tags()
            try:
                cmap = src.colormap(1)
            except ValueError:
                cmap = None
            this = dict(count=src.count, dtype=src.dtypes[0], nodata=src.nodata, tags=tags,
                        descriptions=tuple(d or "" for d in src.descriptions), colormap=cmap)
            t = src.transform
            box = transform_bounds(src.crs, dst_crs, *src.bounds, densify_pts=21)
            cx, cy = t * (src.width / 2, src.height / 2)
            (ox,), (oy,) = warp_transform(src.crs, dst_crs, [cx], [cy])
            tile = _Tile(str(p), Path(p).name, src.crs, t, src.width, src.height, box, (ox, oy))
            if src.crs == dst_crs and t.b == 0 and t.d == 0 and math.isclose(t.a, res) and math.isclose(t.e, -res):
                col, row = t.c / res, -t.f / res  # offsets from the grid origin (0, 0), in pixels
                if abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6:
                    tile.aligned = (round(col), round(row))
        if this["nodata"] is None:
            raise DataError(f"tile '{p}' has no nodata value: expected a geofm prediction (geofm predict / map)")
        if meta is None:
            meta = this
        else:
            for key in ("count", "dtype"):
                if this[key] != meta[key]:
                    raise DataError(f"tile '{p}' has {key} {this[key]}, expected {meta[key]} as "
                                    f"'{tiles[0].path}': tiles of one mosaic must be the same kind of output")
            if not (this["nodata"] == meta["nodata"] or (np.isnan(this["nodata"]) and np.isnan(meta["nodata"]))):
                raise DataError(f"tile '{p}' has nodata {this['nodata']}, expected {meta['nodata']} as "
                                f"'{tiles[0].path}'")
            if tags.get("classes") != meta["tags"].get("classes"):
                raise DataError(f"tile '{p}' has classes {tags.get('classes')}, expected {meta['tags'].get('classes')}"
                                f" as '{tiles[0].path}': tiles of one mosaic must come from one model")
            meta["tags"] = {k: v for k, v in meta["tags"].items() if tags.get(k) == v}
            meta["colormap"] = meta["colormap"] or cmap
        tiles.append(tile)
    return tiles, meta


def _kind(meta: dict, first: str) -> str:
    kind = meta["tags"].get("geofm_output")
    if kind is None:  # tiles from elsewhere: integer single-band rasters are taken as class maps
        kind = "classes" if meta["count"] == 1 and np.dtype(meta["dtype"]).kind in "iu" else "raw"
    if kind not in KINDS:
        raise DataError(f"tile '{first}' has geofm_output '{kind}', expected one of {list(KINDS)}")
    return kind


class _TileReader:
    """Reads one tile's part of an output window: aligned tiles directly, others through a WarpedVRT."""

    def __init__(self, tile: _Tile, dst_crs, dst_transform, width: int, height: int, nodata: float,
                 resampling):
        import rasterio
        from rasterio.vrt import WarpedVRT

        self.tile = tile
        self.src = rasterio.open(tile.path)
        self.vrt = None
        if tile.aligned is None:
            # pixel centres transformed to within 1/1000 px (GDAL default 1/8): values hardly depend on the window
            self.vrt = WarpedVRT(self.src, crs=dst_crs, transform=dst_transform, width=width, height=height,
                                 resampling=resampling, src_nodata=nodata, nodata=nodata, tolerance=1e-3)

    def read(self, window, grid_offset: tuple[int, int], out: np.ndarray) -> None:
        """Fill ``out`` (count, h, w), prefilled with nodata, with the tile's values in ``window``
        of the output grid (whose pixel (0, 0) sits ``grid_offset`` grid pixels from the origin)."""
        from rasterio.windows import Window

        if self.vrt is not None:
            self.vrt.read(window=window, out=out)
            return
        h, w = out.shape[1:]
        c0 = grid_offset[0] + int(window.col_off) - self.tile.aligned[0]  # window origin in tile pixels
        r0 = grid_offset[1] + int(window.row_off) - self.tile.aligned[1]
        a0, b0 = max(0, c0), max(0, r0)
        a1, b1 = min(self.tile.width, c0 + w), min(self.tile.height, r0 + h)
        if a1 <= a0 or b1 <= b0:
            return
        self.src.read(window=Window(a0, b0, a1 - a0, b1 - b0), out=out[:, b0 - r0:b1 - r0, a0 - c0:a1 - c0])

    def close(self) -> None:
        if self.vrt is not None:
            self.vrt.close()
        self.src.close()


# --------------------------------------------------------------------------- the mosaic
def mosaic_tiles(tiles: Sequence[str | os.PathLike], out_path: str | os.PathLike, *,
                 crs: str | CRS, resolution: float = 30.0, aoi: dict | None = None, rule: str = "nearest-centre",
                 block: int = 512, progress: Callable[[int, int], None] | None = None,
                 overviews: bool = True, compress: str = "deflate") -> MosaicResult:
    """Mosaic prediction COGs into one COG at ``out_path`` on ``crs`` / ``resolution`` (see module doc).

    ``tiles``: GeoTIFFs written by :func:`~geofm.infer.scene.predict_scene` (any CRS; one kind:
    class maps, probabilities or reflectance, the same bands, dtype and nodata). ``crs``: a
    projected CRS (``"EPSG:32610"``, a :class:`rasterio.crs.CRS`; :func:`majority_utm_crs` picks
    one). ``resolution``: pixel size in CRS units (m). ``aoi``: a GeoJSON geometry (or Feature) in
    EPSG:4326; the output covers its bounds and is nodata outside it. ``block``: output window
    and COG tile size (px, a multiple of 16); memory grows with it, not with the region.
    ``progress(done, total)`` is called after each window.
    """
    import rasterio

    if not tiles:
        raise DataError("no tiles to mosaic")
    if rule not in RULES:
        raise ConfigError(f"mosaic rule must be one of {list(RULES)}, got {rule!r}")
    if block < 16 or block % 16:
        raise ConfigError(f"block must be a positive multiple of 16, got {block}")
    if not resolution > 0:
        raise ConfigError(f"--resolution must be a positive number of metres, got {resolution}")
    dst_crs, res = check_crs(crs), float(resolution)
    infos, meta = _open_tiles([str(t) for t in tiles], dst_crs, res)
    kind = _kind(meta, infos[0].path)
    geom = _aoi_geometry(aoi, dst_crs)
    box = _lonlat_box(geom) if geom is not None else (  # (left, bottom, right, top) in the output CRS
        min(t.box[0] for t in infos), min(t.box[1] for t in infos),
        max(t.box[2] for t in infos), max(t.box[3] for t in infos))
    mosaic = _WindowMosaic(infos, meta, kind, dst_crs, _snap_out(box, res), res, block, geom, progress)

    out_path = Path(out_path)
    tags = {**meta["tags"], "geofm_output": kind, "geofm_mosaic_rule": rule,
            "geofm_mosaic_tiles": ",".join(t.name for t in infos)}
    try:
        with rasterio.Env(GDAL_CACHEMAX=64 << 20):  # GDAL's block cache would otherwise grow with the region
            write_cog(out_path, mosaic.blocks(), width=mosaic.width, height=mosaic.height, count=meta["count"],
                      dtype=meta["dtype"], crs=dst_crs, transform=mosaic.transform, nodata=meta["nodata"],
                      block=block, compress=compress, overviews=overviews,
                      resampling="nearest" if kind == "classes" else "average",
                      descriptions=meta["descriptions"] if any(meta["descriptions"]) else (), tags=tags,
                      colormap=meta["colormap"] if kind == "classes" else None)
    finally:
        mosaic.close()
    if not mosaic.covered:
        log.warning("mosaic %s has no data: no tile has valid pixels inside the output extent", out_path)
    log.info("mosaic %s: %d tiles -> %dx%d px on %s at %g m, %d px covered", out_path, len(infos), mosaic.width,
             mosaic.height, dst_crs.to_string(), res, mosaic.covered)
    return MosaicResult(out_path, dst_crs.to_string(), mosaic.transform, mosaic.width, mosaic.height, mosaic.bounds,
                        kind, mosaic.covered, [t.path for t in infos])


def _aoi_geometry(aoi: dict | None, dst_crs) -> dict | None:
    """The AOI (GeoJSON geometry or Feature, EPSG:4326) in the output CRS, edges densified first."""
    from rasterio.warp import transform_geom

    if aoi is None:
        return None
    g = aoi.get("geometry", aoi) if aoi.get("type") == "Feature" else aoi
    try:
        return transform_geom("EPSG:4326", dst_crs, _densify(g))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--aoi is not a GeoJSON geometry in EPSG:4326: {e}") from e


class _WindowMosaic:
    """The output grid cut into windows, and the open tiles: yields each finished window in turn."""

    def __init__(self, tiles: list[_Tile], meta: dict, kind: str, dst_crs, bounds: tuple, res: float, block: int,
                 aoi: dict | None, progress: Callable[[int, int], None] | None):
        from rasterio.enums import Resampling
        from rasterio.transform import from_origin
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        left, bottom, right, top = bounds
        self.bounds, self.res, self.meta, self.aoi, self.progress = bounds, res, meta, aoi, progress
        self.dst_crs = dst_crs
        self.width, self.height = max(1, round((right - left) / res)), max(1, round((top - bottom) / res))
        self.transform = from_origin(left, top, res, res)
        self.grid_offset = (round(left / res), round(-top / res))  # output pixel (0, 0) on the aligned-tile grid
        self.resampling = Resampling.nearest if kind == "classes" else Resampling.bilinear
        self.windows = [Window(c, r, min(block, self.width - c), min(block, self.height - r))
                        for r in range(0, self.height, block) for c in range(0, self.width, block)]
        # The tiles each window reads, and after which window a tile is no longer needed (then closed).
        self.needs = [[t for t in tiles if _meets(t, window_transform(w, self.transform), w, res)]
                      for w in self.windows]
        self.last_use = {t.path: i for i, ts in enumerate(self.needs) for t in ts}
        self.readers: dict[str, _TileReader] = {}
        self.covered = 0

    def blocks(self) -> Iterator[tuple[object, np.ndarray]]:
        """(window, (count, h, w) array) for every window, row by row."""
        from rasterio.features import geometry_mask
        from rasterio.windows import transform as window_transform

        nodata = self.meta["nodata"]
        for i, win in enumerate(self.windows):
            h, w = int(win.height), int(win.width)
            wt = window_transform(win, self.transform)
            out = np.full((self.meta["count"], h, w), nodata, self.meta["dtype"])
            inside = None if self.aoi is None else geometry_mask([self.aoi], (h, w), wt, invert=True)
            if inside is None or inside.any():
                _fill_window(out, win, wt, [self._reader(t) for t in self.needs[i]], self.grid_offset, nodata,
                             self.res)
                if inside is not None:
                    out[:, ~inside] = nodata
            for t in self.needs[i]:
                if self.last_use[t.path] == i and t.path in self.readers:
                    self.readers.pop(t.path).close()
            self.covered += int(_valid(out, nodata).sum())
            yield win, out
            if self.progress is not None:
                self.progress(i + 1, len(self.windows))

    def _reader(self, tile: _Tile) -> _TileReader:
        if tile.path not in self.readers:
            self.readers[tile.path] = _TileReader(tile, self.dst_crs, self.transform, self.width, self.height,
                                                  self.meta["nodata"], self.resampling)
        return self.readers[tile.path]

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()


def _valid(arr: np.ndarray, nodata: float) -> np.ndarray:
    """(count, h, w) -> (h, w) bool: pixels that are not nodata in at least one band."""
    if isinstance(nodata, float) and math.isnan(nodata):
        return ~np.isnan(arr).all(axis=0)
    return (arr != nodata).any(axis=0)


def _meets(tile: _Tile, wt, win, res: float) -> bool:
    """Whether ``tile``'s footprint box (plus the reach of a bilinear kernel) meets the window."""
    wl, wtop = wt.c, wt.f
    wr, wb = wl + int(win.width) * res, wtop - int(win.height) * res
    bl, bb, br, bt = tile.box
    margin = 2 * res
    return bl - margin < wr and br + margin > wl and bb - margin < wtop and bt + margin > wb


def _fill_window(out: np.ndarray, win, wt, readers: list[_TileReader], grid_offset: tuple[int, int],
                 nodata: float, res: float) -> None:
    """Write into ``out`` (count, h, w) each pixel's value from the nearest-centred valid tile.

    ``readers`` come in tile name order, so that on equal distances the earlier name stays.
    """
    if len(readers) == 1:  # out is prefilled with nodata: the tile's values are the answer
        readers[0].read(win, grid_offset, out)
        return
    h, w = out.shape[1:]
    xs = wt.c + (np.arange(w) + 0.5) * res  # pixel centres in the output CRS
    ys = wt.f - (np.arange(h) + 0.5) * res
    best = np.full((h, w), np.inf)
    buf = np.empty_like(out)
    for reader in readers:
        buf.fill(nodata)
        reader.read(win, grid_offset, buf)
        valid = _valid(buf, nodata)
        if not valid.any():
            continue
        cx, cy = reader.tile.centre
        d2 = (xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2  # (h, w) squared distance to the tile centre
        take = valid & (d2 < best)
        np.copyto(best, d2, where=take)
        np.copyto(out, buf, where=take[None])


__all__ = ["MosaicResult", "check_crs", "majority_utm_crs", "mosaic_tiles"]
