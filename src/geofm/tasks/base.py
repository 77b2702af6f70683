"""What the fine-tuning LightningModules share: strategies, optimizer and learning-rate schedule.

The strategies and schedules are defined with the configuration (:mod:`geofm.tasks.finetune_config`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn

from geofm.tasks.distributed import clip_gradients_for
from geofm.tasks.finetune_config import SCHEDULERS, STRATEGIES
from geofm.training import adamw, decay_groups, lr_factor


def build_mae(name: str | None, checkpoint: str | None, strategy: str, encoder_only: bool = False, **options):
    """The :class:`~geofm.models.PrithviMAE` a strategy starts from: weights from ``checkpoint``, or
    (``scratch``) its architecture only, randomly initialised (``name=None``: taken from the checkpoint).
    ``encoder_only`` accepts checkpoints without a decoder (segmentation uses only the encoder)."""
    from geofm.models.checkpoints import read_checkpoint
    from geofm.models.mae import PrithviMAE
    from geofm.models.presets import build_config, create_model

    if strategy != "scratch":
        return create_model(name, checkpoint, encoder_only=encoder_only, **options)
    if name is not None or checkpoint is None:
        return create_model(name, None, **options)
    return PrithviMAE(build_config(None, read_checkpoint(checkpoint).config or {}, **options))


class FinetuneModule(pl.LightningModule):
    """Base: ``self.model`` has an ``encoder``; applies the strategy and builds AdamW + schedule."""

    model: nn.Module

    def __init__(self, *, strategy: str = "full", lr: float = 1e-4, weight_decay: float = 0.05,
                 scheduler: str = "cosine", warmup_epochs: float = 0.0, min_lr_ratio: float = 0.0):
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        self.strategy = strategy
        self.lr, self.weight_decay = lr, weight_decay
        self.scheduler_name, self.warmup_epochs, self.min_lr_ratio = scheduler, warmup_epochs, min_lr_ratio

    def apply_strategy(self) -> None:
        """Call once ``self.model`` exists: freezes the encoder for ``frozen``."""
        if self.strategy == "frozen":
            self.model.encoder.requires_grad_(False)
            self.model.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.strategy == "frozen" and hasattr(self, "model"):
            self.model.encoder.eval()  # dropout/drop-path off, as a fixed feature extractor
        return self

    # evaluation: subclasses implement _eval_step(batch, stage) and _eval_epoch_end(stage)
    def _eval_step(self, batch: dict, stage: str) -> None:
        raise NotImplementedError

    def _eval_epoch_end(self, stage: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip_gradients_for(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        # the AdamW of geofm.training (fused kernel; no decay on biases, norms, tokens); betas as torch's default
        opt = adamw(decay_groups(self, self.weight_decay), lr=self.lr, betas=(0.9, 0.999),
                    weight_decay=self.weight_decay, fused=str(self.trainer.precision) != "16-mixed")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.trainer.max_epochs or 1))
        warmup = int(round(self.warmup_epochs * total / epochs))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, warmup, total, self.min_lr_ratio, self.scheduler_name))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


__all__ = ["SCHEDULERS", "STRATEGIES", "FinetuneModule"]
