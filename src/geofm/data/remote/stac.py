"""Find HLS granules in NASA's CMR-STAC (pystac-client) and write them as a STAC manifest.

CMR-STAC (``https://cmr.earthdata.nasa.gov/stac/LPCLOUD``) serves HLS v2.0 as the
collections ``HLSS30_2.0`` (Sentinel-2) and ``HLSL30_2.0`` (Landsat 8/9). Each item is a
granule, ``HLS.S30.T10SEG.2021123T184919.v2.0``, with one asset per band file (``B02``,
``B8A``, ``Fmask``...) and ``eo:cloud_cover`` in percent. The service clamps page sizes and
answers a POST search with a GET ``next`` link that carries a cursor: every page is
followed. Its cloud filter has not always been applied, so cloud cover is filtered again
here, and the MGRS tile (not a STAC property) is filtered from the item id.

The manifest is a STAC ItemCollection (GeoJSON) that ``geofm fetch`` and ``geofm ingest`` read.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geofm.errors import ConfigError, DataError, RemoteError
from geofm.io import atomic_path

log = logging.getLogger(__name__)

DEFAULT_STAC_URL = "https://cmr.earthdata.nasa.gov/stac/LPCLOUD"
HLS_PRODUCTS = ("HLSS30", "HLSL30")
_COLLECTION_RE = re.compile(r"^(HLS[SL]30)(?:[._]?v?(\d+)\.?(\d+))?$", re.IGNORECASE)
TILE_RE = re.compile(r"\.T(\d{2}[C-X][A-Z]{2})\.")


def collection_id(name: str) -> str:
    """CMR-STAC id of an HLS collection as users write it: ``HLSS30``, ``HLSS30_2.0``, ``HLSS30.v2.0`` -> ``HLSS30_2.0``.

    Names that are not HLS pass through unchanged (other collections of the catalog).
    """
    m = _COLLECTION_RE.match(name.strip())
    if not m:
        return name.strip()
    major, minor = m.group(2) or "2", m.group(3) or "0"
    return f"{m.group(1).upper()}_{major}.{minor}"


def tile_of(item_id: str) -> str | None:
    """MGRS tile (``10SEG``) of an HLS granule id, or None."""
    m = TILE_RE.search(item_id + ".")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- MGRS tiles
_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # 8-degree latitude bands from 80S
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"  # 100 km rows, cycle every 2000 km
_COL_SETS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")  # 100 km columns, by zone number mod 3
HLS_TILE_SIZE = 109_800.0  # metres: HLS tiles are the Sentinel-2 MGRS tiles, 109.8 km with overlap


def mgrs_tile_bounds(tile: str) -> tuple[int, tuple[float, float, float, float]]:
    """UTM EPSG code and (xmin, ymin, xmax, ymax) in metres of the HLS/Sentinel-2 tile ``tile`` (e.g. ``10SEG``).

    The tile's upper-left corner is the north-west corner of its 100 km MGRS square, on
    a 60 m grid; it spans 109.8 km east and south (the grid of the HLS files: 10SEG is
    (499980, 4090200, 609780, 4200000) in EPSG:32610).
    """
    m = re.fullmatch(r"(\d{1,2})([C-X])([A-Z])([A-Z])", tile.strip().upper().removeprefix("T"))
    if not m or m.group(2) not in _BANDS:
        raise ConfigError(f"'{tile}' is not an MGRS tile id (expected e.g. 10SEG: zone, latitude band, 2 letters)")
    zone, band, col, row = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    cols = _COL_SETS[(zone - 1) % 3]
    if not 1 <= zone <= 60 or col not in cols or row not in _ROW_LETTERS:
        raise ConfigError(f"'{tile}' is not a valid MGRS tile id (column '{col}' or row '{row}' impossible in zone {zone})")
    easting = (cols.index(col) + 1) * 100_000.0
    row_idx = (_ROW_LETTERS.index(row) - (5 if zone % 2 == 0 else 0)) % 20
    north = band >= "N"
    # northing of the band's southern edge, to choose which 2000 km cycle the row letter is in
    lat0 = -80 + 8 * _BANDS.index(band)
    y_band = _lat_to_northing(lat0, zone, north)
    base = row_idx * 100_000.0
    ymin = base + 2_000_000.0 * max(0, round((y_band - base) / 2_000_000.0))
    while ymin + 100_000.0 < y_band - 1.0:
        ymin += 2_000_000.0
    epsg = (32600 if north else 32700) + zone
    x0 = math.floor(easting / 60) * 60.0  # the tiles' corners sit on a 60 m grid (10SEG: 499980)
    y1 = math.ceil((ymin + 100_000.0) / 60) * 60.0
    return epsg, (x0, y1 - HLS_TILE_SIZE, x0 + HLS_TILE_SIZE, y1)


def _lat_to_northing(lat: float, zone: int, north: bool) -> float:
    from rasterio.warp import transform

    lon0 = -183 + 6 * zone
    _, ys = transform("EPSG:4326", f"EPSG:{(32600 if north else 32700) + zone}", [lon0], [lat])
    return ys[0]


def tiles_bbox(tiles: Sequence[str]) -> tuple[float, float, float, float]:
    """Longitude/latitude bbox (W, S, E, N) covering the MGRS ``tiles``."""
    from rasterio.warp import transform_bounds

    boxes = []
    for t in tiles:
        epsg, b = mgrs_tile_bounds(t)
        boxes.append(transform_bounds(f"EPSG:{epsg}", "EPSG:4326", *b, densify_pts=21))
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


# --------------------------------------------------------------------------- search
@dataclass
class SearchQuery:
    """What to search for. ``max_cloud`` is in percent (as CMR reports ``eo:cloud_cover``)."""

    collections: tuple[str, ...] = ("HLSS30", "HLSL30")
    start: str = ""
    end: str = ""
    bbox: tuple[float, float, float, float] | None = None
    intersects: dict | None = None  # GeoJSON geometry
    tiles: tuple[str, ...] = ()
    max_cloud: float | None = None
    max_items: int | None = None
    page_size: int = 250  # CMR-STAC clamps it; every next page is followed anyway


@dataclass
class SearchResult:
    items: list[dict]  # STAC items as dicts, sorted by (datetime, id)
    pages: int
    matched: int | None  # what the service said it matched (context / numberMatched), if it said
    dropped_cloud: int = 0  # items the service returned above max_cloud (re-filtered here)
    dropped_tile: int = 0
    query: SearchQuery = field(default_factory=SearchQuery)


def _parse_date(s: str, what: str, end: bool = False) -> str:
    try:
        d = dt.date.fromisoformat(s[:10])
    except ValueError:
        raise ConfigError(f"{what} '{s}' is not a date (expected YYYY-MM-DD)") from None
    if len(s) > 10:
        return s
    return f"{d.isoformat()}T23:59:59Z" if end else f"{d.isoformat()}T00:00:00Z"


def validate_query(q: SearchQuery) -> SearchQuery:
    """Check a query and fill what it implies (bbox of the tiles); raises :class:`ConfigError`."""
    if not q.collections:
        raise ConfigError("--collections: expected at least one collection (e.g. HLSS30,HLSL30)")
    if not (q.start and q.end):
        raise ConfigError("--start and --end are required (YYYY-MM-DD)")
    start, end = _parse_date(q.start, "--start"), _parse_date(q.end, "--end", end=True)
    if end < start:
        raise ConfigError(f"--end {q.end} is before --start {q.start}")
    if q.bbox is not None:
        w, s, e, n = q.bbox
        if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s < n <= 90):
            raise ConfigError(f"--bbox {q.bbox}: expected W,S,E,N in degrees with S < N")
    if q.bbox is not None and q.intersects is not None:
        raise ConfigError("give either --bbox or --aoi, not both")
    tiles = tuple(t.strip().upper().removeprefix("T") for t in q.tiles if t.strip())
    bbox = q.bbox
    if tiles and bbox is None and q.intersects is None:
        bbox = tiles_bbox(tiles)
    if bbox is None and q.intersects is None:
        raise ConfigError("an area is required: --bbox W,S,E,N, --aoi AOI.geojson or --tiles 10SEG,...")
    if q.max_cloud is not None and not 0 <= q.max_cloud <= 100:
        raise ConfigError(f"--max-cloud {q.max_cloud}: expected a percentage in [0, 100]")
    return SearchQuery(collections=tuple(collection_id(c) for c in q.collections), start=start, end=end, bbox=bbox,
                       intersects=q.intersects, tiles=tiles, max_cloud=q.max_cloud, max_items=q.max_items,
                       page_size=q.page_size)


def read_aoi(path: str | Path) -> dict:
    """The geometry of a GeoJSON file (Geometry, Feature or FeatureCollection; several features are merged)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read AOI GeoJSON '{path}': {e}") from e
    kind = obj.get("type")
    if kind == "FeatureCollection":
        geoms = [f["geometry"] for f in obj.get("features", []) if f.get("geometry")]
    elif kind == "Feature":
        geoms = [obj["geometry"]] if obj.get("geometry") else []
    elif kind in ("Polygon", "MultiPolygon"):
        geoms = [obj]
    else:
        raise DataError(f"'{path}': expected a GeoJSON Polygon, Feature or FeatureCollection, found type {kind!r}")
    polys = []
    for g in geoms:
        if g["type"] == "Polygon":
            polys.append(g["coordinates"])
        elif g["type"] == "MultiPolygon":
            polys += g["coordinates"]
        else:
            raise DataError(f"'{path}': expected polygons, found a {g['type']}")
    if not polys:
        raise DataError(f"'{path}' holds no polygon")
    return {"type": "Polygon", "coordinates": polys[0]} if len(polys) == 1 else {"type": "MultiPolygon",
                                                                                "coordinates": polys}


def stac_client(url: str = DEFAULT_STAC_URL, retries: int = 8, backoff: float = 0.5, min_interval: float = 0.2,
                timeout: float = 60.0):
    """A pystac-client ``Client`` with :func:`~geofm.data.remote.earthdata.retry_policy` retries and a page throttle."""
    from pystac_client import Client
    from pystac_client.stac_api_io import StacApiIO

    from geofm.data.remote.earthdata import Throttle, retry_policy

    io = StacApiIO(headers={"User-Agent": "geofm"}, max_retries=retry_policy(retries, backoff))
    try:  # Client.open resets the modifier and timeout of the StacApiIO it is given: pass them here
        return Client.open(url, stac_io=io, request_modifier=Throttle(min_interval), timeout=timeout)
    except Exception as e:  # pystac-client raises APIError, requests errors, JSON errors
        raise RemoteError(f"cannot open the STAC API at '{url}': {e}") from e


def search(query: SearchQuery, url: str = DEFAULT_STAC_URL, *, retries: int = 8, backoff: float = 0.5,
           min_interval: float = 0.2, progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Run ``query`` against the STAC API at ``url``, following every page; filter cloud and tiles here too.

    ``progress(pages, items)`` is called after each page.
    """
    import warnings

    from pystac_client.exceptions import APIError

    q = validate_query(query)
    client = stac_client(url, retries, backoff, min_interval)
    kwargs: dict = {"collections": list(q.collections), "datetime": f"{q.start}/{q.end}", "limit": q.page_size}
    if q.bbox is not None:
        kwargs["bbox"] = list(q.bbox)
    if q.intersects is not None:
        kwargs["intersects"] = q.intersects
    if q.max_cloud is not None:
        kwargs["query"] = {"eo:cloud_cover": {"lte": q.max_cloud}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystac-client warns when a service does not list a conformance class
        search_ = client.search(method="POST", **kwargs)
    items: dict[str, dict] = {}
    pages, matched, dropped_cloud, dropped_tile = 0, None, 0, 0
    try:
        for page in search_.pages_as_dicts():
            pages += 1
            ctx = page.get("context") or {}
            matched = page.get("numberMatched", ctx.get("matched", matched))
            for it in page.get("features", []):
                cc = (it.get("properties") or {}).get("eo:cloud_cover")
                if q.max_cloud is not None and cc is not None and cc > q.max_cloud:
                    dropped_cloud += 1
                    continue
                if q.tiles and tile_of(it["id"]) not in q.tiles:
                    dropped_tile += 1
                    continue
                items.setdefault(it["id"], it)
            if progress:
                progress(pages, len(items))
            if q.max_items is not None and len(items) >= q.max_items:
                break
    except APIError as e:
        raise RemoteError(f"STAC search at '{url}' failed after {pages} page(s): {str(e)[:500]}") from e
    if dropped_cloud:
        log.warning("the service returned %d item(s) above --max-cloud %s%%: dropped here", dropped_cloud,
                    q.max_cloud)
    out = sorted(items.values(), key=lambda it: (it["properties"].get("datetime") or "", it["id"]))
    if q.max_items is not None:
        out = out[:q.max_items]
    if matched is not None and q.max_items is None and not q.tiles and q.max_cloud is None and len(out) < matched:
        log.warning("STAC search at %s returned %d item(s) over %d page(s) but reported %s matches", url, len(out),
                    pages, matched)
    return SearchResult(out, pages, matched, dropped_cloud, dropped_tile, q)


# --------------------------------------------------------------------------- manifest
def write_manifest(result: SearchResult, path: str | Path, stac_url: str = DEFAULT_STAC_URL) -> Path:
    """Write the items as a STAC ItemCollection (GeoJSON), with the search that made it, atomically."""
    q = result.query
    doc = {"type": "FeatureCollection", "features": result.items,
           "geofm:search": {"stac_url": stac_url, "collections": list(q.collections), "datetime": f"{q.start}/{q.end}",
                            "bbox": list(q.bbox) if q.bbox else None, "intersects": q.intersects,
                            "tiles": list(q.tiles), "max_cloud": q.max_cloud, "max_items": q.max_items,
                            "matched": result.matched, "pages": result.pages}}
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return path


def read_manifest(path: str | Path) -> list[dict]:
    """The STAC items of a manifest written by :func:`write_manifest` (or any ItemCollection GeoJSON)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read manifest '{path}': {e}") from e
    if doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise DataError(f"'{path}' is not a STAC ItemCollection (expected type FeatureCollection with features)")
    for it in doc["features"]:
        if not isinstance(it, dict) or "id" not in it or not isinstance(it.get("assets"), dict):
            raise DataError(f"'{path}': every feature must be a STAC item with an id and assets")
    return doc["features"]


def is_manifest(path: str) -> bool:
    """True if ``path`` is a local ``.json``/``.geojson`` file holding a FeatureCollection."""
    if "://" in path or not path.endswith((".json", ".geojson")) or not Path(path).is_file():
        return False
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "FeatureCollection"


def summarize(items: Sequence[dict]) -> dict:
    """Counts per collection, tile and month, and the spread of ``eo:cloud_cover`` (percent)."""
    per_coll = collections.Counter(it.get("collection", "?") for it in items)
    per_tile = collections.Counter(tile_of(it["id"]) or "?" for it in items)
    per_month = collections.Counter((it["properties"].get("datetime") or "?")[:7] for it in items)
    cc = sorted(c for c in (it["properties"].get("eo:cloud_cover") for it in items) if c is not None)
    cloud = ({"min": cc[0], "median": statistics.median(cc), "max": cc[-1], "n": len(cc)} if cc else {})
    return {"items": len(items), "collections": dict(sorted(per_coll.items())), "tiles": dict(sorted(per_tile.items())),
            "months": dict(sorted(per_month.items())), "cloud_cover": cloud}


def format_summary(s: dict) -> str:
    lines = [f"{s['items']} granule(s)"]
    for key in ("collections", "tiles", "months"):
        if s[key]:
            lines.append(f"  {key:<12} " + ", ".join(f"{k}: {v}" for k, v in s[key].items()))
    if s["cloud_cover"]:
        c = s["cloud_cover"]
        lines.append(f"  cloud cover  min {c['min']:.0f} %, median {c['median']:.0f} %, max {c['max']:.0f} %")
    return "\n".join(lines)


def quicklook(items: Sequence[dict], path: str | Path, aoi: dict | None = None,
              bbox: Sequence[float] | None = None) -> Path:
    """PNG of the granule footprints (coloured by cloud cover) over the AOI / bbox, lon/lat axes."""
    from matplotlib.patches import Polygon as MplPolygon

    from geofm.viz import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("viridis_r")

    def rings(geom: dict):
        if not geom:
            return []
        if geom["type"] == "Polygon":
            return [geom["coordinates"][0]]
        if geom["type"] == "MultiPolygon":
            return [p[0] for p in geom["coordinates"]]
        return []

    for it in items:
        cc = it["properties"].get("eo:cloud_cover")
        color = cmap((cc or 0) / 100)
        for r in rings(it.get("geometry")):
            ax.add_patch(MplPolygon(r, closed=True, facecolor=(*color[:3], 0.15), edgecolor=color, lw=0.8))
    if aoi:
        for r in rings(aoi):
            ax.add_patch(MplPolygon(r, closed=True, fill=False, edgecolor="red", lw=2, label="AOI"))
    if bbox:
        w, s, e, n = bbox
        ax.add_patch(MplPolygon([(w, s), (e, s), (e, n), (w, n)], closed=True, fill=False, edgecolor="red", lw=2,
                                ls="--", label="search bbox"))
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(f"{len(items)} HLS granule footprint(s), colour = cloud cover")
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 100))
    fig.colorbar(sm, ax=ax, label="eo:cloud_cover (%)")
    if aoi or bbox:
        ax.legend(loc="upper right")
    return save_figure(fig, path, dpi=100)
