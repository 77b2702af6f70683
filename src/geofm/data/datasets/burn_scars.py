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

from geofm.data.datasets.base import FolderPairsDataModule, RasterLayout

CLASS_NAMES = ("unburned", "burn_scar")
IMAGE_SUFFIX, LABEL_SUFFIX = "_merged.tif", ".mask.tif"
LAYOUT = RasterLayout(bands=(1, 2, 3, 4, 5, 6), expected_bands=6, num_frames=1, nodata=-9999,
                      label_values=(-1, 0, 1), scale=None)
#: Per-band mean / std (reflectance ×10000) of the Prithvi burn-scar fine-tuning config.
MEAN = (333.4971, 570.1186, 588.9748, 2323.2451, 1972.8549, 1194.4914)
STD = (226.9136, 268.0756, 400.4110, 779.1732, 870.8739, 724.1979)


class BurnScarsDataModule(FolderPairsDataModule):
    """HLS Burn Scars binary segmentation (Dice loss in the paper; set ``crop_size=224`` for training)."""

    NAME, LAYOUT, MEAN, STD, CLASS_NAMES = "burn_scars", LAYOUT, MEAN, STD, CLASS_NAMES
    PATTERN, IMAGE_SUFFIXES, LABEL_SUFFIX = f"*{IMAGE_SUFFIX}", (IMAGE_SUFFIX,), LABEL_SUFFIX
    SPLIT_DIRS = ("training", "validation")


pairs_in = BurnScarsDataModule.pairs_in

__all__ = ["BurnScarsDataModule", "CLASS_NAMES", "LAYOUT", "MEAN", "STD"]
