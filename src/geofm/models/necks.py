"""Necks: encoder tokens -> 2D feature maps for dense prediction.

Notation: B batch, D encoder width, (t, h, w) the token grid (frames / tubelet, H / p, W / p).
Tokens are in ``(t h w)`` order with a leading cls token, as :class:`geofm.models.PrithviViT`
returns them.

* :class:`ReferenceNeck` — the neck of the Prithvi fine-tuning reference: the frames' tokens are
  concatenated on channels, ``(B, t*D, h, w)``, then ``n_up`` times [ConvTranspose2d ×2 + norm + GELU].
* :class:`UPerNetNeck` — multi-scale: four intermediate blocks are turned into a 4×, 2×, 1×, ½×
  pyramid, fused by a pyramid-pooling module and a top-down FPN (Xiao et al. 2018, "UPerNet").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, 1+t*h*w, D) tokens -> (B, t*D, h, w): cls dropped, frames concatenated on channels."""
    t, h, w = grid
    b, n, d = tokens.shape
    if n != 1 + t * h * w:
        raise ValueError(f"expected 1 + {t}*{h}*{w} tokens for grid {grid}, got {n}")
    x = tokens[:, 1:].reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3)  # (B, t, D, h, w)
    return x.reshape(b, t * d, h, w)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def up_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """ConvTranspose2d (kernel 2, stride 2: exact ×2 upsampling) + channel LayerNorm + GELU."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2), LayerNorm2d(out_ch),
                         nn.GELU())


def conv_norm_act(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Sequential:
    """Conv2d (same padding, no bias) + GroupNorm + ReLU (GroupNorm: fine with batches of 1 on CPU)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if out_ch % g == 0 and (out_ch // g >= 2 or g == 1))
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         nn.GroupNorm(groups, out_ch), nn.ReLU(inplace=True))


class ReferenceNeck(nn.Module):
    """Last-layer tokens -> (B, out_channels, h*2**n_up, w*2**n_up).

    ``in_channels`` = t*D (frames on channels). ``channels`` gives the width after each
    upsampling (its length is the number of ×2 steps; 4 for 16-pixel patches).
    """

    uses_layers = False

    def __init__(self, in_channels: int, channels: Sequence[int] = (256, 128, 64, 32)):
        super().__init__()
        widths = [int(in_channels), *map(int, channels)]
        self.ups = nn.Sequential(*(up_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.out_channels = widths[-1]
        self.scale = 2 ** len(channels)

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
        """``features`` = [last tokens (B, 1+L, D)] -> (B, out_channels, h*scale, w*scale)."""
        return self.ups(tokens_to_map(features[-1], grid))


class PyramidPooling(nn.Module):
    """Average-pool at several grid sizes, 1×1 conv, upsample, concatenate with the input, 3×3 conv."""

    def __init__(self, in_ch: int, channels: int, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        self.stages = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), conv_norm_act(in_ch, channels, 1))
                                    for s in pool_scales)
        self.bottleneck = conv_norm_act(in_ch + len(pool_scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetNeck(nn.Module):
    """Four intermediate layers -> one fused (B, channels, 4h, 4w) map.

    Layer i (in ``layers`` order, shallow to deep) is rescaled to 4×, 2×, 1× and ½× the token
    grid, giving a feature pyramid like a CNN backbone's; the deepest level goes through
    pyramid pooling, the others get a top-down FPN path; all levels are upsampled to the
    finest, concatenated and fused by a 3×3 conv.
    """

    uses_layers = True

    def __init__(self, in_channels: int, channels: int = 128, pool_scales: Sequence[int] = (1, 2, 3, 6)):
        super().__init__()
        c = int(channels)
        self.rescale = nn.ModuleList([
            nn.Sequential(up_block(in_channels, c), nn.ConvTranspose2d(c, c, 2, stride=2)),  # 4x
            nn.ConvTranspose2d(in_channels, c, 2, stride=2),  # 2x
            nn.Conv2d(in_channels, c, 1),  # 1x
            nn.Sequential(nn.Conv2d(in_channels, c, 1), nn.MaxPool2d(2, ceil_mode=True)),  # 1/2x
        ])
        self.ppm = PyramidPooling(c, c, pool_scales)
        self.lateral = nn.ModuleList(conv_norm_act(c, c, 1) for _ in range(3))
        self.fpn = nn.ModuleList(conv_norm_act(c, c, 3) for _ in range(3))
        self.fuse = conv_norm_act(4 * c, c, 3)
        self.out_channels = c
        self.scale = 4

    def forward(self, features: list[torch.Tensor], grid: tuple[int, int, int]) -> torch.Tensor:
        """``features`` = 4 token tensors (B, 1+L, D), shallow to deep -> (B, channels, 4h, 4w)."""
        if len(features) != 4:
            raise ValueError(f"UPerNetNeck needs 4 intermediate layers, got {len(features)}")
        pyramid = [rs(tokens_to_map(f, grid)) for rs, f in zip(self.rescale, features)]  # fine -> coarse
        levels = [lat(p) for lat, p in zip(self.lateral, pyramid[:3])] + [self.ppm(pyramid[3])]
        for i in range(2, -1, -1):  # top-down
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="bilinear",
                                                  align_corners=False)
        outs = [self.fpn[i](levels[i]) for i in range(3)] + [levels[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(outs, dim=1))


NECKS: dict[str, type[nn.Module]] = {"reference": ReferenceNeck, "upernet": UPerNetNeck}

__all__ = ["NECKS", "LayerNorm2d", "PyramidPooling", "ReferenceNeck", "UPerNetNeck", "conv_norm_act",
           "tokens_to_map", "up_block"]
