"""Layers with known content for the viewer's tests: a class map of blocks (imported by the tests and conftest)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASS_NAMES = ("land", "water", "burn")
SIZE = 512  # px, 30 m, UTM 10N: about 15 km


def class_blocks() -> np.ndarray:
    """(SIZE, SIZE) uint8: class 0 on the left half, 1 top right, 2 bottom right, nodata (255) top-left corner."""
    a = np.zeros((SIZE, SIZE), np.uint8)
    a[:, SIZE // 2:] = 1
    a[SIZE // 2:, SIZE // 2:] = 2
    a[:64, :64] = 255
    return a


def write_class_map(path: Path) -> Path:
    """A geofm-style class map COG (tags, the default colour table, nearest overviews)."""
    import rasterio
    import rasterio.shutil
    from rasterio.transform import from_origin

    from geofm.viz import class_colormap

    staged = path.with_suffix(".staged.tif")
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8", crs="EPSG:32610",
                   transform=from_origin(580020.0, 4100040.0, 30.0, 30.0), nodata=255, tiled=True,
                   blockxsize=256, blockysize=256)
    with rasterio.open(staged, "w", **profile) as dst:
        dst.write(class_blocks(), 1)
        dst.update_tags(geofm_output="classes", classes=json.dumps(dict(enumerate(CLASS_NAMES))))
        dst.write_colormap(1, class_colormap(len(CLASS_NAMES)))
    rasterio.shutil.copy(staged, path, driver="COG", OVERVIEWS="AUTO", RESAMPLING="NEAREST", BLOCKSIZE=256)
    staged.unlink()
    return path
