"""HLS Burn Scars: wildfire scar segmentation on 512×512 HLS chips.

Source: Phillips, C., Roy, S., Ankur, K., Ramachandran, R. (2023). *HLS Foundation Burnscars
Dataset* (Hugging Face ``ibm-nasa-geospatial/hls_burn_scars``), burn scars of 2018-2021 over
the contiguous U.S. from HLS v1.4 with MTBS perimeters. License: CC BY 4.0.

Layout: ``<id>_merged.tif`` (6 bands: Blue, Green, Red, NIR narrow, SWIR1, SWIR2, one frame,
reflectance ×10000 — float files holding reflectance 0..1 are scaled) and ``<id>.mask.tif``
(1 band: 0 not burned, 1 burn scar, -1 no data) side by side, e.g.
``subsetted_512x512_HLS.S30.T10TGS.2018285.v1.4_merged.tif`` / ``....v1.4.mask.tif``; the
official ``training/`` and ``validation/`` folders are used when present, else a seeded split.
Training takes random 224×224 crops (flips/rot90); evaluation the full 512×512 chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geofm.data.datasets.base import RasterLayout, SegmentationDataModule, find_pairs, make_splits
from geofm.errors import DataError

CLASS_NAMES = ("unburned", "burn_scar")
IMAGE_SUFFIX, LABEL_SUFFIX = "_merged.tif", ".mask.tif"
LAYOUT = RasterLayout(bands=(1, 2, 3, 4, 5, 6), expected_bands=6, num_frames=1, nodata=-9999,
                      label_values=(-1, 0, 1), scale=None)
#: Per-band mean / std (reflectance ×10000) of the Prithvi burn-scar fine-tuning config.
MEAN = (333.4971, 570.1186, 588.9748, 2323.2451, 1972.8549, 1194.4914)
STD = (226.9136, 268.0756, 400.4110, 779.1732, 870.8739, 724.1979)


def pairs_in(folder: Path):
    if not folder.is_dir():
        raise DataError(f"burn-scar folder '{folder}' does not exist")
    pairs = find_pairs(folder, f"*{IMAGE_SUFFIX}", (IMAGE_SUFFIX,), LABEL_SUFFIX)
    if not pairs:
        raise DataError(f"no '*{IMAGE_SUFFIX}' images in '{folder}'")
    return pairs


class BurnScarsDataModule(SegmentationDataModule):
    """HLS Burn Scars binary segmentation (Dice loss in the paper)."""

    def __init__(self, root: str | Path, *, crop_size: int | None = 224, tile_size: int | None = None,
                 eval_tile_size: int | None = None, batch_size: int = 4, eval_batch_size: int | None = None,
                 num_workers: int = 0, label_fraction: float = 1.0, seed: int = 0, label_seed: int | None = None, val_fraction: float = 0.15,
                 test_fraction: float = 0.15, augment: bool = True, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
        root = Path(root)
        mean, std = tuple(mean or MEAN), tuple(std or STD)
        common = dict(tile_size=tile_size, crop_size=crop_size, eval_tile_size=eval_tile_size, augment=augment,
                      val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        if (root / "training").is_dir():
            val = pairs_in(root / "validation")
            train, val, test = make_splits(LAYOUT, mean, std, train=pairs_in(root / "training"), val=val,
                                           test=val, **common)
        else:
            train, val, test = make_splits(LAYOUT, mean, std, pairs=pairs_in(root), **common)
        super().__init__(train, val, test, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, label_fraction=label_fraction, seed=seed, label_seed=label_seed, class_names=CLASS_NAMES,
                         description={"dataset": "burn_scars", "root": str(root), "mean": list(mean),
                                      "std": list(std), "bands": list(LAYOUT.band_names)})


__all__ = ["BurnScarsDataModule", "CLASS_NAMES", "LAYOUT", "MEAN", "STD"]
