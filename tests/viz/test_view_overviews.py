"""Big rasters are shown from their overviews: a low-zoom tile reads the overview, not the full resolution.

The raster's overviews are built from 5000 everywhere, then the full-resolution pixels are rewritten
to 7000 (overviews are not rebuilt): the colour of a tile tells which level it was read from.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("rio_tiler")


def test_low_zoom_tiles_come_from_the_overviews(tmp_path):
    import morecantile
    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from geofm.viz.layers import discover
    from geofm.viz.server import point_values, render_tile

    path = tmp_path / "stack.tif"
    size = 2048
    profile = dict(driver="GTiff", width=size, height=size, count=6, dtype="int16", crs="EPSG:32610",
                   transform=from_origin(499980.0, 4200000.0, 30.0, 30.0), nodata=-9999, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((6, size, size), 5000, np.int16))
        dst.build_overviews([2, 4, 8, 16], rasterio.enums.Resampling.nearest)
    with rasterio.open(path, "r+") as dst:
        dst.write(np.full((6, size, size), 7000, np.int16))
    with rasterio.open(path) as src:
        assert src.overviews(1) == [2, 4, 8, 16]
        assert int(src.read(1, out_shape=(64, 64))[0, 0]) == 5000  # decimated reads see the overviews

    layer = discover([path])[0]
    assert layer.kind == "reflectance"
    tms = morecantile.tms.get("WebMercatorQuad")
    w, s, e, n = layer.bounds
    lon, lat = (w + e) / 2, (s + n) / 2

    def tile_value(z: int) -> int:
        t = tms.tile(lon, lat, z)
        rgba = np.asarray(Image.open(io.BytesIO(render_tile(layer, z, t.x, t.y, bands=[2, 1, 0],
                                                            stretch=(0.0, 10000.0)))).convert("RGBA"))
        shown = rgba[rgba[..., 3] == 255][:, :3]
        assert shown.size and (shown == shown[0, 0]).all()
        return int(shown[0, 0])

    assert layer.minzoom <= layer.maxzoom - 4
    full, overview = 7000 / 10000 * 255, 5000 / 10000 * 255  # 178.5 and 127.5 (drawn as 178 and 127)
    assert abs(tile_value(layer.maxzoom) - full) <= 1  # full resolution
    assert abs(tile_value(layer.maxzoom - 4) - overview) <= 1  # 16x coarser: the last overview
    assert abs(tile_value(layer.minzoom) - overview) <= 1
    # a point is read at full resolution
    assert point_values([layer], lon, lat)[layer.id]["values"][0]["bands"]["Red"] == 7000
