"""A small chip store cut from the bundled real sample images (``geofm/data/sample``), for laptop runs.

Sources (see ``geofm/data/sample/ATTRIBUTION.md`` for origins and licences):

* ``hls_chip/regression_test_0_input.tif``: a real 224x224 HLS chip, UTM 14N, 30 m; bands 2-7
  are Blue, Green, Red, NIR, SWIR1, SWIR2 (reflectance x10000, float32 in the file).
* ``sen1floods11/S2Hand/Spain_7370579_S2Hand.tif``: a real 512x512 Sentinel-2 L1C chip
  (EPSG:4326); bands B2, B3, B4, B8A, B11, B12 (0-based 1, 2, 3, 8, 11, 12) are the six HLS
  model bands (reflectance x10000, int16; 0 = no data).

Both are single acquisitions, so the store has ``frames = 1``. Neither file records its
acquisition date: the store's dates are a placeholder (:data:`PLACEHOLDER_DATE`), so the
temporal coordinates of TL models carry no information on this store. Locations (chip
centres in lat/lon) are real.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data import store
from geofm import resources
from geofm.errors import DataError

log = logging.getLogger(__name__)

#: (file under the sample folder, 1-based band indices of the six model bands, file nodata value, tile label)
SOURCES = (
    ("hls_chip/regression_test_0_input.tif", (2, 3, 4, 5, 6, 7), "hls_regression_test_0"),
    ("sen1floods11/S2Hand/Spain_7370579_S2Hand.tif", (2, 3, 4, 9, 12, 13), "s2_spain_7370579"),
)
PLACEHOLDER_DATE = dt.date(2020, 1, 1)  # the sample files carry no acquisition date


def read_sample_image(path: str | os.PathLike, bands: tuple[int, ...]) -> tuple[np.ndarray, object, str]:
    """(6, H, W) int16 reflectance x10000 (nodata -> -9999) of 1-based ``bands``, the transform and the CRS."""
    import rasterio

    from geofm.data.hls import _to_int16

    path = Path(path)
    if not path.is_file():
        raise DataError(f"sample image '{path}' is missing: expected the bundled geofm/data/sample folder")
    with rasterio.open(path) as src:
        out = _to_int16(src.read(list(bands)), src.nodata, str(path))
        transform, crs = src.transform, src.crs.to_string()
    return out, transform, crs


def _chip_row(rows: dict, tile, series, r, c, crs, tf, size, lat, lon, nodata, mean, std) -> None:
    """Append one chip's metadata (ingest's columns, except slot and granules)."""
    rows["tile"].append(tile)
    rows["series"].append(series)
    rows["chip_row"].append(r)
    rows["chip_col"].append(c)
    rows["crs"].append(crs)
    rows["transform"].append([tf.a, tf.b, tf.c + tf.a * c * size + tf.b * r * size,
                              tf.d, tf.e, tf.f + tf.d * c * size + tf.e * r * size])
    rows["dates"].append([PLACEHOLDER_DATE.isoformat()])
    rows["year"].append([PLACEHOLDER_DATE.year])
    rows["doy"].append([PLACEHOLDER_DATE.timetuple().tm_yday])
    rows["lat"].append(float(lat))
    rows["lon"].append(float(lon))
    rows["cloud_frac"].append(0.0)
    rows["nodata_frac"].append(float(nodata.mean()))
    rows["band_mean"].append(mean.tolist())
    rows["band_std"].append(std.tolist())
    rows["landcover"].append(-1)


def build_sample_store(out: str | os.PathLike, chip_size: int = 32, shard: int = 16,
                       sample_dir: str | os.PathLike | None = None, dihedral: bool = False) -> Path:
    """Cut the bundled sample images into ``chip_size`` chips and write a chip store at ``out``.

    The store has the layout of :mod:`geofm.data.store` (int16 (N, T=1, 6, H, W), metadata
    table with the ingest's columns), so :class:`~geofm.data.loader.ChipDataset` reads it like
    an ingested one. With the defaults: 49 + 256 = 305 chips of 32x32 px. Written under a
    temporary name and renamed; an existing complete store at ``out`` is returned as is.

    ``dihedral=True`` also writes the 7 other rotations/flips of every chip (8x the chips, for
    benchmarks that need longer epochs); their metadata rows are the original chip's, with
    ``granules`` = ``[<file>#r<k>[f]]`` (k quarter turns, f = then flipped left-right), so their
    ``transform`` describes the unrotated chip.
    """
    import pyarrow as pa

    from geofm.data.ingest.plan import STORE_VERSION
    from geofm.data.ingest.run import consolidate
    from geofm.data.ingest.task import _band_stats, _schema, _to_lonlat

    out = Path(out)
    if (out / store.METADATA).is_file():
        return out
    root = Path(sample_dir) if sample_dir is not None else resources.sample_dir()
    chips, rows = [], {k: [] for k in _schema().names}
    for series, (rel, bands, tile) in enumerate(SOURCES):
        image, tf, crs = read_sample_image(root / rel, bands)
        n_r, n_c = image.shape[1] // chip_size, image.shape[2] // chip_size
        centres = [(r, c) for r in range(n_r) for c in range(n_c)]
        xs = [tf.c + tf.a * (c + 0.5) * chip_size + tf.b * (r + 0.5) * chip_size for r, c in centres]
        ys = [tf.f + tf.d * (c + 0.5) * chip_size + tf.e * (r + 0.5) * chip_size for r, c in centres]
        lons, lats = _to_lonlat(crs, xs, ys)
        for (r, c), lat, lon in zip(centres, lats, lons):
            chip = image[None, :, r * chip_size:(r + 1) * chip_size, c * chip_size:(c + 1) * chip_size]  # (1,6,h,w)
            nodata = (chip == HLS_NODATA).any(axis=1)  # (1, h, w)
            if nodata.all():
                continue
            mean, std = _band_stats(chip, ~nodata)
            variants = [(k, f) for k in range(4) for f in (False, True)] if dihedral else [(0, False)]
            for k, f in variants:
                v = np.rot90(chip, k, axes=(2, 3))
                rows["slot"].append(len(chips))
                chips.append(np.ascontiguousarray(v[..., ::-1] if f else v))
                rows["granules"].append([Path(rel).name + (f"#r{k}{'f' if f else ''}" if dihedral else "")])
                _chip_row(rows, tile, series, r, c, crs, tf, chip_size, lat, lon, nodata, mean, std)
    n_slots = -(-len(chips) // shard) * shard
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loc = store.Location(str(tmp))
    attrs = {"version": STORE_VERSION, "bands": list(MODEL_BANDS), "frames": 1, "chip_size": chip_size,
             "shard": shard, "complete": False, "reflectance_scale": 10000, "nodata": HLS_NODATA,
             "source": "geofm sample data (data/sample)"}
    store.create_chip_array(loc, n_slots, 1, len(MODEL_BANDS), chip_size, shard, attrs)
    stack = np.full((n_slots, 1, len(MODEL_BANDS), chip_size, chip_size), HLS_NODATA, np.int16)
    stack[:len(chips)] = np.stack(chips)
    for start in range(0, n_slots, shard):
        store.write_shard(loc, start, stack[start:start + shard])
    loc.write_bytes(f"{store.PARTS}/task-000000.parquet", store.table_to_bytes(pa.table(rows, schema=_schema())))
    n = consolidate(loc)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log.info("built sample store %s: %d chips of %d px from %d images", out, n, chip_size, len(SOURCES))
    return out
