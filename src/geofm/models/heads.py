"""Heads: a neck's feature map -> per-pixel class logits."""

from __future__ import annotations

import torch
from torch import nn

from geofm.models.necks import conv_norm_act


class FCNHead(nn.Module):
    """``num_convs`` × (3×3 conv + GroupNorm + ReLU), dropout, 1×1 classifier.

    (B, in_channels, H', W') -> (B, num_classes, H', W') logits.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 64, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(num_convs):
            layers.append(conv_norm_act(width, channels, 3))
            width = channels
        self.convs = nn.Sequential(*layers)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.convs(x)))


__all__ = ["FCNHead"]
