"""Chip predictions of ``geofm finetune --stage predict``: georeferenced GeoTIFFs + PNG quicklooks per chip.

(Whole scenes are :mod:`geofm.infer`.)

Segmentation: ``<id>_r<row>_c<col>_pred.tif`` uint8 class indices (255 where the input has no
data) on the CRS/transform of the input window, and a quicklook RGB | label | prediction.
Imputation: ``<name>_recon.tif`` int16 reflectance ×10000 (T×C bands, time-major, nodata -9999)
and a quicklook masked input | reconstruction | target of the frame with most gaps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from geofm.bands import HLS_NODATA, NORMALIZED_NODATA
from geofm.io import write_geotiff
from geofm.viz import CLASS_PALETTE, class_colormap, rgb_stretch, save_panels, stretch_limits

log = logging.getLogger(__name__)

NODATA_CLASS = 255
#: Colours (RGB 0..1) of class indices in quicklooks (the default class palette); -1 (ignored) is black.
PALETTE = CLASS_PALETTE / 255.0


def colorize(labels: np.ndarray) -> np.ndarray:
    """(H, W) class indices (-1/255 = none) -> (H, W, 3) RGB floats."""
    lab = np.asarray(labels).astype(np.int64)
    out = np.zeros((*lab.shape, 3))
    ok = (lab >= 0) & (lab < len(PALETTE))
    out[ok] = PALETTE[lab[ok]]
    return out


def _denorm(x: np.ndarray, mean, std) -> np.ndarray:
    """Normalized (C, T, H, W) -> reflectance ×10000."""
    return x * np.asarray(std, np.float32)[:, None, None, None] + np.asarray(mean, np.float32)[:, None, None, None]


@torch.no_grad()
def write_predictions(task, dm, out_dir: Path, quicklooks: int = 8) -> Path:
    """Predict every sample of ``dm.predict_set`` with ``task``; write GeoTIFFs and quicklooks."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = dm.predict_set
    task.eval()
    loader = DataLoader(ds, batch_size=dm.eval_batch_size, shuffle=False, num_workers=0)
    mean, std = dm.description["mean"], dm.description["std"]
    segmentation = hasattr(task, "class_names")
    if segmentation:
        names = list(task.class_names)
        class_tags = {"geofm_output": "classes", "classes": json.dumps(dict(enumerate(names)))}
    shown = 0
    for batch in loader:
        if segmentation:
            preds = task(batch["image"]).argmax(1).numpy()
        else:
            recon = task.reconstruct(batch).numpy()
        for k, index in enumerate(batch["index"].tolist()):
            crs, transform, name = ds.geo(index)
            image = batch["image"][k].numpy()
            if segmentation:
                _, r, c, _, _ = ds.windows[index]
                stem = f"{name}_r{r}_c{c}"
                nodata = (image == np.float32(NORMALIZED_NODATA)).all(axis=(0, 1))
                pred = np.where(nodata, NODATA_CLASS, preds[k]).astype(np.uint8)
                write_geotiff(out_dir / f"{stem}_pred.tif", pred, crs=crs, transform=transform, nodata=NODATA_CLASS,
                              tags=class_tags, colormap=class_colormap(len(names)), compress="deflate")
                if shown < quicklooks:
                    raw = _denorm(image, mean, std)[:, -1]
                    label = batch["mask"][k].numpy()
                    acc = float((pred == label)[label >= 0].mean()) if (label >= 0).any() else float("nan")
                    save_panels(out_dir / f"{stem}.png", [("input RGB", rgb_stretch(raw, valid=~nodata)),
                                                          ("label", colorize(label)),
                                                          ("prediction", colorize(pred.astype(np.int64)))],
                                suptitle=f"{name} r{r} c{c}: pixel accuracy {acc:.3f}")
                    shown += 1
            else:
                rec = _denorm(recon[k], mean, std)
                valid = batch["valid"][k].numpy()
                gap = batch["gap"][k].numpy()
                has_data = ~(image == np.float32(NORMALIZED_NODATA)).all(axis=0)  # clouds are filled, nodata stays
                rec_i = np.where(has_data[None], np.clip(np.rint(rec), -32768, 32767), HLS_NODATA).astype(np.int16)
                c_, t_, h_, w_ = rec_i.shape
                write_geotiff(out_dir / f"{name}_recon.tif", rec_i.transpose(1, 0, 2, 3).reshape(t_ * c_, h_, w_),
                              crs=crs, transform=transform, nodata=HLS_NODATA, compress="deflate")
                if shown < quicklooks:
                    t = int(gap.reshape(gap.shape[0], -1).sum(1).argmax())
                    target = _denorm(image, mean, std)[:, t]
                    limits = stretch_limits(target, valid=valid[t])
                    masked = rgb_stretch(target, limits=limits)
                    masked[gap[t]] = 0.5
                    save_panels(out_dir / f"{name}_recon.png", [
                        (f"input, gaps grey (frame {t})", masked),
                        ("reconstruction", rgb_stretch(rec[:, t], limits=limits)),
                        ("target", rgb_stretch(target, limits=limits))],
                        suptitle=f"{name}: {gap[t].mean() * 100:.0f} % of frame {t} hidden by real cloud masks")
                    shown += 1
    log.info("wrote predictions of %d samples to %s", len(ds), out_dir)
    return out_dir


__all__ = ["colorize", "write_predictions"]
