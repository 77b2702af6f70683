"""Band names, sensor mappings, normalization statistics of the Prithvi models, and the normalization.

Reflectance is stored as int16 scaled by 10000 (HLS v2.0), nodata -9999.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: The six bands the Prithvi models take, in model order.
MODEL_BANDS: tuple[str, ...] = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")

#: HLS v2.0 band file suffixes for each model band.
L30_BANDS: dict[str, str] = {
    "BLUE": "B02", "GREEN": "B03", "RED": "B04", "NIR_NARROW": "B05", "SWIR_1": "B06", "SWIR_2": "B07",
}
S30_BANDS: dict[str, str] = {
    "BLUE": "B02", "GREEN": "B03", "RED": "B04", "NIR_NARROW": "B8A", "SWIR_1": "B11", "SWIR_2": "B12",
}

HLS_NODATA: int = -9999
#: Value that nodata pixels take after normalization in the reference pipeline.
NORMALIZED_NODATA: float = 0.0001
REFLECTANCE_SCALE: float = 10000.0

#: Per-band mean / std (reflectance x10000) used by the released checkpoints.
NORM_STATS: dict[str, dict[str, tuple[float, ...]]] = {
    "v1": {
        "mean": (775.229, 1080.993, 1228.586, 2497.202, 2204.214, 1610.832),
        "std": (1281.526, 1270.030, 1399.480, 1368.345, 1291.676, 1154.506),
    },
    "v2": {
        "mean": (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0),
        "std": (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0),
    },
}


def stats_for(name: str, n_bands: int) -> tuple[list[float] | None, list[float] | None]:
    """``(mean, std)`` lists of statistics set ``name`` if it fits ``n_bands`` bands, else ``(None, None)``."""
    if name not in NORM_STATS or n_bands != len(MODEL_BANDS):
        return None, None
    mean, std = norm_stats(name)
    return list(mean), list(std)


def norm_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return ``(mean, std)`` of the named statistics set (``"v1"`` or ``"v2"``)."""
    try:
        stats = NORM_STATS[name]
    except KeyError:
        raise KeyError(f"unknown normalization statistics {name!r}; expected one of {sorted(NORM_STATS)}") from None
    return stats["mean"], stats["std"]


def normalize(raw: np.ndarray, mean: Sequence[float], std: Sequence[float], nodata: np.ndarray | None = None, *,
              out: np.ndarray | None = None, fill: Sequence[float] | None = None) -> np.ndarray:
    """Band-first reflectance ×10000 (C, ...) -> float32 ``(raw - mean[c]) / std[c]`` (C, ...), band by band.

    Pixels True in ``nodata`` (the shape of one band, e.g. (T, H, W)) become :data:`NORMALIZED_NODATA`,
    or ``fill[c]`` in band c (a released model's nodata replacement). ``out`` (C, ...) float32, possibly
    a view into a larger array, receives the result. The one normalization of the numpy pipelines
    (datasets, loader, scene prediction); batches already on a device use the same arithmetic in torch
    (:meth:`geofm.data.loader.ChipDataset.normalize_batch`).
    """
    import numpy as np

    out = np.empty(raw.shape, np.float32) if out is None else out
    for c in range(raw.shape[0]):
        np.subtract(raw[c], np.float32(mean[c]), out=out[c], dtype=np.float32)
        out[c] /= np.float32(std[c])
        if nodata is not None:
            out[c][nodata] = NORMALIZED_NODATA if fill is None else np.float32(fill[c])
    return out


__all__ = [
    "MODEL_BANDS", "L30_BANDS", "S30_BANDS", "HLS_NODATA", "NORMALIZED_NODATA", "REFLECTANCE_SCALE",
    "NORM_STATS", "norm_stats", "normalize", "stats_for",
]
