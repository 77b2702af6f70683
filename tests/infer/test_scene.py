"""Whole-scene windowed prediction: stitching, GeoTIFF output, nodata, inputs, resume."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geofm.bands import HLS_NODATA, NORM_STATS, normalize
from geofm.data import synthetic
from geofm.data.hls import cloud_mask, group_granules, stacked_frame
from geofm.errors import ConfigError, DataError
from geofm.infer.scene import AxisTiling, OutputSpec, predict_scene, ramp_weights

MEAN, STD = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
CRS = "EPSG:32610"
TRANSFORM = from_origin(499980.0, 4200000.0, 30.0, 30.0)
SRC = Path(__file__).resolve().parents[2] / "src"


def write_stack(path: Path, data: np.ndarray, transform=TRANSFORM) -> Path:
    """(C, H, W) int16 reflectance -> stacked GeoTIFF with nodata -9999."""
    c, h, w = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=c, dtype="int16", crs=CRS,
                       transform=transform, nodata=HLS_NODATA) as dst:
        dst.write(data)
    return path


def scene(tmp_path: Path, h: int, w: int, frames: int = 2, seed: int = 0, hole: bool = True) -> list:
    """Stacked frames of smooth random reflectance; a nodata rectangle in the last frame."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        base = rng.normal(1500, 600, size=(6, h // 4 + 2, w // 4 + 2))
        data = np.kron(base, np.ones((4, 4)))[:, :h, :w] + rng.normal(0, 50, size=(6, h, w))
        data = np.clip(data, 0, 9000).astype(np.int16)
        if hole and t == frames - 1:
            data[:, h // 3: h // 3 + 7, w // 2: w // 2 + 9] = HLS_NODATA
        out.append(stacked_frame(str(write_stack(tmp_path / f"f{t}.tif", data))))
    return out


class ConvPredictor:
    """A fixed 3x3 convolution over the C*T input channels: translation-equivariant, radius 1."""

    def __init__(self, c: int = 6, t: int = 2, k: int = 2, seed: int = 0):
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(c * t, k, 3, padding=1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.flatten(1, 2))

    def single_pass(self, frames) -> np.ndarray:
        """(K, H, W) prediction of the whole reflect-padded scene in one go."""
        raw = np.stack([rasterio.open(f.sources[0][0]).read() for f in frames])  # (T, C, H, W)
        x = torch.from_numpy(normalize(raw.transpose(1, 0, 2, 3), MEAN, STD, (raw == HLS_NODATA).any(axis=1)))
        x = x.flatten(0, 1)[None]
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, self.conv.weight, self.conv.bias)[0].numpy()


def read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile, src.tags(), src.descriptions


def test_ramp_weights_sum_to_one_across_overlaps():
    tile, overlap = 64, 16
    ax = AxisTiling(300, tile, overlap)
    w = ramp_weights(tile, overlap)
    total = np.zeros(ax.count * ax.stride + tile)
    for i in range(ax.count):
        total[i * ax.stride: i * ax.stride + tile] += w
    scene_w = total[ax.pad_before: ax.pad_before + 300]
    np.testing.assert_allclose(scene_w, 1.0, atol=1e-6)  # regular grid: a partition of unity
    assert w[0] == 0.0 and w[overlap // 4 - 1] == 0.0 and w[overlap // 4] > 0 and w[tile // 2] == 1.0
    assert ax.pad_before >= overlap // 2 and ax.pad_after >= overlap // 2


@pytest.mark.parametrize("h,w,batch", [(150, 110, 3), (40, 50, 2), (64, 100, 8)])
def test_stitched_tiles_match_single_pass(tmp_path, h, w, batch):
    frames = scene(tmp_path, h, w)
    pred = ConvPredictor()
    res = predict_scene(frames, pred, tmp_path / "raw.tif", output=OutputSpec.raw(2), mean=MEAN, std=STD,
                        tile=64, overlap=16, batch_size=batch, block=32)
    out, profile, _, _ = read(tmp_path / "raw.tif")
    assert out.shape == (2, h, w) and profile["dtype"] == "float32"
    expected = pred.single_pass(frames)
    nodata = np.zeros((h, w), bool)
    nodata[h // 3: h // 3 + 7, w // 2: w // 2 + 9] = True
    assert np.isnan(out[:, nodata]).all() and not np.isnan(out[:, ~nodata]).any()
    # Exact up to float rounding everywhere (scene edges are reflect-padded in both).
    np.testing.assert_allclose(out[:, ~nodata], expected[:, ~nodata], rtol=0, atol=2e-5)
    ax, ay = AxisTiling(w, 64, 16), AxisTiling(h, 64, 16)
    assert res.tiles == ax.count * ay.count == sum(res.batch_sizes)


def test_class_map_geotiff_is_georeferenced_tiled_cog(tmp_path):
    frames = scene(tmp_path, 130, 90)
    pred = ConvPredictor()
    predict_scene(frames, pred, tmp_path / "cls.tif", output=OutputSpec.classes(2, ["dry", "wet"]), mean=MEAN,
                  std=STD, tile=64, overlap=16, batch_size=4, block=32)
    out, profile, tags, desc = read(tmp_path / "cls.tif")
    with rasterio.open(frames[0].sources[0][0]) as src:
        assert profile["crs"] == src.crs and profile["transform"] == src.transform
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and profile["count"] == 1
    assert profile["tiled"] and profile["blockxsize"] == 32 and profile["compress"] == "deflate"
    with rasterio.open(tmp_path / "cls.tif") as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        from geofm.viz import class_color

        table = src.colormap(1)  # the default palette as the GDAL colour table, kept by the COG copy
        assert [table[i][:3] for i in (0, 1)] == [class_color(0), class_color(1)] and class_color(0) != class_color(1)
    assert tags["geofm_output"] == "classes" and "wet" in tags["classes"] and desc == ("class",)
    expected = pred.single_pass(frames).argmax(0)
    hole = out[0] == 255
    assert hole.sum() == 7 * 9 and hole[130 // 3, 90 // 2]
    sure = np.abs(np.diff(pred.single_pass(frames), axis=0)[0]) > 1e-3
    assert (out[0][sure & ~hole] == expected[sure & ~hole]).all()
    assert not list(tmp_path.glob(".cls.tif*")), "temporary files and parts are cleaned up"


def test_probabilities_sum_to_one(tmp_path):
    frames = scene(tmp_path, 70, 70, hole=False)
    conv = ConvPredictor(k=3)
    predict_scene(frames, lambda x: torch.softmax(conv(x), 1), tmp_path / "p.tif",
                  output=OutputSpec.probabilities(3), mean=MEAN, std=STD, tile=32, overlap=8, block=16)
    out, profile, _, desc = read(tmp_path / "p.tif")
    assert out.shape == (3, 70, 70) and profile["nodata"] == -1 and desc == ("p_class_0", "p_class_1", "p_class_2")
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_granules_and_imputation_keep_clear_pixels(tmp_path):
    paths = synthetic.write_time_series(tmp_path / "g", size=96, seed=1, cloud_cover=[0.0, 0.3, 0.1],
                                        swath_edge=0.04)
    frames, skipped = group_granules(map(str, paths))
    assert len(frames) == 3 and not skipped
    # A predictor that "reconstructs" every pixel as the band mean (normalized 0).
    seen = {}

    def zeros(x, hidden):
        seen["hidden"] = seen.get("hidden", 0) + int(hidden.sum())
        return torch.zeros(x.shape[0], 18, *x.shape[-2:])

    spec = OutputSpec.reflectance(3, ("B", "G", "R", "N", "S1", "S2"), MEAN, STD)
    predict_scene(frames, zeros, tmp_path / "imp.tif", output=spec, mean=MEAN, std=STD, tile=32, overlap=8,
                  block=32, pass_hidden=True)
    out, profile, _, desc = read(tmp_path / "imp.tif")
    assert out.shape == (18, 96, 96) and profile["dtype"] == "int16" and profile["nodata"] == HLS_NODATA
    assert desc[0] == "t0_B" and desc[17] == "t2_S2" and seen["hidden"] > 0
    for t, f in enumerate(frames):
        raw = np.stack([rasterio.open(p).read(1) for p, _ in f.sources])
        fmask = rasterio.open(f.fmask[0]).read(1)
        nodata = (raw == HLS_NODATA).any(0)
        hidden = cloud_mask(fmask) | nodata
        got = out[6 * t: 6 * t + 6]
        assert (got[:, ~hidden] == raw[:, ~hidden]).all()  # clear pixels are kept
        cloudy = hidden & ~nodata
        assert cloudy.any() == (t > 0)
        np.testing.assert_array_equal(got[:, cloudy], np.rint(np.array(MEAN))[:, None].astype(np.int16)
                                      .repeat(cloudy.sum(), 1))
        assert (got[:, nodata] == HLS_NODATA).all()  # the swath edge is nodata in every frame


def test_cfmask_stacks_hide_landsat_clouds(tmp_path, sample_dir):
    """Real Landsat stacks whose cloud layer is CFmask classes (band 8): with fmask_kind="cfmask" the
    model is asked to fill exactly the CFmask cloud/shadow pixels (and nodata); clear ones are kept."""
    from geofm.data.hls import cfmask_to_hls_fmask

    paths = sorted(str(p) for p in (sample_dir / "landsat_p035r032" / "images").glob("*/*_stack.gtif"))[:3]
    frames = [stacked_frame(p, fmask_band=8) for p in paths]
    spec = OutputSpec.reflectance(3, ("B", "G", "R", "N", "S1", "S2"), MEAN, STD)

    def zeros(x, hidden):
        return torch.zeros(x.shape[0], 18, *x.shape[-2:])

    outs = {}
    for kind in ("cfmask", "hls"):
        predict_scene(frames, zeros, tmp_path / f"{kind}.tif", output=spec, mean=MEAN, std=STD, tile=16,
                      overlap=4, block=16, pass_hidden=True, fmask_kind=kind)
        outs[kind] = read(tmp_path / f"{kind}.tif")[0]
    n_hidden = 0
    for t, p in enumerate(paths):
        with rasterio.open(p) as src:
            raw, cf = src.read([1, 2, 3, 4, 5, 6]), src.read(8)
        nodata = (raw == HLS_NODATA).any(0)
        hidden = cloud_mask(cfmask_to_hls_fmask(cf)) & ~nodata  # CFmask -9999 (the stack's nodata) = fill
        got = outs["cfmask"][6 * t: 6 * t + 6]
        clear = ~hidden & ~nodata
        assert (got[:, clear] == raw[:, clear]).all()
        assert (got[:, hidden] == np.rint(np.array(MEAN))[:, None].astype(np.int16)).all()
        n_hidden += int(hidden.sum())
    assert n_hidden > 20  # the stacks have CFmask clouds (class 4) and shadows (class 2)
    assert not np.array_equal(outs["cfmask"], outs["hls"])  # read as HLS bits, the classes mean other things
    with pytest.raises(ConfigError, match="fmask kind"):
        predict_scene(frames, zeros, tmp_path / "x.tif", output=spec, mean=MEAN, std=STD, tile=16, overlap=4,
                      pass_hidden=True, fmask_kind="qa_pixel")


def test_granule_class_map_keeps_nodata(tmp_path):
    paths = synthetic.write_time_series(tmp_path / "g", size=80, seed=2, swath_edge=0.05)
    frames, _ = group_granules(map(str, paths))
    predict_scene(frames, ConvPredictor(t=3), tmp_path / "c.tif", output=OutputSpec.classes(2), mean=MEAN,
                  std=STD, tile=32, overlap=8, block=16)
    out, profile, _, _ = read(tmp_path / "c.tif")
    raw = rasterio.open(frames[0].sources[0][0]).read(1)
    assert ((out[0] == 255) == (raw == HLS_NODATA)).all() and (out[0] == 255).sum() > 0
    assert profile["crs"].to_epsg() == 32610


def test_mismatched_grids_raise(tmp_path):
    a = write_stack(tmp_path / "a.tif", np.ones((6, 40, 40), np.int16))
    b = write_stack(tmp_path / "b.tif", np.ones((6, 40, 40), np.int16), transform=from_origin(500010.0, 4200000.0,
                                                                                             30.0, 30.0))
    with pytest.raises(DataError, match="not on the grid"):
        predict_scene([stacked_frame(str(a)), stacked_frame(str(b))], ConvPredictor(), tmp_path / "x.tif",
                      output=OutputSpec.raw(2), mean=MEAN, std=STD, tile=32, overlap=8)
    with pytest.raises(ConfigError):
        predict_scene([stacked_frame(str(a))], ConvPredictor(t=1), tmp_path / "x.tif", output=OutputSpec.raw(2),
                      mean=MEAN, std=STD, tile=32, overlap=16)
    assert not (tmp_path / "x.tif").exists()


KILL_SCRIPT = """
import os, sys, numpy as np, torch
sys.path.insert(0, {src!r})
from geofm.data.hls import stacked_frame
from geofm.infer.scene import OutputSpec, predict_scene
from geofm.bands import NORM_STATS
torch.manual_seed(0)
conv = torch.nn.Conv2d(12, 3, 3, padding=1)
calls = [0]
def pred(x):
    calls[0] += 1
    if calls[0] > {kill_after}:
        os._exit(3)  # a hard kill: no cleanup, no exception handlers
    return torch.tanh(conv(x.flatten(1, 2))) * 3
frames = [stacked_frame(p) for p in {frames!r}]
m, s = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
r = predict_scene(frames, pred, {out!r}, output=OutputSpec.raw(3), mean=m, std=s, tile=48, overlap=16,
                  batch_size=3, block=32)
print("TILES", r.tiles, "RESUMED", r.resumed_from_row)
"""


def run_script(tmp_path, frames, out, kill_after):
    code = KILL_SCRIPT.format(src=str(SRC), kill_after=kill_after, frames=[f.sources[0][0] for f in frames],
                              out=str(out))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.slow
def test_resume_after_kill_is_bitwise_identical(tmp_path):
    frames = scene(tmp_path, 200, 120)
    ref = tmp_path / "ref.tif"
    out = tmp_path / "out.tif"
    full = run_script(tmp_path, frames, ref, kill_after=10**6)
    assert full.returncode == 0, full.stderr
    total = int(full.stdout.split()[1])
    killed = run_script(tmp_path, frames, out, kill_after=9)
    assert killed.returncode == 3, killed.stderr
    assert not out.exists()
    parts = sorted((tmp_path / ".out.tif.parts").glob("rows_*.npy"))
    assert len(parts) >= 2, "finished blocks were saved before the kill"
    again = run_script(tmp_path, frames, out, kill_after=10**6)
    assert again.returncode == 0, again.stderr
    tiles, resumed = int(again.stdout.split()[1]), int(again.stdout.split()[3])
    assert resumed == 32 * len(parts) and tiles < total
    a, b = read(ref)[0], read(out)[0]
    assert a.tobytes() == b.tobytes() or np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(a.view(np.uint32), b.view(np.uint32))  # bitwise, NaNs included
    assert not (tmp_path / ".out.tif.parts").exists()


@pytest.mark.parametrize("shape,pads", [((5, 9), (2, 3, 4, 1)), ((3, 2), (4, 5, 3, 6)), ((7, 7), (0, 0, 6, 0))])
def test_reflect_fill_matches_np_pad(shape, pads):
    top, bottom, left, right = pads
    core = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    x = np.full((2, shape[0] + top + bottom, shape[1] + left + right), np.nan, np.float32)
    x[:, top:top + shape[0], left:left + shape[1]] = core
    from geofm.infer.scene import reflect_fill

    reflect_fill(x, top, bottom, left, right)
    np.testing.assert_array_equal(x, np.pad(core, ((0, 0), (top, bottom), (left, right)), mode="reflect"))
