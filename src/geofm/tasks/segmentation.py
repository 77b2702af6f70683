"""Semantic segmentation fine-tuning (flood, burn scars, crops) as a LightningModule.

Batches: ``image`` (B, C, T, H, W) normalized, ``mask`` (B, H, W) int64 class indices, -1 ignored.
Losses: ``ce`` (cross-entropy with optional class weights: flood [0.3, 0.7], crops' weights),
``dice`` (soft Dice averaged over classes, burn scars) or ``ce+dice``. Validation/test log
``<stage>/loss`` and the scores of :func:`geofm.tasks.metrics.scores_from_confusion`
(``<stage>/mIoU``, ``<stage>/IoU_water`` ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from geofm.models.segmentation import SegmentationModel
from geofm.tasks.base import FinetuneModule, build_mae
from geofm.tasks.metrics import confusion_metric, scores_from_confusion

LOSSES = ("ce", "dice", "ce+dice")
HEAD_KEYS = ("num_classes", "neck", "num_frames", "neck_channels", "layers", "head_channels", "head_convs", "dropout")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of softmax(logits) (B, K, H, W) vs labels (B, H, W), averaged over the K classes."""
    k = logits.shape[1]
    valid = target != ignore_index
    prob = logits.float().softmax(1) * valid.unsqueeze(1)
    onehot = F.one_hot(target.clamp_min(0), k).permute(0, 3, 1, 2).to(prob.dtype) * valid.unsqueeze(1)
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


class SegmentationTask(FinetuneModule):
    """Encoder + neck + head trained on per-pixel labels.

    ``model`` holds the keyword arguments of :func:`geofm.models.segmentation.build_segmentation_model`
    (``name``, ``checkpoint``, encoder options, ``num_classes``, ``neck`` ...); with
    ``strategy="scratch"`` only the checkpoint's architecture is used (random weights).
    """

    def __init__(self, model: dict[str, Any], *, class_names: Sequence[str], loss: str = "ce",
                 class_weights: Sequence[float] | None = None, ignore_index: int = -1, strategy: str = "full",
                 lr: float = 1e-4, weight_decay: float = 0.05, scheduler: str = "cosine", warmup_epochs: float = 0.0,
                 min_lr_ratio: float = 0.0):
        super().__init__(strategy=strategy, lr=lr, weight_decay=weight_decay, scheduler=scheduler,
                         warmup_epochs=warmup_epochs, min_lr_ratio=min_lr_ratio)
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        enc = dict(model)
        head = {k: enc.pop(k) for k in HEAD_KEYS if k in enc}
        self.class_names = list(class_names)
        head.setdefault("num_classes", len(self.class_names))
        mae = build_mae(enc.pop("name", None), enc.pop("checkpoint", None), strategy, encoder_only=True, **enc)
        self.model = SegmentationModel(mae, head.pop("num_classes"), **head)
        self.apply_strategy()
        self.loss_name, self.ignore_index = loss, ignore_index
        if class_weights is not None and len(class_weights) != self.model.num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {self.model.num_classes} classes")
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32)
                             if class_weights is not None else None, persistent=False)
        self.val_cm = confusion_metric(self.model.num_classes, ignore_index)
        self.test_cm = confusion_metric(self.model.num_classes, ignore_index)
        self.last_scores: dict[str, dict[str, float]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def compute_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = logits.new_zeros(())
        if "ce" in self.loss_name:
            w = self.class_weights.to(logits.dtype) if self.class_weights is not None else None
            if (target != self.ignore_index).any():
                loss = loss + F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index)
        if "dice" in self.loss_name:
            loss = loss + dice_loss(logits, target, self.ignore_index)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.compute_loss(self(batch["image"]), batch["mask"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["image"])
        self.log(f"{stage}/loss", self.compute_loss(logits, batch["mask"]), on_epoch=True,
                 batch_size=len(batch["image"]))
        (self.val_cm if stage == "val" else self.test_cm).update(logits.argmax(1), batch["mask"])

    def _eval_epoch_end(self, stage: str) -> None:
        cm_metric = self.val_cm if stage == "val" else self.test_cm
        scores = scores_from_confusion(cm_metric.compute(), self.class_names)
        cm_metric.reset()
        self.last_scores[stage] = scores
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items() if k != "mIoU"})
        self.log(f"{stage}/mIoU", scores["mIoU"], prog_bar=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self(batch["image"])
        return {"index": batch["index"], "pred": logits.argmax(1), "prob": logits.softmax(1)}


__all__ = ["LOSSES", "SegmentationTask", "dice_loss"]
