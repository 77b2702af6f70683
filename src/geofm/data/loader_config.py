"""Where chips come from and how they are batched: the ``data`` section of a pretraining config.

Kept apart from :mod:`geofm.data.datamodule` so that a config can be read and checked without
importing Lightning (``geofm pretrain`` refuses a bad config in a second, not after the imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ChipDataSection:
    """Where the chips come from and how they are batched."""

    store: str = ""  # chip store path or URL (s3://...)
    storage_options: dict[str, Any] = field(default_factory=dict)
    build_sample_store: bool = False  # store missing -> build it from the bundled sample images
    index: str | None = None  # stratified sampling index (parquet/.npy from `geofm sample`)
    bands: list[int] | None = None  # band subset (indices into the store's bands)
    normalize: Literal["v1", "v2"] | None = None  # None: the model's norm_stats
    batch_size: int = 8  # per process
    num_workers: int = 0
    raw: bool = True  # int16 through the loader, normalized on the device (fast path)
    val_fraction: float = 0.05  # of the chips, held out (ignored when val_store is given)
    val_store: str | None = None
    seed: int = 0
    exclude_nodata: bool = True  # nodata pixels do not count in the loss
