"""Cloud-gap imputation fine-tuning: an :class:`~geofm.models.imputer.Imputer` fills pixels hidden by real cloud masks.

Batches (see :mod:`geofm.data.datasets.imputation`): ``image`` (B, C, T, H, W) normalized,
``valid`` (B, T, H, W) clear pixels with data, ``gap`` (B, T, H, W) pixels hidden on purpose.
The model fills ``gap | ~valid``; the loss is the L1 or L2 error over the ``gap`` pixels
(normalized units), averaged per sample first (every sample weighs the same), plus
``baseline_anchor`` times the same distance between the fill and the temporal baseline (with
L1, the fill leaves the baseline only where more than (1 + w) / 2 of the training evidence
agrees on the direction: the model moves away from interpolation only where training supports
it; with L2, a shrinkage towards the baseline by 1 / (1 + w)). Validation and
test report MAE / RMSE / PSNR / SSIM of the gap-filled image on the gap pixels in reflectance
(0..1), overall and per band, for the model and the baselines ``nearest`` (nearest clear date
in days) and ``linear`` (temporal linear interpolation by acquisition day) on the same pixels:
``val/ssim``, ``val/ssim_linear``, ``test/mae_nearest_RED`` ..., plus ``test/pixels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geofm.bands import MODEL_BANDS, REFLECTANCE_SCALE
from geofm.models.imputer import Imputer, day_numbers, fill_hidden
from geofm.tasks.base import FinetuneModule, build_mae
from geofm.tasks.metrics import ScoreSums

METHODS = ("model", "nearest", "linear")


class ImputationTask(FinetuneModule):
    """Fine-tunes an :class:`~geofm.models.imputer.Imputer` (a :class:`~geofm.models.PrithviMAE` inside).

    ``model`` holds :func:`geofm.models.create_model` arguments (``name``, ``checkpoint`` and
    option overrides) plus ``residual`` ("linear", default, or "none": the paper's pure
    reconstruction) and ``patch_threshold`` (for "none"); ``mean``/``std`` (reflectance ×10000)
    map outputs back to reflectance; ``baseline_anchor`` in [0, 1) weighs the fill's distance to
    the temporal linear baseline in the training loss (see the module doc).
    """

    def __init__(self, model: dict[str, Any], *, mean: Sequence[float], std: Sequence[float], loss: str = "l2",
                 strategy: str = "full", lr: float = 1e-4, weight_decay: float = 0.05, scheduler: str = "cosine",
                 warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0, baseline_anchor: float = 0.0):
        super().__init__(strategy=strategy, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio)
        self.save_hyperparameters()
        if loss not in ("l1", "l2"):
            raise ValueError(f"imputation loss must be 'l1' or 'l2', got {loss!r}")
        if not 0.0 <= baseline_anchor < 1.0:
            raise ValueError(f"baseline_anchor must be in [0, 1), got {baseline_anchor!r}")
        self.baseline_anchor = float(baseline_anchor)
        kwargs = dict(model)
        residual = kwargs.pop("residual", "linear")
        threshold = kwargs.pop("patch_threshold", 0.0)
        mae = build_mae(kwargs.pop("name", None), kwargs.pop("checkpoint", None), strategy, **kwargs)
        self.model = Imputer(mae, residual=residual, patch_threshold=threshold)
        self.apply_strategy()
        self.loss_name = loss
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self._sums: dict[str, ScoreSums] = {}
        self.last_scores: dict[str, dict[str, float]] = {}

    def to_reflectance(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, C, T, H, W) -> reflectance 0..1."""
        return (x * self.std + self.mean) / REFLECTANCE_SCALE

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, temporal_coords: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Gap-filled (B, C, T, H, W), normalized; ``hidden`` (B, T, H, W) = pixels to fill; ``temporal_coords``
        (B, T, 2) = (year, day of year) of the dates (time is counted in days; TL encoders embed them)."""
        return self.model(x, hidden, temporal_coords)

    def gap_loss(self, filled: torch.Tensor, x: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """L1/L2 error over the gap pixels (normalized units): the mean of each sample's own mean, over
        the samples that have gap pixels, so that every sample weighs the same whatever its number of
        gap pixels (a window of a 5×5 px series counts as much as one of 32×32 px)."""
        w = gap.unsqueeze(1).float()  # (B, 1, T, H, W)
        err = filled.float() - x.float()
        err = err.abs() if self.loss_name == "l1" else err ** 2
        n = w.sum((1, 2, 3, 4)) * x.shape[1]  # (B,)
        per_sample = (err * w).sum((1, 2, 3, 4)) / n.clamp_min(1.0)
        has = (n > 0).float()
        return (per_sample * has).sum() / has.sum().clamp_min(1.0)

    def training_loss(self, filled: torch.Tensor, x: torch.Tensor, gap: torch.Tensor,
                      base: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`gap_loss` to the truth ``x`` plus ``baseline_anchor`` × :meth:`gap_loss` to the temporal
        baseline ``base`` (B, C, T, H, W) (needed when ``baseline_anchor`` > 0)."""
        loss = self.gap_loss(filled, x, gap)
        if self.baseline_anchor > 0:
            loss = loss + self.baseline_anchor * self.gap_loss(filled, base, gap)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, gap = batch["image"], batch["gap"]
        hidden, coords = gap | ~batch["valid"], batch.get("temporal_coords")
        filled = self(x, hidden, coords)
        base = fill_hidden(x, hidden, True, day_numbers(coords, x.shape[0], x.shape[2], x.device)) \
            if self.baseline_anchor > 0 else None
        loss = self.training_loss(filled, x, gap, base)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def reconstruct(self, batch: dict) -> torch.Tensor:
        """Normalized (B, C, T, H, W): clear pixels from the input, gaps, clouds and nodata filled by the model."""
        return self(batch["image"], batch["gap"] | ~batch["valid"], batch.get("temporal_coords"))

    def _eval_step(self, batch: dict, stage: str) -> None:
        x, valid, gap = batch["image"], batch["valid"], batch["gap"]
        unusable = gap | ~valid
        coords = batch.get("temporal_coords")
        filled = self(x, unusable, coords)
        self.log(f"{stage}/loss", self.gap_loss(filled, x, gap), on_epoch=True, batch_size=len(x))
        sums = self._sums.setdefault(stage, ScoreSums(MODEL_BANDS if x.shape[1] == len(MODEL_BANDS) else None))
        sums.add_fills(filled, x, unusable, gap & valid, self.to_reflectance,
                       day_numbers(coords, x.shape[0], x.shape[2], x.device))

    def _eval_epoch_end(self, stage: str) -> None:
        sums = self._sums.pop(stage, None)
        if sums is None:
            sums = ScoreSums(MODEL_BANDS if self.model.config.in_chans == len(MODEL_BANDS) else None)
        if self.trainer.world_size > 1:  # every rank scored its own share of the samples
            sums.all_reduce(lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"), METHODS,
                            self.model.config.in_chans)
        scores = sums.result()
        self.last_scores[stage] = scores
        if scores:
            self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "recon": self.reconstruct(batch)}


__all__ = ["ImputationTask"]
