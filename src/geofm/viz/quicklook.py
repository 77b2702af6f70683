"""Quicklooks and figures: percentile-stretched RGB composites, side-by-side PNG panels, and the one
figure saver (:func:`save_figure`: PNG, atomically) every plot of geofm goes through."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.io import atomic_path

#: Indices of (red, green, blue) among the six model bands (Blue, Green, Red, NIR, SWIR1, SWIR2).
RGB_OF_MODEL_BANDS = (2, 1, 0)


def rgb_stretch(image: np.ndarray, rgb: Sequence[int] = RGB_OF_MODEL_BANDS,
                percentiles: tuple[float, float] = (2.0, 98.0), valid: np.ndarray | None = None,
                limits: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(C, H, W) bands -> (H, W, 3) float RGB in [0, 1] with a per-channel percentile stretch.

    ``limits`` = (low, high) per channel reuses a stretch (e.g. input and reconstruction
    shown with the same colours); otherwise it is computed from ``valid`` pixels.
    """
    rgb_img = np.stack([np.asarray(image[i], dtype=np.float64) for i in rgb], axis=-1)  # (H, W, 3)
    if limits is None:
        limits = stretch_limits(image, rgb, percentiles, valid)
    lo, hi = limits
    out = (rgb_img - lo) / np.maximum(hi - lo, 1e-12)
    out = np.clip(out, 0.0, 1.0)
    if valid is not None:
        out[~valid] = 0.0
    return out


def stretch_limits(image: np.ndarray, rgb: Sequence[int] = RGB_OF_MODEL_BANDS,
                   percentiles: tuple[float, float] = (2.0, 98.0),
                   valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) percentiles of the RGB bands of a (C, H, W) image."""
    lo, hi = [], []
    for i in rgb:
        band = np.asarray(image[i], dtype=np.float64)
        vals = band[valid] if valid is not None else band.ravel()
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            lo.append(0.0)
            hi.append(1.0)
            continue
        a, b = np.percentile(vals, percentiles)
        lo.append(a)
        hi.append(b if b > a else a + 1.0)
    return np.array(lo), np.array(hi)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to a PNG at ``path`` atomically, then close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)
    return path


def save_panels(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], suptitle: str | None = None,
                ncols: int | None = None, cmap: str | None = None, dpi: int = 110) -> Path:
    """Write titled images side by side (RGB (H, W, 3) floats or 2D maps) to a PNG, atomically."""
    plt = pyplot()
    n = len(panels)
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, img) in zip(axes.ravel(), panels):
        ax.imshow(img, cmap=None if img.ndim == 3 else (cmap or "viridis"), interpolation="nearest")
        ax.set_title(title, fontsize=9)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi)
