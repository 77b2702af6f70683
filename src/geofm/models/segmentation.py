"""Segmentation model: Prithvi encoder + neck + FCN head, (B, C, T, H, W) -> (B, K, H, W) logits.

>>> model = build_segmentation_model("prithvi_tiny", num_classes=2)
>>> logits = model(torch.randn(1, 6, 3, 64, 64))  # (1, 2, 64, 64)  # doctest: +SKIP

Its export (weights + data description) is :mod:`geofm.models.export`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geofm.models.heads import FCNHead
from geofm.models.mae import PrithviConfig, PrithviMAE
from geofm.models.necks import NECKS
from geofm.models.vit import PrithviViT


def pad_to_patches(x: torch.Tensor, p: int, q: int | None = None, *, mode: str | None = None,
                   centered: bool = False) -> torch.Tensor:
    """(B, C, T, H, W) padded to H, W multiples of (p, q): at the bottom/right, or evenly on both sides
    (``centered``). ``mode`` is F.pad's; None: "reflect", or "replicate" where the image is no larger
    than the pad (reflect cannot). Returns ``x`` itself when nothing is missing."""
    q = p if q is None else q
    c, t, H, W = x.shape[1:]
    ph, pw = (-H) % p, (-W) % q
    if not (ph or pw):
        return x
    mode = mode or ("reflect" if ph < H and pw < W else "replicate")
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2) if centered else (0, pw, 0, ph)
    return F.pad(x.flatten(1, 2), pads, mode=mode).unflatten(1, (c, t))


def default_neck_channels(patch: int, start: int = 256) -> list[int]:
    """Widths of the reference neck: one ×2 upsampling per factor 2 of the patch size, halving to ≥ 32."""
    n_up = max(1, round(math.log2(patch)))
    return [max(32, start >> i) for i in range(n_up)]


def default_layers(depth: int) -> list[int]:
    """Four evenly spaced blocks ending at the last one: depth 12 -> [2, 5, 8, 11], depth 4 -> [0, 1, 2, 3]."""
    return [max(0, round(depth * k / 4) - 1) for k in (1, 2, 3, 4)]


class SegmentationModel(nn.Module):
    """Prithvi encoder + neck + FCN head: (B, C, T, H, W) normalized reflectance -> (B, K, H, W) logits.

    ``encoder`` is a :class:`PrithviViT` carrying its ``config`` (as :func:`create_encoder` returns)
    or a :class:`PrithviMAE` (its encoder is used). ``num_frames`` is the T of the inputs (it may
    differ from pretraining; position embeddings are interpolated); H and W need not be
    multiples of the patch size (inputs are reflect-padded and logits cropped).
    """

    def __init__(self, encoder: PrithviViT | PrithviMAE, num_classes: int, *, neck: str = "reference",
                 num_frames: int | None = None, neck_channels: Sequence[int] | int | None = None,
                 layers: Sequence[int] | None = None, head_channels: int = 64, head_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        if isinstance(encoder, PrithviMAE):
            encoder_config, encoder = encoder.config, encoder.encoder
        else:
            encoder_config = getattr(encoder, "config", None)
        if encoder_config is None:
            raise ValueError("the encoder carries no config: build it with geofm.models.create_encoder")
        if neck not in NECKS:
            raise ValueError(f"unknown neck {neck!r}; expected one of {sorted(NECKS)}")
        self.encoder = encoder
        self.encoder_config: PrithviConfig = encoder_config
        u, p, _ = encoder.patch_size
        num_frames = int(num_frames or encoder.num_frames)
        if num_frames % u:
            raise ValueError(f"num_frames {num_frames} is not a multiple of the tubelet size {u}")
        in_channels = (num_frames // u) * encoder.embed_dim
        if neck == "reference":
            neck_channels = list(neck_channels) if neck_channels is not None else default_neck_channels(p)
            self.neck = NECKS[neck](in_channels, neck_channels)
            layers = None
        else:
            neck_channels = int(neck_channels) if neck_channels is not None else 128
            layers = list(layers) if layers is not None else default_layers(len(encoder.blocks))
            self.neck = NECKS[neck](in_channels, neck_channels)
        self.layers = layers
        self.head = FCNHead(self.neck.out_channels, num_classes, head_channels, head_convs, dropout)
        self.num_classes = int(num_classes)
        self.num_frames = num_frames
        self.head_config = {"num_classes": int(num_classes), "neck": neck, "num_frames": num_frames,
                            "neck_channels": neck_channels, "layers": layers, "head_channels": int(head_channels),
                            "head_convs": int(head_convs), "dropout": float(dropout)}

    def features(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                 location_coords: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encoder tokens the neck needs: [last (B, 1+L, D)] or the four chosen layers."""
        if self.layers is None:
            return [self.encoder(x, temporal_coords, location_coords)]
        feats = list(self.encoder(x, temporal_coords, location_coords, return_layers=self.layers))
        if self.layers[-1] % len(self.encoder.blocks) == len(self.encoder.blocks) - 1:
            feats[-1] = self.encoder.norm(feats[-1])
        return feats

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) normalized float -> logits (B, K, H, W)."""
        b, c, t, H, W = x.shape
        if c != self.encoder.in_chans or t != self.num_frames:
            raise ValueError(f"expected input (B, {self.encoder.in_chans}, {self.num_frames}, H, W), "
                             f"got {tuple(x.shape)}")
        x = pad_to_patches(x, *self.encoder.patch_size[1:])
        grid = self.encoder.grid_of(x)
        y = self.head(self.neck(self.features(x, temporal_coords, location_coords), grid))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y[..., :H, :W]


def build_segmentation_model(name: str | None = "prithvi_eo_v1_100m", checkpoint: str | os.PathLike | None = None,
                             *, num_classes: int, neck: str = "reference", num_frames: int | None = None,
                             neck_channels: Sequence[int] | int | None = None, layers: Sequence[int] | None = None,
                             head_channels: int = 64, head_convs: int = 1, dropout: float = 0.1,
                             strict: bool = True, **encoder_overrides: Any) -> SegmentationModel:
    """Encoder of preset ``name`` (weights from ``checkpoint``: official file, HF folder or a geofm
    export; None = random init) + neck + head. ``name=None`` takes the encoder options from the checkpoint."""
    from geofm.models.presets import create_encoder

    encoder = create_encoder(name, checkpoint, strict=strict, **encoder_overrides)
    return SegmentationModel(encoder, num_classes, neck=neck, num_frames=num_frames, neck_channels=neck_channels,
                             layers=layers, head_channels=head_channels, head_convs=head_convs, dropout=dropout)


__all__ = ["SegmentationModel", "build_segmentation_model", "default_layers", "default_neck_channels",
           "pad_to_patches"]
