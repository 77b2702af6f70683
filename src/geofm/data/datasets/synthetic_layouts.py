"""Tiny generated datasets in the official on-disk layouts (tests, demos, CI-sized runs).

Each writer draws a smooth random label map and spectra that depend on the class (so a model
can learn it), on a real grid: Sen1Floods11 chips on EPSG:4326 at the Spain_7370579 origin,
burn-scar and crop chips on UTM zone 10N (EPSG:32610) at 30 m. Nothing here is real data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geofm.io import write_geotiff


def blobs(rng: np.random.Generator, h: int, w: int, cells: int = 8) -> np.ndarray:
    """(h, w) float field in [0, 1) with structure ~``cells`` px (bilinear upsampled noise)."""
    gh, gw = h // cells + 2, w // cells + 2
    g = rng.random((gh, gw))
    ys, xs = np.linspace(0, gh - 2, h), np.linspace(0, gw - 2, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx


def _utm_transform(i: int, size: int):
    from rasterio.transform import from_origin

    return from_origin(600000.0 + i * size * 30.0, 4200000.0, 30.0, 30.0)


def write_sen1floods11(root: str | Path, n_chips: int = 4, size: int = 64, seed: int = 0,
                       splits: dict[str, list[int]] | None = None) -> list[str]:
    """``S2Hand/`` (13 bands int16) + ``LabelHand/`` (-1/0/1) chips; optional split CSVs. Returns ids."""
    from rasterio.transform import from_origin

    root = Path(root)
    rng = np.random.default_rng(seed)
    ids = []
    px = 8.983152841195215e-05
    for i in range(n_chips):
        cid = f"Spain_{7370579 + i}"
        water = blobs(rng, size, size) > 0.6
        bands = rng.normal(1500, 150, (13, size, size))
        for b in (8, 7, 11, 12):  # NIR / SWIR dark over water
            bands[b] = np.where(water, rng.normal(300, 50, (size, size)), rng.normal(3000, 300, (size, size)))
        label = water.astype(np.int16)
        label[:2, :3] = -1
        tf = from_origin(-0.78189 + i * size * px, 38.12881, px, px)
        write_geotiff(root / "S2Hand" / f"{cid}_S2Hand.tif", bands.clip(1, 10000).astype(np.int16), crs="EPSG:4326",
                      transform=tf, nodata=0)
        write_geotiff(root / "LabelHand" / f"{cid}_LabelHand.tif", label, crs="EPSG:4326", transform=tf)
        ids.append(cid)
    for split, members in (splits or {}).items():
        path = root / "splits" / "flood_handlabeled" / f"flood_{split}_data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{ids[j]}_S1Hand.tif,{ids[j]}_LabelHand.tif\n" for j in members))
    return ids


def write_burn_scars(root: str | Path, n_train: int = 3, n_val: int = 1, size: int = 64, seed: int = 0,
                     float_reflectance: bool = True) -> list[Path]:
    """``training/`` and ``validation/`` with ``<id>_merged.tif`` (6 bands) + ``<id>.mask.tif`` (0/1, -1)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_train + n_val):
        folder = root / ("training" if i < n_train else "validation")
        stem = f"subsetted_{size}x{size}_HLS.S30.T10TGS.2018{285 + i:03d}.v1.4"
        burn = blobs(rng, size, size) > 0.55
        refl = rng.normal([[[500]], [[700]], [[800]], [[2800]], [[2000]], [[1200]]], 60, (6, size, size))
        refl[3] = np.where(burn, 1200, refl[3])  # NIR drops, SWIR2 rises over burn scars
        refl[5] = np.where(burn, 2600, refl[5])
        mask = burn.astype(np.int16)
        mask[-2:, -2:] = -1
        image = (refl / 10000).astype(np.float32) if float_reflectance else refl.astype(np.int16)
        tf = _utm_transform(i, size)
        write_geotiff(folder / f"{stem}_merged.tif", image, crs="EPSG:32610", transform=tf)
        write_geotiff(folder / f"{stem}.mask.tif", mask, crs="EPSG:32610", transform=tf, nodata=-1)
        out.append(folder / f"{stem}_merged.tif")
    return out


def write_crops(root: str | Path, n_train: int = 3, n_val: int = 1, size: int = 32, seed: int = 0) -> list[Path]:
    """``training_chips/`` and ``validation_chips/``: 18-band (3 frames × 6) chips + CDL masks 0..13."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_train + n_val):
        folder = root / ("training_chips" if i < n_train else "validation_chips")
        cls = (blobs(rng, size, size, 6) * 13).astype(np.uint8) + 1  # CDL ids 1..13
        cls[0, :4] = 0  # no data
        frames = []
        for t in range(3):
            base = rng.normal(800, 50, (6, size, size)) + cls[None] * (100 + 40 * t)
            frames.append(base)
        image = np.concatenate(frames).clip(0, 10000).astype(np.int16)
        tf = _utm_transform(i, size)
        write_geotiff(folder / f"chip_{100 + i:03d}_{i:03d}_merged.tif", image, crs="EPSG:32610", transform=tf,
                      nodata=-9999)
        write_geotiff(folder / f"chip_{100 + i:03d}_{i:03d}.mask.tif", cls, crs="EPSG:32610", transform=tf)
        out.append(folder / f"chip_{100 + i:03d}_{i:03d}_merged.tif")
    return out


__all__ = ["blobs", "write_burn_scars", "write_crops", "write_sen1floods11"]
