"""Shared machinery of the segmentation datasets: checked GeoTIFF image/label pairs, tiles, splits.

A dataset is a list of :class:`ChipPair` (image GeoTIFF + label GeoTIFF) described by a
:class:`RasterLayout` (which bands, how many frames, nodata, how label values map to class
indices). :class:`GeoSegmentationDataset` checks every pair when built (band count, label
size, CRS and transform) and each label window when read (class values), raising
:class:`~geofm.errors.DataError` naming the file. Samples are whole chips, a regular grid of
tiles, or random crops (training), read with windowed IO.

Sample dict: ``image`` float32 (C, T, h, w) normalized ((raw - mean) / std; nodata ->
:data:`~geofm.bands.NORMALIZED_NODATA`), ``mask`` int64 (h, w) class indices with -1 =
ignore, ``index`` = the sample's position (for :meth:`GeoSegmentationDataset.geo`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from geofm.bands import normalize
from geofm.data.transforms import RandomDihedral
from geofm.errors import DataError

log = logging.getLogger(__name__)

IGNORE_INDEX = -1


@dataclass(frozen=True)
class ChipPair:
    """One chip: its id, image GeoTIFF and label GeoTIFF (None for unlabelled prediction inputs)."""

    id: str
    image: Path
    label: Path | None


@dataclass
class RasterLayout:
    """How a dataset's files encode images and labels.

    ``bands`` are the 1-based image bands read, time-major (frame 0's C bands, then frame 1's ...);
    ``num_frames`` splits them into (C, T). ``expected_bands`` is the band count the files must
    have. ``label_values`` lists the allowed raw label values and ``label_map`` maps raw values to
    class indices (-1 = ignore). ``scale`` multiplies raw values into reflectance ×10000 (None:
    float files whose values are all ≤ 10 are read as reflectance 0..1 and multiplied by 10000).
    """

    bands: tuple[int, ...]
    expected_bands: int
    num_frames: int = 1
    nodata: float | None = None
    label_values: tuple[int, ...] = (-1, 0, 1)
    label_map: dict[int, int] | None = None
    scale: float | None = 1.0
    band_names: tuple[str, ...] = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")

    @property
    def in_chans(self) -> int:
        return len(self.bands) // self.num_frames


@dataclass
class ChipInfo:
    height: int
    width: int
    crs: object  # rasterio CRS or None
    transform: object  # affine.Affine
    scale: float | None = None


# --------------------------------------------------------------------------- checks
def _same_transform(a, b, tol: float = 1e-6) -> bool:
    """Affines equal up to ``tol`` of a pixel (float noise in the last digits is tolerated)."""
    pa, pb = np.asarray(tuple(a)[:6], float), np.asarray(tuple(b)[:6], float)
    px = max(abs(pa[0]), abs(pa[4]), 1e-12)
    return bool(np.allclose(pa, pb, rtol=0, atol=tol * px))


def check_pair(pair: ChipPair, layout: RasterLayout) -> ChipInfo:
    """Open the image (and label) headers; :class:`DataError` on band count, size, CRS or transform mismatch."""
    import rasterio

    try:
        src = rasterio.open(pair.image)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot open image '{pair.image}': {e}") from e
    with src:
        if src.count != layout.expected_bands:
            raise DataError(f"expected {layout.expected_bands} bands, got {src.count} in '{pair.image}'")
        info = ChipInfo(src.height, src.width, src.crs, src.transform)
    if pair.label is None:
        return info
    if not Path(pair.label).is_file():
        raise DataError(f"label file '{pair.label}' of image '{pair.image}' does not exist")
    try:
        lab = rasterio.open(pair.label)
    except rasterio.errors.RasterioIOError as e:
        raise DataError(f"cannot open label '{pair.label}': {e}") from e
    with lab:
        if lab.count != 1:
            raise DataError(f"expected 1 band, got {lab.count} in label '{pair.label}'")
        if (lab.height, lab.width) != (info.height, info.width):
            raise DataError(f"label '{pair.label}' is {lab.height}x{lab.width} px but image '{pair.image}' is "
                            f"{info.height}x{info.width}")
        if (lab.crs is None) != (info.crs is None) or (lab.crs is not None and lab.crs != info.crs):
            raise DataError(f"label '{pair.label}' has CRS {lab.crs} but image '{pair.image}' has {info.crs}")
        if info.crs is not None and not _same_transform(lab.transform, info.transform):
            raise DataError(f"label '{pair.label}' has transform {tuple(lab.transform)[:6]} but image "
                            f"'{pair.image}' has {tuple(info.transform)[:6]}")
    return info


def map_labels(raw: np.ndarray, layout: RasterLayout, path: Path) -> np.ndarray:
    """Raw label values -> int64 class indices (-1 ignore); :class:`DataError` on unexpected values."""
    values = np.unique(raw)
    bad = sorted(set(values.tolist()) - set(layout.label_values))
    if bad:
        raise DataError(f"unexpected label value(s) {bad[:10]} in '{path}': expected {list(layout.label_values)}")
    out = raw.astype(np.int64)
    if layout.label_map:
        lut_keys = np.array(sorted(layout.label_map))
        lut_vals = np.array([layout.label_map[k] for k in lut_keys], np.int64)
        out = lut_vals[np.searchsorted(lut_keys, out)]
    return out


# --------------------------------------------------------------------------- tiles and splits
def tile_origins(size: int, tile: int) -> list[int]:
    """Top/left offsets of tiles of ``tile`` px covering ``size`` px; the last tile is moved inside."""
    if tile >= size:
        return [0]
    starts = list(range(0, size - tile + 1, tile))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded random partition of ``range(n)`` into (train, val, test) index arrays (each sorted)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:
        n_val, n_test = max(n_val, 1 if val_fraction > 0 else 0), max(n_test, 1 if test_fraction > 0 else 0)
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    return np.sort(train), np.sort(val), np.sort(test)


def subsample(n: int, fraction: float, seed: int) -> np.ndarray:
    """Seeded subset of ``range(n)`` with ``round(n * fraction)`` (at least 1) elements, sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.arange(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(np.random.default_rng([seed, 7]).choice(n, size=k, replace=False))


# --------------------------------------------------------------------------- the dataset
class GeoSegmentationDataset(Dataset):
    """Checked image/label GeoTIFF pairs as normalized (C, T, h, w) samples with (h, w) class masks.

    Args:
        pairs: the chips.
        layout: how the files encode bands, frames and labels.
        mean, std: per model band, reflectance ×10000.
        tile_size: split each chip into a grid of tiles of this size (None: whole chips).
        crop_size: one random crop of this size per chip and access (training); overrides tiles.
        augment: random flips/rot90, identical for image and mask.
        windows: explicit (pair index, row, col, h, w) samples (e.g. a split of another dataset's tiles).
    """

    def __init__(self, pairs: Sequence[ChipPair], layout: RasterLayout, mean: Sequence[float],
                 std: Sequence[float], *, tile_size: int | None = None, crop_size: int | None = None,
                 augment: bool = False, windows: Sequence[tuple[int, int, int, int, int]] | None = None,
                 infos: Sequence[ChipInfo] | None = None):
        self.pairs = list(pairs)
        if not self.pairs:
            raise DataError("no chips: the dataset's image list is empty")
        self.layout = layout
        if len(mean) != layout.in_chans or len(std) != layout.in_chans:
            raise ValueError(f"mean/std need {layout.in_chans} values, got {len(mean)}/{len(std)}")
        self.mean = np.asarray(mean, np.float32)[:, None, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None, None]
        self.infos = list(infos) if infos is not None else [check_pair(p, layout) for p in self.pairs]
        self.crop_size = crop_size
        self.augment = RandomDihedral(("image", "mask")) if augment else None
        if windows is not None:
            self.windows = [tuple(int(v) for v in w) for w in windows]
        else:
            self.windows = []
            for i, info in enumerate(self.infos):
                if tile_size is None or crop_size is not None:
                    self.windows.append((i, 0, 0, info.height, info.width))
                    continue
                for r in tile_origins(info.height, tile_size):
                    for c in tile_origins(info.width, tile_size):
                        self.windows.append((i, r, c, min(tile_size, info.height), min(tile_size, info.width)))

    def __len__(self) -> int:
        return len(self.windows)

    def subset(self, positions: Sequence[int], *, crop_size: int | None = None, augment: bool = False
               ) -> GeoSegmentationDataset:
        """A dataset over some of this one's samples (no files re-opened)."""
        ds = GeoSegmentationDataset(self.pairs, self.layout, self.mean.ravel(), self.std.ravel(),
                                    crop_size=crop_size, augment=augment,
                                    windows=[self.windows[int(i)] for i in positions], infos=self.infos)
        return ds

    @property
    def num_frames(self) -> int:
        return self.layout.num_frames

    @property
    def in_chans(self) -> int:
        return self.layout.in_chans

    def geo(self, index: int) -> tuple[object, object, str]:
        """(CRS, affine transform, chip id) of sample ``index``'s full window (random crops aside)."""
        from rasterio.windows import Window, transform as window_transform

        i, r, c, h, w = self.windows[index]
        info = self.infos[i]
        return info.crs, window_transform(Window(c, r, w, h), info.transform), self.pairs[i].id

    def _scale(self, i: int, src) -> float:
        info = self.infos[i]
        if info.scale is None:
            if self.layout.scale is not None:
                info.scale = float(self.layout.scale)
            elif np.dtype(src.dtypes[0]).kind == "f":
                small = src.read(list(self.layout.bands), out_shape=(len(self.layout.bands), 32, 32))
                finite = small[np.isfinite(small) & (small != (self.layout.nodata or np.nan))]
                info.scale = 10000.0 if finite.size and np.abs(finite).max() <= 10 else 1.0
                log.debug("'%s': reflectance scale %g", self.pairs[i].image, info.scale)
            else:
                info.scale = 1.0
        return info.scale

    def read_window(self, i: int, r: int, c: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Raw (C, T, h, w) float32 reflectance ×10000, nodata (T, h, w) bool, labels (h, w) int64 or None."""
        import rasterio
        from rasterio.windows import Window

        pair, lay = self.pairs[i], self.layout
        win = Window(c, r, w, h)
        with rasterio.open(pair.image) as src:
            raw = src.read(list(lay.bands), window=win).astype(np.float32)  # (T*C, h, w)
            scale = self._scale(i, src)
        bad = ~np.isfinite(raw)
        if lay.nodata is not None:
            bad |= raw == lay.nodata
        raw = raw.reshape(lay.num_frames, lay.in_chans, h, w).transpose(1, 0, 2, 3)  # (C, T, h, w)
        nodata = bad.reshape(lay.num_frames, lay.in_chans, h, w).any(axis=1)  # (T, h, w)
        if scale != 1.0:
            raw = raw * scale
        labels = None
        if pair.label is not None:
            with rasterio.open(pair.label) as lab:
                labels = map_labels(lab.read(1, window=win), lay, pair.label)
            labels[nodata.all(axis=0)] = IGNORE_INDEX
        return raw, nodata, labels

    def normalize(self, raw: np.ndarray, nodata: np.ndarray) -> np.ndarray:
        """Raw (C, T, h, w) reflectance ×10000 -> normalized float32; nodata pixels -> 0.0001."""
        return normalize(raw, self.mean.ravel(), self.std.ravel(), nodata)

    def __getitem__(self, index: int) -> dict:
        i, r, c, h, w = self.windows[index]
        if self.crop_size is not None:
            ch, cw = min(self.crop_size, h), min(self.crop_size, w)
            r += int(torch.randint(h - ch + 1, ()))
            c += int(torch.randint(w - cw + 1, ()))
            h, w = ch, cw
        raw, nodata, labels = self.read_window(i, r, c, h, w)
        sample = {"image": torch.from_numpy(self.normalize(raw, nodata)), "index": index}
        sample["mask"] = torch.from_numpy(labels) if labels is not None else torch.full((h, w), IGNORE_INDEX)
        if self.augment is not None:
            sample = self.augment(sample)
        return sample


# --------------------------------------------------------------------------- data module
def _lightning_datamodule():
    import lightning.pytorch as pl

    return pl.LightningDataModule


class EvalShareSampler(DistributedSampler):
    """This process's share of an evaluation set under DDP: samples rank, rank + world, ... in order.

    Unlike torch's :class:`DistributedSampler` it does not repeat samples to give every rank
    the same count, so each sample is scored exactly once and the reduced scores equal those
    of one process. (A subclass of it, so that Lightning keeps it instead of putting its own.)
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def _eval_sampler(ds: Dataset) -> EvalShareSampler | None:
    """:class:`EvalShareSampler` when this process is one of several (DDP), else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return EvalShareSampler(ds, dist.get_world_size(), dist.get_rank())


class SplitsDataModule(_lightning_datamodule()):
    """Train/val/test/predict datasets behind plain DataLoaders (shuffled for training only)."""

    def __init__(self, train: Dataset, val: Dataset, test: Dataset | None = None, predict: Dataset | None = None,
                 *, batch_size: int = 4, eval_batch_size: int | None = None, num_workers: int = 0,
                 class_names: Sequence[str] = (), description: dict | None = None):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.test_set = test if test is not None else val
        self.predict_set = predict if predict is not None else self.test_set
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.class_names = list(class_names)
        self.description = description or {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        # evaluation under DDP: each rank its own share, no sample twice (see EvalShareSampler)
        sampler = None if train else _eval_sampler(ds)
        return DataLoader(ds, batch_size=self.batch_size if train else self.eval_batch_size,
                          shuffle=train if sampler is None else None, sampler=sampler,
                          num_workers=self.num_workers, drop_last=False,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, False)


class SegmentationDataModule(SplitsDataModule):
    """:class:`GeoSegmentationDataset` splits with seeded label subsampling.

    ``label_fraction`` keeps a fraction of the training samples (the data-efficiency runs), drawn
    with ``label_seed`` (default ``seed``, which also seeds splits where a dataset has none).
    """

    def __init__(self, train: GeoSegmentationDataset, val: GeoSegmentationDataset,
                 test: GeoSegmentationDataset | None = None, predict: GeoSegmentationDataset | None = None, *,
                 label_fraction: float = 1.0, seed: int = 0, label_seed: int | None = None, **kwargs):
        keep = subsample(len(train), label_fraction, seed if label_seed is None else label_seed)
        if len(keep) < len(train):
            log.info("label_fraction %.3g: training on %d of %d samples", label_fraction, len(keep), len(train))
            train = train.subset(keep, crop_size=train.crop_size, augment=train.augment is not None)
        super().__init__(train, val, test, predict, **kwargs)


class FolderPairsDataModule(SegmentationDataModule):
    """A dataset of ``<id><image suffix>`` + ``<id>.mask.tif`` pairs in one folder, or in official
    training/validation folders (validation doubles as test); subclasses set the class attributes."""

    NAME = ""
    LAYOUT: RasterLayout
    MEAN: tuple[float, ...] = ()
    STD: tuple[float, ...] = ()
    CLASS_NAMES: tuple[str, ...] = ()
    PATTERN = "*.tif"
    IMAGE_SUFFIXES: tuple[str, ...] = (".tif",)
    LABEL_SUFFIX = ".mask.tif"
    SPLIT_DIRS = ("training", "validation")

    @classmethod
    def pairs_in(cls, folder: Path) -> list[ChipPair]:
        if not folder.is_dir():
            raise DataError(f"{cls.NAME} folder '{folder}' does not exist")
        pairs = find_pairs(folder, cls.PATTERN, cls.IMAGE_SUFFIXES, cls.LABEL_SUFFIX)
        if not pairs:
            raise DataError(f"no '{cls.PATTERN}' images in '{folder}'")
        return pairs

    def __init__(self, root: str | Path, *, crop_size: int | None = None, tile_size: int | None = None,
                 eval_tile_size: int | None = None, batch_size: int = 4, eval_batch_size: int | None = None,
                 num_workers: int = 0, label_fraction: float = 1.0, seed: int = 0, label_seed: int | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, augment: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        root = Path(root)
        mean, std = tuple(mean or self.MEAN), tuple(std or self.STD)
        common = dict(tile_size=tile_size, crop_size=crop_size, eval_tile_size=eval_tile_size, augment=augment,
                      val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        train_dir, val_dir = (root / d for d in self.SPLIT_DIRS)
        if train_dir.is_dir():
            val = self.pairs_in(val_dir)
            train, val, test = make_splits(self.LAYOUT, mean, std, train=self.pairs_in(train_dir), val=val,
                                           test=val, **common)
        else:
            train, val, test = make_splits(self.LAYOUT, mean, std, pairs=self.pairs_in(root), **common)
        super().__init__(train, val, test, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, label_fraction=label_fraction, seed=seed, label_seed=label_seed,
                         class_names=self.CLASS_NAMES,
                         description={"dataset": self.NAME, "root": str(root), "mean": list(mean), "std": list(std),
                                      "bands": list(self.LAYOUT.band_names)})


def find_pairs(folder: Path, pattern: str, image_suffixes: Sequence[str], label_suffix: str) -> list[ChipPair]:
    """Images matching glob ``pattern`` in ``folder`` (sorted, labels excluded), each with its label.

    The id is the file name without its image suffix; the label is ``<id><label_suffix>``.
    A missing label file is a :class:`DataError`.
    """
    pairs = []
    for p in sorted(folder.glob(pattern)):
        suffix = next((s for s in image_suffixes if p.name.endswith(s)), None)
        if suffix is None or p.name.endswith(label_suffix):
            continue
        chip_id = p.name[: -len(suffix)]
        label = folder / f"{chip_id}{label_suffix}"
        if not label.is_file():
            raise DataError(f"label file '{label}' of image '{p}' does not exist")
        pairs.append(ChipPair(chip_id, p, label))
    return pairs


def make_splits(layout: RasterLayout, mean: Sequence[float], std: Sequence[float], *,
                train: Sequence[ChipPair] = (), val: Sequence[ChipPair] = (), test: Sequence[ChipPair] = (),
                pairs: Sequence[ChipPair] = (), tile_size: int | None = None, crop_size: int | None = None,
                eval_tile_size: int | None = None, augment: bool = True, val_fraction: float = 0.15,
                test_fraction: float = 0.15, seed: int = 0
                ) -> tuple[GeoSegmentationDataset, GeoSegmentationDataset, GeoSegmentationDataset]:
    """(train, val, test) datasets from explicit split lists, or a seeded split of ``pairs``.

    Without explicit lists, chips are split when there are at least 3 of them; otherwise
    (e.g. one real sample chip) the chips' tiles are split. Training samples get ``crop_size``
    random crops and augmentation; evaluation uses ``eval_tile_size`` tiles (None: whole chips).
    """
    eval_tile = eval_tile_size if eval_tile_size is not None else tile_size

    def build(chips, tiles, train_split):
        return GeoSegmentationDataset(chips, layout, mean, std, tile_size=tiles,
                                      crop_size=crop_size if train_split else None,
                                      augment=augment and train_split)

    if train:
        tr = build(train, tile_size, True)
        va = build(val, eval_tile, False) if val else None
        te = build(test, eval_tile, False) if test else None
        if va is None:
            raise DataError(f"a training split of {len(train)} chips but no validation split")
        return tr, va, te or va
    if not pairs:
        raise DataError("no chips found for the dataset")
    if len(pairs) >= 3:
        tr_i, va_i, te_i = seeded_split(len(pairs), val_fraction, test_fraction, seed)
        pick = [pairs[int(i)] for i in tr_i], [pairs[int(i)] for i in va_i], [pairs[int(i)] for i in te_i]
        return make_splits(layout, mean, std, train=pick[0], val=pick[1], test=pick[2] or pick[1],
                           tile_size=tile_size, crop_size=crop_size, eval_tile_size=eval_tile_size,
                           augment=augment)
    if tile_size is None:
        raise DataError(f"only {len(pairs)} chip(s) and no split lists: set a tile size to split tiles instead")
    whole = GeoSegmentationDataset(pairs, layout, mean, std, tile_size=tile_size)
    tr_i, va_i, te_i = seeded_split(len(whole), val_fraction, test_fraction, seed)
    log.info("split %d tiles of %d chip(s): %d train, %d val, %d test", len(whole), len(pairs), len(tr_i),
             len(va_i), len(te_i))
    return (whole.subset(tr_i, crop_size=crop_size, augment=augment), whole.subset(va_i),
            whole.subset(te_i if len(te_i) else va_i))


__all__ = ["ChipInfo", "ChipPair", "FolderPairsDataModule", "GeoSegmentationDataset", "IGNORE_INDEX", "RasterLayout",
           "SegmentationDataModule", "SplitsDataModule", "check_pair", "find_pairs", "make_splits", "map_labels", "seeded_split",
           "subsample",
           "tile_origins"]
