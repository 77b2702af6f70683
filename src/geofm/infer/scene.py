"""Whole-scene windowed prediction to a georeferenced, tiled, compressed GeoTIFF (COG).

The scene (T frames on one grid, each an HLS granule or a stacked GeoTIFF) is never read
whole. It is cut into overlapping tiles (``tile`` px, ``overlap`` px shared by neighbours,
stride ``tile - overlap``) laid on a regular grid that covers the scene plus a margin of
at least ``overlap // 2`` px on every side; the margin and the part of the last row/column
of tiles that falls past the scene are filled by **reflect padding** of the scene, so
every scene pixel is predicted with context on all sides.

Work flows in strips of one row of tiles: a background thread reads the strip's window of
every frame from disk (``tile`` rows x the scene width) and normalizes it,
``(raw - mean) / std`` with nodata pixels set to 0.0001; tiles are batched (batches may
span two strips) through the predictor; each prediction is added to the strip's
accumulator with a weight ``w(y) * w(x)`` and the accumulated sums are divided by the summed
weights. The 1D weight ``w(d)`` of a pixel at distance ``d`` from the nearest tile edge is 0
for ``d < overlap // 4`` (tile borders, where the model lacks context, are dropped), rises as
a raised cosine over the next ``overlap - 2 * (overlap // 4)`` px and is 1 inside; two
neighbouring tiles' weights sum to exactly 1 across their overlap. When a row of tiles is
done, the rows above the next row's first tile are final; they are converted to the output
type and buffered until a block of ``block`` rows is complete, which is saved as a part file.
Memory holds about three strips (it grows with the scene width, not its height).

Resuming: part files live in ``.{name}.parts/`` next to the output with a manifest that
fingerprints the inputs and options. A rerun with the same inputs finds the finished blocks,
restarts at the first row of tiles that touches the first missing block (on the same batch
boundaries, so the result is bitwise identical to an uninterrupted run) and skips what is
done. When every block is there, they are copied into a Cloud-Optimized GeoTIFF written
under a temporary name and renamed onto ``out_path``; the parts are then removed.

Outputs (:class:`OutputSpec`): ``classes`` (uint8 argmax, nodata 255, a GDAL colour table of the
default class palette, :mod:`geofm.viz.palette`), ``probabilities``
(float32 in [0, 1], one band per class, nodata -1), ``reflectance`` (imputation: int16
reflectance x10000, T x C bands frame-major, nodata -9999; pixels that are clear in a frame
keep their input values, cloudy/shadow/nodata ones take the model's reconstruction) and
``raw`` (float32 predictor output, nodata NaN). Output pixels are nodata where the input is
nodata in any frame (``classes``/``probabilities``/``raw``) or in every frame (``reflectance``).

>>> result = predict_scene(frames, predictor, "out.tif", output=OutputSpec.classes(2),
...                        mean=info.mean, std=info.std)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from geofm.bands import HLS_NODATA, normalize
from geofm.data.hls import (DEFAULT_CLOUD_BITS, Frame, Grid, cfmask_to_hls_fmask, check_same_grid, cloud_mask,
                            read_frame_window)
from geofm.errors import ConfigError, DataError
from geofm.io import atomic_path, write_cog

log = logging.getLogger(__name__)

#: (B, C, T, h, w) normalized float32 tiles -> (B, K, h, w) float predictions.
Predictor = Callable[[torch.Tensor], torch.Tensor]
#: Same, also given ``hidden`` (B, T, h, w) bool: pixels that are cloudy or nodata in each frame.
MaskedPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FORMAT_VERSION = 1


# --------------------------------------------------------------------------- tiling geometry
@dataclass(frozen=True)
class AxisTiling:
    """Tile origins along one axis of ``size`` px (origins < 0 or ends > size fall in the padding)."""

    size: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def count(self) -> int:
        margin = self.overlap // 2
        span = self.size + 2 * margin - self.tile
        return 1 if span <= 0 else math.ceil(span / self.stride) + 1

    @property
    def pad_before(self) -> int:
        cover = (self.count - 1) * self.stride + self.tile
        return (cover - self.size) // 2

    @property
    def pad_after(self) -> int:
        return (self.count - 1) * self.stride + self.tile - self.size - self.pad_before

    def origin(self, i: int) -> int:
        """Scene coordinate of the first pixel of tile ``i`` (negative in the leading padding)."""
        return i * self.stride - self.pad_before


def ramp_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile,) float32 blending weight by distance to the nearest tile edge (see module docstring)."""
    if overlap == 0:
        return np.ones(tile, np.float32)
    border = overlap // 4
    ramp = overlap - 2 * border
    i = np.arange(tile)
    d = np.minimum(i, tile - 1 - i).astype(np.float64)
    w = np.where(d < border, 0.0, np.where(d >= overlap - border, 1.0,
                                           0.5 - 0.5 * np.cos(np.pi * (d - border + 0.5) / ramp)))
    return w.astype(np.float32)


def check_tiling(tile: int, overlap: int, batch_size: int) -> None:
    """:class:`ConfigError` unless 0 <= 2 * overlap < tile and batch_size >= 1."""
    if tile < 1 or overlap < 0 or 2 * overlap >= tile:
        raise ConfigError(f"tile/overlap must satisfy 0 <= 2 * overlap < tile, got tile={tile} overlap={overlap}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


# --------------------------------------------------------------------------- output types
@dataclass(frozen=True)
class OutputSpec:
    """What is written: ``kind``, the predictor's channel count K and the GeoTIFF band layout.

    Build with :meth:`classes`, :meth:`probabilities`, :meth:`reflectance` or :meth:`raw`.
    """

    kind: str  # "classes" | "probabilities" | "reflectance" | "raw"
    channels: int  # K, channels the predictor returns
    count: int  # bands written
    dtype: str
    nodata: float
    descriptions: tuple[str, ...]
    nodata_rule: str = "any"  # output nodata where input is nodata in "any" / "all" frames
    mean: tuple[float, ...] = ()  # reflectance only: to undo the normalization
    std: tuple[float, ...] = ()
    tags: dict = field(default_factory=dict, compare=False)

    @classmethod
    def classes(cls, num_classes: int, class_names: Sequence[str] | None = None) -> OutputSpec:
        """uint8 class indices with nodata 255 (uint16 / 65535 from 255 classes on: nodata is never a class)."""
        names = list(class_names or [f"class_{i}" for i in range(num_classes)])
        dtype, nodata = ("uint8", 255) if num_classes < 255 else ("uint16", 65535)
        return cls("classes", num_classes, 1, dtype, nodata, ("class",),
                   tags={"classes": json.dumps({i: n for i, n in enumerate(names)})})

    @classmethod
    def probabilities(cls, num_classes: int, class_names: Sequence[str] | None = None) -> OutputSpec:
        names = tuple(class_names or [f"class_{i}" for i in range(num_classes)])
        return cls("probabilities", num_classes, num_classes, "float32", -1.0, tuple(f"p_{n}" for n in names))

    @classmethod
    def reflectance(cls, num_frames: int, bands: Sequence[str], mean: Sequence[float],
                    std: Sequence[float]) -> OutputSpec:
        c = len(bands)
        desc = tuple(f"t{t}_{b}" for t in range(num_frames) for b in bands)
        return cls("reflectance", num_frames * c, num_frames * c, "int16", HLS_NODATA, desc, nodata_rule="all",
                   mean=tuple(map(float, mean)), std=tuple(map(float, std)))

    @classmethod
    def raw(cls, channels: int) -> OutputSpec:
        return cls("raw", channels, channels, "float32", float("nan"), tuple(f"out_{i}" for i in range(channels)))

    def finalize(self, blended: np.ndarray, invalid: np.ndarray, raw: np.ndarray | None,
                 hidden: np.ndarray | None) -> np.ndarray:
        """(K, h, w) blended float32 -> (count, h, w) output; ``invalid`` (h, w) pixels become nodata.

        ``raw`` (T, C, h, w) int16 and ``hidden`` (T, h, w) bool are the input rows (reflectance only).
        """
        if self.kind == "classes":
            out = blended.argmax(axis=0).astype(self.dtype)[None]
        elif self.kind == "probabilities":
            out = np.clip(blended, 0.0, 1.0, dtype=np.float32)
        elif self.kind == "raw":
            out = blended.astype(np.float32, copy=True)
        elif self.kind == "reflectance":
            t, c = raw.shape[:2]
            rec = blended.reshape(t, c, *blended.shape[1:])
            rec = rec * np.asarray(self.std, np.float32)[None, :, None, None] + \
                np.asarray(self.mean, np.float32)[None, :, None, None]
            rec = np.clip(np.rint(rec), -32768, 32767).astype(np.int16)
            keep = ~hidden[:, None]  # clear, valid pixels keep their input
            out = np.where(keep, raw, rec).reshape(t * c, *raw.shape[2:])
        else:
            raise ConfigError(f"unknown output kind {self.kind!r}")
        out[:, invalid] = self.nodata
        return out


# --------------------------------------------------------------------------- results
@dataclass
class SceneResult:
    """What :func:`predict_scene` did. Times are wall seconds; ``model_seconds`` is inside the predictor."""

    path: Path
    width: int
    height: int
    tiles: int  # tiles predicted in this run
    batch_sizes: list[int]
    seconds: float
    model_seconds: float
    resumed_from_row: int = 0


@dataclass
class _Strip:
    """One row of tiles' input: normalized padded x (C, T, tile, Wp) and the scene rows it covers."""

    k: int
    x: np.ndarray
    hidden_padded: np.ndarray | None  # (T, tile, Wp) bool, for masked predictors
    row0: int  # first scene row of ``invalid``/``raw``/``hidden``
    invalid: np.ndarray  # (h, W) bool: output nodata
    raw: np.ndarray | None  # (T, C, h, W) int16 (reflectance output)
    hidden: np.ndarray | None  # (T, h, W) bool (reflectance output)


class _Accumulator:
    __slots__ = ("sum", "wsum", "seen")

    def __init__(self, channels: int, tile: int, width: int):
        self.sum = np.zeros((channels, tile, width), np.float32)
        self.wsum = np.zeros((tile, width), np.float32)
        self.seen = 0


# --------------------------------------------------------------------------- reading
def reflect_fill(x: np.ndarray, top: int, bottom: int, left: int, right: int) -> None:
    """Fill the borders of ``x`` (..., H, W) in place by reflecting its core, as ``np.pad(mode="reflect")``."""
    h, w = x.shape[-2] - top - bottom, x.shape[-1] - left - right
    lead = [(0, 0)] * (x.ndim - 2)
    if max(left, right) >= w or max(top, bottom) >= h:  # tiny core: np.pad reflects repeatedly
        core = x[..., top:top + h, left:left + w].copy()
        x[...] = np.pad(core, [*lead, (top, bottom), (left, right)], mode="reflect")
        return
    rows = slice(top, top + h)
    if left:
        x[..., rows, :left] = x[..., rows, 2 * left:left:-1]
    if right:
        x[..., rows, left + w:] = x[..., rows, left + w - 1 - np.arange(1, right + 1)]
    if top:
        x[..., :top, :] = x[..., 2 * top:top:-1, :]
    if bottom:
        x[..., top + h:, :] = x[..., top + h - 1 - np.arange(1, bottom + 1), :]


class _StripReader:
    """Reads and normalizes the input strip of each row of tiles (run in a background thread)."""

    def __init__(self, frames: Sequence[Frame], grid: Grid, ty: AxisTiling, tx: AxisTiling,
                 mean: Sequence[float], std: Sequence[float], output: OutputSpec, need_hidden_padded: bool,
                 cloud_bits: Sequence[str], nodata_fill: Sequence[float] | None = None, fmask_kind: str = "hls"):
        self.frames, self.grid, self.ty, self.tx = frames, grid, ty, tx
        self.fmask_kind = fmask_kind
        self.nodata_fill = nodata_fill
        self.mean, self.std, self.output = mean, std, output
        self.need_hidden_padded = need_hidden_padded
        self.cloud_bits = tuple(cloud_bits)
        self.datasets: dict = {}

    def read(self, k: int) -> _Strip:
        from rasterio.windows import Window

        ty, tx, W, H = self.ty, self.tx, self.grid.width, self.grid.height
        y0 = ty.origin(k)
        r0, r1 = max(0, y0), min(H, y0 + ty.tile)
        h, T, C = r1 - r0, len(self.frames), len(self.frames[0].sources)
        keep = self.output.kind == "reflectance"
        raw = np.empty((T if keep else 1, C, h, W), np.int16)  # one frame at a time unless kept
        nodata = np.zeros((T, h, W), bool)
        hidden = np.zeros((T, h, W), bool)
        top, bottom = max(0, -y0), max(0, y0 + ty.tile - H)
        x = np.empty((C, T, ty.tile, W + tx.pad_before + tx.pad_after), np.float32)
        core = x[:, :, top:top + h, tx.pad_before:tx.pad_before + W]
        window = Window(0, r0, W, h)
        for t, frame in enumerate(self.frames):
            buf = raw[t if keep else 0]
            _, fmask = read_frame_window(frame, window, self.datasets, out=buf, nodata_out=nodata[t])
            normalize(buf[:, None], self.mean, self.std, nodata[t:t + 1], out=core[:, t:t + 1], fill=self.nodata_fill)
            hidden[t] = nodata[t]
            if fmask is not None:
                if self.fmask_kind == "cfmask":  # Landsat CFmask classes -> HLS bits
                    fmask = cfmask_to_hls_fmask(fmask)
                hidden[t] |= cloud_mask(fmask, self.cloud_bits)
        reflect_fill(x, top, bottom, tx.pad_before, tx.pad_after)
        pad = ((top, bottom), (tx.pad_before, tx.pad_after))
        hidden_padded = np.pad(hidden, ((0, 0), *pad), mode="reflect") if self.need_hidden_padded else None
        invalid = nodata.all(axis=0) if self.output.nodata_rule == "all" else nodata.any(axis=0)
        return _Strip(k, x, hidden_padded, r0, invalid, raw if keep else None, hidden if keep else None)

    def close(self) -> None:
        for d in self.datasets.values():
            d.close()
        self.datasets.clear()


class _Prefetch:
    """Iterate ``fn(i) for i in items`` in a daemon thread, ``depth`` results ahead; errors re-raised."""

    _END = object()

    def __init__(self, fn: Callable, items: Sequence, depth: int = 2, threaded: bool = True):
        self.fn, self.items, self.threaded = fn, list(items), threaded
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = None
        if threaded:
            self.thread = threading.Thread(target=self._work, name="geofm-scene-reader", daemon=True)
            self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for i in self.items:
                if not self._put(("ok", self.fn(i))):
                    return
        except BaseException as e:  # handed to the consumer, which re-raises it
            self._put(("error", e))
            return
        self._put(("ok", self._END))

    def __iter__(self) -> Iterator:
        if not self.threaded:
            yield from (self.fn(i) for i in self.items)
            return
        while True:
            kind, item = self.q.get()
            if kind == "error":
                raise item
            if item is self._END:
                return
            yield item

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


# --------------------------------------------------------------------------- resumable part files
class _Parts:
    """Finished blocks of output rows, saved as ``rows_{r0}_{r1}.npy`` in a folder with a manifest."""

    def __init__(self, out_path: Path, signature: str, resume: bool):
        self.dir = out_path.parent / f".{out_path.name}.parts"
        self.signature = signature
        manifest = self.dir / "manifest.json"
        if self.dir.exists():
            old = None
            if manifest.is_file():
                try:
                    old = json.loads(manifest.read_text()).get("signature")
                except (json.JSONDecodeError, OSError):
                    old = None
            if not resume or old != signature:
                if old is not None and old != signature:
                    log.warning("discarding unfinished parts in %s: inputs or options changed", self.dir)
                shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not manifest.is_file():
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps({"signature": signature, "format_version": FORMAT_VERSION}) + "\n")

    def path(self, r0: int, r1: int) -> Path:
        return self.dir / f"rows_{r0:06d}_{r1:06d}.npy"

    def done_until(self, block: int, height: int) -> int:
        """First row not covered by consecutive finished blocks from row 0."""
        r = 0
        while r < height and self.path(r, min(height, r + block)).is_file():
            r = min(height, r + block)
        return r

    def save(self, r0: int, arr: np.ndarray) -> None:
        with atomic_path(self.path(r0, r0 + arr.shape[1]), suffix=".npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr)

    def load(self, r0: int, r1: int) -> np.ndarray:
        return np.load(self.path(r0, r1))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _signature(frames: Sequence[Frame], grid: Grid, output: OutputSpec, opts: dict) -> str:
    files = []
    for f in frames:
        for p, b in [*f.sources, *([f.fmask] if f.fmask else [])]:
            try:
                st = os.stat(p)
                files.append([p, b, st.st_size, st.st_mtime_ns])
            except OSError:
                files.append([p, b])
    payload = {"files": files, "grid": [grid.width, grid.height, list(grid.transform)], "kind": output.kind,
               "channels": output.channels, "dtype": output.dtype, "nodata_rule": output.nodata_rule,
               "version": FORMAT_VERSION, **opts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- the engine
def predict_scene(frames: Sequence[Frame], predictor: Predictor | MaskedPredictor, out_path: str | os.PathLike, *,
                  output: OutputSpec, mean: Sequence[float], std: Sequence[float], tile: int = 224,
                  overlap: int = 32, batch_size: int = 8, block: int = 512, overviews: bool = True,
                  pass_hidden: bool = False, cloud_bits: Sequence[str] = DEFAULT_CLOUD_BITS,
                  compress: str = "deflate", resume: bool = True, run_id: str = "", prefetch: bool = True,
                  progress: Callable[[int, int], None] | None = None, tags: dict | None = None,
                  gdal_cache_mb: int = 64, nodata_fill: Sequence[float] | None = None,
                  fmask_kind: str = "hls") -> SceneResult:
    """Predict a whole scene tile by tile and write ``out_path`` as a Cloud-Optimized GeoTIFF.

    ``frames``: T :class:`~geofm.data.hls.Frame` s on one grid (:class:`DataError` otherwise), each
    C bands of int16 reflectance x10000. ``predictor(x)`` maps normalized tiles x (B, C, T, tile,
    tile) float32 to (B, K, tile, tile) with K = ``output.channels``; with ``pass_hidden`` it is
    called as ``predictor(x, hidden)`` with hidden (B, T, tile, tile) bool (Fmask cloud/shadow or
    nodata). A predictor may return NaN for pixels it cannot predict (they get no weight).
    ``mean``/``std``: per band, reflectance x10000. ``block``: output block size (px, multiple of
    16) and the resume granularity in rows. ``run_id`` should fingerprint the model, so that
    parts of a run with another model are not reused. ``progress(done_tiles, total_tiles)`` is
    called after every batch. ``gdal_cache_mb`` caps GDAL's block cache while reading. The output
    has the frames' CRS, transform and ``output.nodata``; ``tags`` are added to its metadata.
    ``nodata_fill`` (per band) replaces the normalized value of nodata input pixels (default 0.0001).
    ``fmask_kind``: the frames' cloud layer holds HLS Fmask bits ("hls") or Landsat CFmask classes
    ("cfmask": 0 clear, 1 water, 2 shadow, 3 snow, 4 cloud, 255 fill), converted to HLS bits.
    """
    t_start = time.perf_counter()
    grid = _validate(frames, output, mean, std, tile, overlap, batch_size, block, nodata_fill, fmask_kind)
    out_path = Path(out_path)
    H, W = grid.height, grid.width
    ty, tx = AxisTiling(H, tile, overlap), AxisTiling(W, tile, overlap)
    opts = dict(tile=tile, overlap=overlap, batch_size=batch_size, block=block, mean=list(mean), std=list(std),
                pass_hidden=pass_hidden, cloud_bits=list(cloud_bits), run_id=run_id, fmask_kind=fmask_kind,
                nodata_fill=None if nodata_fill is None else [float(v) for v in nodata_fill])
    parts = _Parts(out_path, _signature(frames, grid, output, opts), resume)
    done_row = parts.done_until(block, H)

    # Restart at the first row of tiles touching the first missing row, on a batch boundary.
    k0 = next((k for k in range(ty.count) if ty.origin(k) + tile > done_row), ty.count)
    i0 = (k0 * tx.count // batch_size) * batch_size  # first tile (row-major) to predict
    k_start = i0 // tx.count if done_row < H else ty.count
    if done_row:
        log.info("resuming %s: rows [0, %d) of %d done, restarting at tile row %d", out_path, done_row, H, k_start)

    import rasterio

    # GDAL's block cache (default 5 % of RAM) would keep every decoded block of the scene (0.5 GB
    # for a 3-frame HLS tile); capped, a block shared by two strips is at worst decoded twice.
    env = rasterio.Env(GDAL_CACHEMAX=int(gdal_cache_mb) << 20)
    reader = _StripReader(frames, grid, ty, tx, mean, std, output, pass_hidden, cloud_bits, nodata_fill, fmask_kind)
    blender = _Blender(parts, output, ty, tx, block, done_row, k_start, i0)
    total = tx.count * ty.count
    batch_sizes: list[int] = []
    model_seconds = 0.0
    tiles_done = i0
    with env:
        strips = _Prefetch(reader.read, range(k_start, ty.count), depth=1, threaded=prefetch)
        try:
            for batch in _tile_batches(strips, blender, tx, k_start, i0, batch_size):
                y, seconds = _run_predictor(predictor, batch, pass_hidden, output.channels, tile)
                model_seconds += seconds
                blender.add(batch, y)
                batch_sizes.append(len(batch))
                tiles_done += len(batch)
                blender.finish_ready_rows()
                if progress is not None:
                    progress(tiles_done, total)
        finally:
            strips.close()
            reader.close()
    if blender.next_k != ty.count:
        raise RuntimeError(f"internal error: rows of tiles {blender.next_k}..{ty.count - 1} were not finished")
    _assemble(parts, out_path, grid, frames[0], output, block, H, W, overviews, compress, tags)
    parts.remove()
    seconds = time.perf_counter() - t_start
    log.info("predicted %s: %dx%d px, %d tiles in %.1f s (model %.1f s)", out_path, W, H, tiles_done - i0,
             seconds, model_seconds)
    return SceneResult(out_path, W, H, tiles_done - i0, batch_sizes, seconds, model_seconds, done_row)


def _validate(frames: Sequence[Frame], output: OutputSpec, mean: Sequence[float], std: Sequence[float], tile: int,
              overlap: int, batch_size: int, block: int, nodata_fill: Sequence[float] | None,
              fmask_kind: str) -> Grid:
    """The frames' common grid; :class:`DataError` / :class:`ConfigError` for inconsistent inputs or options."""
    if not frames:
        raise DataError("no input frames given")
    check_tiling(tile, overlap, batch_size)
    from geofm.data.series import FMASK_KINDS

    if fmask_kind not in FMASK_KINDS:
        raise ConfigError(f"fmask kind must be one of {list(FMASK_KINDS)}, got {fmask_kind!r}")
    if block < 16 or block % 16:
        raise ConfigError(f"block must be a positive multiple of 16, got {block}")
    grid = check_same_grid(frames)
    n_bands = {len(f.sources) for f in frames}
    if len(n_bands) != 1 or len(mean) != next(iter(n_bands)) or len(std) != len(mean):
        raise DataError(f"frames have {sorted(n_bands)} band(s) and the model statistics {len(mean)}: "
                        f"expected the same count everywhere (first frame '{frames[0].granule_id}')")
    if output.kind == "reflectance" and output.channels != len(frames) * len(mean):
        raise ConfigError(f"reflectance output expects {output.channels} channels, frames give "
                          f"{len(frames)} x {len(mean)}")
    if nodata_fill is not None and len(nodata_fill) != len(mean):
        raise ConfigError(f"nodata_fill has {len(nodata_fill)} values, expected one per band ({len(mean)})")
    return grid


#: One tile to predict: (row of tiles k, column j, x (C, T, tile, tile) view, hidden (T, tile, tile) view or None).
_Tile = tuple[int, int, np.ndarray, "np.ndarray | None"]


def _tile_batches(strips: Iterable[_Strip], blender: _Blender, tx: AxisTiling, k_start: int, i0: int,
                  batch_size: int) -> Iterator[list[_Tile]]:
    """Batches of ``batch_size`` tiles in row-major order from tile ``i0`` on (the last may be short).

    Each strip is handed to ``blender`` before its first tile; batches may span two strips.
    """
    batch: list[_Tile] = []
    for s in strips:
        blender.add_strip(s)
        j0 = (i0 - s.k * tx.count) if s.k == k_start else 0
        for j in range(j0, tx.count):
            xs = slice(j * tx.stride, j * tx.stride + tx.tile)
            hid = s.hidden_padded[:, :, xs] if s.hidden_padded is not None else None
            batch.append((s.k, j, s.x[:, :, :, xs], hid))
            if len(batch) == batch_size:
                yield batch
                batch = []
        s.x = s.hidden_padded = None  # pending tiles hold views; the rest can go
    if batch:
        yield batch


def _run_predictor(predictor: Predictor | MaskedPredictor, batch: list[_Tile], pass_hidden: bool, channels: int,
                   tile: int) -> tuple[np.ndarray, float]:
    """(B, K, tile, tile) float32 predictions of a batch and the seconds spent in the predictor."""
    x = torch.from_numpy(np.stack([b[2] for b in batch]))
    t0 = time.perf_counter()
    with torch.inference_mode():
        if pass_hidden:
            y = predictor(x, torch.from_numpy(np.stack([b[3] for b in batch])))
        else:
            y = predictor(x)
    y = y.detach().float().cpu().numpy()
    seconds = time.perf_counter() - t0
    if y.shape != (len(batch), channels, tile, tile):
        raise DataError(f"the predictor returned {y.shape}, expected {(len(batch), channels, tile, tile)}")
    return y, seconds


class _Blender:
    """Blends predicted tiles into output rows and saves them as part files of ``block`` rows.

    Each row of tiles k has an :class:`_Accumulator` (weighted sums over the strip, padded width)
    and its input :class:`_Strip`. Row k is finished once all its expected tiles are added and
    the rows before it are finished: its overlap with row k + 1 is carried over, the rows above
    row k + 1's first tile are divided by their weights, finalized and buffered until a block
    is complete. Output rows before ``done_row`` (already saved) are dropped.
    """

    def __init__(self, parts: _Parts, output: OutputSpec, ty: AxisTiling, tx: AxisTiling, block: int,
                 done_row: int, k_start: int, i0: int):
        self.parts, self.output, self.ty, self.tx, self.block = parts, output, ty, tx, block
        self.done_row = done_row
        w = ramp_weights(ty.tile, ty.overlap)
        self.w2 = w[:, None] * w[None, :]  # (tile, tile)
        self.width_p = tx.size + tx.pad_before + tx.pad_after
        # tiles to add per row of tiles; the first row restarts at tile i0
        self.expected = {k: tx.count for k in range(k_start, ty.count)}
        if k_start < ty.count:
            self.expected[k_start] = tx.count - (i0 - k_start * tx.count)
        self.acc: dict[int, _Accumulator] = {}
        self.inputs: dict[int, _Strip] = {}
        self.pending: list[np.ndarray] = []  # finished output rows (count, h, W) not yet saved as a block
        self.pending_r0 = done_row  # first scene row of ``pending``
        self.next_k = k_start  # first row of tiles not finished

    def add_strip(self, s: _Strip) -> None:
        self.inputs[s.k] = s

    def _accumulator(self, k: int) -> _Accumulator:
        return self.acc.setdefault(k, _Accumulator(self.output.channels, self.ty.tile, self.width_p))

    def add(self, batch: list[_Tile], y: np.ndarray) -> None:
        """Add predictions y (B, K, tile, tile) of ``batch`` with the blending weights (NaN pixels get none)."""
        tile, stride = self.tx.tile, self.tx.stride
        for (k, j, _, _), yi in zip(batch, y):
            a = self._accumulator(k)
            xs = slice(j * stride, j * stride + tile)
            w = self.w2
            finite = np.isfinite(yi)
            if not finite.all():
                w = self.w2 * finite.all(axis=0)
                yi = np.nan_to_num(yi, nan=0.0, posinf=0.0, neginf=0.0)
            a.sum[:, :, xs] += yi * w
            a.wsum[:, xs] += w
            a.seen += 1

    def finish_ready_rows(self) -> None:
        """Finish the rows of tiles, in order, that have all their tiles and their input."""
        ny = self.ty.count
        while (self.next_k < ny and self.next_k in self.acc and self.acc[self.next_k].seen == self.expected[self.next_k]
               and self.next_k in self.inputs):
            self._finish_row(self.next_k)
            self.next_k += 1

    def _finish_row(self, k: int) -> None:
        ty, tx, tile = self.ty, self.tx, self.ty.tile
        H, W, ny, stride = ty.size, tx.size, ty.count, ty.stride
        a, s = self.acc.pop(k), self.inputs.pop(k)
        if k + 1 < ny:  # carry the overlap rows to the next row of tiles
            nxt = self._accumulator(k + 1)
            nxt.sum[:, : tile - stride] += a.sum[:, stride:]
            nxt.wsum[: tile - stride] += a.wsum[stride:]
        y0 = ty.origin(k)
        r0, r1 = max(0, y0), min(H, y0 + (stride if k + 1 < ny else tile))
        if r1 <= r0:
            return
        la, lb = r0 - y0, r1 - y0
        cols = slice(tx.pad_before, tx.pad_before + W)
        wsum = a.wsum[la:lb, cols]
        with np.errstate(invalid="ignore", divide="ignore"):
            blended = a.sum[:, la:lb, cols] / wsum
        ia, ib = r0 - s.row0, r1 - s.row0
        invalid = s.invalid[ia:ib] | (wsum <= 0)
        self._emit(self.output.finalize(blended, invalid, None if s.raw is None else s.raw[:, :, ia:ib],
                                        None if s.hidden is None else s.hidden[:, ia:ib]), r0)

    def _emit(self, rows: np.ndarray, r0: int) -> None:
        """Finished output rows (count, h, W) at [r0, r0 + h) -> part files of ``block`` rows."""
        done_row, block, H = self.done_row, self.block, self.ty.size
        if r0 + rows.shape[1] <= done_row:
            return
        if r0 < done_row:
            rows, r0 = rows[:, done_row - r0:], done_row
        self.pending.append(rows)
        buf_rows = sum(a.shape[1] for a in self.pending)
        while buf_rows and (buf_rows >= block or self.pending_r0 + buf_rows == H):
            cat = np.concatenate(self.pending, axis=1) if len(self.pending) > 1 else self.pending[0]
            n = min(block, cat.shape[1])
            self.parts.save(self.pending_r0, np.ascontiguousarray(cat[:, :n]))
            self.pending, self.pending_r0 = ([cat[:, n:]] if cat.shape[1] > n else []), self.pending_r0 + n
            buf_rows -= n


def _assemble(parts: _Parts, out_path: Path, grid: Grid, frame: Frame, output: OutputSpec, block: int, H: int,
              W: int, overviews: bool, compress: str, tags: dict | None) -> None:
    """Copy the part files into a COG (:func:`geofm.io.write_cog`) under a temporary name, renamed at the end."""
    import rasterio
    from rasterio.windows import Window

    from geofm.viz.palette import class_colormap  # GDAL colour tables: 8-bit class maps

    colormap = class_colormap(output.channels) if output.kind == "classes" and output.dtype == "uint8" else None
    blocks = ((Window(0, r0, W, min(H, r0 + block) - r0), parts.load(r0, min(H, r0 + block)))
              for r0 in range(0, H, block))
    write_cog(out_path, blocks, width=W, height=H, count=output.count, dtype=output.dtype, crs=grid.crs,
              transform=rasterio.Affine(*grid.transform), nodata=output.nodata, block=block, compress=compress,
              overviews=overviews, resampling="nearest" if output.kind == "classes" else "average",
              descriptions=output.descriptions, tags={"geofm_output": output.kind, **output.tags, **(tags or {})},
              colormap=colormap, staging=parts.dir / "staged.tif")


__all__ = ["AxisTiling", "MaskedPredictor", "OutputSpec", "Predictor", "SceneResult", "check_tiling",
           "predict_scene", "ramp_weights", "reflect_fill"]
