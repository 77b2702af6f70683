"""Auto-correction: an imputation model's correction is written only where it beats the baseline.

>>> choice = choose_correction(imputer, series, mode="auto", mean=m, std=s, bands=MODEL_BANDS, tile=32)  # doctest: +SKIP
>>> choice.use_model  # (T, C) bools: the model's fill, else temporal linear interpolation  # doctest: +SKIP

Before a series is filled, ``mode="auto"`` estimates on the series itself whether the learned
correction helps: the real cloud masks of its partly cloudy dates (1–95 % cloud) hide clear
pixels of its other dates, and the same masks rotated by 180° those of every date, its own too
(the fixed-mask protocol of ``geofm evaluate-imputation``, every date a target, every own
mask, tiles of ``tile`` px; at most ``max_samples`` samples, evenly spaced); the model and the
baseline (temporal linear interpolation by acquisition day) fill them from the same inputs,
and each date and band keeps the model only where it wins with confidence: the mean per-pixel
gain (the baseline's absolute error minus the model's) exceeds :data:`CONFIDENCE` standard
errors. Dates are not pooled: the error of a gap on an end date, filled from one side, is not
that of a gap between two clear dates. Few scored pixels or a small, noisy gain keep the
baseline; a series without a usable mask gives no evidence: the baseline is written.
``"always"`` keeps the model in every band, ``"never"`` writes the baseline; neither scores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from geofm.bands import REFLECTANCE_SCALE

log = logging.getLogger(__name__)

CORRECTION_MODES = ("auto", "always", "never")
#: a band keeps the model when its mean per-pixel gain over the baseline exceeds this many standard errors
CONFIDENCE = 2.0


@dataclass
class CorrectionChoice:
    """Per date and band: write the model's fill (``use_model[t][c]``) or the baseline; the scores behind it
    (MAE in reflectance 0..1, NaN where a date had no scored pixel) and the scored pixels per date."""

    mode: str
    bands: list[str]
    dates: list[str]
    use_model: list[list[bool]]
    mae_model: list[list[float]] = field(default_factory=list)
    mae_baseline: list[list[float]] = field(default_factory=list)
    pixels: list[int] = field(default_factory=list)

    @classmethod
    def fixed(cls, mode: str, bands: Sequence[str], dates: Sequence[str], use: bool) -> CorrectionChoice:
        return cls(mode, list(bands), list(dates), [[use] * len(bands) for _ in dates])

    def kept(self, t: int) -> str:
        return ",".join(b for b, u in zip(self.bands, self.use_model[t]) if u) or "none"

    def tags(self) -> dict[str, str]:
        """GeoTIFF tags of the decision (see docs/finetuning.md, "Auto-correction")."""
        out = {"geofm_correction": self.mode,
               "geofm_correction_bands": "; ".join(f"{d}: {self.kept(t)}" for t, d in enumerate(self.dates))}
        if self.pixels:
            out["geofm_correction_pixels"] = "; ".join(f"{d}: {n}" for d, n in zip(self.dates, self.pixels))
            for key, mae in (("model", self.mae_model), ("baseline", self.mae_baseline)):
                out[f"geofm_correction_mae_{key}"] = "; ".join(
                    f"{d}: " + ",".join(f"{b}={v:.5f}" for b, v in zip(self.bands, mae[t]))
                    for t, d in enumerate(self.dates) if self.pixels[t])
        return out

    def summary(self) -> str:
        what = "; ".join(f"{d}: model in {self.kept(t)}" for t, d in enumerate(self.dates))
        if not self.pixels:
            return f"correction {self.mode}: {what}" + (" (no own cloud mask to score on: baseline)"
                                                         if self.mode == "auto" else "")
        scores = "; ".join(f"{d} ({self.pixels[t]} px): " + ", ".join(
            f"{b} {m:.4f}/{s:.4f}" for b, m, s in zip(self.bands, self.mae_model[t], self.mae_baseline[t]))
            for t, d in enumerate(self.dates) if self.pixels[t])
        return f"correction {self.mode}: {what}; MAE model/baseline: {scores}"


class CorrectionScores:
    """Per date and band sums of the absolute errors of the model and of the baseline on hidden clear pixels."""

    def __init__(self, model: torch.nn.Module, std: Sequence[float], frames: int, device: str | torch.device = "cpu"):
        self.model, self.device = model, torch.device(device)
        self.scale = torch.tensor(std, dtype=torch.float64, device=self.device).view(1, -1, 1, 1, 1) / REFLECTANCE_SCALE
        self.err = {k: torch.zeros(len(std), frames, dtype=torch.float64, device=self.device)
                    for k in ("model", "baseline", "gain2")}  # (C, T); gain2: sum of the squared per-pixel gains
        self.pixels = torch.zeros(frames, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def add(self, x: torch.Tensor, unusable: torch.Tensor, gap: torch.Tensor, coords: torch.Tensor | None,
            location_coords: torch.Tensor | None = None) -> None:
        """x (B, C, T, h, w) normalized; ``unusable`` (B, T, h, w) the pixels to fill (``gap`` among them);
        ``gap`` the clear pixels hidden on purpose, scored; ``coords`` (B, T, 2) (year, day of year)."""
        from geofm.models.imputer import day_numbers, fill_hidden

        x, unusable, gap = x.to(self.device), unusable.to(self.device), gap.to(self.device)
        score = gap.unsqueeze(1)
        if not score.any():
            return
        coords = None if coords is None else coords.to(self.device)
        lc = None if location_coords is None else location_coords.to(self.device).expand(len(x), -1)
        fills = {"model": self.model(x, unusable, coords, lc),
                 "baseline": fill_hidden(x, unusable, True, day_numbers(coords, x.shape[0], x.shape[2], self.device))}
        abs_err = {k: (f.double() - x.double()).abs() * self.scale * score for k, f in fills.items()}
        for k, e in abs_err.items():
            self.err[k] += e.sum((0, 3, 4))
        self.err["gain2"] += ((abs_err["baseline"] - abs_err["model"]) ** 2).sum((0, 3, 4))
        self.pixels += score.double().sum((0, 1, 3, 4))

    def choice(self, mode: str, bands: Sequence[str], dates: Sequence[str]) -> CorrectionChoice:
        """Each date and band keeps the model where it wins with confidence: the mean per-pixel gain (the
        baseline's absolute error minus the model's) exceeds :data:`CONFIDENCE` standard errors."""
        n = self.pixels.cpu().numpy()
        if n.sum() == 0:
            return CorrectionChoice.fixed(mode, bands, dates, False)
        mae = {k: (v.cpu().numpy() / np.maximum(n, 1)).T for k, v in self.err.items()}  # (T, C)
        gain = mae["baseline"] - mae["model"]
        var = np.maximum(mae["gain2"] - gain ** 2, 0.0) * (n / np.maximum(n - 1, 1))[:, None]
        keep = (n[:, None] >= 2) & (gain > CONFIDENCE * np.sqrt(var / np.maximum(n, 1)[:, None]))
        nan = np.where(n[:, None] > 0, 0.0, np.nan)
        return CorrectionChoice(mode, list(bands), list(dates), keep.tolist(), (mae["model"] + nan).tolist(),
                                (mae["baseline"] + nan).tolist(), [int(v) for v in n])


def own_mask_gaps(unusable: torch.Tensor, cloud: torch.Tensor, min_cover: float = 0.01, max_cover: float = 0.95
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples that hide clear pixels of each date with the cloud mask of each partly cloudy date, as it is
    (on the other dates) and rotated by 180° (also on its own date: evidence for every date).

    ``unusable`` (T, h, w) bool (clouds and nodata), ``cloud`` (T, h, w) bool (the clouds only).
    Returns (unusable, gap), each (N, T, h, w), one per (mask date, target date) pair with a gap pixel.
    """
    T = unusable.shape[0]
    seen = (cloud | ~unusable).flatten(1).sum(1).clamp_min(1)
    cover = cloud.flatten(1).sum(1) / seen
    hides, gaps = [], []
    for s in range(T):
        if not (min_cover <= float(cover[s]) <= max_cover):
            continue
        for mask in (cloud[s], cloud[s].flip(0, 1)):
            for t in range(T):
                g = torch.zeros_like(unusable)
                g[t] = mask & ~unusable[t]
                if g.any():
                    hides.append(unusable | g)
                    gaps.append(g)
    if not gaps:
        return unusable.new_zeros((0, *unusable.shape)), unusable.new_zeros((0, *unusable.shape))
    return torch.stack(hides), torch.stack(gaps)


def fmask_cloud_masks(series, min_cover: float = 0.01, max_cover: float = 0.95) -> list[tuple[str, np.ndarray]]:
    """(name, (H, W) bool) cloud masks of the series' partly cloudy dates (cover in [min, max] of the
    pixels that are not Fmask fill), read from the Fmask layers alone (not the bands of the scene)."""
    from geofm.data.hls import FMASK_FILL, cfmask_to_hls_fmask, cloud_mask, open_raster

    out = []
    for f in series.frames:
        if f.fmask is None:
            continue
        with open_raster(f.fmask[0]) as src:
            fmask = src.read(f.fmask[1])
        if series.fmask_kind == "cfmask":
            fmask = cfmask_to_hls_fmask(fmask.astype(np.int16))
        seen = fmask != FMASK_FILL
        cloud = cloud_mask(fmask, series.cloud_bits) & seen
        if min_cover <= cloud.sum() / max(1, seen.sum()) <= max_cover:
            out.append((f"{f.granule_id} (own)", cloud))
    return out


@torch.no_grad()
def choose_correction(model: torch.nn.Module, series, *, mode: str = "auto", mean: Sequence[float],
                      std: Sequence[float], bands: Sequence[str], tile: int,
                      location_coords: torch.Tensor | None = None,
                      device: str | torch.device = "cpu", max_samples: int = 64, batch_size: int = 8
                      ) -> CorrectionChoice:
    """The :class:`CorrectionChoice` of ``model`` (an :class:`~geofm.models.imputer.Imputer`) on ``series``
    (a :class:`~geofm.data.series.Series` of the model's T dates) under ``mode`` (see the module doc)."""
    from torch.utils.data import DataLoader

    from geofm.data.datasets.imputation import CloudMaskBank, FixedGaps
    from geofm.errors import ConfigError

    if mode not in CORRECTION_MODES:
        raise ConfigError(f"--correction must be one of {', '.join(CORRECTION_MODES)}, got {mode!r}")
    dates = [f.date_str or f"t{t}" for t, f in enumerate(series.frames)]
    if mode != "auto":
        return CorrectionChoice.fixed(mode, bands, dates, mode == "always")
    masks = CloudMaskBank()
    for name, m in fmask_cloud_masks(series):
        masks.add(m, name)
        masks.add(np.rot90(m, 2), f"{name}, rotated 180")
    scores = CorrectionScores(model, std, len(series), device)
    if len(masks):
        ds = FixedGaps([series], masks, frames=len(series), size=tile, mean=mean, std=std,
                       target_frames=range(len(series)), max_items=max_samples)
        for batch in DataLoader(ds, batch_size=batch_size):
            valid, gap = batch["valid"], batch["gap"]
            scores.add(batch["image"], gap | ~valid, gap & valid, batch["temporal_coords"], location_coords)
    choice = scores.choice(mode, bands, dates)
    log.info("%s", choice.summary())
    return choice


@torch.no_grad()
def corrected_fill(model: torch.nn.Module, x: torch.Tensor, unusable: torch.Tensor, cloud: torch.Tensor,
                   coords: torch.Tensor | None, std: Sequence[float], location_coords: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, list[CorrectionChoice]]:
    """What ``--correction auto`` writes for each sample of a batch, decided on the sample alone.

    x (B, C, T, h, w) normalized; ``unusable`` (B, T, h, w) the pixels to fill; ``cloud`` (B, T, h, w)
    the pixels flagged as cloud in the input (whose shapes, on the other dates, give the test gaps);
    ``coords`` (B, T, 2). Returns the filled (B, C, T, h, w) and each sample's choice.
    """
    from geofm.models.imputer import day_numbers, fill_hidden

    lc = None if location_coords is None else location_coords.expand(len(x), -1)
    model_fill = model(x, unusable, coords, lc)
    base_fill = fill_hidden(x, unusable, True, day_numbers(coords, x.shape[0], x.shape[2], x.device))
    out, choices = torch.empty_like(x), []
    for i in range(len(x)):
        scores = CorrectionScores(model, std, x.shape[2], x.device)
        hides, gaps = own_mask_gaps(unusable[i], cloud[i])
        n = len(gaps)
        xi = x[i:i + 1].expand(n, -1, -1, -1, -1)
        ci = None if coords is None else coords[i:i + 1].expand(n, -1, -1)
        if n:
            scores.add(xi, hides, gaps, ci, location_coords)
        choice = scores.choice("auto", [str(c) for c in range(x.shape[1])], [str(t) for t in range(x.shape[2])])
        out[i] = blend_correction(model_fill[i:i + 1], base_fill[i:i + 1], choice.use_model)[0]
        choices.append(choice)
    return out, choices


def blend_correction(model_fill: torch.Tensor, baseline_fill: torch.Tensor, use_model: Sequence[Sequence[bool]]
                     ) -> torch.Tensor:
    """(B, C, T, h, w): the model's fill in the (date, band) pairs of ``use_model`` (T, C), the baseline's elsewhere."""
    keep = torch.as_tensor(np.asarray(use_model, bool).T.copy(), device=model_fill.device)[None, :, :, None, None]
    return torch.where(keep, model_fill, baseline_fill)


__all__ = ["CONFIDENCE", "CORRECTION_MODES", "CorrectionChoice", "CorrectionScores", "blend_correction",
           "choose_correction",
           "corrected_fill", "fmask_cloud_masks", "own_mask_gaps"]
