"""Time series of frames on one grid: the one input layout of imputation training, evaluation and prediction.

A series is, in date order, any of:

* one GeoTIFF per date holding the six model bands (or more, picked with ``stacked_bands``), with
  its Fmask either as a band of the same file (``stacked_fmask_band``) or as a 1-band sidecar
  ``<name>.Fmask.tif`` beside it (``X.tif`` -> ``X.Fmask.tif``);
* HLS v2.0 granules (one band file per band, ``HLS.S30.T10SEG.2020153T183919.v2.0.B04.tif`` ...,
  with their ``.Fmask.tif``);
* one T×6-band stack (time-major: frame 1 Blue..SWIR2, frame 2 ...), ``stack_frames`` = T.

Dates come from the file names (HLS granule IDs, Landsat scene IDs, YYYY-MM-DD or YYYYMMDD),
else from a date tag of the GeoTIFF (:data:`DATE_TAGS`; a T×6 stack: its ``DATES`` tag, T
comma-separated dates), or from a chip store's metadata. Imputation counts time in days, so a
series with an undated frame is refused unless ``equal_spacing`` (the dates are then taken as
equally spaced, in the given order). Fmask values are HLS v2.0 bits
(``fmask_kind="hls"``) or Landsat CFmask classes (``"cfmask"``: 0 clear, 1 water, 2 shadow,
3 snow, 4 cloud, 255 fill), converted with :func:`geofm.data.hls.cfmask_to_hls_fmask`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data.hls import (
    DEFAULT_CLOUD_BITS, FMASK_FILL, GRANULE_RE, Frame, cfmask_to_hls_fmask, cloud_mask, group_granules,
    open_raster, read_frame_window, stacked_frame,
)
from geofm.errors import DataError

log = logging.getLogger(__name__)

FMASK_KINDS = ("hls", "cfmask")
SIDECAR_SUFFIX = ".Fmask.tif"
#: GeoTIFF tags read, in this order, for the acquisition date of a file without one in its name
DATE_TAGS = ("ACQUISITION_DATE", "DATE_ACQUIRED", "SENSING_TIME", "SENSING_DATE", "datetime", "DATE")


def date_from_tags(path: str):
    """Acquisition date from a GeoTIFF tag of :data:`DATE_TAGS` (YYYY-MM-DD... or YYYYMMDD), or None."""
    from geofm.data.ingest import date_from_name

    with open_raster(path) as src:
        tags = src.tags()
    for key in DATE_TAGS:
        if key in tags and (when := date_from_name(str(tags[key]))) is not None:
            return when
    return None


def undated_error(name: str, frame: Frame) -> DataError:
    """The refusal of a series with an undated frame (see the module docstring)."""
    return DataError(f"series '{name}': no acquisition date for '{frame.sources[0][0]}' (expected an HLS granule "
                     "ID, a Landsat scene ID, YYYY-MM-DD or YYYYMMDD in the file name, or a date tag such as "
                     "ACQUISITION_DATE); imputation counts days between dates: give the dates, or allow equally "
                     "spaced dates explicitly (--equal-spacing, data: equal_spacing: true)")


def temporal_coords(dates: Sequence) -> np.ndarray:
    """(T, 2) float32 (year, day of year) of datetimes; NaN rows for None."""
    return np.array([[d.year, d.timetuple().tm_yday] if d is not None else [np.nan, np.nan] for d in dates],
                    np.float32).reshape(len(dates), 2)


def sidecar_fmask(path: str) -> str | None:
    """``X.Fmask.tif`` beside a stacked GeoTIFF ``X.tif`` (or ``X.tiff`` / ``X.gtif``), if it exists."""
    if "://" in path:
        return None
    p = Path(path)
    side = p.with_name(p.name[: -len(p.suffix)] + SIDECAR_SUFFIX) if p.suffix else None
    return str(side) if side is not None and side.is_file() else None


def frames_from_inputs(inputs: Sequence[str], stacked_bands: Sequence[int] = (1, 2, 3, 4, 5, 6),
                       stacked_fmask_band: int | None = None) -> list[Frame]:
    """Frames of one time series from ``inputs`` (see the module docstring); folders are searched.

    HLS granules are grouped and sorted by date; stacked GeoTIFFs follow, one frame each, sorted
    by the date in their names when every one has a date (else in the given order). A stacked
    file's Fmask is band ``stacked_fmask_band`` or its sidecar ``.Fmask.tif`` (which is not a frame).
    """
    from geofm.data.ingest import date_from_name, expand_inputs

    files = expand_inputs(inputs)
    hls_files = [f for f in files if GRANULE_RE.search(f.rsplit("/", 1)[-1])]
    frames, skipped = group_granules(hls_files)
    if skipped:
        raise DataError("incomplete HLS input: " + "; ".join(f"{w}: {why}" for w, why in skipped))
    frames.sort(key=lambda f: f.datetime)
    stacked = []
    for f in files:
        if f in hls_files or f.endswith(SIDECAR_SUFFIX):
            continue
        when = date_from_name(f.rsplit("/", 1)[-1]) or date_from_tags(f)
        frame = stacked_frame(f, stacked_bands, stacked_fmask_band, datetime=when)
        if frame.fmask is None and (side := sidecar_fmask(f)) is not None:
            frame.fmask = (side, 1)
        stacked.append(frame)
    if stacked and all(f.datetime for f in stacked):
        stacked.sort(key=lambda f: f.datetime)
    frames += stacked
    if not frames:
        raise DataError(f"no HLS granule or GeoTIFF found in {list(inputs)}")
    return frames


def frames_of_stack(path: str, frames: int, bands_per_frame: int = len(MODEL_BANDS),
                    fmask: str | None = None) -> list[Frame]:
    """The ``frames`` frames of one time-major stack of ``frames`` × ``bands_per_frame`` bands (dates from
    its ``DATES`` tag: ``frames`` comma-separated dates)."""
    from geofm.data.ingest import date_from_name

    with open_raster(path) as src:
        if src.count != frames * bands_per_frame:
            raise DataError(f"expected {frames * bands_per_frame} bands ({frames} frames x {bands_per_frame}), "
                            f"got {src.count} in '{path}'")
        listed = [v for v in src.tags().get("DATES", "").split(",") if v.strip()]
    dates = [date_from_name(v.strip()) for v in listed]
    if listed and (len(dates) != frames or None in dates):
        raise DataError(f"expected {frames} comma-separated dates (YYYY-MM-DD) in the DATES tag of '{path}', "
                        f"got {','.join(listed)!r}")
    name = str(path).rsplit("/", 1)[-1]
    return [Frame(sources=[(str(path), t * bands_per_frame + i + 1) for i in range(bands_per_frame)],
                  fmask=(fmask, 1) if fmask else None, datetime=dates[t] if dates else None,
                  granule_id=f"{name}#t{t}")
            for t in range(frames)]


@dataclass
class Series:
    """Frames of one place in date order, all ``height`` × ``width`` px; read with :meth:`read`."""

    name: str
    frames: list[Frame]
    height: int
    width: int
    fmask_kind: str = "hls"
    cloud_bits: tuple[str, ...] = tuple(DEFAULT_CLOUD_BITS)

    @classmethod
    def of(cls, name: str, frames: Sequence[Frame], fmask_kind: str = "hls",
           cloud_bits: Sequence[str] = DEFAULT_CLOUD_BITS, equal_spacing: bool = False) -> Series:
        """The series of ``frames`` (in date order), checked to lie on one grid and, unless
        ``equal_spacing``, to carry every acquisition date."""
        if fmask_kind not in FMASK_KINDS:
            raise DataError(f"fmask kind must be one of {FMASK_KINDS}, got {fmask_kind!r}")
        if not frames:
            raise DataError(f"series '{name}' has no frames")
        sizes, places = [], []
        for f in frames:
            for p in sorted({p for p, _ in f.sources} | ({f.fmask[0]} if f.fmask else set())):
                with open_raster(p) as src:
                    sizes.append((src.height, src.width, p))
                    if src.crs is not None:  # georeferenced files must also share CRS and transform
                        places.append((src.crs.to_wkt(), tuple(src.transform)[:6], p))
                    if f.nodata is None and src.nodata is not None and p == f.sources[0][0]:
                        f.nodata = src.nodata
        if len({s[:2] for s in sizes}) != 1:
            h, w, p = sizes[0]
            bad = next(s for s in sizes if s[:2] != (h, w))
            raise DataError(f"series '{name}': '{bad[2]}' is {bad[1]}x{bad[0]} px, '{p}' is {w}x{h}: "
                            "expected every frame on one grid")
        bad_place = next((q for q in places if q[0] != places[0][0] or
                          not np.allclose(q[1], places[0][1], atol=1e-6)), None)
        if bad_place is not None:
            raise DataError(f"series '{name}': '{bad_place[2]}' is not on the grid of '{places[0][2]}' "
                            "(CRS or transform differ): expected every frame on one grid")
        undated = next((f for f in frames if f.datetime is None), None)
        if undated is not None and not equal_spacing:
            raise undated_error(name, undated)
        for f in frames:
            if f.nodata is None:
                f.nodata = HLS_NODATA
        return cls(name, list(frames), sizes[0][0], sizes[0][1], fmask_kind, tuple(cloud_bits))

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def has_fmask(self) -> bool:
        return all(f.fmask is not None for f in self.frames)

    def temporal_coords(self, indices: Sequence[int]) -> np.ndarray:
        """(len(indices), 2) float32 (year, day of year) of frames ``indices``; NaN where undated."""
        return temporal_coords([self.frames[t].datetime for t in indices])

    def read(self, t0: int, t1: int, row: int, col: int, h: int, w: int, datasets: dict | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames ``t0:t1`` in the window (``row``, ``col``, ``h``, ``w``), padded with nodata outside the grid.

        Returns raw (T, C, h, w) int16 reflectance ×10000 (-9999 nodata), nodata (T, h, w) bool
        (nodata in any band or Fmask fill) and cloud (T, h, w) bool (Fmask cloud/adjacent/shadow).
        """
        return self.read_at(range(t0, t1), row, col, h, w, datasets)

    def read_at(self, indices: Sequence[int], row: int, col: int, h: int, w: int, datasets: dict | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`read` of the frames ``indices`` (any dates of the series, in the given order)."""
        from rasterio.windows import Window

        indices = list(indices)
        n = len(indices)
        raw = np.full((n, len(MODEL_BANDS), h, w), HLS_NODATA, np.int16)
        nodata = np.ones((n, h, w), bool)
        cloud = np.zeros((n, h, w), bool)
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + h, self.height), min(col + w, self.width)
        if r1 <= r0 or c1 <= c0:
            return raw, nodata, cloud
        win = Window(c0, r0, c1 - c0, r1 - r0)
        sl = (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col))
        for k, f in enumerate(self.frames[t] for t in indices):
            nd = np.zeros((r1 - r0, c1 - c0), bool)
            data, fmask = read_frame_window(f, win, datasets, nodata_out=nd)
            if data.shape[0] != len(MODEL_BANDS):
                raise DataError(f"frame '{f.granule_id}' has {data.shape[0]} bands, expected {len(MODEL_BANDS)}")
            raw[k][(slice(None), *sl)] = data
            if fmask is not None:
                if self.fmask_kind == "cfmask":
                    fmask = cfmask_to_hls_fmask(fmask.astype(np.int16))
                nd |= fmask == FMASK_FILL
                cloud[k][sl] = cloud_mask(fmask, self.cloud_bits)
            nodata[k][sl] = nd
        raw[np.broadcast_to(nodata[:, None], raw.shape)] = HLS_NODATA
        return raw, nodata, cloud


def load_series(entries: Sequence[str], *, stacked_bands: Sequence[int] = (1, 2, 3, 4, 5, 6),
                stacked_fmask_band: int | None = None, fmask_kind: str = "hls", stack_frames: int = 1,
                equal_spacing: bool = False) -> list[Series]:
    """Series from config entries. ``stack_frames`` = 1: each entry (a folder or glob of per-date
    files, or a list-like string of paths separated by ``,``) is one series; > 1: each file an
    entry matches is one T×6 stack of ``stack_frames`` frames (sidecar ``.Fmask.tif`` = the gaps of
    every frame). A series with an undated frame is refused unless ``equal_spacing``."""
    import glob

    out: list[Series] = []
    for entry in entries:
        parts = [p.strip() for p in str(entry).split(",") if p.strip()]
        files: list[str] = []
        for p in parts:
            if any(ch in p for ch in "*?["):
                found = sorted(glob.glob(p))
                if not found:
                    raise DataError(f"no file matches '{p}'")
                files += found
            elif Path(p).exists():
                files.append(p)
            else:
                raise DataError(f"series input '{p}' does not exist")
        if stack_frames > 1:
            from geofm.data.ingest import expand_inputs

            for f in expand_inputs(files):
                if f.endswith(SIDECAR_SUFFIX):
                    continue
                out.append(Series.of(Path(f).stem, frames_of_stack(f, stack_frames, fmask=sidecar_fmask(f)),
                                     fmask_kind, equal_spacing=equal_spacing))
            continue
        frames = frames_from_inputs(files, stacked_bands, stacked_fmask_band)
        name = Path(parts[0].rstrip("/*")).name or parts[0]
        out.append(Series.of(name, frames, fmask_kind, equal_spacing=equal_spacing))
    return out


__all__ = ["DATE_TAGS", "FMASK_KINDS", "SIDECAR_SUFFIX", "Series", "date_from_tags", "frames_from_inputs",
           "frames_of_stack", "load_series", "sidecar_fmask", "temporal_coords", "undated_error"]
