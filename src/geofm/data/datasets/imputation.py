"""Cloud-gap imputation: multi-frame HLS chips with gaps cut by real Fmask cloud masks.

Source of chips: a geofm chip store (``geofm ingest``: int16 (T, C, H, W) reflectance ×10000,
nodata -9999, with each chip's CRS/transform) or GeoTIFF stacks of T×6 bands, time-major
(frame 1 Blue..SWIR2, frame 2 ...), as ``geofm.data.ingest.export_geotiffs`` or the HLS crop
dataset write them. Source of gaps: HLS v2.0 Fmask layers (uint8 bits: 1 cloud, 2 adjacent,
3 shadow; 255 fill) — real ones such as an HLS S30 Fmask, or those of
:mod:`geofm.data.synthetic` granules. Licenses follow the inputs (HLS: NASA, public domain).

Following the paper's cloud-imputation task, each sample takes, for every gap frame, a
random window of a random Fmask layer (with a random flip/rot90), and hides the patches whose
cloudy fraction exceeds ``patch_threshold``; the MAE reconstructs hidden patches from the
visible ones and the other frames. Masks are fixed per sample (seeded) in val/test, so that
the model and the baselines see the same gaps.

Sample dict: ``image`` float32 (C, T, H, W) normalized (nodata -> 0.0001), ``valid`` bool
(T, H, W) pixels with data, ``gap`` bool (T, H, W) the hidden pixels (whole patches),
``patch_mask`` float32 (L,) 1 = hidden, L = (T/u)(H/p)(W/p) in ``(t h w)`` order, ``index``.
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
from geofm.data.datasets.base import SplitsDataModule, seeded_split, subsample
from geofm.data.hls import DEFAULT_CLOUD_BITS, cloud_mask
from geofm.errors import DataError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- gap masks
class CloudMaskBank:
    """Binary cloud masks (True = cloud/adjacent/shadow) decoded from real Fmask GeoTIFFs or arrays."""

    def __init__(self, sources: Sequence[str | Path | np.ndarray], bits: Sequence[str] = DEFAULT_CLOUD_BITS):
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
            self.masks.append(cloud_mask(fmask, bits))
            self.names.append(name)
        if not self.masks:
            raise DataError("no Fmask layers given for the gap masks")

    def cover(self) -> list[float]:
        """Cloudy fraction of each layer."""
        return [float(m.mean()) for m in self.masks]

    def draw(self, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
        """A (h, w) bool window of a random layer (tiled if smaller), randomly flipped/rotated."""
        m = self.masks[int(rng.integers(len(self.masks)))]
        m = np.rot90(m, int(rng.integers(4)))
        if rng.integers(2):
            m = m[:, ::-1]
        reps = (-(-h // m.shape[0]) + 1, -(-w // m.shape[1]) + 1)
        if reps != (1, 1) and (m.shape[0] < h or m.shape[1] < w):
            m = np.tile(m, reps)
        r = int(rng.integers(m.shape[0] - h + 1))
        c = int(rng.integers(m.shape[1] - w + 1))
        return np.ascontiguousarray(m[r:r + h, c:c + w])


def patch_mask_from_gaps(gap: np.ndarray, patch_size: Sequence[int], threshold: float = 0.0) -> np.ndarray:
    """(T, H, W) bool cloudy pixels -> (L,) float32 patch mask, 1 where the cloudy fraction > ``threshold``.

    At least one patch always stays visible (the MAE needs a token).
    """
    u, p, q = patch_size
    T, H, W = gap.shape
    frac = gap.reshape(T // u, u, H // p, p, W // q, q).mean(axis=(1, 3, 5)).ravel()  # (t h w) order
    hidden = frac > threshold
    if hidden.all():
        hidden[int(np.argmin(frac))] = False
    return hidden.astype(np.float32)


def gaps_of(patch_mask: np.ndarray, patch_size: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """(L,) patch mask -> (T, H, W) bool hidden pixels."""
    u, p, q = patch_size
    T, H, W = shape
    m = patch_mask.reshape(T // u, H // p, W // q).astype(bool)
    return m.repeat(u, 0).repeat(p, 1).repeat(q, 2)


# --------------------------------------------------------------------------- chip sources
class StoreChips:
    """Chips of a geofm chip store: ``read(i)`` -> (T, C, H, W) int16, ``geo(i)`` -> (crs, transform)."""

    def __init__(self, store: str | Path):
        from geofm.data import store as chip_store

        self.url = str(store)
        self.meta = chip_store.read_metadata(self.url)
        self.attrs = chip_store.store_attrs(chip_store.as_location(self.url))
        self._reader = None

    def __len__(self) -> int:
        return len(self.meta["slot"])

    def read(self, i: int) -> np.ndarray:
        from geofm.data import store as chip_store

        if self._reader is None:
            self._reader = chip_store.ShardReader(self.url)
        return self._reader.read([int(self.meta["slot"][i])])[0]

    def geo(self, i: int):
        from affine import Affine

        return self.meta["crs"][i], Affine(*self.meta["transform"][i])

    def name(self, i: int) -> str:
        return f"slot{int(self.meta['slot'][i]):07d}"

    def __getstate__(self):
        return dict(self.__dict__, _reader=None)


class StackChips:
    """GeoTIFF stacks of ``frames`` × ``bands_per_frame`` bands (time-major), int16 reflectance ×10000."""

    def __init__(self, paths: Sequence[str | Path], frames: int = 3, bands_per_frame: int = 6,
                 nodata: float = HLS_NODATA):
        import rasterio

        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no GeoTIFF stacks given for the imputation chips")
        self.frames, self.bands_per_frame, self.nodata = frames, bands_per_frame, nodata
        self._geo = []
        for p in self.paths:
            with rasterio.open(p) as src:
                if src.count != frames * bands_per_frame:
                    raise DataError(f"expected {frames * bands_per_frame} bands ({frames} frames x {bands_per_frame}), "
                                    f"got {src.count} in '{p}'")
                self._geo.append((src.crs, src.transform))

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        import rasterio

        with rasterio.open(self.paths[i]) as src:
            arr = src.read()
        if arr.dtype.kind == "f":
            arr = np.where(np.isfinite(arr), arr, self.nodata)
        arr = arr.astype(np.int16)
        return arr.reshape(self.frames, self.bands_per_frame, *arr.shape[1:])

    def geo(self, i: int):
        return self._geo[i]

    def name(self, i: int) -> str:
        return self.paths[i].stem


# --------------------------------------------------------------------------- dataset
class ImputationDataset(Dataset):
    """Chips + Fmask-derived patch masks (see the module docstring).

    ``gap_frames``: frames that receive gaps (None: all). ``fixed_masks``: draw each sample's
    gaps from a generator seeded by (seed, index) (evaluation) instead of fresh ones per access.
    ``crop_size`` crops chips (top-left when fixed, random otherwise) to a patch multiple.
    """

    def __init__(self, chips: StoreChips | StackChips, masks: CloudMaskBank, *, patch_size: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], indices: Sequence[int] | None = None,
                 gap_frames: Sequence[int] | None = None, patch_threshold: float = 0.0, fixed_masks: bool = False,
                 seed: int = 0, augment: bool = False, crop_size: int | None = None, min_hidden: float = 0.02):
        self.chips, self.masks = chips, masks
        self.patch_size = tuple(int(v) for v in patch_size)
        self.mean = np.asarray(mean, np.float32)[:, None, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None, None]
        self.indices = list(range(len(chips))) if indices is None else [int(i) for i in indices]
        self.gap_frames = None if gap_frames is None else [int(f) for f in gap_frames]
        self.patch_threshold, self.fixed_masks, self.seed = patch_threshold, fixed_masks, seed
        self.augment, self.crop_size, self.min_hidden = augment, crop_size, min_hidden

    def __len__(self) -> int:
        return len(self.indices)

    def geo(self, index: int):
        """(CRS, transform, name) of sample ``index`` (of its top-left crop)."""
        i = self.indices[index]
        crs, tf = self.chips.geo(i)
        return crs, tf, self.chips.name(i)

    def _rng(self, index: int) -> np.random.Generator:
        if self.fixed_masks:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng(int(torch.randint(2**62, ())))

    def __getitem__(self, index: int) -> dict:
        rng = self._rng(index)
        chip = self.chips.read(self.indices[index])  # (T, C, H, W) int16
        T, C, H, W = chip.shape
        u, p, q = self.patch_size
        size_h = min(self.crop_size or H, H) // p * p
        size_w = min(self.crop_size or W, W) // q * q
        if size_h == 0 or size_w == 0 or T % u:
            raise DataError(f"chip {self.chips.name(self.indices[index])} of {T}x{H}x{W} does not fit patches "
                            f"{self.patch_size}")
        r = 0 if self.fixed_masks else int(rng.integers(H - size_h + 1))
        c = 0 if self.fixed_masks else int(rng.integers(W - size_w + 1))
        chip = chip[:, :, r:r + size_h, c:c + size_w]
        if self.augment:
            k, flip = int(rng.integers(4)) if size_h == size_w else 0, bool(rng.integers(2))
            chip = np.rot90(chip, k, axes=(2, 3))
            chip = np.ascontiguousarray(chip[..., ::-1] if flip else chip)
        x = chip.transpose(1, 0, 2, 3).astype(np.float32)  # (C, T, h, w)
        nodata = (chip == HLS_NODATA).any(axis=1)  # (T, h, w)
        x = (x - self.mean) / self.std
        x[:, nodata] = NORMALIZED_NODATA
        frames = range(T) if self.gap_frames is None else self.gap_frames
        for _ in range(10):  # a draw that hides too little (clear sky) is drawn again
            gap = np.zeros((T, size_h, size_w), bool)
            for f in frames:
                gap[f] = self.masks.draw(size_h, size_w, rng)
            pm = patch_mask_from_gaps(gap, self.patch_size, self.patch_threshold)
            if pm.mean() >= self.min_hidden:
                break
        return {"image": torch.from_numpy(x), "valid": torch.from_numpy(~nodata),
                "gap": torch.from_numpy(gaps_of(pm, self.patch_size, (T, size_h, size_w))),
                "patch_mask": torch.from_numpy(pm), "index": index}


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


class ImputationDataModule(SplitsDataModule):
    """Cloud-gap imputation splits (seeded by chip) over a store or GeoTIFF stacks, gaps from Fmask files."""

    def __init__(self, *, store: str | Path | None = None, stacks: Sequence[str] = (), stack_frames: int = 3,
                 fmask: Sequence[str] = (), patch_size: Sequence[int] = (1, 16, 16), crop_size: int | None = None,
                 gap_frames: Sequence[int] | None = None, patch_threshold: float = 0.0, min_hidden: float = 0.02,
                 batch_size: int = 4, eval_batch_size: int | None = None, num_workers: int = 0,
                 label_fraction: float = 1.0, seed: int = 0, label_seed: int | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, augment: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, norm_stats_name: str = "v1"):
        if (store is None) == (not stacks):
            raise DataError("imputation data needs exactly one chip source: a store or GeoTIFF stacks")
        chips = StoreChips(store) if store is not None else StackChips(expand_paths(stacks), stack_frames)
        masks = CloudMaskBank(expand_paths(fmask))
        log.info("imputation: %d chips, %d Fmask layers (cloudy fractions %s)", len(chips), len(masks.masks),
                 [round(c, 3) for c in masks.cover()])
        if mean is None or std is None:
            mean, std = norm_stats(norm_stats_name)
        n = len(chips)
        if n >= 3:
            tr, va, te = seeded_split(n, val_fraction, test_fraction, seed)
        else:
            tr = va = te = np.arange(n)  # too few chips to split: evaluate on fresh fixed gaps of the same chips
            log.warning("only %d chip(s): train, val and test share them (different gaps)", n)
        tr = tr[subsample(len(tr), label_fraction, seed if label_seed is None else label_seed)]
        common = dict(patch_size=patch_size, mean=mean, std=std, gap_frames=gap_frames, min_hidden=min_hidden,
                      patch_threshold=patch_threshold, crop_size=crop_size)
        train = ImputationDataset(chips, masks, indices=tr, seed=seed, augment=augment, **common)
        val = ImputationDataset(chips, masks, indices=va, seed=seed + 1, fixed_masks=True, **common)
        test = ImputationDataset(chips, masks, indices=te if len(te) else va, seed=seed + 2, fixed_masks=True,
                                 **common)
        super().__init__(train, val, test, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers,
                         description={"dataset": "imputation", "mean": list(mean), "std": list(std),
                                      "bands": list(MODEL_BANDS), "fmask": masks.names})


__all__ = ["CloudMaskBank", "ImputationDataModule", "ImputationDataset", "StackChips", "StoreChips", "expand_paths",
           "gaps_of", "generate_series", "patch_mask_from_gaps"]
