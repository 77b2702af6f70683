"""Auto-correction: an imputation model's correction is written only in the bands where it beats the baseline.

>>> choice = choose_correction(imputer, series, mode="auto", mean=m, std=s, bands=MODEL_BANDS, tile=32)  # doctest: +SKIP
>>> choice.use_model  # one bool per band: the model's fill, else temporal linear interpolation  # doctest: +SKIP

Before a series is filled, ``mode="auto"`` estimates on the series itself whether the learned
correction helps: the real cloud masks of its partly cloudy dates (1–95 % cloud) hide clear
pixels of its *other* dates (the fixed-mask protocol of ``geofm evaluate-imputation``, every
date a target, every own mask, tiles of ``tile`` px; at most ``max_samples`` samples, evenly
spaced); the model and the baseline (temporal linear interpolation by acquisition day) fill
them from the same inputs, and each band keeps the model only where its mean absolute error is
strictly lower. A series without a usable mask gives no evidence: the baseline is written.
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


@dataclass
class CorrectionChoice:
    """Per band: write the model's fill (``use_model``) or the baseline; the scores behind it (reflectance 0..1)."""

    mode: str
    bands: list[str]
    use_model: list[bool]
    mae_model: list[float] = field(default_factory=list)
    mae_baseline: list[float] = field(default_factory=list)
    pixels: int = 0

    def tags(self) -> dict[str, str]:
        """GeoTIFF tags of the decision (see docs/finetuning.md, "Auto-correction")."""
        out = {"geofm_correction": self.mode,
               "geofm_correction_bands": ",".join(b for b, u in zip(self.bands, self.use_model) if u) or "none",
               "geofm_correction_pixels": str(self.pixels)}
        if self.mae_model:
            out["geofm_correction_mae_model"] = ",".join(f"{b}={v:.5f}" for b, v in zip(self.bands, self.mae_model))
            out["geofm_correction_mae_baseline"] = ",".join(f"{b}={v:.5f}"
                                                            for b, v in zip(self.bands, self.mae_baseline))
        return out

    def summary(self) -> str:
        kept = [b for b, u in zip(self.bands, self.use_model) if u]
        what = "model in " + ", ".join(kept) if kept else "baseline (temporal linear) in every band"
        if not self.mae_model:
            return f"correction {self.mode}: {what}" + (" (no own cloud mask to score on)"
                                                         if self.mode == "auto" else "")
        scores = ", ".join(f"{b} {m:.4f}/{s:.4f}" for b, m, s in zip(self.bands, self.mae_model, self.mae_baseline))
        return f"correction {self.mode}: {what}; MAE model/baseline on {self.pixels} px: {scores}"


@torch.no_grad()
def choose_correction(model: torch.nn.Module, series, *, mode: str = "auto", mean: Sequence[float],
                      std: Sequence[float], bands: Sequence[str], tile: int, location_coords: torch.Tensor | None = None,
                      device: str | torch.device = "cpu", max_samples: int = 64, batch_size: int = 8
                      ) -> CorrectionChoice:
    """The :class:`CorrectionChoice` of ``model`` (an :class:`~geofm.models.imputer.Imputer`) on ``series``
    (a :class:`~geofm.data.series.Series` of the model's T dates) under ``mode`` (see the module doc)."""
    from torch.utils.data import DataLoader

    from geofm.data.datasets.imputation import CloudMaskBank, FixedGaps, own_cloud_masks
    from geofm.errors import ConfigError
    from geofm.models.imputer import day_numbers, fill_hidden

    if mode not in CORRECTION_MODES:
        raise ConfigError(f"--correction must be one of {', '.join(CORRECTION_MODES)}, got {mode!r}")
    bands = list(bands)
    if mode != "auto":
        return CorrectionChoice(mode, bands, [mode == "always"] * len(bands))
    masks = CloudMaskBank()
    for name, m in own_cloud_masks(series):
        masks.add(m, name)
    if len(masks) == 0:
        choice = CorrectionChoice(mode, bands, [False] * len(bands))
        log.info("%s", choice.summary())
        return choice
    ds = FixedGaps([series], masks, frames=len(series), size=tile, mean=mean, std=std,
                   target_frames=range(len(series)), max_items=max_samples)
    device = torch.device(device)
    scale = torch.tensor(std, dtype=torch.float64, device=device).view(1, -1, 1, 1, 1) / REFLECTANCE_SCALE
    err = {"model": torch.zeros(len(bands), dtype=torch.float64, device=device)}
    err["baseline"] = err["model"].clone()
    n = 0
    for batch in DataLoader(ds, batch_size=batch_size):
        x, valid, gap = batch["image"].to(device), batch["valid"].to(device), batch["gap"].to(device)
        coords = batch["temporal_coords"].to(device)
        score = (gap & valid).unsqueeze(1)  # (B, 1, T, h, w)
        if not score.any():
            continue
        unusable = gap | ~valid
        lc = None if location_coords is None else location_coords.to(device).expand(len(x), -1)
        fills = {"model": model(x, unusable, coords, lc),
                 "baseline": fill_hidden(x, unusable, True, day_numbers(coords, x.shape[0], x.shape[2], device))}
        for k, f in fills.items():
            err[k] += ((f.double() - x.double()).abs() * scale * score).sum((0, 2, 3, 4))
        n += int(score.sum())
    if n == 0:
        choice = CorrectionChoice(mode, bands, [False] * len(bands))
    else:
        mae = {k: (v / n).cpu().numpy() for k, v in err.items()}
        choice = CorrectionChoice(mode, bands, [bool(a < b) for a, b in zip(mae["model"], mae["baseline"])],
                                  [float(v) for v in mae["model"]], [float(v) for v in mae["baseline"]], n)
    log.info("%s", choice.summary())
    return choice


def blend_correction(model_fill: torch.Tensor, baseline_fill: torch.Tensor, use_model: Sequence[bool]) -> torch.Tensor:
    """(B, C, T, h, w): the model's fill in the bands of ``use_model``, the baseline's in the others."""
    keep = torch.as_tensor(np.asarray(use_model, bool), device=model_fill.device).view(1, -1, 1, 1, 1)
    return torch.where(keep, model_fill, baseline_fill)


__all__ = ["CORRECTION_MODES", "CorrectionChoice", "blend_correction", "choose_correction"]
