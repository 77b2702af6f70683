"""Cloud-gap imputation fine-tuning: the Prithvi MAE reconstructs patches hidden by real cloud masks.

Batches (see :mod:`geofm.data.datasets.imputation`): ``image`` (B, C, T, H, W) normalized,
``valid`` (B, T, H, W), ``gap`` (B, T, H, W) hidden pixels, ``patch_mask`` (B, L) 1 = hidden.
The loss is the masked L1 or L2 error over hidden patches' pixels with data. Validation and
test report MAE / RMSE / PSNR / SSIM on the hidden pixels in reflectance (0..1), for the model
and for the baselines ``nearest`` (nearest clear frame) and ``linear`` (temporal linear
interpolation) on the same gaps: ``val/ssim``, ``val/ssim_nearest``, ``val/ssim_linear`` ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geofm.bands import REFLECTANCE_SCALE
from geofm.tasks.base import FinetuneModule, build_mae
from geofm.tasks.metrics import masked_image_scores, nearest_clear_frame, temporal_linear

METHODS = ("model", "nearest", "linear")


class ScoreSums:
    """Pixel-weighted running sums of :func:`masked_image_scores` results."""

    def __init__(self):
        self.sums: dict[str, float] = {}

    def add(self, method: str, s: dict) -> None:
        if s["n"] == 0:
            return
        for key, v in (("abs", s["mae"] * s["n"]), ("sq", s["rmse"] ** 2 * s["n"]), ("ssim", s["ssim"] * s["n"]),
                       ("n", s["n"])):
            self.sums[f"{method}/{key}"] = self.sums.get(f"{method}/{key}", 0.0) + float(v)

    def result(self, data_range: float = 1.0) -> dict[str, float]:
        out = {}
        for m in METHODS:
            n = self.sums.get(f"{m}/n", 0.0)
            if n == 0:
                continue
            suffix = "" if m == "model" else f"_{m}"
            mse = self.sums[f"{m}/sq"] / n
            out[f"mae{suffix}"] = self.sums[f"{m}/abs"] / n
            out[f"rmse{suffix}"] = mse ** 0.5
            out[f"psnr{suffix}"] = float(10 * torch.log10(torch.tensor(data_range ** 2 / max(mse, 1e-12))))
            out[f"ssim{suffix}"] = self.sums[f"{m}/ssim"] / n
        return out


class ImputationTask(FinetuneModule):
    """Fine-tunes a :class:`~geofm.models.PrithviMAE` to fill cloud gaps.

    ``model`` holds :func:`geofm.models.create_model` arguments (``name``, ``checkpoint`` and
    option overrides); ``mean``/``std`` (reflectance ×10000) map outputs back to reflectance.
    """

    def __init__(self, model: dict[str, Any], *, mean: Sequence[float], std: Sequence[float], loss: str = "l2",
                 strategy: str = "full", lr: float = 1e-4, weight_decay: float = 0.05, scheduler: str = "cosine",
                 warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0):
        super().__init__(strategy=strategy, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio)
        self.save_hyperparameters()
        if loss not in ("l1", "l2"):
            raise ValueError(f"imputation loss must be 'l1' or 'l2', got {loss!r}")
        kwargs = dict(model)
        self.model = build_mae(kwargs.pop("name", None), kwargs.pop("checkpoint", None), strategy, **kwargs)
        self.apply_strategy()
        self.loss_name = loss
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1), persistent=False)
        self._sums: dict[str, ScoreSums] = {}
        self.last_scores: dict[str, dict[str, float]] = {}

    def to_reflectance(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized (B, C, T, H, W) -> reflectance 0..1."""
        return (x * self.std + self.mean) / REFLECTANCE_SCALE

    def masked_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean L1/L2 error over hidden patches' valid pixels (normalized units)."""
        target = self.model.patchify(x)
        if self.model.config.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        w = self.model.patchify(valid.unsqueeze(1).expand_as(x).to(pred.dtype)) * mask.unsqueeze(-1)
        err = (pred.float() - target.float())
        err = err.abs() if self.loss_name == "l1" else err ** 2
        return (err * w).sum() / w.sum().clamp_min(1.0)

    def forward(self, x: torch.Tensor, patch_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pred (B, L, u*p*p*C), mask (B, L))."""
        _, pred, mask = self.model(x, mask=patch_mask)
        return pred, mask

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred, mask = self(batch["image"], batch["patch_mask"])
        loss = self.masked_loss(batch["image"], pred, mask, batch["valid"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def reconstruct(self, batch: dict) -> torch.Tensor:
        """Normalized (B, C, T, H, W): visible pixels from the input, hidden patches from the model."""
        pred, mask = self(batch["image"], batch["patch_mask"])
        return self.model.reconstruct(batch["image"], pred, mask)

    def _eval_step(self, batch: dict, stage: str) -> None:
        x, valid, gap = batch["image"], batch["valid"], batch["gap"]
        pred, mask = self(x, batch["patch_mask"])
        self.log(f"{stage}/loss", self.masked_loss(x, pred, mask, valid), on_epoch=True, batch_size=len(x))
        recon = self.model.reconstruct(x, pred, mask)
        target = self.to_reflectance(x)
        hidden = gap & valid
        sums = self._sums.setdefault(stage, ScoreSums())
        unusable = gap | ~valid  # baselines may only copy visible pixels with data
        for method, filled in (("model", recon), ("nearest", nearest_clear_frame(x, unusable)),
                               ("linear", temporal_linear(x, unusable))):
            sums.add(method, masked_image_scores(self.to_reflectance(filled), target, hidden))

    def _eval_epoch_end(self, stage: str) -> None:
        scores = self._sums.pop(stage, ScoreSums()).result()
        self.last_scores[stage] = scores
        if scores:
            self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"index": batch["index"], "recon": self.reconstruct(batch)}


__all__ = ["ImputationTask", "ScoreSums"]
