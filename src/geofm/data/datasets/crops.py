"""Multi-temporal crop segmentation: HLS time series with USDA Cropland Data Layer labels.

Source: Cecil, M., Kordi, F., Li, H., Khallaghi, S., Alemohammad, H. (2023). *HLS Multi
Temporal Crop Classification* (Hugging Face ``ibm-nasa-geospatial/multi-temporal-crop-classification``),
contiguous U.S., 2022, labels from the USDA NASS Cropland Data Layer. License: CC BY 4.0
(HLS and CDL themselves are public domain).

Layout: ``chip_<r>_<c>_merged.tif`` (18 bands = 3 frames × 6 bands, time-major: frame 1 Blue,
Green, Red, NIR narrow, SWIR1, SWIR2, then frame 2 ..., int16 reflectance ×10000, nodata
-9999, 224×224) and ``chip_<r>_<c>.mask.tif`` (1 band, CDL-derived class ids). InstaGeo's
cut-out (``chip_178_022.tif``, no ``_merged``) is read too. The official
``training_chips/`` and ``validation_chips/`` folders are used when present, else a seeded split.
Images are (C=6, T=3).

Classes (mask id -> index): 1 Natural Vegetation, 2 Forest, 3 Corn, 4 Soybeans, 5 Wetlands,
6 Developed/Barren, 7 Open Water, 8 Winter Wheat, 9 Alfalfa, 10 Fallow/Idle Cropland,
11 Cotton, 12 Sorghum, 13 Other -> indices 0..12; mask 0 (no data) -> -1, ignored.
"""

from __future__ import annotations

from geofm.data.datasets.base import FolderPairsDataModule, RasterLayout

CLASS_NAMES = ("natural_vegetation", "forest", "corn", "soybeans", "wetlands", "developed_barren", "open_water",
               "winter_wheat", "alfalfa", "fallow_idle_cropland", "cotton", "sorghum", "other")
LABEL_SUFFIX = ".mask.tif"
LAYOUT = RasterLayout(bands=tuple(range(1, 19)), expected_bands=18, num_frames=3, nodata=-9999,
                      label_values=tuple(range(0, 14)), label_map={0: -1, **{i: i - 1 for i in range(1, 14)}})
#: Per-band mean / std (reflectance ×10000) of the Prithvi crop fine-tuning config.
MEAN = (494.905781, 815.239594, 924.335066, 2968.881459, 2634.621962, 1739.579917)
STD = (284.925432, 357.84876, 575.566823, 896.601013, 951.900334, 921.407808)
#: Class weights of the weighted cross-entropy of the Prithvi crop config (inverse-frequency based).
CLASS_WEIGHTS = (0.386375, 0.661126, 0.548184, 0.640482, 0.876862, 0.925186, 3.249462, 1.542289, 2.175141,
                 2.272419, 3.062762, 3.626097, 1.198702)


class CropsDataModule(FolderPairsDataModule):
    """HLS + CDL multi-temporal crop segmentation, 13 classes, (C=6, T=3) inputs."""

    NAME, LAYOUT, MEAN, STD, CLASS_NAMES = "crops", LAYOUT, MEAN, STD, CLASS_NAMES
    PATTERN, IMAGE_SUFFIXES, LABEL_SUFFIX = "chip_*.tif", ("_merged.tif", ".tif"), LABEL_SUFFIX
    SPLIT_DIRS = ("training_chips", "validation_chips")


pairs_in = CropsDataModule.pairs_in

__all__ = ["CLASS_NAMES", "CLASS_WEIGHTS", "CropsDataModule", "LAYOUT", "MEAN", "STD"]
