"""A self-contained STAC catalog of a region map: one item per tile output, one for the mosaic.

Layout (all hrefs inside the catalog relative, so the folder can be moved or served as is)::

    DIR/catalog.json          Catalog: links to the items
    DIR/items/{id}.json       Item per tile output (id = the tile file's stem) and for the mosaic
    DIR/tiles/*.tif, DIR/mosaic.tif    the assets ("data"), referenced as ../tiles/..., ../mosaic.tif

Each item carries the projection extension (``proj:code``, ``proj:shape``, ``proj:transform``,
``proj:bbox`` of the asset's grid), the raster extension (``raster:bands``: data type, nodata,
spatial resolution, scale of reflectance), for class maps the classification extension (one
class per value of the ``classes`` tag, its colour from the GeoTIFF colour table as
``color_hint``, and the nodata value), ``created``, the acquisition dates (``datetime`` for one
date, else ``start_datetime``/``end_datetime``; ``geofm:dates`` lists them), the model
(``geofm:model``, ``geofm:model_file``, ``geofm:model_sha256``) and ``derived_from`` links: a
tile item to each source granule file and each source STAC item, the mosaic item to the tile
items. Every file is written under a temporary name and renamed; ``catalog.json`` last.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geofm.errors import DataError
from geofm.io import atomic_path

log = logging.getLogger(__name__)

#: pixel value x scale = surface reflectance (HLS int16 x10000)
REFLECTANCE_SCALE = 1e-4


@dataclass
class TileProduct:
    """One tile output of a region map and what it was made from."""

    tile: str  # MGRS id, e.g. "10SEG"
    path: Path  # the tile output COG
    dates: list[dt.date]
    sources: list[str]  # hrefs of every source granule file (manifest item hrefs when known)
    source_items: list[str] = field(default_factory=list)  # STAC item self hrefs from a search manifest


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in ``chunk`` byte pieces (never whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_catalog(out_dir: str | os.PathLike, tiles: Sequence[TileProduct], mosaic: str | os.PathLike | None, *,
                  model_name: str, model_path: str | os.PathLike, model_sha256: str,
                  created: dt.datetime | None = None, title: str | None = None) -> Path:
    """Write ``out_dir/catalog.json`` and ``out_dir/items/*.json`` (see the module doc); the catalog path.

    ``tiles``: the tile outputs with their dates and sources; ``mosaic``: the mosaic COG or None.
    ``model_name``, ``model_path`` (its file name is recorded) and ``model_sha256`` describe the
    model; ``created`` (default: now, UTC) is every item's ``created``.
    """
    import pystac

    out_dir = Path(out_dir)
    created = created or dt.datetime.now(dt.timezone.utc)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    model = {"geofm:model": model_name, "geofm:model_file": Path(model_path).name, "geofm:model_sha256": model_sha256}
    catalog = pystac.Catalog(id=_safe_id(out_dir.resolve().name or "geofm-map"),
                             description=title or f"geofm map: {len(tiles)} tile(s)"
                             + (" and their mosaic" if mosaic is not None else ""),
                             title=title, catalog_type=pystac.CatalogType.SELF_CONTAINED)
    catalog.set_self_href(str((out_dir / "catalog.json").resolve()))
    items = []
    for t in sorted(tiles, key=lambda t: Path(t.path).name):
        if not t.dates:
            raise DataError(f"tile output '{t.path}' has no dates: expected the dates of its frames")
        item = _item(Path(t.path), sorted(t.dates), created, model)
        item.properties["geofm:tile"] = t.tile
        for href in t.source_items:
            item.add_link(pystac.Link("derived_from", href, media_type="application/geo+json"))
        for href in t.sources:
            item.add_link(pystac.Link("derived_from", _abs_href(href), media_type=_media_type(href)))
        items.append(item)
    if mosaic is not None:
        dates = sorted({d for t in tiles for d in t.dates})
        if not dates:
            raise DataError(f"mosaic '{mosaic}' has no dated tiles: expected at least one tile with dates")
        item = _item(Path(mosaic), dates, created, model)
        item.properties["geofm:tiles"] = [i.id for i in items]
        for tile_item in items:
            item.add_link(pystac.Link("derived_from", tile_item, media_type=pystac.MediaType.JSON))
        items.append(item)
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        raise DataError(f"two outputs have the same file name stem: {sorted(i for i in ids if ids.count(i) > 1)}")
    for item in items:
        catalog.add_item(item)
        item.set_self_href(str((out_dir / "items" / f"{item.id}.json").resolve()))
        item.make_asset_hrefs_relative()
    for item in items:
        _write_json(out_dir / "items" / f"{item.id}.json", item.to_dict(include_self_link=False))
    path = out_dir / "catalog.json"
    _write_json(path, catalog.to_dict(include_self_link=False))
    log.info("wrote STAC catalog %s: %d item(s)", path, len(items))
    return path


def _item(path: Path, dates: list[dt.date], created: dt.datetime, model: dict):
    """A STAC item for one output COG, its projection, raster and classification metadata."""
    import pystac
    import rasterio
    from pystac.extensions.classification import Classification, ClassificationExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot read output '{path}' for the catalog: {e}") from e
    with src:
        crs, t, bounds, shape = src.crs, src.transform, src.bounds, (src.height, src.width)
        tags, dtype, nodata, count = src.tags(), src.dtypes[0], src.nodata, src.count
        try:
            cmap = src.colormap(1)
        except ValueError:
            cmap = {}
    if crs is None:
        raise DataError(f"output '{path}' has no CRS: expected a georeferenced GeoTIFF")
    geometry, bbox = _footprint(crs, bounds)
    start = dt.datetime.combine(dates[0], dt.time(0, 0), dt.timezone.utc)
    end = dt.datetime.combine(dates[-1], dt.time(23, 59, 59), dt.timezone.utc)
    one_day = dates[0] == dates[-1]
    kind = tags.get("geofm_output", "raw")
    props = {**model, "geofm:output": kind, "geofm:dates": [d.isoformat() for d in dates]}
    item = pystac.Item(id=_safe_id(path.stem), geometry=geometry, bbox=bbox, datetime=start if one_day else None,
                       properties=props, start_datetime=None if one_day else start,
                       end_datetime=None if one_day else end)
    item.common_metadata.created = created
    item.common_metadata.gsd = abs(t.a)
    asset = pystac.Asset(href=str(path.resolve()), media_type=pystac.MediaType.COG, roles=["data"],
                         title=f"{kind} ({path.name})")
    item.add_asset("data", asset)

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = crs.to_epsg()
    proj.apply(epsg=epsg, wkt2=None if epsg else crs.to_wkt(), shape=list(shape), transform=list(t)[:6],
               bbox=[bounds.left, bounds.bottom, bounds.right, bounds.top])
    nd = "nan" if isinstance(nodata, float) and nodata != nodata else nodata
    band = dict(data_type=DataType(dtype), nodata=nd, spatial_resolution=abs(t.a))
    if kind == "reflectance":
        band["scale"] = REFLECTANCE_SCALE
    RasterExtension.ext(asset, add_if_missing=True).apply([RasterBand.create(**band) for _ in range(count)])
    if kind == "classes" and "classes" in tags:
        names = {int(k): v for k, v in json.loads(tags["classes"]).items()}
        classes = [Classification.create(value=v, name=_class_name(n), description=n,
                                         color_hint=_hex(cmap[v]) if v in cmap else None)
                   for v, n in sorted(names.items())]
        if nodata is not None:
            classes.append(Classification.create(value=int(nodata), name="nodata", description="no prediction",
                                                 nodata=True))
        ClassificationExtension.ext(asset, add_if_missing=True).classes = classes
    return item


def _footprint(crs, bounds, n: int = 8) -> tuple[dict, list[float]]:
    """GeoJSON polygon (EPSG:4326) of ``bounds`` in ``crs``, ``n`` points per edge, and its bbox."""
    from rasterio.warp import transform as warp_transform

    left, bottom, right, top = bounds
    xs, ys = [], []
    for (x0, y0), (x1, y1) in (((left, bottom), (right, bottom)), ((right, bottom), (right, top)),
                               ((right, top), (left, top)), ((left, top), (left, bottom))):
        for i in range(n):
            xs.append(x0 + (x1 - x0) * i / n)
            ys.append(y0 + (y1 - y0) * i / n)
    lon, lat = warp_transform(crs, "EPSG:4326", xs, ys)
    ring = [[round(x, 8), round(y, 8)] for x, y in zip(lon, lat)]
    ring.append(ring[0])
    bbox = [min(p[0] for p in ring), min(p[1] for p in ring), max(p[0] for p in ring), max(p[1] for p in ring)]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _hex(rgba) -> str:
    return "".join(f"{int(c):02X}" for c in rgba[:3])


def _class_name(name: str) -> str:
    """The classification extension's names are [0-9A-Za-z-_]; others become '_'."""
    return re.sub(r"[^0-9A-Za-z_-]", "_", name) or "_"


def _safe_id(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z._-]", "_", name) or "item"


def _abs_href(href: str) -> str:
    """URLs as they are; local paths absolute (they lie outside the catalog)."""
    return href if "://" in href else str(Path(href).resolve())


def _media_type(href: str) -> str:
    import pystac

    return pystac.MediaType.COG if href.lower().endswith((".tif", ".tiff")) else pystac.MediaType.JSON \
        if href.lower().endswith(".json") else "application/octet-stream"


def _write_json(path: Path, obj: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


__all__ = ["TileProduct", "file_sha256", "write_catalog"]
