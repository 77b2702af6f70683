"""IO helpers shared by every writer: outputs appear whole or not at all.

:func:`write_geotiff` writes an array held in memory; :func:`write_cog` is the one Cloud-Optimized
GeoTIFF writer (scene predictions, mosaics), window by window.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from geofm.errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    A crash (or exception) inside the block leaves ``path`` untouched and removes the
    temporary file, so readers never see a half-written output. The output gets the
    permissions of a file created with ``open`` (0666 less the umask), not ``mkstemp``'s 0600,
    so a group can read what a run wrote on a shared cluster.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f"{suffix}.part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` says it; else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _writable_parent(path: Path, option: str) -> None:
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{option} '{path}' cannot be created: '{parent}' is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} '{path}' cannot be written: the folder '{parent}' is read-only")


def check_output_file(path: str | os.PathLike, option: str = "--out", *, overwrite: bool = True) -> Path:
    """Check, before any work, that a file can be written at ``path`` (local paths; URLs pass).

    :class:`~geofm.errors.OutputError` if ``path`` is a folder, is read-only, sits below a file or a
    read-only folder, or exists while ``overwrite`` is False. ``option`` names it in the message.
    """
    path = Path(path)
    if "://" in str(path):
        return path
    if path.is_dir():
        raise OutputError(f"{option} '{path}' is a folder, expected a file path")
    if path.exists():
        if not overwrite:
            raise OutputError(f"{option} '{path}' exists: pass --overwrite to replace it, or choose another path")
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise OutputError(f"{option} '{path}' exists and cannot be replaced (read-only)")
    _writable_parent(path, option)
    return path


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any work, that files can be written into the folder ``path`` (created if missing).

    :class:`~geofm.errors.OutputError` if ``path`` is a file or cannot be written.
    """
    path = Path(path)
    if "://" in str(path):
        return path
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} '{path}' is a file, expected a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{option} '{path}' cannot be written: the folder is read-only")
        return path
    _writable_parent(path, option)
    return path


# --------------------------------------------------------------------------- GeoTIFF
def write_geotiff(path: str | os.PathLike, array, *, crs=None, transform=None, nodata: float | None = None,
                  descriptions: list[str] | None = None, tags: dict[str, str] | None = None,
                  colormap: dict | None = None, **options) -> Path:
    """``array`` (bands, H, W) or (H, W) -> a GeoTIFF at ``path`` on the grid (``crs``, ``transform``),
    written atomically: the GeoTIFF writer of geofm for arrays held in memory (no ``crs`` / ``transform``: a
    file without georeferencing; rasters written window by window go through :func:`write_cog`).

    ``options`` are GDAL creation options as rasterio takes them (``compress="deflate"``,
    ``tiled=True, blockxsize=256, blockysize=256``, ...); the data type is the array's. ``colormap``:
    band 1's colour table ``{value: (r, g, b, a)}`` (8-bit class maps).
    """
    import numpy as np
    import rasterio

    arr = np.asarray(array)
    arr = arr[None] if arr.ndim == 2 else arr
    profile = dict(driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0], dtype=str(arr.dtype),
                   crs=crs, transform=transform, nodata=nodata, **options)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(arr)
        for i, d in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, d)
        if tags:
            dst.update_tags(**tags)
        if colormap:
            dst.write_colormap(1, colormap)
    return Path(path)



def write_cog(path: str | os.PathLike, blocks: Iterable, *, width: int, height: int, count: int, dtype: str,
              crs, transform, nodata: float | None, block: int = 512, compress: str = "deflate",
              overviews: bool = True, resampling: str = "nearest", descriptions: Sequence[str] = (),
              tags: dict | None = None, colormap: dict | None = None,
              staging: str | os.PathLike | None = None) -> Path:
    """Write a Cloud-Optimized GeoTIFF at ``path`` from ``blocks``, never holding the raster whole.

    ``blocks`` yields ``(window, array)`` pairs, ``array`` (count, h, w) of ``dtype`` for the
    :class:`rasterio.windows.Window` ``window``; together they should cover the raster (pixels
    never written read as 0). They are written into a tiled GeoTIFF staged at ``staging`` (default:
    a hidden temporary file next to ``path``, removed at the end), then copied by GDAL's COG driver
    (``block`` px tiles, ``compress`` with a predictor, internal overviews resampled with
    ``resampling`` unless ``overviews`` is False) to a temporary name renamed onto ``path``.
    ``descriptions`` (one per band), ``tags`` (dataset metadata) and ``colormap`` (band 1,
    ``{value: (r, g, b, a)}``) are carried into the COG. The bytes depend only on the arguments.
    """
    import rasterio
    import rasterio.shutil

    path = Path(path)
    predictor = 2 if dtype in ("uint8", "uint16", "int16", "uint32", "int32") else 3
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=block, blockysize=block,
                   compress=compress, predictor=predictor, BIGTIFF="IF_SAFER")
    with contextlib.ExitStack() as stack:
        if staging is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".staged.tif", dir=path.parent)
            os.close(fd)
            staged = Path(name)
        else:
            staged = Path(staging)
        stack.callback(staged.unlink, missing_ok=True)
        with rasterio.open(staged, "w", **profile) as dst:
            for window, arr in blocks:
                dst.write(arr, window=window)
            for i, d in enumerate(descriptions, start=1):
                dst.set_band_description(i, d)
            if tags:
                dst.update_tags(**tags)
            if colormap:
                dst.write_colormap(1, colormap)
        with atomic_path(path) as tmp:
            rasterio.shutil.copy(staged, tmp, driver="COG", BLOCKSIZE=block, COMPRESS=compress.upper(),
                                 PREDICTOR="YES", OVERVIEWS="AUTO" if overviews else "NONE",
                                 RESAMPLING=resampling.upper(), BIGTIFF="IF_SAFER")
    return path
