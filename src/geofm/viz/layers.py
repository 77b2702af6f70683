"""The viewer's layers: which GeoTIFFs were given, what each one is, and how it is drawn.

A layer's **kind** comes from the file's own tags and names, never from the request:

- ``classes``: ``geofm_output=classes`` (``geofm predict``), or one integer band with a ``classes``
  tag (JSON ``{index: name}``) or a GDAL colour table. Colours: the file's colour table, else the
  default palette (:mod:`geofm.viz.palette`); legend names from the ``classes`` tag.
- ``probabilities``: ``geofm_output=probabilities``, one band per class (descriptions ``p_<name>``),
  drawn one band at a time on a colour ramp (``viridis``, 0 -> 1).
- ``reflectance``: inputs. HLS band files are grouped per granule (each band file read
  with its own overviews) and per MGRS tile (one layer, one date per granule, sorted); a stacked GeoTIFF of
  6 x T bands is T frames of the model bands (Blue, Green, Red, NIR, SWIR1, SWIR2), a 13-band one a
  Sentinel-2 L1C stack, any other one of 3 bands or more has Red, Green, Blue in bands 3, 2, 1.
  Single-date stacks in one folder on one grid, dated by their names, are one layer of several dates.
- ``imputed``: ``geofm_output=reflectance`` (an imputation model's gap-filled T x 6 bands), dates
  from the ``geofm_frames`` tag; shown like ``reflectance`` (compare it with the inputs by swipe).
- ``fmask``: the HLS Fmask of granules (or a ``X.Fmask.tif`` sidecar): cloud, shadow, adjacent,
  snow/ice and water in colour, clear pixels transparent.
- ``raw``: anything else (``geofm_output=raw``, one-band rasters): one band on the colour ramp with
  a 2-98 % stretch.

Reflectance is drawn as true colour (Red, Green, Blue) or false colour (NIR, Red, Green) with a
robust 2-98 % percentile stretch per band, computed once per layer from the smallest overviews of
every date (never the full-resolution data), so that all dates share one stretch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data.hls import FMASK_BITS, FMASK_FILL, GRANULE_RE, Grid, frame_grid, group_granules
from geofm.errors import DataError
from geofm.viz.palette import class_color, hex_color

log = logging.getLogger(__name__)

KINDS = ("classes", "probabilities", "reflectance", "imputed", "fmask", "raw")
#: Names of the six model bands as the viewer shows them.
BAND_NAMES = ("Blue", "Green", "Red", "NIR", "SWIR1", "SWIR2")
#: 0-based positions of (Red, Green, Blue) and (NIR, Red, Green) among the model bands.
TRUE_COLOR, FALSE_COLOR = (2, 1, 0), (3, 2, 1)
#: Sentinel-2 L1C 13-band stacks (B01..B12 with B8A): 1-based bands of the six model bands.
S2_L1C_MODEL_BANDS = (2, 3, 4, 9, 12, 13)
#: Fmask classes drawn by the viewer (the bit that sets each, in order of priority) and their colours.
FMASK_CLASSES = (("cloud", 1, "#f2f2f2"), ("shadow", 2, "#404040"), ("adjacent", 3, "#bfbfbf"),
                 ("snow_ice", 4, "#66e6ff"), ("water", 5, "#1a59d9"))
RAMP = "viridis"
STRETCH_PERCENTILES = (2.0, 98.0)
#: Zoom levels below the raster's coarsest overview that are still drawn (see :func:`_georeference`).
ZOOM_OUT_LEVELS = 2
STRETCH_MAX_SIZE = 512  # px: side of the decimated read the stretch is computed from


@dataclass
class Frame:
    """One date of a layer: the raster and its first band (0-based), or one file per band (HLS granules)."""

    source: str
    offset: int = 0
    date: str = ""
    band_files: list[str] | None = None  # one one-band file per layer band (each read with its own overviews)


@dataclass
class Layer:
    """One layer of the map. ``bands``: the band names of one frame; band ``b`` of frame ``t`` is
    band ``frames[t].offset + b + 1`` of ``frames[t].source``. ``band_map``: 0-based positions in
    the raster of the frame's bands (stacks whose model bands are not 1..6)."""

    id: str
    name: str
    kind: str
    path: str
    frames: list[Frame]
    bands: list[str]
    band_map: list[int] | None = None
    nodata: float | None = None
    legend: list[dict] = field(default_factory=list)
    colormap: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    bounds: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # W, S, E, N (EPSG:4326)
    minzoom: int = 0
    maxzoom: int = 24
    predicted: bool = False  # written by geofm predict (a geofm_output tag)
    _stretch: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dates(self) -> list[str]:
        return [f.date for f in self.frames]

    def band_index(self, t: int, b: int) -> int:
        """1-based raster band of the layer's band ``b`` (0-based) in frame ``t``."""
        pos = self.band_map[b] if self.band_map else b
        return self.frames[t].offset + pos + 1

    def reads(self, t: int, bands: Sequence[int]) -> list[tuple[str, list[int]]]:
        """(file, 1-based bands) to read for the layer's ``bands`` (0-based) of frame ``t``, in order."""
        fr = self.frames[t]
        if fr.band_files:
            return [(fr.band_files[b], [1]) for b in bands]
        return [(fr.source, [self.band_index(t, b) for b in bands])]

    def describe(self) -> dict:
        """The layer's entry in ``/layers.json``."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "path": self.path,
                "bounds": [round(v, 9) for v in self.bounds], "minzoom": self.minzoom, "maxzoom": self.maxzoom,
                "bands": list(self.bands), "dates": self.dates, "legend": self.legend}

    def stretch(self, rgb: Sequence[int]) -> tuple[list[float], list[float]]:
        """(low, high) per band of ``rgb`` (0-based band positions): 2-98 % of every date's overview."""
        key = tuple(rgb)
        with self._lock:
            if key not in self._stretch:
                self._stretch[key] = _percentile_stretch(self, key)
            return self._stretch[key]


# --------------------------------------------------------------------------- discovery
def expand_paths(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """GeoTIFFs of ``paths``: files as given, folders searched recursively (hidden folders and
    Zarr stores skipped; a ``geofm map`` folder adds the source granules its catalog names, see
    :func:`map_inputs`). :class:`DataError` for a path that does not exist or is not local."""
    out: list[Path] = []
    for p in paths:
        if "://" in str(p):
            raise DataError(f"PATH '{p}' is a URL: geofm view serves local files only")
        path = Path(p)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                rel = f.relative_to(path).parts
                if any(part.startswith(".") or part.endswith(".zarr") for part in rel):
                    continue
                if f.is_file() and f.suffix.lower() in (".tif", ".tiff"):
                    out.append(f.resolve())
            out += map_inputs(path)
        elif path.is_file():
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise DataError(f"PATH '{p}' is not a GeoTIFF (expected .tif or .tiff)")
            out.append(path.resolve())
        else:
            raise DataError(f"PATH '{p}' does not exist")
    seen: set[Path] = set()
    return [f for f in out if not (f in seen or seen.add(f))]


def map_inputs(folder: Path) -> list[Path]:
    """The local source granules of a ``geofm map`` output folder: the ``derived_from`` links of the items of its
    STAC catalog (``items/*.json``) that name GeoTIFFs on this machine."""
    import json

    if not (folder / "catalog.json").is_file():
        return []
    found = []
    for item in sorted((folder / "items").glob("*.json")):
        try:
            links = json.loads(item.read_text()).get("links", [])
        except (OSError, ValueError) as e:
            log.warning("not read: %s (%s)", item, e)
            continue
        for link in links:
            href = str(link.get("href", ""))
            if link.get("rel") == "derived_from" and "://" not in href and href.lower().endswith((".tif", ".tiff")):
                f = (item.parent / href).resolve()
                if f.is_file():
                    found.append(f)
    return found


def discover(paths: Sequence[str | os.PathLike]) -> list[Layer]:
    """Layers of ``paths`` (files or folders), in a drawing order: inputs first, class maps last.

    :class:`DataError` if nothing drawable is found or a file cannot be read.
    """
    files = expand_paths(paths)
    hls_files = [f for f in files if GRANULE_RE.search(f.name)]
    others = [f for f in files if f not in set(hls_files)]
    layers: list[Layer] = []
    layers += _granule_layers([str(f) for f in hls_files])
    layers += _file_layers(others)
    if not layers:
        raise DataError(f"PATH: no GeoTIFF to show in {[str(p) for p in paths]}")
    order = {"reflectance": 0, "fmask": 1, "imputed": 2, "raw": 3, "probabilities": 4, "classes": 5}
    layers.sort(key=lambda la: (order[la.kind], la.predicted))  # predictions above other class maps
    used: set[str] = set()
    for la in layers:
        la.id = _unique_id(la.id, used)
        _georeference(la)
    return layers


def _unique_id(name: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower()[:48] or "layer"
    lid, n = base, 2
    while lid in used:
        lid, n = f"{base}-{n}", n + 1
    used.add(lid)
    return lid


def _granule_layers(files: list[str]) -> list[Layer]:
    """HLS band files -> one reflectance layer (and one Fmask layer) per MGRS tile, a date per granule."""
    if not files:
        return []
    frames, skipped = group_granules(files)
    for what, why in skipped:
        if not what.endswith(tuple(f".{a}.tif" for a in ("SAA", "SZA", "VAA", "VZA"))):
            log.warning("not shown: %s (%s)", what, why)
    by_grid: dict[tuple[str, Grid], list] = {}  # a tile's granules on one grid (a time selector needs one grid)
    for fr in frames:
        by_grid.setdefault((fr.tile, frame_grid(fr)), []).append(fr)
    layers = []
    seen: dict[str, int] = {}
    for (tile, _), frs in sorted(by_grid.items(), key=lambda kv: (kv[0][0], min(f.datetime for f in kv[1]))):
        frs.sort(key=lambda f: f.datetime)
        folder = str(Path(frs[0].sources[0][0]).parent)
        seen[tile] = seen.get(tile, 0) + 1
        suffix = "" if seen[tile] == 1 else f"-{seen[tile]}"  # the same tile on another grid
        refl = [Frame(f.sources[0][0], 0, f.date_str, [p for p, _ in f.sources]) for f in frs]
        layers.append(Layer(f"hls-t{tile}{suffix}", f"HLS T{tile}{suffix}", "reflectance", folder, refl,
                            list(BAND_NAMES), nodata=HLS_NODATA))
        masks = [Frame(f.fmask[0], 0, f.date_str) for f in frs]
        layers.append(_fmask_layer(f"hls-t{tile}{suffix}-fmask", f"HLS T{tile}{suffix} Fmask", folder,
                                   masks))
    return layers


def _fmask_layer(lid: str, name: str, path: str, frames: list[Frame]) -> Layer:
    legend = [{"value": v, "name": n, "color": c} for n, v, c in FMASK_CLASSES]
    cmap = {v: (*_rgb(c), 255) for _, v, c in FMASK_CLASSES}
    return Layer(lid, name, "fmask", path, frames, ["Fmask"], nodata=FMASK_FILL, legend=legend, colormap=cmap)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _frames_tag_dates(tag: str | None, count: int) -> list[str]:
    """Dates of the ``geofm_frames`` tag's granule ids / file names (one per frame, "" if unknown)."""
    from geofm.data.ingest import date_from_name

    ids = (tag or "").split(",")
    out = []
    for t in range(count):
        name = ids[t] if t < len(ids) else ""
        m = re.search(r"\.(\d{7})T\d{6}", name)
        if m:
            import datetime as dt

            out.append(dt.datetime.strptime(m[1], "%Y%j").strftime("%Y-%m-%d"))
        else:
            d = date_from_name(name) if name else None
            out.append(d.strftime("%Y-%m-%d") if d else "")
    return out


def _file_layers(files: list[Path]) -> list[Layer]:
    import rasterio

    from geofm.data.ingest import date_from_name

    layers: list[Layer] = []
    stacks: dict[tuple, list[tuple[str, Path]]] = {}
    for f in files:
        try:
            src = rasterio.open(f)
        except rasterio.errors.RasterioIOError as e:
            raise DataError(f"cannot open '{f}' as a raster: {e}") from e
        with src:
            tags, count, dtype = src.tags(), src.count, src.dtypes[0]
            descriptions = [d or "" for d in src.descriptions]
            try:
                table = src.colormap(1)
            except ValueError:
                table = {}
            nodata = src.nodata
            grid = (str(src.crs), tuple(src.transform), src.width, src.height, count)
        name, path = f.stem, str(f)
        kind = tags.get("geofm_output")
        integer = np.issubdtype(np.dtype(dtype), np.integer)
        if kind == "classes" or (kind is None and count == 1 and integer and ("classes" in tags or table)):
            layers.append(_class_layer(f, name, tags, table, nodata))
            layers[-1].predicted = kind == "classes"
        elif kind == "probabilities":
            names = [d[2:] if d.startswith("p_") else (d or f"class_{i}") for i, d in enumerate(descriptions)]
            layers.append(Layer(name, name, "probabilities", path, [Frame(path)], names, nodata=nodata,
                                legend=_ramp_legend()))
        elif kind == "reflectance":
            t = max(1, count // len(MODEL_BANDS))
            dates = _frames_tag_dates(tags.get("geofm_frames"), t)
            frames = [Frame(path, i * len(MODEL_BANDS), dates[i]) for i in range(t)]
            layers.append(Layer(name, f"{name} (imputed)", "imputed", path, frames, list(BAND_NAMES), nodata=nodata))
        elif kind is None and f.name.endswith(".Fmask.tif"):
            layers.append(_fmask_layer(name, name, path, [Frame(path)]))
        elif kind is None and count >= 3:
            date = date_from_name(f.name)
            if count % len(MODEL_BANDS) == 0 and count > len(MODEL_BANDS):
                t = count // len(MODEL_BANDS)
                frames = [Frame(path, i * len(MODEL_BANDS), "") for i in range(t)]
                layers.append(Layer(name, name, "reflectance", path, frames, list(BAND_NAMES), nodata=nodata))
            elif date is not None:
                stacks.setdefault((str(f.parent), grid), []).append((date.strftime("%Y-%m-%d"), f))
            else:
                layers.append(_stack_layer(name, path, [Frame(path)], count, nodata))
        else:
            lname = descriptions or [f"band {i + 1}" for i in range(count)]
            layers.append(Layer(name, name, "raw", path, [Frame(path)],
                                [d or f"band {i + 1}" for i, d in enumerate(lname)], nodata=nodata,
                                legend=_ramp_legend()))
    for (folder, grid), items in stacks.items():
        items.sort()
        if len(items) == 1:
            date, f = items[0]
            layers.append(_stack_layer(f.stem, str(f), [Frame(str(f), 0, date)], grid[-1], None))
        else:
            layers.append(_stack_layer(Path(folder).name, folder, [Frame(str(f), 0, d) for d, f in items],
                                       grid[-1], None))
    return layers


def _stack_layer(name: str, path: str, frames: list[Frame], count: int, nodata: float | None) -> Layer:
    """Reflectance of a stacked GeoTIFF: model bands 1..6, a Sentinel-2 L1C stack or bands 3, 2, 1 = R, G, B."""
    if count >= len(MODEL_BANDS) and count != 13:
        return Layer(name, name, "reflectance", path, frames, list(BAND_NAMES), nodata=nodata)
    if count == 13:
        return Layer(name, name, "reflectance", path, frames, list(BAND_NAMES),
                     band_map=[b - 1 for b in S2_L1C_MODEL_BANDS], nodata=nodata)
    return Layer(name, name, "reflectance", path, frames, ["Blue", "Green", "Red"], nodata=nodata)


def _class_layer(f: Path, name: str, tags: dict, table: dict, nodata: float | None) -> Layer:
    """A class map: legend from the ``classes`` tag (else the values present), colours from the table."""
    names: dict[int, str] = {}
    if "classes" in tags:
        try:
            names = {int(k): str(v) for k, v in json.loads(tags["classes"]).items()}
        except (json.JSONDecodeError, AttributeError, ValueError) as e:
            raise DataError(f"'{f}': the 'classes' tag is not a JSON object {{index: name}}: {e}") from e
    if not names:
        names = {v: f"class {v}" for v in _values_present(str(f), nodata)}
    legend, cmap = [], {}
    for v in sorted(names):
        rgb = table.get(v, (*class_color(v), 255))[:3] if table else class_color(v)
        cmap[v] = (*map(int, rgb), 255)
        legend.append({"value": v, "name": names[v], "color": hex_color(rgb)})
    return Layer(name, name, "classes", str(f), [Frame(str(f))], ["class"], nodata=nodata, legend=legend,
                 colormap=cmap)


def _values_present(path: str, nodata: float | None, cap: int = 64) -> list[int]:
    """Distinct values of band 1 in a decimated read (the overviews), at most ``cap`` of them."""
    import rasterio

    with rasterio.open(path) as src:
        arr = _small_read(src, [1])[0]
    vals = np.unique(arr)
    vals = vals[vals != nodata] if nodata is not None else vals
    return [int(v) for v in vals[:cap]]


def _ramp_legend() -> list[dict]:
    from rio_tiler.colormap import cmap

    table = cmap.get(RAMP)
    return [{"value": v, "name": f"{v:g}", "color": hex_color(table[int(round(v * 255))])}
            for v in (0.0, 0.25, 0.5, 0.75, 1.0)]


def _small_read(src, indexes: list[int]) -> np.ndarray:
    """A read of ``indexes`` decimated to at most STRETCH_MAX_SIZE px (GDAL reads the overviews)."""
    scale = max(src.width, src.height) / STRETCH_MAX_SIZE
    h, w = (src.height, src.width) if scale <= 1 else (max(1, round(src.height / scale)),
                                                         max(1, round(src.width / scale)))
    return src.read(indexes, out_shape=(len(indexes), h, w))


def _percentile_stretch(layer: Layer, rgb: tuple[int, ...]) -> tuple[list[float], list[float]]:
    import rasterio

    samples: list[list[np.ndarray]] = [[] for _ in rgb]
    for t in range(len(layer.frames)):
        parts = []
        for path, indexes in layer.reads(t, rgb):
            with rasterio.open(path) as src:
                parts.append(_small_read(src, indexes).astype(np.float64))
        arr = np.concatenate(parts)
        ok = np.isfinite(arr).all(0)
        if layer.nodata is not None:
            ok &= (arr != layer.nodata).all(0)
        for i in range(len(rgb)):
            samples[i].append(arr[i][ok])
    lo, hi = [], []
    for s in samples:
        vals = np.concatenate(s) if s else np.empty(0)
        if vals.size == 0:
            lo.append(0.0)
            hi.append(1.0)
            continue
        a, b = np.percentile(vals, STRETCH_PERCENTILES)
        lo.append(float(a))
        hi.append(float(b) if b > a else float(a) + 1.0)
    return lo, hi


def _georeference(layer: Layer) -> None:
    """Bounds (EPSG:4326) and zoom range of the layer's first frame (rio-tiler's Web Mercator maths).

    ``minzoom`` is ZOOM_OUT_LEVELS below the zoom of the raster's coarsest overview: a tile there
    reads at most 4^ZOOM_OUT_LEVELS times the pixels of a tile (lower ones are served empty)."""
    import rasterio
    from rio_tiler.io import Reader

    with rasterio.open(layer.reads(0, [0])[0][0]) as ds, Reader(None, dataset=ds) as r:
        if ds.crs is None:
            raise DataError(f"'{layer.path}' has no CRS: cannot place it on a map")
        layer.bounds = tuple(float(v) for v in r.get_geographic_bounds("EPSG:4326"))
        layer.minzoom, layer.maxzoom = max(0, int(r.minzoom) - ZOOM_OUT_LEVELS), int(r.maxzoom)


def fmask_classes(fmask: np.ndarray) -> np.ndarray:
    """Fmask bits (uint8) -> the viewer's class values (FMASK_CLASSES; 0 = clear, 255 = fill)."""
    f = fmask.astype(np.uint8)
    out = np.zeros(f.shape, np.uint8)
    for name, value, _color in reversed(FMASK_CLASSES):  # highest priority written last
        out[(f >> FMASK_BITS[name]) & 1 == 1] = value
    out[fmask == FMASK_FILL] = FMASK_FILL
    return out


__all__ = ["BAND_NAMES", "FALSE_COLOR", "Frame", "KINDS", "Layer", "TRUE_COLOR", "discover", "expand_paths",
           "fmask_classes"]
