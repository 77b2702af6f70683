"""Cloud-gap imputation data: real time series, gaps cut by real Fmask cloud masks.

Series (:mod:`geofm.data.series`): one GeoTIFF per date with its Fmask as a band or a sidecar
``.Fmask.tif``, HLS granules, T×6-band stacks, or the chips of a geofm chip store (``geofm
ingest``: int16 (T, C, H, W) reflectance ×10000, nodata -9999). The same files feed ``geofm
predict``. Gap masks: HLS v2.0 Fmask layers (bits 1 cloud, 2 adjacent, 3 shadow; 255 fill),
e.g. a real HLS S30 Fmask, plus (``own_masks``) the partly cloudy frames' own cloud masks of
the series. Licences follow the inputs (HLS and Landsat: public domain).

Training (:class:`RandomGaps`): ``samples_per_epoch`` samples per series and epoch, each a
random window of ``frames`` consecutive dates and ``crop_size`` px (padded with nodata where the
series is smaller), a random flip/rotation, and one random date of ``gap_frames`` hidden by a
random window of a random mask. Evaluation (:class:`FixedGaps`): a fixed protocol, see
:func:`fixed_protocol`.

Sample dict: ``image`` float32 (C, T, H, W) normalized (nodata -> 0.0001), ``valid`` bool
(T, H, W) pixels with data that are clear in the series (the only ones that can be scored),
``gap`` bool (T, H, W) the pixels hidden on purpose (a subset of ``valid``), ``index``,
``temporal_coords`` float32 (T, 2) (year, day of year) of the dates (NaN for a series taken as
equally spaced): the baselines and the model count days from them. The
model must fill ``gap | ~valid`` (gaps, the series' own clouds and nodata) and is scored on ``gap``.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from geofm.bands import HLS_NODATA, MODEL_BANDS, NORMALIZED_NODATA, norm_stats
from geofm.data.datasets.base import SplitsDataModule
from geofm.data.hls import DEFAULT_CLOUD_BITS, cloud_mask
from geofm.data.series import Series, load_series
from geofm.errors import DataError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- gap masks
class CloudMaskBank:
    """Binary cloud masks (True = cloud/adjacent/shadow) decoded from real Fmask GeoTIFFs or arrays."""

    def __init__(self, sources: Sequence[str | Path | np.ndarray] = (), bits: Sequence[str] = DEFAULT_CLOUD_BITS):
        import rasterio

        self.masks: list[np.ndarray] = []
        self.names: list[str] = []
        for src in sources:
            if isinstance(src, np.ndarray):
                fmask, name = src, "<array>"
            else:
                name = str(src)
                try:
                    with rasterio.open(src) as ds:
                        if ds.count != 1 or ds.dtypes[0] != "uint8":
                            raise DataError(f"expected a 1-band uint8 Fmask layer, got {ds.count} band(s) of "
                                            f"{ds.dtypes[0]} in '{src}'")
                        fmask = ds.read(1)
                except rasterio.errors.RasterioIOError as e:
                    raise DataError(f"cannot open Fmask '{src}': {e}") from e
            self.add(cloud_mask(fmask, bits), name)

    def add(self, mask: np.ndarray, name: str) -> None:
        """Add a (h, w) bool cloud mask."""
        self.masks.append(np.asarray(mask, bool))
        self.names.append(name)

    def __len__(self) -> int:
        return len(self.masks)

    def cover(self) -> list[float]:
        """Cloudy fraction of each layer."""
        return [float(m.mean()) for m in self.masks]

    def window(self, k: int, h: int, w: int, row: int = 0, col: int = 0, k_rot: int = 0,
               flip: bool = False) -> np.ndarray:
        """(h, w) bool window of layer ``k`` (rotated ``k_rot`` × 90°, flipped, tiled if smaller)."""
        m = np.rot90(self.masks[k], k_rot)
        if flip:
            m = m[:, ::-1]
        if m.shape[0] < h + row or m.shape[1] < w + col:
            m = np.tile(m, (-(-(h + row) // m.shape[0]), -(-(w + col) // m.shape[1])))
        return np.ascontiguousarray(m[row:row + h, col:col + w])

    def placed(self, k: int, h: int, w: int, cover: float = 0.25) -> np.ndarray:
        """Layer ``k`` fitted to an (h, w) series: its window whose cloudy fraction is closest to
        ``cover`` (first in row-major order on ties) where the layer is larger, tiled where smaller."""
        m = self.masks[k]
        hh, ww = min(h, m.shape[0]), min(w, m.shape[1])
        if (hh, ww) != m.shape:
            ii = np.pad(m.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            frac = (ii[hh:, ww:] - ii[:-hh, ww:] - ii[hh:, :-ww] + ii[:-hh, :-ww]) / (hh * ww)
            r, c = np.unravel_index(int(np.argmin(np.abs(frac - cover))), frac.shape)
            m = m[r:r + hh, c:c + ww]
        return np.tile(m, (-(-h // m.shape[0]), -(-w // m.shape[1])))[:h, :w]

    def draw(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """A (h, w) bool window of a random layer at a random place, randomly flipped/rotated."""
        k = int(rng.integers(len(self.masks)))
        k_rot, flip = int(rng.integers(4)), bool(rng.integers(2))
        mh, mw = self.masks[k].shape if k_rot % 2 == 0 else self.masks[k].shape[::-1]
        row = int(rng.integers(max(mh - h, 0) + 1))
        col = int(rng.integers(max(mw - w, 0) + 1))
        return self.window(k, h, w, row, col, k_rot, flip)


def own_cloud_masks(series: Series, min_cover: float = 0.01, max_cover: float = 0.95) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W) bool) cloud masks of the series' partly cloudy frames (cover in [min, max])."""
    if not series.has_fmask:
        return []
    _, nodata, cloud = series.read(0, len(series), 0, 0, series.height, series.width)
    out = []
    for t, f in enumerate(series.frames):
        cover = cloud[t].sum() / max(1, (~nodata[t] | cloud[t]).sum())
        if min_cover <= cover <= max_cover:
            out.append((f"{f.granule_id} (own)", cloud[t]))
    return out


# --------------------------------------------------------------------------- chip stores as series
class StoreSeries:
    """One chip of a geofm chip store as a series (no cloud information): the :class:`Series` read API.

    Its size comes from the store's array shape (``shape``: (T, C, H, W) of a chip, read once per
    store by :func:`store_series`); the chip itself is read when a window of it is, and not kept.
    """

    def __init__(self, store: str | Path, i: int, meta: dict | None = None, shape: tuple | None = None):
        from geofm.data import store as chip_store

        self.url = str(store)
        self.meta = meta if meta is not None else chip_store.read_metadata(self.url)
        self.i = i
        self.slot = int(self.meta["slot"][i])
        self.name = f"slot{self.slot:07d}"
        self._reader = None
        self.shape = tuple(shape) if shape is not None else self.reader().shape[1:]
        self.has_fmask = False

    def reader(self):
        if self._reader is None:
            from geofm.data import store as chip_store

            self._reader = chip_store.ShardReader(self.url)
        return self._reader

    def chip(self) -> np.ndarray:
        """(T, C, H, W) int16."""
        return self.reader().read([self.slot])[0]

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def height(self) -> int:
        return int(self.shape[2])

    @property
    def width(self) -> int:
        return int(self.shape[3])

    def temporal_coords(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), 2) float32 (year, day of year) from the store's metadata (NaN where absent)."""
        if "year" not in self.meta or "doy" not in self.meta:
            return np.full((len(list(indices)), 2), np.nan, np.float32)
        year, doy = np.asarray(self.meta["year"][self.i]), np.asarray(self.meta["doy"][self.i])
        idx = list(indices)
        return np.stack([year[idx], doy[idx]], axis=1).astype(np.float32)

    def read(self, t0: int, t1: int, row: int, col: int, h: int, w: int, datasets: dict | None = None):
        return self.read_at(range(t0, t1), row, col, h, w, datasets)

    def read_at(self, indices: Sequence[int], row: int, col: int, h: int, w: int, datasets: dict | None = None):
        chip = self.chip()[list(indices)]
        n, c = chip.shape[:2]
        raw = np.full((n, c, h, w), HLS_NODATA, np.int16)
        r0, c0, r1, c1 = max(row, 0), max(col, 0), min(row + h, self.height), min(col + w, self.width)
        if r1 > r0 and c1 > c0:
            raw[:, :, r0 - row:r1 - row, c0 - col:c1 - col] = chip[:, :, r0:r1, c0:c1]
        nodata = (raw == HLS_NODATA).any(1)
        return raw, nodata, np.zeros_like(nodata)

    def __getstate__(self):
        return dict(self.__dict__, _reader=None)


def store_series(store: str | Path) -> list[StoreSeries]:
    """Every chip of a chip store as a :class:`StoreSeries` (the metadata and the array shape are read once)."""
    from geofm.data import store as chip_store

    meta = chip_store.read_metadata(str(store))
    shape = chip_store.ShardReader(str(store)).shape[1:]
    return [StoreSeries(store, i, meta, shape) for i in range(len(meta["slot"]))]


# --------------------------------------------------------------------------- samples
class _SeriesSamples(Dataset):
    """Shared reading and normalization of (series, first date, window) samples."""

    def __init__(self, series: Sequence, *, frames: int, size: int, mean: Sequence[float], std: Sequence[float]):
        self.series = list(series)
        for s in self.series:
            if len(s) < frames:
                raise DataError(f"series '{s.name}' has {len(s)} date(s), the model takes {frames}")
        self.frames, self.size = int(frames), int(size)
        self.mean = np.asarray(mean, np.float32)[:, None, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None, None]
        self._datasets: dict = {}

    def __getstate__(self):
        return dict(self.__dict__, _datasets={})

    def _read(self, s, dates: Sequence[int], row: int, col: int):
        raw, nodata, cloud = s.read_at(dates, row, col, self.size, self.size, self._datasets)
        return raw, nodata | cloud  # (T, C, h, w), unusable (T, h, w)

    def _sample(self, raw: np.ndarray, unusable: np.ndarray, gap: np.ndarray, index: int,
                coords: np.ndarray) -> dict:
        x = raw.transpose(1, 0, 2, 3).astype(np.float32)  # (C, T, h, w)
        x = (x - self.mean) / self.std
        nodata = (raw == HLS_NODATA).any(axis=1)
        x[:, nodata] = NORMALIZED_NODATA
        valid = ~unusable
        return {"image": torch.from_numpy(np.ascontiguousarray(x)), "valid": torch.from_numpy(valid.copy()),
                "gap": torch.from_numpy(gap & valid), "index": index,
                "temporal_coords": torch.from_numpy(np.asarray(coords, np.float32))}

    def geo(self, index: int):
        """(CRS, transform, name) of sample ``index`` (CRS/transform None where the series has none)."""
        s, _t0, row, col = self.locate(index)
        crs = transform = None
        frames = getattr(s, "frames", None)
        if frames:
            from geofm.data.hls import open_raster

            with open_raster(frames[0].sources[0][0]) as src:
                if src.crs is not None:
                    crs, transform = src.crs, src.transform * src.transform.translation(col, row)
        elif hasattr(s, "meta"):
            from affine import Affine

            crs, transform = s.meta["crs"][s.i], Affine(*s.meta["transform"][s.i])
        return crs, transform, f"{s.name}_{index:05d}"

    def locate(self, index: int):
        raise NotImplementedError


class RandomGaps(_SeriesSamples):
    """Training samples: ``samples_per_epoch`` random (dates, window, mask) draws per series and epoch.

    The dates of a sample are ``frames`` dates in order out of a run of ``frames`` + k consecutive
    dates of the series, k drawn in 0..``skip_dates`` (so that the spacings seen in training are the
    series' real, irregular ones, also with dates left out as clouds do)."""

    def __init__(self, series: Sequence, masks: CloudMaskBank, *, frames: int, size: int, mean: Sequence[float],
                 std: Sequence[float], samples_per_epoch: int = 1, gap_frames: Sequence[int] | None = None,
                 min_hidden: float = 0.02, augment: bool = True, skip_dates: int = 0):
        super().__init__(series, frames=frames, size=size, mean=mean, std=std)
        self.skip_dates = int(skip_dates)
        if len(masks) == 0:
            raise DataError("imputation training needs at least one cloud mask (data.fmask or own_masks)")
        self.masks, self.samples_per_epoch = masks, int(samples_per_epoch)
        self.gap_frames = list(range(frames)) if gap_frames is None else [int(f) for f in gap_frames]
        self.min_hidden, self.augment = min_hidden, augment

    def __len__(self) -> int:
        return len(self.series) * self.samples_per_epoch

    def locate(self, index: int):
        return self.series[index % len(self.series)], 0, 0, 0

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(int(torch.randint(2**62, ())))
        s = self.series[index % len(self.series)]
        run = self.frames + int(rng.integers(min(self.skip_dates, len(s) - self.frames) + 1))
        t0 = int(rng.integers(len(s) - run + 1))
        dates = t0 + np.sort(rng.choice(run, self.frames, replace=False))
        row = int(rng.integers(max(s.height - self.size, 0) + 1))
        col = int(rng.integers(max(s.width - self.size, 0) + 1))
        raw, unusable = self._read(s, dates, row, col)
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            raw, unusable = np.rot90(raw, k, axes=(2, 3)), np.rot90(unusable, k, axes=(1, 2))
            if flip:
                raw, unusable = raw[..., ::-1], unusable[..., ::-1]
            raw, unusable = np.ascontiguousarray(raw), np.ascontiguousarray(unusable)
        gap = np.zeros_like(unusable)
        f = self.gap_frames[int(rng.integers(len(self.gap_frames)))]
        usable = (~unusable[f]).sum()
        for _ in range(10):  # a draw that hides too little of the usable pixels is drawn again
            gap[f] = self.masks.draw(self.size, self.size, rng) & ~unusable[f]
            if usable == 0 or gap[f].sum() >= self.min_hidden * usable:
                break
        return self._sample(raw, unusable, gap, index, s.temporal_coords(dates))


def fixed_protocol(series: Sequence, masks: CloudMaskBank, *, frames: int, size: int,
                   target_frames: Sequence[int] | None = None, stride: int | None = None) -> list[tuple]:
    """The evaluation items ``(series, first date, target frame, mask, row, col)``, in order.

    For each series, each window of ``frames`` consecutive dates (every ``stride`` dates, default
    ``frames``; the last window always ends at the last date), each target frame of
    ``target_frames`` (default: the middle one), each mask of ``masks`` (fitted to the series by
    :meth:`CloudMaskBank.placed`: the window of the mask with a cloudy fraction closest to 25 %, or
    the mask tiled where smaller than the series) and each ``size`` px tile of the series (a regular grid from the
    top-left corner, edge tiles padded with nodata): one sample. No augmentation; every hidden
    pixel with data that is clear in the series is scored.
    """
    targets = [frames // 2] if target_frames is None else [int(f) for f in target_frames]
    items = []
    for si, s in enumerate(series):
        step = stride or frames
        starts = list(range(0, len(s) - frames + 1, step))
        if starts[-1] != len(s) - frames:
            starts.append(len(s) - frames)
        for t0 in starts:
            for f in targets:
                for k in range(len(masks)):
                    for row in range(0, s.height, size):
                        for col in range(0, s.width, size):
                            items.append((si, t0, f, k, row, col))
    return items


class FixedGaps(_SeriesSamples):
    """Evaluation samples of :func:`fixed_protocol` (deterministic: same gaps for every method and run);
    they also hold ``cloud`` (T, H, W) bool, the series' own clouds over data."""

    def __init__(self, series: Sequence, masks: CloudMaskBank, *, frames: int, size: int, mean: Sequence[float],
                 std: Sequence[float], target_frames: Sequence[int] | None = None, stride: int | None = None,
                 max_items: int | None = None):
        super().__init__(series, frames=frames, size=size, mean=mean, std=std)
        if len(masks) == 0:
            raise DataError("the imputation evaluation needs at least one cloud mask (data.test_masks / fmask)")
        self.masks = masks
        self._placed: dict = {}
        self.items = fixed_protocol(self.series, masks, frames=frames, size=size, target_frames=target_frames,
                                    stride=stride)
        if max_items is not None and len(self.items) > max_items:  # evenly spaced, deterministic
            self.items = [self.items[i] for i in np.linspace(0, len(self.items) - 1, max_items).round().astype(int)]

    def __len__(self) -> int:
        return len(self.items)

    def locate(self, index: int):
        si, t0, _f, _k, row, col = self.items[index]
        return self.series[si], t0, row, col

    def __getitem__(self, index: int) -> dict:
        si, t0, f, k, row, col = self.items[index]
        s = self.series[si]
        dates = range(t0, t0 + self.frames)
        raw, nodata, cloud = s.read_at(dates, row, col, self.size, self.size, self._datasets)
        unusable = nodata | cloud
        key = (si, k)
        if key not in self._placed:
            self._placed[key] = np.pad(self.masks.placed(k, s.height, s.width),
                                       ((0, -s.height % self.size), (0, -s.width % self.size)))
        gap = np.zeros_like(unusable)
        gap[f] = self._placed[key][row:row + self.size, col:col + self.size]
        sample = self._sample(raw, unusable, gap, index, s.temporal_coords(dates))
        sample["cloud"] = torch.from_numpy(cloud & ~nodata)  # the series' own clouds over data
        return sample


# --------------------------------------------------------------------------- data module
def expand_paths(items: Sequence[str | Path]) -> list[Path]:
    """Paths and glob patterns -> sorted existing files; a pattern matching nothing is a DataError."""
    out: list[Path] = []
    for item in items:
        s = str(item)
        if any(ch in s for ch in "*?["):
            found = sorted(glob.glob(s))
            if not found:
                raise DataError(f"no file matches '{s}'")
            out += [Path(f) for f in found]
        elif Path(s).is_file():
            out.append(Path(s))
        else:
            raise DataError(f"file '{s}' does not exist")
    return out


def generate_series(work_dir: str | Path, *, size: int = 128, chip_size: int = 32, seed: int = 0,
                    tile: str = "10SEG") -> tuple[Path, list[Path]]:
    """Synthetic HLS series (3 dates, with Fmask) ingested into a chip store under ``work_dir``.

    Returns (store path, the generated Fmask files). Reuses a complete earlier store.
    """
    from geofm.data import ingest, synthetic

    work = Path(work_dir)
    out = work / "chips.zarr"
    granules = work / "granules"
    if not (out / "metadata.parquet").is_file():
        synthetic.write_time_series(granules, tile=tile, size=size, seed=seed, cloud_cover=[0.05, 0.15, 0.3])
        cfg = ingest.IngestConfig(chip_size=chip_size, frames=3, max_cloud=1.0, max_nodata=0.0, rows_per_task=1)
        ingest.ingest([str(granules)], str(out), cfg, scheduler="sync")
    return out, sorted(granules.glob("*.Fmask.tif"))


def mask_bank(fmask: Sequence[str | Path], own_of: Sequence = ()) -> CloudMaskBank:
    """Masks of the Fmask files (globs allowed) plus the partly cloudy frames of ``own_of`` series."""
    bank = CloudMaskBank(expand_paths(fmask) if fmask else ())
    for s in own_of:
        if isinstance(s, Series):
            for name, m in own_cloud_masks(s):
                bank.add(m, name)
    return bank


class ImputationDataModule(SplitsDataModule):
    """Imputation training on ``series`` (+ the chips of ``store``), validation and test on the fixed protocol.

    ``series`` / ``store`` train (``samples_per_epoch`` random samples per series); gaps from
    ``fmask`` files and (``own_masks``) the series' own partly cloudy frames. ``val_series`` and
    ``test_series`` (default: the training series) are scored on :func:`fixed_protocol` with
    ``test_masks`` (default: the training masks) on ``test_frames`` (default: the middle date);
    validation keeps ``val_samples`` evenly spaced samples of its protocol.
    """

    def __init__(self, *, series: Sequence[Series | StoreSeries] = (), fmask: Sequence[str] = (),
                 frames: int = 3, crop_size: int = 32, samples_per_epoch: int = 8,
                 gap_frames: Sequence[int] | None = None, min_hidden: float = 0.02, own_masks: bool = True,
                 val_series: Sequence | None = None, test_series: Sequence | None = None,
                 test_masks: Sequence[str] | None = None, test_frames: Sequence[int] | None = None,
                 test_stride: int | None = None, val_samples: int | None = None, batch_size: int = 4,
                 eval_batch_size: int | None = None,
                 num_workers: int = 0, augment: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, norm_stats_name: str = "v1", skip_dates: int = 0):
        if not series:
            raise DataError("imputation data needs at least one series (data.series, data.stacks or data.store)")
        if mean is None or std is None:
            mean, std = norm_stats(norm_stats_name)
        train_masks = mask_bank(fmask, series if own_masks else ())
        val_series = list(val_series) if val_series else list(series)
        test_series = list(test_series) if test_series else val_series
        eval_masks = mask_bank(test_masks, test_series if own_masks else ()) if test_masks is not None else \
            train_masks
        val_masks = train_masks if val_series is series else mask_bank(fmask, val_series if own_masks else ())
        log.info("imputation: %d training series, %d Fmask layers (cloudy fractions %s); test: %d series x %d masks",
                 len(series), len(train_masks), [round(c, 3) for c in train_masks.cover()], len(test_series),
                 len(eval_masks))
        common = dict(frames=frames, size=crop_size, mean=mean, std=std)
        train = RandomGaps(series, train_masks, samples_per_epoch=samples_per_epoch, gap_frames=gap_frames,
                           min_hidden=min_hidden, augment=augment, skip_dates=skip_dates, **common)
        val = FixedGaps(val_series, val_masks if len(val_masks) else train_masks, target_frames=test_frames,
                        stride=test_stride, max_items=val_samples, **common)
        test = FixedGaps(test_series, eval_masks if len(eval_masks) else train_masks, target_frames=test_frames,
                         stride=test_stride, **common)
        super().__init__(train, val, test, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         description={"dataset": "imputation", "mean": list(mean), "std": list(std),
                                      "bands": list(MODEL_BANDS), "fmask": train_masks.names,
                                      "test_series": [s.name for s in test_series], "test_masks": eval_masks.names})


__all__ = ["CloudMaskBank", "FixedGaps", "ImputationDataModule", "RandomGaps", "StoreSeries", "expand_paths",
           "fixed_protocol", "generate_series", "load_series", "mask_bank", "own_cloud_masks", "store_series"]
