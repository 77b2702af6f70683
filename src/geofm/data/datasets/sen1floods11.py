"""Sen1Floods11 hand-labelled flood chips (Sentinel-2 part).

Source: Bonafilia, D., Tellman, B., Anderson, T., Issenberg, E. (2020). *Sen1Floods11: a
georeferenced dataset to train and test deep learning flood algorithms for Sentinel-1.*
CVPR Workshops. Bucket ``gs://sen1floods11`` (Cloud to Street).
License: CC BY 4.0. Contains modified Copernicus Sentinel data (2016-2019).

Layout (official, ``v1.1/data/flood_events/HandLabeled``)::

    S2Hand/<id>_S2Hand.tif        13 bands B1..B12 (with B8A, B10), int16 L1C TOA reflectance ×10000,
                                  nodata 0, 512×512, EPSG:4326 (~10 m)
    LabelHand/<id>_LabelHand.tif  1 band int16: -1 no data / not labelled, 0 dry, 1 water
    splits: flood_{train,valid,test,bolivia}_data.csv  (``v1.1/splits/flood_handlabeled``),
            rows "<id>_S1Hand.tif,<id>_LabelHand.tif", no header

Bands used: 0-based S2 indices [1, 2, 3, 8, 11, 12] = B2, B3, B4, B8A, B11, B12, the Prithvi
band order (Blue, Green, Red, NIR narrow, SWIR1, SWIR2); one frame (T = 1).
Classes: 0 dry (not water), 1 water; -1 ignored. Without split files (e.g. the bundled
single chip) chips — or, with fewer than 3 chips, their tiles — are split with a seed.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

from geofm.data.datasets.base import ChipPair, RasterLayout, SegmentationDataModule, make_splits
from geofm.errors import DataError

log = logging.getLogger(__name__)

CLASS_NAMES = ("dry", "water")
S2_BANDS_0BASED = (1, 2, 3, 8, 11, 12)
LAYOUT = RasterLayout(bands=tuple(b + 1 for b in S2_BANDS_0BASED), expected_bands=13, num_frames=1, nodata=0,
                      label_values=(-1, 0, 1))
#: Per-band mean / std (reflectance ×10000) of the Prithvi Sen1Floods11 fine-tuning config.
MEAN = (1424.5495, 1392.1481, 1243.4631, 3142.0089, 2074.3526, 1204.6503)
STD = (403.6231, 418.6983, 526.7646, 822.2210, 683.4774, 529.4205)
#: Cross-entropy class weights of the paper (dry, water).
CLASS_WEIGHTS = (0.3, 0.7)
SPLIT_FILES = {"train": "flood_train_data", "val": "flood_valid_data", "test": "flood_test_data",
               "bolivia": "flood_bolivia_data"}


def chip_id(name: str) -> str:
    """``Spain_7370579_S1Hand.tif`` (or S2Hand / LabelHand / a bare id) -> ``Spain_7370579``."""
    name = Path(name.strip()).name
    for suffix in ("_S1Hand.tif", "_S2Hand.tif", "_LabelHand.tif", ".tif"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_split_file(root: Path, split: str, split_dir: Path | None = None) -> Path | None:
    """The split list (``.csv`` or ``.txt``) of ``split`` in ``split_dir``, under ``root``, in the official
    ``v1.1/splits/flood_handlabeled`` beside ``v1.1/data/flood_events/HandLabeled``, or None."""
    stem = SPLIT_FILES[split]
    official = root.parents[2] / "splits" / "flood_handlabeled" if len(root.parents) > 2 else root
    dirs = [split_dir] if split_dir is not None else [root, root / "splits", root / "splits" / "flood_handlabeled",
                                                       official]
    for d in dirs:
        for ext in (".csv", ".txt"):
            if d is not None and (d / f"{stem}{ext}").is_file():
                return d / f"{stem}{ext}"
    if split_dir is None:
        found = sorted(root.rglob(f"{stem}.csv"))
        return found[0] if found else None
    return None


def read_split(path: Path) -> list[str]:
    """Chip ids listed in a split file (first column of the CSV, or one id per line)."""
    with open(path, newline="") as f:
        ids = [chip_id(row[0]) for row in csv.reader(f) if row and row[0].strip()]
    if not ids:
        raise DataError(f"split file '{path}' lists no chips")
    return ids


def pair_of(root: Path, cid: str) -> ChipPair:
    image = root / "S2Hand" / f"{cid}_S2Hand.tif"
    if not image.is_file():
        raise DataError(f"image '{image}' of chip {cid} does not exist (expected S2Hand/<id>_S2Hand.tif)")
    return ChipPair(cid, image, root / "LabelHand" / f"{cid}_LabelHand.tif")


def all_pairs(root: Path) -> list[ChipPair]:
    """Every chip with an S2Hand image (its label must exist)."""
    if not (root / "S2Hand").is_dir():
        raise DataError(f"'{root}' has no S2Hand folder: expected the Sen1Floods11 HandLabeled layout")
    pairs = [pair_of(root, chip_id(p.name)) for p in sorted((root / "S2Hand").glob("*_S2Hand.tif"))]
    if not pairs:
        raise DataError(f"no chips found: '{root / 'S2Hand'}' has no <id>_S2Hand.tif images")
    return pairs


class Sen1Floods11DataModule(SegmentationDataModule):
    """Sen1Floods11 S2 flood segmentation: official splits when present, else a seeded split.

    ``predict_split`` may be ``"bolivia"`` (the paper's hold-out) when its split file exists.
    """

    def __init__(self, root: str | Path, *, split_dir: str | Path | None = None, tile_size: int | None = None,
                 crop_size: int | None = None, eval_tile_size: int | None = None, batch_size: int = 4,
                 eval_batch_size: int | None = None, num_workers: int = 0, label_fraction: float = 1.0,
                 seed: int = 0, label_seed: int | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, augment: bool = True,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 predict_split: str = "test"):
        root = Path(root)
        mean, std = tuple(mean or MEAN), tuple(std or STD)
        sdir = Path(split_dir) if split_dir is not None else None
        files = {s: find_split_file(root, s, sdir) for s in SPLIT_FILES}
        lists = {s: [pair_of(root, c) for c in read_split(f)] for s, f in files.items() if f is not None}
        if sdir is not None and "train" not in lists:
            raise DataError(f"no {SPLIT_FILES['train']}.csv in split folder '{sdir}'")
        common = dict(tile_size=tile_size, crop_size=crop_size, eval_tile_size=eval_tile_size, augment=augment,
                      val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        if "train" in lists:
            train, val, test = make_splits(LAYOUT, mean, std, train=lists["train"], val=lists.get("val", []),
                                           test=lists.get("test", []), **common)
        else:
            log.info("no Sen1Floods11 split files under %s: seeded split", root)
            train, val, test = make_splits(LAYOUT, mean, std, pairs=all_pairs(root), **common)
        predict = None
        if predict_split == "bolivia" and "bolivia" in lists:
            predict = make_splits(LAYOUT, mean, std, train=lists["bolivia"], val=lists["bolivia"],
                                  **dict(common, crop_size=None, augment=False))[1]
        super().__init__(train, val, test, predict, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, label_fraction=label_fraction, seed=seed, label_seed=label_seed,
                         class_names=CLASS_NAMES,
                         description={"dataset": "sen1floods11", "root": str(root), "mean": list(mean),
                                      "std": list(std), "bands": list(LAYOUT.band_names)})


__all__ = ["CLASS_NAMES", "CLASS_WEIGHTS", "LAYOUT", "MEAN", "STD", "Sen1Floods11DataModule", "all_pairs",
           "chip_id", "read_split"]
