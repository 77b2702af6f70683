"""``geofm view`` on big rasters: time to open a layer and to draw tiles at every zoom.

One generated 3660² HLS S30 granule (six band COGs + Fmask, as NASA ships them) is shown three
ways: the granule itself (its band files in one virtual raster), the same six bands as one COG,
and, as the baseline, the same six bands as a tiled GeoTIFF **without overviews**. Each layer is
opened (``discover``: tags, bounds, zoom range) and tiles are drawn at the zoom where one tile
covers the scene, at the middle zoom and at full resolution; the rounds are interleaved and the
median kept. The ratio column is the baseline's time over each layer's (how much the overviews save).

    .venv/bin/python bench/view.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data" / "view"


def make_data() -> dict[str, Path]:
    import rasterio
    import rasterio.shutil

    from geofm.data import synthetic
    from geofm.viz.layers import _vrt

    granule = DATA / "granule"
    if not granule.is_dir():
        synthetic.write_granule(granule, "10SEG", dt.datetime(2020, 6, 20, 18, 49, 19), size=3660, seed=1,
                                cloud_cover=0.1)
    bands = sorted(p for p in granule.glob("*.tif") if p.name.split(".")[-2] in ("B02", "B03", "B04", "B8A",
                                                                                  "B11", "B12"))
    order = {"B02": 0, "B03": 1, "B04": 2, "B8A": 3, "B11": 4, "B12": 5}
    bands.sort(key=lambda p: order[p.name.split(".")[-2]])
    cog, plain = DATA / "stack_cog.tif", DATA / "stack_no_overviews.tif"
    if not cog.is_file():
        rasterio.shutil.copy(_vrt([str(p) for p in bands]), cog, driver="COG", COMPRESS="DEFLATE",
                             OVERVIEWS="AUTO", BLOCKSIZE=512)
    if not plain.is_file():
        rasterio.shutil.copy(_vrt([str(p) for p in bands]), plain, driver="GTiff", COMPRESS="DEFLATE", TILED="YES",
                             BLOCKXSIZE=512, BLOCKYSIZE=512)
    return {"granule (band COGs)": granule, "6-band COG": cog, "no overviews (baseline)": plain}


def measure(paths: dict[str, Path], rounds: int) -> dict[str, dict[str, float]]:
    import morecantile

    from geofm.viz.layers import discover
    from geofm.viz.server import render_tile

    tms = morecantile.tms.get("WebMercatorQuad")
    times: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            t0 = time.perf_counter()
            layers = [la for la in discover([path]) if la.kind == "reflectance"]
            times[name].setdefault("open", []).append(time.perf_counter() - t0)
            la = layers[0]
            t0 = time.perf_counter()
            la._stretch.clear()
            la.stretch((2, 1, 0))
            times[name].setdefault("stretch", []).append(time.perf_counter() - t0)
            w, s, e, n = la.bounds
            lo = max(z for z in range(0, 25) if len(list(tms.tiles(w, s, e, n, [z]))) == 1)
            for label, z in (("scene in one tile", lo), ("middle zoom", (lo + la.maxzoom) // 2),
                             ("full resolution", la.maxzoom)):
                t = tms.tile((w + e) / 2, (s + n) / 2, z)
                t0 = time.perf_counter()
                render_tile(la, z, t.x, t.y, bands=(2, 1, 0))
                times[name].setdefault(f"tile z{z} ({label})", []).append(time.perf_counter() - t0)
    return {name: {k: statistics.median(v) for k, v in d.items()} for name, d in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    paths = make_data()
    res = measure(paths, args.rounds)
    base = res["no overviews (baseline)"]
    rows = list(base)
    print(f"{'layer':<26}" + "".join(f"{r[:24]:>26}" for r in rows))
    for name, d in res.items():
        print(f"{name:<26}" + "".join(f"{d[r]:>19.3f} s {base[r] / d[r]:>4.1f}x" for r in rows))


if __name__ == "__main__":
    main()
