"""``geofm view`` on big rasters: time to open a layer and to draw tiles at every zoom.

One generated 3660² HLS S30 granule (six band COGs + Fmask, as NASA ships them) is shown three
ways: the granule itself (its band files in one virtual raster), the same six bands as one COG,
and, as the baseline, the same six bands as a tiled GeoTIFF **without overviews**. Each layer is
opened (``discover``: tags, bounds, zoom range), its stretch computed, and a tile is drawn at the
lowest zoom the viewer shows for the COG (two levels below its coarsest overview), at a middle
zoom and at full resolution; the rounds are interleaved and the
median kept. The ratio column is the baseline's time over each layer's (how much the overviews save).

    .venv/bin/python bench/view.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
import warnings
from pathlib import Path

DATA = Path(__file__).resolve().parent / "_data" / "view"


def _vrt(band_files: list[str]) -> str:
    """A VRT document stacking one-band files of one grid (to write them as one multi-band file)."""
    import xml.sax.saxutils

    import rasterio

    with rasterio.open(band_files[0]) as src:
        w, h, crs, tr, nodata = src.width, src.height, src.crs, src.transform, src.nodata
    esc = xml.sax.saxutils.escape
    gt = ", ".join(repr(float(v)) for v in tr.to_gdal())
    bands = "".join(f'<VRTRasterBand dataType="Int16" band="{i}"><NoDataValue>{nodata!r}</NoDataValue>'
                    f'<SimpleSource><SourceFilename relativeToVRT="0">{esc(str(f))}</SourceFilename>'
                    f'<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>'
                    for i, f in enumerate(band_files, start=1))
    return (f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{esc(crs.to_wkt())}</SRS>'
            f'<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>')


def make_data() -> dict[str, Path]:
    import rasterio
    import rasterio.shutil

    from geofm.data import synthetic

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
    cog = next(la for la in discover([paths["6-band COG"]]))
    zooms = (("lowest zoom shown", cog.minzoom), ("middle zoom", (cog.minzoom + cog.maxzoom) // 2),
             ("full resolution", cog.maxzoom))
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
            for label, z in zooms:
                t = tms.tile((w + e) / 2, (s + n) / 2, z)
                t0 = time.perf_counter()
                render_tile(la, z, t.x, t.y, bands=(2, 1, 0))
                times[name].setdefault(f"tile z{z} ({label})", []).append(time.perf_counter() - t0)
    return {name: {k: statistics.median(v) for k, v in d.items()} for name, d in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="The dataset has no Overviews")
    paths = make_data()
    res = measure(paths, args.rounds)
    base = res["no overviews (baseline)"]
    rows = list(base)
    print(f"{'layer':<26}" + "".join(f"{r[:24]:>26}" for r in rows))
    for name, d in res.items():
        print(f"{name:<26}" + "".join(f"{d[r]:>19.3f} s {base[r] / d[r]:>4.1f}x" for r in rows))


if __name__ == "__main__":
    main()
