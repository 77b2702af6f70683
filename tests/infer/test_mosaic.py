"""Mosaic of tile predictions: overlap rule, other UTM zones, nodata, AOI, classes, overviews, memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom

from geofm.errors import ConfigError, DataError
from geofm.infer.mosaic import majority_utm_crs, mosaic_tiles
from geofm.infer.scene import OutputSpec, predict_scene
from geofm.io import write_cog

RES = 30.0
Z10, Z11 = "EPSG:32610", "EPSG:32611"
# Near the zone 10 / 11 boundary (-120 deg) at about 38 N: tiles of both zones overlap there.
X10, Y10 = 761010.0, 4212030.0  # multiples of 30 m
CMAP = {0: (0, 0, 0, 255), 1: (0, 90, 255, 255), 2: (250, 40, 30, 255)}


def write_tile(path: Path, data: np.ndarray, crs: str, transform, spec: OutputSpec, colormap=None,
               block: int = 64) -> Path:
    """(count, H, W) -> a COG as predict_scene writes it (the project's writer, the spec's tags/nodata)."""
    c, h, w = data.shape
    blocks = [(rasterio.windows.Window(0, 0, w, h), data.astype(spec.dtype))]
    write_cog(path, blocks, width=w, height=h, count=c, dtype=spec.dtype, crs=crs, transform=transform,
              nodata=spec.nodata, block=block, resampling="nearest" if spec.kind == "classes" else "average",
              descriptions=spec.descriptions, tags={"geofm_output": spec.kind, **spec.tags, "geofm_frames": path.stem},
              colormap=colormap)
    return path


def zone11_origin(col_shift: int, row_shift: int) -> tuple[float, float]:
    """Upper-left corner in zone 11 of the zone 10 point (X10 + col_shift px, Y10 - row_shift px), on 30 m."""
    (x,), (y,) = warp_transform(Z10, Z11, [X10 + col_shift * RES], [Y10 - row_shift * RES])
    return round(x / RES) * RES, round(y / RES) * RES


def class_tiles(tmp_path: Path, size: int = 100) -> dict:
    """A, B in zone 10 (B 60 px east of A: 40 px overlap) and C in zone 11, east of B and 50 px lower."""
    spec = OutputSpec.classes(3, ["land", "water", "cloud"])
    rng = np.random.default_rng(0)
    out = {}
    for name, crs, (x, y) in [("A", Z10, (X10, Y10)), ("B", Z10, (X10 + 60 * RES, Y10)),
                              ("C", Z11, zone11_origin(130, 50))]:
        data = rng.integers(0, 3, size=(1, size, size))
        data[0, :3, :3] = 255  # nodata: a corner and a patch
        data[0, 40:45, 20:30] = 255
        t = from_origin(x, y, RES, RES)
        out[name] = (write_tile(tmp_path / f"T{name}.tif", data, crs, t, spec, colormap=CMAP), data[0], crs, t)
    return out


def read(path):
    """(count, H, W) array and the file's georeference, nodata, descriptions, dtypes and overviews."""
    with rasterio.open(path) as src:
        info = SimpleNamespace(crs=src.crs, transform=src.transform, nodata=src.nodata, dtypes=src.dtypes,
                               descriptions=src.descriptions, overviews=src.overviews(1))
        return src.read(), info


def test_same_zone_overlap_is_exact_and_the_seam_falls_mid_overlap(tmp_path):
    t = class_tiles(tmp_path)
    calls = []
    r = mosaic_tiles([t["B"][0], t["A"][0]], tmp_path / "m.tif", crs=Z10, block=64,
                     progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 6) for i in range(1, 7)]  # 3 x 2 windows of 64 px
    arr, src = read(r.path)
    assert src.crs.to_string() == Z10 and r.crs == Z10 and r.kind == "classes"
    assert (r.width, r.height) == (160, 100) and src.transform == from_origin(X10, Y10, RES, RES)
    a, b = t["A"][1], t["B"][1]
    # A's centre x = X10 + 50 px, B's = X10 + 110 px: the bisector is at 80 px, mid-overlap (60..100).
    np.testing.assert_array_equal(arr[0, :, :80], a[:, :80])
    b_valid = b[:, 20:] != 255
    np.testing.assert_array_equal(arr[0, :, 80:][b_valid], b[:, 20:][b_valid])
    assert (a[:, 60:80] != b[:, :20]).any() and (a[:, 80:] != b[:, 20:40]).any()  # the seam is visible
    # Where B is nodata (its patch) east of the seam, A's valid data fills in.
    np.testing.assert_array_equal(arr[0, 40:45, 80:90], a[40:45, 80:90])
    # Nodata only where A is and no other tile covers: A's corner and patch.
    assert r.pixels_covered == (arr[0] != 255).sum() == 160 * 100 - 9 - 50


def test_other_zone_tile_is_nearest_reprojected_and_uncovered_pixels_are_nodata(tmp_path):
    t = class_tiles(tmp_path)
    r = mosaic_tiles([t[k][0] for k in "ABC"], tmp_path / "m.tif", crs=Z10, block=64)
    arr, src = read(r.path)
    c_data, _, c_t = t["C"][1:]
    # Output pixel centres far east (in C only): the C pixel that holds the centre, away from its edges.
    rows, cols = np.mgrid[60:r.height, 200:r.width]
    xs, ys = src.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    cx, cy = warp_transform(Z10, Z11, xs, ys)
    fc, fr = ~c_t * (np.asarray(cx), np.asarray(cy))
    inside = (fc > 3) & (fc < 97) & (fr > 3) & (fr < 97)
    clear = (np.abs(fc % 1 - 0.5) < 0.35) & (np.abs(fr % 1 - 0.5) < 0.35)  # not on a source pixel edge
    pick = inside & clear
    assert pick.sum() > 500
    got = arr[0, rows.ravel()[pick], cols.ravel()[pick]]
    np.testing.assert_array_equal(got, c_data[fr[pick].astype(int), fc[pick].astype(int)])
    # No tile north-east (C sits 50 px lower) nor south-west (A and B end at row 100).
    assert (arr[0, :40, -20:] == 255).all() and (arr[0, -20:, :40] == 255).all()
    assert src.nodata == 255
    # The zone 11 tile reaches into the zone 10 tiles' rows only where B has no data closer to its centre.
    assert r.bounds[2] - r.bounds[0] == r.width * RES and r.bounds[0] == X10


def test_classes_names_colours_overviews_and_deterministic_bytes(tmp_path):
    t = class_tiles(tmp_path)
    paths = [t[k][0] for k in "ABC"]
    r1 = mosaic_tiles(paths, tmp_path / "m1.tif", crs=Z10, block=64)
    r2 = mosaic_tiles(list(reversed(paths)), tmp_path / "m2.tif", crs=Z10, block=64)
    assert r1.path.read_bytes() == r2.path.read_bytes()
    with rasterio.open(r1.path) as src:
        tags = src.tags()
        assert json.loads(tags["classes"]) == {"0": "land", "1": "water", "2": "cloud"}
        assert tags["geofm_output"] == "classes" and tags["geofm_mosaic_rule"] == "nearest-centre"
        assert tags["geofm_mosaic_tiles"] == "TA.tif,TB.tif,TC.tif"
        assert "geofm_frames" not in tags  # differs between tiles
        cmap = src.colormap(1)
        assert all(cmap[k] == v for k, v in CMAP.items())
        assert src.overviews(1) == [2, 4]
        ov = src.read(1, out_shape=(src.height // 2, src.width // 2))
        assert set(np.unique(ov)) <= {0, 1, 2, 255}  # nearest: no blended class values
        assert src.profile["blockxsize"] == 64 and src.profile["tiled"]


def test_values_do_not_depend_on_the_window_size(tmp_path):
    t = class_tiles(tmp_path)
    paths = [t[k][0] for k in "ABC"]
    a, _ = read(mosaic_tiles(paths, tmp_path / "m32.tif", crs=Z10, block=32).path)
    b, _ = read(mosaic_tiles(paths, tmp_path / "m128.tif", crs=Z10, block=128).path)
    np.testing.assert_array_equal(a, b)


def test_aoi_clips_and_sets_the_extent(tmp_path):
    t = class_tiles(tmp_path)
    paths = [t[k][0] for k in "ABC"]
    full = mosaic_tiles(paths, tmp_path / "full.tif", crs=Z10, block=64)
    # A triangle in zone 10 metres over A and B, given in lon/lat.
    x0, y0 = X10 + 20 * RES, Y10 - 10 * RES
    tri = {"type": "Polygon", "coordinates": [[(x0, y0), (x0 + 120 * RES, y0), (x0, y0 - 80 * RES), (x0, y0)]]}
    aoi = transform_geom(Z10, "EPSG:4326", tri)
    r = mosaic_tiles(paths, tmp_path / "aoi.tif", crs=Z10, aoi=aoi, block=64)
    arr, src = read(r.path)
    fa, _ = read(full.path)
    col0, row0 = round((r.bounds[0] - X10) / RES), round((Y10 - r.bounds[3]) / RES)
    assert abs(col0 - 20) <= 1 and abs(row0 - 10) <= 1 and abs(r.width - 120) <= 2 and abs(r.height - 80) <= 2
    sub = fa[0, row0:row0 + r.height, col0:col0 + r.width]
    rows, cols = np.mgrid[:r.height, :r.width]
    xs = r.bounds[0] + (cols + 0.5) * RES - x0
    ys = y0 - (r.bounds[3] - (rows + 0.5) * RES)
    inside = (xs > 1) & (ys > 1) & (xs / (120 * RES) + ys / (80 * RES) < 0.99)
    outside = (xs < -1) | (ys < -1) | (xs / (120 * RES) + ys / (80 * RES) > 1.01)
    np.testing.assert_array_equal(arr[0][inside], sub[inside])
    assert (arr[0][outside] == 255).all() and outside.sum() > 1000
    assert r.pixels_covered == (arr[0] != 255).sum() < 120 * 80 * 0.55


def test_probabilities_bilinear_and_band_descriptions(tmp_path):
    spec = OutputSpec.probabilities(2, ["dry", "flood"])
    yy, xx = np.mgrid[:100, :100]
    p = (0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 9.0)).astype(np.float32)
    data = np.stack([1 - p, p])
    a = write_tile(tmp_path / "TA.tif", data, Z10, from_origin(X10, Y10, RES, RES), spec)
    c_t = from_origin(*zone11_origin(130, 50), RES, RES)
    c = write_tile(tmp_path / "TC.tif", data, Z11, c_t, spec)
    r = mosaic_tiles([a, c], tmp_path / "p.tif", crs=Z10, block=64)
    arr, src = read(r.path)
    assert r.kind == "probabilities" and src.descriptions == ("p_dry", "p_flood") and src.nodata == -1
    assert src.dtypes[0] == "float32" and src.overviews
    np.testing.assert_array_equal(arr[:, :100, :100], data)  # on the output grid: exact
    # C's pixels: a bilinear value lies between its 4 neighbouring source values, and it is not
    # always one of them (nearest would be).
    rows, cols = np.mgrid[60:r.height - 5, 200:r.width - 5]
    xs, ys = src.transform * (cols.ravel() + 0.5, rows.ravel() + 0.5)
    cx, cy = warp_transform(Z10, Z11, xs, ys)
    fc, fr = ~c_t * (np.asarray(cx), np.asarray(cy))
    ok = (fc > 2) & (fc < 97) & (fr > 2) & (fr < 97)
    fc, fr, got = fc[ok] - 0.5, fr[ok] - 0.5, arr[1, rows.ravel()[ok], cols.ravel()[ok]]
    c0, r0 = np.floor(fc).astype(int), np.floor(fr).astype(int)
    quad = np.stack([p[r0, c0], p[r0, c0 + 1], p[r0 + 1, c0], p[r0 + 1, c0 + 1]])
    assert len(got) > 500
    assert ((got >= quad.min(0) - 1e-6) & (got <= quad.max(0) + 1e-6)).all()
    assert (np.abs(got[:, None] - quad.T).min(1) > 1e-4).mean() > 0.5
    expected = quad[0] * (1 - fc % 1) * (1 - fr % 1) + quad[1] * (fc % 1) * (1 - fr % 1) + \
        quad[2] * (1 - fc % 1) * (fr % 1) + quad[3] * (fc % 1) * (fr % 1)
    assert np.abs(got - expected).max() < 0.02


def test_predict_scene_tiles_mosaic_exactly(tmp_path):
    """Two overlapping predict_scene outputs (a fixed convolution) -> the mosaic equals each at its side."""
    import torch

    from geofm.bands import NORM_STATS
    from geofm.data.hls import stacked_frame

    mean, std = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 3, 3, padding=1)
    rng = np.random.default_rng(1)
    world = np.clip(rng.normal(1500, 600, size=(6, 70, 110)), 0, 9000).astype(np.int16)
    outs = []
    for name, col in (("A", 0), ("B", 40)):
        t = from_origin(X10 + col * RES, Y10, RES, RES)
        with rasterio.open(tmp_path / f"{name}_in.tif", "w", driver="GTiff", width=70, height=70, count=6,
                           dtype="int16", crs=Z10, transform=t, nodata=-9999) as dst:
            dst.write(world[:, :, col:col + 70])
        frames = [stacked_frame(str(tmp_path / f"{name}_in.tif"))]
        out = tmp_path / f"T{name}.tif"
        predict_scene(frames, lambda x: conv(x.flatten(1, 2)), out, output=OutputSpec.classes(3), mean=mean,
                      std=std, tile=32, overlap=8, block=32)
        outs.append(rasterio.open(out).read(1))
    r = mosaic_tiles([tmp_path / "TA.tif", tmp_path / "TB.tif"], tmp_path / "m.tif", crs=Z10, block=32)
    arr, _ = read(r.path)
    assert arr.shape == (1, 70, 110)
    np.testing.assert_array_equal(arr[0, :, :55], outs[0][:, :55])  # centres 35 and 75 px: seam at 55
    np.testing.assert_array_equal(arr[0, :, 55:], outs[1][:, 15:])


def test_memory_does_not_grow_with_the_region(tmp_path):
    """Python/numpy peak memory of a mosaic of 2 and of 6 overlapping large tiles: small and about equal."""
    spec = OutputSpec.probabilities(2)
    size = 512
    rng = np.random.default_rng(0)
    paths = []
    for i, (dc, dr) in enumerate([(0, 0), (480, 0), (960, 0), (0, 480), (480, 480), (960, 480)]):
        data = rng.random((2, size, size), dtype=np.float32)
        paths.append(write_tile(tmp_path / f"T{i}.tif", data, Z10, from_origin(X10 + dc * RES, Y10 - dr * RES,
                                                                              RES, RES), spec, block=256))
    tile_bytes = 2 * size * size * 4
    peaks = []
    for n, area in ((2, (size + 480) * size), (6, (size + 960) * (size + 480))):
        tracemalloc.start()
        r = mosaic_tiles(paths[:n], tmp_path / f"m{n}.tif", crs=Z10, block=64, overviews=False)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert r.pixels_covered == r.width * r.height == area
    assert max(peaks) < tile_bytes / 4, peaks  # never a whole tile (2 MiB) in memory
    assert peaks[1] < 1.3 * peaks[0], peaks  # 2.9x the area, about the same peak


def test_majority_utm_crs():
    boxes = [(-121.5, 37.0, -120.2, 38.0), (-119.9, 37.0, -119.0, 38.0), (-119.5, 37.2, -118.9, 38.0)]
    assert majority_utm_crs(boxes) == "EPSG:32611"
    assert majority_utm_crs(boxes[:1]) == "EPSG:32610"
    ring = [[-60.0, -10.0], [-59.0, -10.0], [-59.0, -9.0], [-60.0, -9.0], [-60.0, -10.0]]
    assert majority_utm_crs([{"type": "Polygon", "coordinates": [ring]}]) == "EPSG:32721"
    assert majority_utm_crs([(-120.5, -1.0, -119.5, 3.0)]) == "EPSG:32610"  # tie between zones: lower; most is north
    with pytest.raises(DataError):
        majority_utm_crs([])


def test_bad_arguments(tmp_path):
    t = class_tiles(tmp_path, size=20)
    with pytest.raises(ConfigError, match="--crs 'EPSG:4326' is not a projected"):
        mosaic_tiles([t["A"][0]], tmp_path / "m.tif", crs="EPSG:4326")
    with pytest.raises(ConfigError, match="--crs 'nonsense'"):
        mosaic_tiles([t["A"][0]], tmp_path / "m.tif", crs="nonsense")
    with pytest.raises(ConfigError, match="rule"):
        mosaic_tiles([t["A"][0]], tmp_path / "m.tif", crs=Z10, rule="first")
    p = write_tile(tmp_path / "P.tif", np.zeros((2, 20, 20)), Z10, from_origin(X10, Y10, RES, RES),
                   OutputSpec.probabilities(2))
    with pytest.raises(DataError, match="TA.tif' has count 1, expected 2 as '.*P.tif'"):
        mosaic_tiles([t["A"][0], p], tmp_path / "m.tif", crs=Z10)
    other = write_tile(tmp_path / "Q.tif", np.zeros((1, 20, 20)), Z10, from_origin(X10, Y10, RES, RES),
                       OutputSpec.classes(3, ["a", "b", "c"]))
    with pytest.raises(DataError, match="TA.tif' has classes .*land.*one model"):
        mosaic_tiles([t["A"][0], other], tmp_path / "m.tif", crs=Z10)
    assert not (tmp_path / "m.tif").exists()
