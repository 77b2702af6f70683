"""``geofm view``'s map server: one page, the layers it was given, tiles and pixel values. Offline.

HTTP API (see docs/view.md):

- ``GET /`` the page; ``GET /assets/{maplibre-gl.js, maplibre-gl.css, app.js, app.css}`` its files
  (MapLibre GL JS from the installed ``maplibre`` package, the rest from this package);
- ``GET /layers.json`` ``[{id, name, kind, path, bounds: [W, S, E, N], minzoom, maxzoom, bands,
  dates, legend: [{value, name, color}]}]``; ``GET /config.json`` ``{basemap}``;
- ``GET /tiles/{id}/{z}/{x}/{y}.png?t=&bands=&stretch=``: a 256 px Web Mercator PNG tile
  (rio-tiler), transparent outside the data and where it is nodata;
- ``GET /point/{lon},{lat}``: ``{id: {name, kind, values: [{date, bands: {name: value}}], ...}}``
  for every layer that covers the point.

Security: the server only knows the layers it was started with, by id; no request names a
file or URL. Unknown ids and paths answer 404, malformed or unknown query parameters 400.
A tile request reads one window (z <= 24, rio-tiler picks the overview) of one raster, or of each
band file drawn for an HLS granule; a point request reads one pixel per layer, date and file. It binds 127.0.0.1 unless told otherwise (and then
logs a warning: anyone who can reach that address sees the layers).
"""

from __future__ import annotations

import importlib.resources
import ipaddress
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Sequence
from urllib.parse import urlsplit

import numpy as np

from geofm.errors import ConfigError
from geofm.viz.layers import FALSE_COLOR, RAMP, TRUE_COLOR, Layer, discover, fmask_classes

log = logging.getLogger(__name__)

MAX_ZOOM = 24
TILE_SIZE = 256
QUERY_PARAMS = ("t", "bands", "stretch")
_BANDS_RE = re.compile(r"^(true|false|[0-9]{1,3}(,[0-9]{1,3}){0,2})$")
_NUMBER = r"-?[0-9]{1,9}(\.[0-9]{1,15})?"
_STRETCH_RE = re.compile(rf"^(auto|{_NUMBER},{_NUMBER})$")
_T_RE = re.compile(r"^[0-9]{1,4}$")
_POINT_RE = re.compile(rf"^(?P<lon>{_NUMBER}),(?P<lat>{_NUMBER})$")
_ID_RE = re.compile(r"^[a-z0-9_-]{1,64}$")

#: Page files: URL name -> (distribution, file in it, media type). MapLibre GL JS comes from the
#: ``maplibre`` wheel's files (read without importing that package), the rest from geofm's package data.
ASSETS = {
    "maplibre-gl.js": ("maplibre", "maplibre/srcjs/maplibre-gl.js", "text/javascript"),
    "maplibre-gl.css": ("maplibre", "maplibre/srcjs/maplibre-gl.css", "text/css"),
    "app.js": ("geofm", "static/app.js", "text/javascript"),
    "app.css": ("geofm", "static/app.css", "text/css"),
}


class BadRequest(ValueError):
    """A query the API does not accept (400)."""


def read_asset(name: str) -> bytes:
    """The bytes of page file ``name`` (a key of ASSETS); :class:`ConfigError` if it is not installed."""
    import importlib.metadata

    dist, resource, _ = ASSETS[name]
    try:
        if dist == "geofm":
            return importlib.resources.files("geofm.viz").joinpath(resource).read_bytes()
        return importlib.metadata.distribution(dist).locate_file(resource).read_bytes()
    except (importlib.metadata.PackageNotFoundError, OSError) as e:
        raise ConfigError(f"the viewer's page file {resource} is missing: install geofm[view] ({e})") from e


# --------------------------------------------------------------------------- tiles and points
def _parse_query(layer: Layer, query) -> dict:
    """``t`` (frame), ``bands`` (0-based positions) and ``stretch`` (None = auto, or (lo, hi))."""
    unknown = sorted(set(query.keys()) - set(QUERY_PARAMS))
    if unknown:
        raise BadRequest(f"unknown query parameter(s) {unknown}: expected {list(QUERY_PARAMS)}")
    t = query.get("t", "0")
    if not _T_RE.match(t) or int(t) >= len(layer.frames):
        raise BadRequest(f"t must be a frame index 0..{len(layer.frames) - 1}")
    bands_q = query.get("bands")
    if bands_q is not None and not _BANDS_RE.match(bands_q):
        raise BadRequest("bands must be 'true', 'false' or 1 to 3 comma-separated 1-based band numbers")
    stretch_q = query.get("stretch", "auto")
    if not _STRETCH_RE.match(stretch_q):
        raise BadRequest("stretch must be 'auto' or 'LOW,HIGH'")
    rgb_kind = layer.kind in ("reflectance", "imputed")
    if bands_q in (None, "true"):
        bands = list(TRUE_COLOR) if rgb_kind and len(layer.bands) >= 3 else [0]
    elif bands_q == "false":
        if not rgb_kind or len(layer.bands) < 4:
            raise BadRequest(f"layer '{layer.id}' has no false-colour bands")
        bands = list(FALSE_COLOR)
    else:
        bands = [int(b) - 1 for b in bands_q.split(",")]
        if any(not 0 <= b < len(layer.bands) for b in bands):
            raise BadRequest(f"bands must be in 1..{len(layer.bands)} for layer '{layer.id}'")
        if len(bands) not in ((1, 3) if rgb_kind else (1,)):
            raise BadRequest(f"layer '{layer.id}' draws {'1 or 3 bands' if rgb_kind else 'one band'}")
    stretch = None if stretch_q == "auto" else tuple(float(v) for v in stretch_q.split(","))
    if stretch is not None and not (math.isfinite(stretch[0]) and stretch[1] > stretch[0]):
        raise BadRequest("stretch LOW,HIGH needs LOW < HIGH")
    return {"t": int(t), "bands": bands, "stretch": stretch}


def _empty_tile() -> bytes:
    from rio_tiler.models import ImageData

    data = np.ma.MaskedArray(np.zeros((1, TILE_SIZE, TILE_SIZE), np.uint8), mask=True)
    return ImageData(data).render(img_format="PNG", add_mask=True)


def render_tile(layer: Layer, z: int, x: int, y: int, t: int = 0, bands: Sequence[int] = (0,),
                stretch: tuple[float, float] | None = None) -> bytes | None:
    """The PNG of tile (z, x, y) of ``layer``'s frame ``t``; None where the tile misses the layer."""
    import rasterio
    from rio_tiler.colormap import cmap
    from rio_tiler.io import Reader
    from rio_tiler.models import ImageData

    parts = []
    for path, indexes in layer.reads(t, bands):  # one file, or one per band (HLS granules): the same window
        with rasterio.open(path) as ds, Reader(None, dataset=ds) as r:
            if not r.tile_exists(x, y, z):
                return None
            parts.append(r.tile(x, y, z, tilesize=TILE_SIZE, indexes=indexes))
    img = parts[0] if len(parts) == 1 else ImageData.create_from_list(parts)
    if layer.kind == "classes":
        return img.render(img_format="PNG", colormap=layer.colormap)
    if layer.kind == "fmask":
        cls = fmask_classes(img.array.data[0])
        shown = np.ma.MaskedArray(cls[None], mask=(cls == 0) | (cls == 255) | img.array.mask[0][None])
        return ImageData(shown).render(img_format="PNG", colormap=layer.colormap)
    if layer.kind == "probabilities":
        lo, hi = stretch or (0.0, 1.0)
        return img.rescale(in_range=((lo, hi),)).render(img_format="PNG", colormap=cmap.get(RAMP))
    if len(bands) == 3 or layer.kind in ("reflectance", "imputed"):
        if stretch is None:
            lo, hi = layer.stretch(bands)
            ranges = tuple(zip(lo, hi))
        else:
            ranges = (stretch,) * len(bands)
        out = img.rescale(in_range=ranges)
        return out.render(img_format="PNG") if len(bands) == 3 else \
            out.render(img_format="PNG", colormap=cmap.get("greys_r"))
    lo, hi = (stretch or tuple(v[0] for v in layer.stretch(bands)))
    return img.rescale(in_range=((lo, hi),)).render(img_format="PNG", colormap=cmap.get(RAMP))


def _value(v, masked: bool):
    if masked or v is None:
        return None
    v = v.item() if hasattr(v, "item") else v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def point_values(layers: Sequence[Layer], lon: float, lat: float) -> dict:
    """``{id: {...}}``: every band of every date of each layer that covers (lon, lat) (EPSG:4326)."""
    import rasterio
    from rio_tiler.errors import PointOutsideBounds
    from rio_tiler.io import Reader
    from rio_tiler.models import PointData

    out = {}
    for la in layers:
        w, s, e, n = la.bounds
        if not (w <= lon <= e and s <= lat <= n):
            continue
        values = []
        for t, fr in enumerate(la.frames):
            points = []
            try:
                for path, indexes in la.reads(t, range(len(la.bands))):
                    with rasterio.open(path) as ds, Reader(None, dataset=ds) as r:
                        points.append(r.point(lon, lat, indexes=indexes))
            except PointOutsideBounds:
                break
            pt = points[0] if len(points) == 1 else PointData.create_from_list(points)
            arr = pt.array
            mask = np.ma.getmaskarray(arr)
            vals = {name: _value(arr.data[i], bool(mask[i])) for i, name in enumerate(la.bands)}
            values.append({"date": fr.date, "bands": vals})
        if not values:
            continue
        entry = {"name": la.name, "kind": la.kind, "values": values}
        if la.kind in ("classes", "fmask"):
            names = {item["value"]: item["name"] for item in la.legend}
            for v in values:
                raw = next(iter(v["bands"].values()))
                if la.kind == "fmask" and raw is not None:
                    raw = int(fmask_classes(np.array([raw]))[0])
                    v["class"] = names.get(raw, "clear") if raw != 255 else None
                else:
                    v["class"] = names.get(raw) if raw is not None else None
        out[la.id] = entry
    return out


# --------------------------------------------------------------------------- the app
def _csp(basemap: str | None) -> str:
    extra = ""
    if basemap:
        parts = urlsplit(basemap.replace("{", "").replace("}", ""))
        extra = f" {parts.scheme}://{parts.netloc}"
    return ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            f"img-src 'self' data: blob:{extra}; connect-src 'self'{extra}; worker-src 'self' blob:; "
            "child-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def build_app(layers: Sequence[Layer], basemap: str | None = None):
    """The Starlette application serving ``layers`` (see the module docstring for the API)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    by_id = {la.id: la for la in layers}
    listing = [la.describe() for la in layers]
    empty = _empty_tile()
    headers = {"Content-Security-Policy": _csp(basemap), "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}
    page = importlib.resources.files("geofm.viz").joinpath("static/index.html").read_bytes()
    assets: dict[str, tuple[bytes, str]] = {}

    def not_found(_request=None, _exc=None):
        return PlainTextResponse("not found", status_code=404, headers=headers)

    def index(request):
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    def asset(request):
        name = request.path_params["name"]
        if name not in ASSETS:
            return not_found()
        if name not in assets:
            assets[name] = (read_asset(name), ASSETS[name][2])
        body, media = assets[name]
        return Response(body, media_type=media, headers={**headers, "Cache-Control": "max-age=3600"})

    def layers_json(request):
        return JSONResponse(listing, headers=headers)

    def config_json(request):
        return JSONResponse({"basemap": basemap}, headers=headers)

    def tile(request):
        p = request.path_params
        lid, z, x, y = p["lid"], p["z"], p["x"], p["y"]
        layer = by_id.get(lid) if _ID_RE.match(lid) else None
        if layer is None or z > MAX_ZOOM or x >= 1 << z or y >= 1 << z:
            return not_found()
        try:
            opts = _parse_query(layer, request.query_params)
        except BadRequest as e:
            return PlainTextResponse(str(e), status_code=400, headers=headers)
        png = render_tile(layer, z, x, y, **opts) if z >= layer.minzoom else None
        return Response(empty if png is None else png, media_type="image/png",
                        headers={**headers, "Cache-Control": "max-age=60"})

    def point(request):
        m = _POINT_RE.match(request.path_params["coords"])
        if m is None:
            return not_found()
        if request.query_params:
            return PlainTextResponse("/point takes no query parameters", status_code=400, headers=headers)
        lon, lat = float(m["lon"]), float(m["lat"])
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            return PlainTextResponse("lon must be in -180..180 and lat in -90..90", status_code=400,
                                     headers=headers)
        return JSONResponse(point_values(layers, lon, lat), headers=headers)

    routes = [Route("/", index), Route("/assets/{name}", asset), Route("/layers.json", layers_json),
              Route("/config.json", config_json),
              Route("/tiles/{lid}/{z:int}/{x:int}/{y:int}.png", tile), Route("/point/{coords}", point)]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


# --------------------------------------------------------------------------- the server
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_basemap(url: str | None) -> str | None:
    """:class:`ConfigError` unless ``url`` is an http(s) XYZ tile template with {z}, {x} and {y}."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or \
            not all(k in url for k in ("{z}", "{x}", "{y}")):
        raise ConfigError(f"--basemap '{url}': expected an http(s) tile URL with {{z}}, {{x}} and {{y}}, "
                          "e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png")
    return url


class ViewServer:
    """A uvicorn server of :func:`build_app` on ``host:port`` (port 0: a free one), run in a background thread.

    >>> srv = ViewServer(discover(["flood.tif"]), port=0).start()  # doctest: +SKIP
    >>> srv.url, srv.stop()  # doctest: +SKIP
    """

    def __init__(self, layers: Sequence[Layer], host: str = "127.0.0.1", port: int = 8765,
                 basemap: str | None = None):
        import uvicorn

        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--port {port}: expected 0..65535")
        self.layers = list(layers)
        self.host, self.port = host, int(port)
        self.basemap = check_basemap(basemap)
        if not is_loopback(host):
            log.warning("--host %s is not a loopback address: every machine that reaches it can see these layers",
                        host)
        self.app = build_app(self.layers, self.basemap)
        config = uvicorn.Config(self.app, host=host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def check_port(self) -> None:
        """:class:`ConfigError` if ``host:port`` cannot be listened on (in use, not an address here)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError as e:
                raise ConfigError(f"--host {self.host} --port {self.port}: cannot listen there ({e.strerror}); "
                                  "choose another port (0: any free one)") from e

    def start(self, timeout: float = 30.0) -> ViewServer:
        """Serve in a background thread; returns once the server listens (``port`` is then the real one)."""
        self.check_port()
        self._thread = threading.Thread(target=self._server.run, name="geofm-view", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the viewer could not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        log.info("serving %d layer(s) at %s", len(self.layers), self.url)
        return self

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C (KeyboardInterrupt) stops it."""
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ViewServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(paths: Sequence[str], port: int = 8765, host: str = "127.0.0.1", basemap: str | None = None,
          start: bool = True) -> ViewServer:
    """Discover the layers of ``paths`` and serve them; started in a background thread unless ``start`` is False.

    ``port=0`` picks a free port (read it back from ``.port`` / ``.url``). Stop with ``.stop()``.
    """
    server = ViewServer(discover(paths), host=host, port=port, basemap=basemap)
    return server.start() if start else server


__all__ = ["ASSETS", "ViewServer", "build_app", "check_basemap", "is_loopback", "point_values", "render_tile",
           "serve"]

