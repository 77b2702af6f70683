"""Prithvi-EO-1.0 fine-tunes of hls-foundation-os (mmsegmentation 0.x), rebuilt without mmcv/mmseg.

Where the layout comes from: NASA-IMPACT/hls-foundation-os, ``geospatial_fm/geospatial_fm.py``
(``TemporalViTEncoder``, ``ConvTransformerTokensToEmbeddingNeck``, ``Norm2d``),
``geospatial_fm/temporal_encoder_decoder.py`` (``TemporalEncoderDecoder``) and
``configs/{sen1floods11_config,burn_scars,multi_temporal_crop_classification}.py``; the heads
are mmseg 0.x ``FCNHead`` (``ConvModule`` = conv without bias + BatchNorm + ReLU).

State-dict keys (``<name>.pth`` = mmcv checkpoint ``{"meta", "state_dict", "optimizer"}``):

* ``backbone.*`` — timm-0.4.12 ViT blocks with ``nn.LayerNorm`` (eps **1e-5**), ``pos_embed`` stored;
* ``neck.fpn1.{0,1.ln,3}.*`` / ``neck.fpn2.{0,1.ln,3}.*`` — two [ConvTranspose2d ×2, Norm2d
  (LayerNorm over channels, eps 1e-6), GELU, ConvTranspose2d ×2]: the token map is upsampled ×16;
* ``decode_head.convs.N.{conv,bn}.*``, ``decode_head.conv_seg.*`` — FCN head (256 channels);
* ``auxiliary_head.*`` — a training-only FCN head with 2 convs: loaded, never run.

Token map: the cls token is dropped and ``x.permute(0, 2, 1).reshape(B, -1, h, w)`` makes channel
``d * t_count + t`` (embedding-major, the opposite of TerraTorch's ``t * D + d``).

Input quirk: the released pipelines normalize the stacked chip (bands in file order, frames
consecutive: band ``6 t + c`` is band c of frame t) and then ``reshape(6, T, H, W)`` it, so the
model's ``x[c, t]`` is file band ``T c + t``. The weights were trained that way. geofm feeds
``x[c, t]`` = band c of frame t, so :class:`HLSFoundationSegmenter` applies the same reshape to
the frame-major stack (a no-op for one frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geofm.models.segmentation import pad_to_patches
from geofm.models.vit import PrithviViT

#: Blocks of the token-to-image neck (the same for every v1 fine-tune).
NECK_UPSAMPLING = 16


@dataclass
class HLSFoundationConfig:
    """The options of ``model = dict(type="TemporalEncoderDecoder", ...)`` in a v1 config."""

    num_classes: int
    img_size: int = 224
    patch_size: int = 16
    tubelet_size: int = 1
    num_frames: int = 1
    in_chans: int = 6
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    neck_out: int = 768  # output_embed_dim
    head_channels: int = 256
    head_convs: int = 1
    dropout: float = 0.1
    aux_head: dict | None = field(default_factory=lambda: {"num_classes": None, "channels": 256, "num_convs": 2})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Norm2d(nn.Module):
    """LayerNorm over the channels of (B, C, H, W), eps 1e-6 (key ``.ln``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _up2(in_ch: int, out_ch: int) -> nn.Sequential:
    """ConvTranspose2d ×2, Norm2d, GELU, ConvTranspose2d ×2 (keys .0, .1.ln, .3)."""
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2), Norm2d(out_ch), nn.GELU(),
                         nn.ConvTranspose2d(out_ch, out_ch, 2, stride=2))


class TokensToEmbeddingNeck(nn.Module):
    """(B, 1+t*h*w, D) tokens -> (B, out, 16h, 16w): ``ConvTransformerTokensToEmbeddingNeck``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.fpn1 = _up2(in_channels, out_channels)
        self.fpn2 = _up2(out_channels, out_channels)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        _, h, w = grid
        x = tokens[:, 1:].permute(0, 2, 1)  # (B, D, t*h*w)
        x = x.reshape(x.shape[0], -1, h, w)  # (B, D*t, h, w), channel = d*t_count + t
        return self.fpn2(self.fpn1(x))


class ConvModule(nn.Module):
    """mmcv ConvModule as the heads use it: conv (no bias), BatchNorm (eps 1e-5), ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class MMSegFCNHead(nn.Module):
    """mmseg 0.x ``FCNHead`` (concat_input=False): ``num_convs`` × 3×3 ConvModule, Dropout2d, 1×1 ``conv_seg``."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(*(ConvModule(in_channels if i == 0 else channels, channels, 3)
                                     for i in range(num_convs)))
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


class HLSFoundationSegmenter(nn.Module):
    """A v1 fine-tune: (B, C, T, H, W) normalized reflectance (x[c, t] = band c of frame t) -> (B, K, H, W) logits.

    H and W need not be multiples of the patch size (reflect-padded, logits cropped); other
    tile sizes than the training one get an interpolated position embedding.
    """

    def __init__(self, cfg: HLSFoundationConfig):
        super().__init__()
        self.config = cfg
        p, u = cfg.patch_size, cfg.tubelet_size
        self.backbone = PrithviViT(img_size=cfg.img_size, patch_size=(u, p, p), num_frames=cfg.num_frames,
                                   in_chans=cfg.in_chans, embed_dim=cfg.embed_dim, depth=cfg.depth,
                                   num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, norm_eps=1e-5)
        self.neck = TokensToEmbeddingNeck(cfg.embed_dim * (cfg.num_frames // u), cfg.neck_out)
        self.decode_head = MMSegFCNHead(cfg.neck_out, cfg.num_classes, cfg.head_channels, cfg.head_convs, cfg.dropout)
        aux = cfg.aux_head
        self.auxiliary_head = None if aux is None else MMSegFCNHead(
            cfg.neck_out, int(aux.get("num_classes") or cfg.num_classes), int(aux.get("channels", 256)),
            int(aux.get("num_convs", 2)), 0.0)
        self.num_classes = cfg.num_classes
        self.num_frames = cfg.num_frames

    @property
    def encoder(self) -> PrithviViT:
        """The ViT (what geofm's predictors inspect for TL encoders; v1 has none)."""
        return self.backbone

    @staticmethod
    def released_input_order(x: torch.Tensor) -> torch.Tensor:
        """geofm's (B, C, T, H, W) -> what the released pipeline fed: the frame-major stack reshaped to (C, T)."""
        b, c, t, h, w = x.shape
        return x.transpose(1, 2).reshape(b, c, t, h, w)

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> logits (B, K, H, W); coordinates are ignored (v1 has no TL encoders)."""
        b, c, t, H, W = x.shape
        if c != self.config.in_chans or t != self.num_frames:
            raise ValueError(f"expected input (B, {self.config.in_chans}, {self.num_frames}, H, W), "
                             f"got {tuple(x.shape)}")
        x = self.released_input_order(x)
        x = pad_to_patches(x, self.config.patch_size)
        grid = self.backbone.grid_of(x)
        y = self.decode_head(self.neck(self.backbone(x), grid))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return y[..., :H, :W]


__all__ = ["ConvModule", "HLSFoundationConfig", "HLSFoundationSegmenter", "MMSegFCNHead", "Norm2d",
           "TokensToEmbeddingNeck"]
