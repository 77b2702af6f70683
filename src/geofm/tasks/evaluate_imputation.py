"""``geofm evaluate-imputation``: the fixed-mask protocol on any series, for a model export or for predictions.

>>> scores = evaluate_checkpoint("runs/imp/export", series, masks)  # doctest: +SKIP
>>> scores["mae"], scores["mae_linear"], scores["ssim_nearest_RED"]  # doctest: +SKIP

The protocol (:func:`geofm.data.datasets.imputation.fixed_protocol`) hides, on listed dates of
each window of T consecutive dates, the pixels of listed real cloud masks; every hidden pixel
with data that is clear in the series is scored. The model and the two baselines (``nearest``
clear date in days, temporal ``linear`` interpolation by acquisition day) fill the same pixels
from the same inputs (gaps, the series' own clouds and nodata hidden); MAE, RMSE, PSNR and SSIM
are computed on the filled image in reflectance (0..1), overall and per band, with the pixel
count. ``geofm finetune
--stage test`` runs the same protocol on ``data.test_series``.

Predictions made elsewhere (``geofm predict`` or any gap filler) are scored the same way:
``--write-cloudy DIR`` writes the protocol's first sample as one GeoTIFF per date with a sidecar
``.Fmask.tif`` that flags the hidden pixels as cloud; fill them with any tool into one T×6-band
GeoTIFF (time-major, reflectance ×10000, as ``geofm predict`` writes) and pass it to
``--predictions``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from geofm.bands import MODEL_BANDS, REFLECTANCE_SCALE
from geofm.errors import DataError

log = logging.getLogger(__name__)


def _reflectance(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1, 1)
    return (x * s + m) / REFLECTANCE_SCALE


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, series: Sequence, masks, *, target_frames: Sequence[int] | None = None,
                        stride: int | None = None, tile: int | None = None, batch_size: int = 8,
                        progress=None, correction: str = "always") -> dict[str, float]:
    """Scores of a fine-tuned imputation export and of the baselines on the fixed protocol (see the module doc).

    ``correction="always"``: the model's fill; ``"auto"``: what ``geofm predict --correction auto``
    writes, decided for each sample on its cloudy input alone (the gap and the series' own clouds
    flagged as cloud; see :func:`geofm.correction.corrected_fill`); ``"never"``: the baseline.
    """
    from torch.utils.data import DataLoader

    from geofm.data.datasets.imputation import FixedGaps
    from geofm.models.finetuned import load_finetuned
    from geofm.models.imputer import day_numbers, fill_hidden
    from geofm.tasks.metrics import ScoreSums

    from geofm.correction import CORRECTION_MODES, corrected_fill

    if correction not in CORRECTION_MODES:
        raise DataError(f"--correction must be one of {', '.join(CORRECTION_MODES)}, got {correction!r}")
    model, info = load_finetuned(checkpoint)
    if info.task != "imputation":
        raise DataError(f"'{checkpoint}' is a {info.task} model, not an imputation one")
    ds = FixedGaps(series, masks, frames=info.num_frames, size=tile or info.img_size, mean=info.mean, std=info.std,
                   target_frames=target_frames, stride=stride)
    sums = ScoreSums(MODEL_BANDS)
    done = 0
    for batch in DataLoader(ds, batch_size=batch_size):
        x, valid, gap, coords = batch["image"], batch["valid"], batch["gap"], batch["temporal_coords"]
        unusable = gap | ~valid
        days = day_numbers(coords, x.shape[0], x.shape[2])
        if correction == "auto":
            filled, _ = corrected_fill(model, x, unusable, batch["cloud"] | (gap & valid), coords, info.std)
        elif correction == "never":
            filled = fill_hidden(x, unusable, True, days)
        else:
            filled = model(x, unusable, coords)
        sums.add_fills(filled, x, unusable, gap & valid, lambda t: _reflectance(t, info.mean, info.std), days)
        done += len(x)
        if progress is not None:
            progress(done, len(ds))
    return sums.result()


def first_sample(series, masks, frames: int, target_frames=None):
    """(raw (T, C, H, W) int16, unusable (T, H, W), gap (T, H, W), first date) of the protocol's first sample
    of ``series``, over the whole series extent."""
    from geofm.data.datasets.imputation import fixed_protocol

    _si, t0, f, k, _r, _c = fixed_protocol([series], masks, frames=frames, size=max(series.height, series.width),
                                           target_frames=target_frames)[0]
    raw, nodata, cloud = series.read(t0, t0 + frames, 0, 0, series.height, series.width)
    gap = np.zeros_like(nodata)
    gap[f] = masks.placed(k, series.height, series.width) & ~(nodata[f] | cloud[f])
    return raw, nodata | cloud, gap, t0


def write_cloudy(series, masks, out_dir: str | Path, frames: int = 3, target_frames=None) -> list[Path]:
    """The protocol's first sample as one 6-band GeoTIFF per date + sidecar ``.Fmask.tif`` (gaps and the
    series' own clouds flagged as cloud, nodata as fill), on the series' grid."""
    import rasterio

    from geofm.data.hls import FMASK_BITS, FMASK_FILL
    from geofm.io import atomic_path

    raw, unusable, gap, t0 = first_sample(series, masks, frames, target_frames)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = series.frames[0].sources[0][0]
    with rasterio.open(first) as src:
        profile = dict(driver="GTiff", width=series.width, height=series.height, count=raw.shape[1], dtype="int16",
                       crs=src.crs, transform=src.transform, nodata=-9999, compress="deflate")
    paths = []
    for t in range(frames):
        f = series.frames[t0 + t]
        stem = f"{t:02d}_{f.date_str or 'date'}"
        fmask = np.where(unusable[t] | gap[t], np.uint8(1 << FMASK_BITS["cloud"]), np.uint8(0))
        fmask[(raw[t] == -9999).any(0)] = FMASK_FILL
        for name, arr, prof in ((f"{stem}.tif", raw[t], profile),
                                (f"{stem}.Fmask.tif", fmask[None], dict(profile, count=1, dtype="uint8",
                                                                          nodata=FMASK_FILL))):
            with atomic_path(out / name) as tmp, rasterio.open(tmp, "w", **prof) as dst:
                dst.write(arr)
        paths.append(out / f"{stem}.tif")
    return paths


def evaluate_predictions(prediction: str | Path, series, masks, *, frames: int = 3, target_frames=None
                         ) -> dict[str, float]:
    """Scores of a T×6-band prediction GeoTIFF of the protocol's first sample (see :func:`write_cloudy`)
    and of the baselines on the same pixels."""
    import rasterio

    from geofm.tasks.metrics import ScoreSums

    from geofm.models.imputer import day_numbers

    raw, unusable, gap, t0 = first_sample(series, masks, frames, target_frames)
    T, C, H, W = raw.shape
    days = day_numbers(torch.from_numpy(series.temporal_coords(range(t0, t0 + T)))[None], 1, T)
    with rasterio.open(prediction) as src:
        if (src.count, src.height, src.width) != (T * C, H, W):
            raise DataError(f"expected {T * C} bands of {W}x{H} px (time-major T x 6) in '{prediction}', "
                            f"got {src.count} bands of {src.width}x{src.height}")
        pred = src.read().reshape(T, C, H, W)
    to = lambda a: torch.from_numpy(a.astype(np.float32)).permute(1, 0, 2, 3)[None] / REFLECTANCE_SCALE  # noqa: E731
    sums = ScoreSums(MODEL_BANDS)
    sums.add_fills(to(pred), to(raw), torch.from_numpy(unusable | gap)[None], torch.from_numpy(gap)[None], days=days)
    return sums.result()


def format_table(scores: dict[str, float], bands: Sequence[str] = MODEL_BANDS) -> str:
    """Markdown table: method x (MAE, RMSE, PSNR, SSIM, pixels), then MAE / SSIM per band."""
    rows = ["| method | MAE | RMSE | PSNR (dB) | SSIM | pixels |", "|---|---|---|---|---|---|"]
    for m in ("model", "linear", "nearest"):
        sfx = "" if m == "model" else f"_{m}"
        if f"mae{sfx}" in scores:
            rows.append(f"| {m} | {scores[f'mae{sfx}']:.4f} | {scores[f'rmse{sfx}']:.4f} | "
                        f"{scores[f'psnr{sfx}']:.2f} | {scores[f'ssim{sfx}']:.4f} | {int(scores['pixels'])} |")
    rows += ["", "| band | " + " | ".join(f"MAE {m}" for m in ("model", "linear", "nearest")) + " | "
             + " | ".join(f"SSIM {m}" for m in ("model", "linear", "nearest")) + " |", "|---" * 7 + "|"]
    for b in bands:
        if f"mae_{b}" not in scores:
            continue
        vals = [scores.get(f"mae{'' if m == 'model' else '_' + m}_{b}", float("nan")) for m in
                ("model", "linear", "nearest")]
        vals += [scores.get(f"ssim{'' if m == 'model' else '_' + m}_{b}", float("nan")) for m in
                 ("model", "linear", "nearest")]
        rows.append(f"| {b} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    return "\n".join(rows)


__all__ = ["evaluate_checkpoint", "evaluate_predictions", "format_table", "write_cloudy"]
