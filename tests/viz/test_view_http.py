"""``geofm view``'s HTTP API against the real server (uvicorn on 127.0.0.1, a free port), no mocking."""

from __future__ import annotations

import http.client
import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from view_fixtures import CLASS_NAMES, class_blocks


def get(srv, path: str) -> tuple[int, bytes, str]:
    """Status, body and content type of GET ``path``, sent as is (no client-side path normalization)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("Content-Type", "")
    finally:
        conn.close()


def get_json(srv, path: str):
    status, body, ctype = get(srv, path)
    assert status == 200 and ctype.startswith("application/json"), (status, body[:200])
    return json.loads(body)


def png_rgba(body: bytes) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG" and img.size == (256, 256)
    return np.asarray(img.convert("RGBA"))


def layer(srv, kind: str) -> dict:
    return next(la for la in get_json(srv, "/layers.json") if la["kind"] == kind)


def test_layers_json_bounds_kinds_and_legend(view_server, view_data):
    import rasterio
    from rasterio.warp import transform_bounds

    from geofm.viz import class_color, hex_color

    layers = get_json(view_server, "/layers.json")
    assert sorted(la["kind"] for la in layers) == ["classes", "fmask", "reflectance"]
    assert len({la["id"] for la in layers}) == len(layers)
    assert [la["kind"] for la in layers][-1] == "classes"  # drawn on top
    cls = layer(view_server, "classes")
    with rasterio.open(view_data["classes"]) as src:
        expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    np.testing.assert_allclose(cls["bounds"], expected, atol=1e-6, rtol=0)
    assert cls["legend"] == [{"value": i, "name": n, "color": hex_color(class_color(i))}
                             for i, n in enumerate(CLASS_NAMES)]
    assert 0 <= cls["minzoom"] < cls["maxzoom"] <= 24 and cls["path"] == str(view_data["classes"])
    refl = layer(view_server, "reflectance")
    assert refl["dates"] == ["2020-03-15", "2020-06-20"]
    assert refl["bands"] == ["Blue", "Green", "Red", "NIR", "SWIR1", "SWIR2"]
    granule = sorted(view_data["granules"].glob("*.B04.tif"))[0]
    with rasterio.open(granule) as src:
        expected = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    np.testing.assert_allclose(refl["bounds"], expected, atol=1e-6, rtol=0)
    fmask = layer(view_server, "fmask")
    assert [e["name"] for e in fmask["legend"]][:2] == ["cloud", "shadow"] and fmask["dates"] == refl["dates"]


def _pixel_classes(tile, src) -> np.ndarray:
    """Class (or 255) of the source pixel under each tile pixel's centre; -1 near an edge, -2 off the map."""
    import morecantile
    from rasterio.warp import transform

    tms = morecantile.tms.get("WebMercatorQuad")
    b = tms.xy_bounds(tile)
    step = (b.right - b.left) / 256
    xs = b.left + (np.arange(256) + 0.5) * step
    ys = b.top - (np.arange(256) + 0.5) * step
    gx, gy = np.meshgrid(xs, ys)
    ux, uy = transform("EPSG:3857", src.crs, gx.ravel(), gy.ravel())
    inv = ~src.transform
    col, row = inv * (np.asarray(ux), np.asarray(uy))
    col, row = col.reshape(256, 256), row.reshape(256, 256)
    blocks = class_blocks()
    out = np.full((256, 256), -1)
    c, r = np.floor(col).astype(int), np.floor(row).astype(int)
    inside = (c >= 1) & (r >= 1) & (c < blocks.shape[1] - 1) & (r < blocks.shape[0] - 1)
    cc, rr = np.clip(c, 1, blocks.shape[1] - 2), np.clip(r, 1, blocks.shape[0] - 2)
    centre = blocks[rr, cc]
    same = np.ones_like(inside)
    for dr in (-1, 0, 1):  # a pixel next to a class edge could fall either side: not checked
        for dc in (-1, 0, 1):
            same &= blocks[rr + dr, cc + dc] == centre
    out[inside & same] = centre[inside & same]
    h, w = blocks.shape
    out[(col < -1) | (row < -1) | (col > w + 1) | (row > h + 1)] = -2  # off the map
    return out


def test_class_tile_has_the_legend_colours_where_the_map_says(view_server, view_data):
    import morecantile
    import rasterio

    cls = layer(view_server, "classes")
    tms = morecantile.tms.get("WebMercatorQuad")
    colors = {e["value"]: tuple(int(e["color"][i:i + 2], 16) for i in (1, 3, 5)) for e in cls["legend"]}
    w, s, e, n = cls["bounds"]
    checked = {0: 0, 1: 0, 2: 0, 255: 0}
    with rasterio.open(view_data["classes"]) as src:
        for z in (cls["maxzoom"], cls["maxzoom"] - 2):  # full resolution and an overview
            for lon, lat in ((w + (e - w) * 0.02, n - (n - s) * 0.02), ((w + e) / 2, (s + n) / 2),
                             (e - (e - w) * 0.1, s + (n - s) * 0.1)):
                t = tms.tile(lon, lat, z)
                status, body, ctype = get(view_server, f"/tiles/{cls['id']}/{z}/{t.x}/{t.y}.png")
                assert status == 200 and ctype == "image/png"
                rgba = png_rgba(body)
                want = _pixel_classes(t, src)
                for value, count in checked.items():
                    sel = want == value
                    if value == 255:
                        assert (rgba[sel, 3] == 0).all(), "nodata is transparent"
                    else:
                        assert (rgba[sel, :3] == colors[value]).all() and (rgba[sel, 3] == 255).all()
                    checked[value] = count + int(sel.sum())
                assert (rgba[want == -2, 3] == 0).all(), "off the map is transparent"
    assert min(checked.values()) > 1000, checked


def test_tiles_outside_the_data_are_transparent(view_server):
    import morecantile

    cls = layer(view_server, "classes")
    tms = morecantile.tms.get("WebMercatorQuad")
    far = tms.tile(10.0, 50.0, cls["maxzoom"])  # Europe, far from the map
    for path in (f"/tiles/{cls['id']}/{cls['maxzoom']}/{far.x}/{far.y}.png", f"/tiles/{cls['id']}/0/0/0.png"):
        status, body, _ = get(view_server, path)
        assert status == 200 and (png_rgba(body)[..., 3] == 0).all()


def test_point_returns_the_values_rasterio_reads(view_server, view_data):
    import rasterio
    from rasterio.warp import transform

    layers = {la["kind"]: la for la in get_json(view_server, "/layers.json")}
    band_files = {b: sorted(view_data["granules"].glob(f"*.{b}.tif")) for b in ("B02", "B03", "B04", "B8A", "B11",
                                                                                "B12", "Fmask")}
    rng = np.random.default_rng(0)
    for sx, sy in rng.uniform(0.05, 0.95, size=(5, 2)):
        with rasterio.open(view_data["classes"]) as src:
            w, s, e, n = layers["classes"]["bounds"]
            lon, lat = w + sx * (e - w), s + sy * (n - s)
            (x,), (y,) = transform("EPSG:4326", src.crs, [lon], [lat])
            r, c = src.index(x, y)
            inside = 0 <= r < src.height and 0 <= c < src.width
            value = int(src.read(1)[r, c]) if inside else None
        got = get_json(view_server, f"/point/{lon:.9f},{lat:.9f}")
        if not inside:
            assert layers["classes"]["id"] not in got
            continue
        entry = got[layers["classes"]["id"]]["values"][0]
        assert entry["bands"]["class"] == (None if value == 255 else value)
        assert entry["class"] == (None if value == 255 else CLASS_NAMES[value])
    # a granule pixel: every band of every date
    refl = layers["reflectance"]
    w, s, e, n = refl["bounds"]
    lon, lat = w + 0.37 * (e - w), s + 0.61 * (n - s)
    got = get_json(view_server, f"/point/{lon:.9f},{lat:.9f}")[refl["id"]]["values"]
    assert [v["date"] for v in got] == refl["dates"]
    for t, v in enumerate(got):
        for name, band in zip(refl["bands"], ("B02", "B03", "B04", "B8A", "B11", "B12")):
            with rasterio.open(band_files[band][t]) as src:
                (x,), (y,) = transform("EPSG:4326", src.crs, [lon], [lat])
                r, c = src.index(x, y)
                raw = int(src.read(1)[r, c])
            assert v["bands"][name] == (None if raw == -9999 else raw)


@pytest.mark.parametrize("path", [
    "/tiles/nope/1/0/0.png",  # unknown id
    "/tiles/../../etc/passwd",
    "/tiles/..%2F..%2Fetc%2Fpasswd/1/0/0.png",
    "/tiles/%2e%2e/1/0/0.png",
    "/assets/..%2Fserver.py",
    "/assets/layers.py",
    "/../../etc/passwd",
    "/static/index.html",
    "/tiles/{id}/25/0/0.png",  # z > 24
    "/tiles/{id}/2/4/0.png",  # x outside the zoom's matrix
    "/point/abc,def",
    "/point/..%2F..%2Fetc%2Fpasswd",
])
def test_unknown_ids_paths_and_traversal_are_404(view_server, path):
    cls = layer(view_server, "classes")
    status, body, _ = get(view_server, path.replace("{id}", cls["id"]))
    assert status == 404, body[:200]
    assert b"root:" not in body


@pytest.mark.parametrize("query", [
    "path=/etc/passwd", "file=flood_map.tif", "url=http://example.org/x.tif",
    "bands=/etc/passwd", "bands=../../flood_map.tif", "t=../1", "t=99", "stretch=/etc/passwd", "bands=9",
])
def test_queries_naming_files_or_out_of_range_are_refused(view_server, query):
    cls = layer(view_server, "classes")
    status, body, _ = get(view_server, f"/tiles/{cls['id']}/12/0/0.png?{query}")
    assert status == 400, body[:200]
    status, _, _ = get(view_server, f"/point/-120.0,36.0?{query}")
    assert status == 400


def test_reflectance_dates_and_false_colour(view_server):
    import morecantile

    refl = layer(view_server, "reflectance")
    w, s, e, n = refl["bounds"]
    t = morecantile.tms.get("WebMercatorQuad").tile((w + e) / 2, (s + n) / 2, refl["maxzoom"])
    tiles = {}
    for q in ("t=0", "t=1", "t=0&bands=false", "t=0&stretch=0,3000"):
        status, body, _ = get(view_server, f"/tiles/{refl['id']}/{t.z}/{t.x}/{t.y}.png?{q}")
        assert status == 200
        tiles[q] = png_rgba(body)
        assert (tiles[q][..., 3] == 255).mean() > 0.1, q  # the tile has data
    assert not np.array_equal(tiles["t=0"], tiles["t=1"])  # another date
    assert not np.array_equal(tiles["t=0"], tiles["t=0&bands=false"])
    assert not np.array_equal(tiles["t=0"], tiles["t=0&stretch=0,3000"])
    fmask = layer(view_server, "fmask")
    status, body, _ = get(view_server, f"/tiles/{fmask['id']}/{t.z}/{t.x}/{t.y}.png?t=1")
    cloudy = png_rgba(body)
    assert status == 200 and 0 < (cloudy[..., 3] == 255).mean() < 1  # clouds drawn, clear pixels transparent


def test_page_and_assets_are_served_from_the_packages(view_server):
    status, body, ctype = get(view_server, "/")
    assert status == 200 and ctype.startswith("text/html") and b"/assets/maplibre-gl.js" in body
    status, js, ctype = get(view_server, "/assets/maplibre-gl.js")
    assert status == 200 and "javascript" in ctype and b"MapLibre GL JS" in js[:300] and len(js) > 100_000
    with urllib.request.urlopen(view_server.url) as r:
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self';" in csp
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(view_server.url + "layers.json", data=b"x")  # POST
    assert e.value.code == 404


def test_binds_loopback_and_warns_for_other_hosts(view_server, caplog):
    from geofm.viz.server import ViewServer, is_loopback

    assert view_server._server.servers[0].sockets[0].getsockname()[0] == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10")
    with caplog.at_level("WARNING", logger="geofm.viz.server"):
        ViewServer(view_server.layers, host="0.0.0.0", port=0)  # built, never started
    assert "--host 0.0.0.0 is not a loopback address" in caplog.text


def test_geofm_view_command_serves_until_interrupted(view_data):
    import os
    import re
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "geofm.cli", "view", str(view_data["classes"]), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving"):
                break
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[-1])
        assert m and "classes" in lines[0] and "flood_map" in lines[0], lines
        with urllib.request.urlopen(f"http://127.0.0.1:{m[1]}/layers.json", timeout=30) as r:
            assert [la["kind"] for la in json.loads(r.read())] == ["classes"]
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0, proc.stderr.read()
