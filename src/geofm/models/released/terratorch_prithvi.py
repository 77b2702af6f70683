"""Prithvi-EO-2.0 fine-tunes of TerraTorch (``EncoderDecoderFactory`` + ``PixelWiseModel``), rebuilt in geofm.

Where the layout comes from: IBM/terratorch 1.x, ``terratorch/models/backbones/prithvi_vit.py``
(``prithvi_cfgs``: backbone sizes) and ``prithvi_mae.py`` (``PrithviViT.forward_features``),
``models/necks.py`` (``SelectIndices``, ``ReshapeTokensToImage``, ``LearnedInterpolateToPyramidal``,
``InterpolateToPyramidal``, ``MaxpoolToPyramidal``), ``models/decoders/upernet_decoder.py``
(``UperNetDecoder``, ``PPM``; ``ConvModule`` in ``decoders/utils.py``), ``models/decoders/unet_decoder.py``
(a wrapper of segmentation_models_pytorch's ``UnetDecoder``, re-written here), ``models/heads/
segmentation_head.py`` and ``models/pixel_wise_model.py`` (padding, rescale, centre crop).

State-dict keys (Lightning ``SemanticSegmentationTask``: prefix ``model.``): ``encoder.*`` (the ViT,
LayerNorm eps 1e-5, ``pos_embed`` a buffer), ``neck.<i>.*`` (only necks with weights have keys:
``neck.2.fpn1..4`` for LearnedInterpolateToPyramidal after SelectIndices and ReshapeTokensToImage),
``decoder.*``, ``head.head.*``, ``aux_heads.*`` (training only, not loaded). Files written before
TerraTorch moved the scale modules into a neck (``decoder_scale_modules: true``) store them as
``decoder.fpn1..4.*``; :func:`adapt_keys` renames them (``decoder.fpn_convs.*`` belongs to UperNet).

Token map: ``(t h w) e -> (t e) h w``: channel ``t * D + d``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geofm.errors import CheckpointError
from geofm.models.segmentation import pad_to_patches
from geofm.models.vit import PrithviViT, sincos_3d

log = logging.getLogger(__name__)

#: TerraTorch backbone name -> encoder options (``prithvi_cfgs``; all LayerNorm eps 1e-5).
BACKBONES: dict[str, dict[str, Any]] = {
    "prithvi_eo_tiny": dict(embed_dim=256, depth=4, num_heads=4),
    "prithvi_eo_v1_100": dict(embed_dim=768, depth=12, num_heads=12),
    "prithvi_eo_v2_tiny_tl": dict(embed_dim=192, depth=12, num_heads=3, coords_encoding=("time", "location")),
    "prithvi_eo_v2_100": dict(embed_dim=768, depth=12, num_heads=12),
    "prithvi_eo_v2_100_tl": dict(embed_dim=768, depth=12, num_heads=12, coords_encoding=("time", "location")),
    "prithvi_eo_v2_300": dict(embed_dim=1024, depth=24, num_heads=16),
    "prithvi_eo_v2_300_tl": dict(embed_dim=1024, depth=24, num_heads=16, coords_encoding=("time", "location")),
    "prithvi_eo_v2_600": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
    "prithvi_eo_v2_600_tl": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14,
                                 coords_encoding=("time", "location")),
}


@dataclass
class TerraTorchConfig:
    """What ``model_args`` of a TerraTorch segmentation task says about the network."""

    backbone: str
    num_classes: int
    in_chans: int = 6
    num_frames: int = 1
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    coords_encoding: tuple[str, ...] = ()
    necks: list[dict] = field(default_factory=list)
    decoder: str = "UperNetDecoder"
    decoder_args: dict = field(default_factory=dict)
    head_dropout: float = 0.0
    head_channel_list: list[int] | None = None
    rescale: bool = True
    padding: str | None = "reflect"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coords_encoding"] = list(self.coords_encoding)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TerraTorchConfig:
        d = dict(d)
        d["coords_encoding"] = tuple(d.get("coords_encoding") or ())
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_model_args(cls, args: dict[str, Any], source: str = "<model_args>") -> TerraTorchConfig:
        """``model_args`` of a TerraTorch ``config.yaml`` / Lightning ``hyper_parameters`` -> config."""
        name = args.get("backbone")
        if name not in BACKBONES:
            raise CheckpointError(f"'{source}': backbone {name!r} is not a Prithvi backbone geofm knows; "
                                  f"expected one of {sorted(BACKBONES)}")
        bk = {k[len("backbone_"):]: v for k, v in args.items() if k.startswith("backbone_")}
        base = dict(BACKBONES[name])
        bands = bk.get("bands") or args.get("bands")
        in_chans = len(bands) if bands else int(bk.get("in_chans", 6))
        coords = tuple(bk.get("coords_encoding", base.pop("coords_encoding", ())) or ())
        patch = bk.get("patch_size", base.pop("patch_size", 16))
        patch = int(patch[-1]) if isinstance(patch, (list, tuple)) else int(patch)
        decoder = args.get("decoder", "FCNDecoder")
        if decoder not in ("UperNetDecoder", "UNetDecoder"):
            raise CheckpointError(f"'{source}': decoder {decoder!r} is not supported; geofm runs UperNetDecoder "
                                  "and UNetDecoder")
        dec = {k[len("decoder_"):]: v for k, v in args.items() if k.startswith("decoder_")}
        necks = [dict(n) for n in (args.get("necks") or [])]
        if dec.pop("scale_modules", False):  # old UperNet option, now a neck
            necks.append({"name": "LearnedInterpolateToPyramidal"})
        num_classes = args.get("num_classes")
        if not num_classes:
            raise CheckpointError(f"'{source}': model_args has no num_classes")
        return cls(backbone=name, num_classes=int(num_classes), in_chans=in_chans,
                   num_frames=int(bk.get("num_frames", 1)), img_size=int(bk.get("img_size", 224)), patch_size=patch,
                   embed_dim=int(bk.get("embed_dim", base["embed_dim"])), depth=int(bk.get("depth", base["depth"])),
                   num_heads=int(bk.get("num_heads", base["num_heads"])),
                   mlp_ratio=float(bk.get("mlp_ratio", 4.0)), coords_encoding=coords, necks=necks, decoder=decoder,
                   decoder_args=dec, head_dropout=float(args.get("head_dropout", 0.0)),
                   head_channel_list=args.get("head_channel_list"), rescale=bool(args.get("rescale", True)),
                   padding=bk.get("padding", "reflect"))


# --------------------------------------------------------------------------- encoder
class TerraTorchPrithviViT(PrithviViT):
    """geofm's ViT with TerraTorch's rules for another input size: the time axis gets a fresh sin-cos
    embedding, height/width are resized bicubically with ``align_corners=True``."""

    def resample_pos_embed(self, grid: tuple[int, int, int], always: bool = False) -> torch.Tensor:
        src = self.grid_size
        pos = self.pos_embed
        if grid[0] != src[0]:
            src = (grid[0], *src[1:])
            pos = torch.from_numpy(sincos_3d(self.embed_dim, src)).to(pos).unsqueeze(0)
        cls, patch = pos[:, :1], pos[:, 1:]
        patch = patch.reshape(*src, self.embed_dim).permute(0, 3, 1, 2).float()  # (t, D, h, w)
        patch = F.interpolate(patch, size=grid[1:], mode="bicubic", align_corners=True)
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim).to(pos.dtype)
        return torch.cat([cls, patch], dim=1)

    def features(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                 location_coords: torch.Tensor | None = None, keep: Sequence[int] | None = None
                 ) -> list[torch.Tensor | None]:
        """``forward_features``: every block's output (B, 1+L, D); the last one after the final norm.

        ``keep``: the indices of the outputs to return (the others are None, so that they are not
        all held in memory at once); default all.
        """
        tokens, pos = self.embed(x, temporal_coords, location_coords)
        h = self.with_cls(tokens, pos)
        n = len(self.blocks)
        wanted = set(range(n)) if keep is None else {i % n for i in keep}
        out: list[torch.Tensor | None] = []
        for i, blk in enumerate(self.blocks):
            h = blk(h)
            out.append((self.norm(h) if i == n - 1 else h) if i in wanted else None)
        return out


# --------------------------------------------------------------------------- necks
def tokens_to_image(x: torch.Tensor, t: int, image_size: Sequence[int], patch_size: int | None = None
                    ) -> torch.Tensor:
    """(B, 1+t*h*w, D) -> (B, t*D, h, w): ``ReshapeTokensToImage`` (cls removed, channel = t*D + d).

    As TerraTorch: h = sqrt(tokens per time step) when that is whole, else from the image aspect.
    In a graph exported with symbolic H and W (no square-root test there) h = H / ``patch_size``,
    the same for square images.
    """
    x = x[:, 1:]
    b, n, d = x.shape
    per_t = n // t
    if isinstance(per_t, torch.SymInt) and patch_size:
        h = image_size[0] // patch_size
        return x.reshape(b, t, h, per_t // h, d).permute(0, 1, 4, 2, 3).reshape(b, t * d, h, per_t // h)
    h = math.isqrt(per_t)
    if h * h != per_t:
        patch = (image_size[0] * image_size[1] / per_t) ** 0.5
        h = int(image_size[0] // patch)
    w = per_t // h
    return x.reshape(b, t, h, w, d).permute(0, 1, 4, 2, 3).reshape(b, t * d, h, w)


class SelectIndices(nn.Module):
    def __init__(self, indices: Sequence[int]):
        super().__init__()
        self.indices = [int(i) for i in indices]

    def forward(self, feats: list[torch.Tensor], **_: Any) -> list[torch.Tensor]:
        return [feats[i] for i in self.indices]


class ReshapeTokensToImage(nn.Module):
    def __init__(self, effective_time_dim: int = 1, remove_cls_token: bool = True):
        super().__init__()
        if not remove_cls_token:
            raise CheckpointError("ReshapeTokensToImage with remove_cls_token=False is not supported")
        self.t = int(effective_time_dim)

    def forward(self, feats: list[torch.Tensor], image_size: Sequence[int] = (0, 0), patch_size: int | None = None,
                **_: Any) -> list:
        return [f if f.dim() == 4 else tokens_to_image(f, self.t, image_size, patch_size) for f in feats]


class LearnedInterpolateToPyramidal(nn.Module):
    """Four same-size maps -> 4×, 2×, 1×, ½× (channels c0/4, c1/2, c2, c3)."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        c0, c1 = channels[0], channels[1]
        self.fpn1 = nn.Sequential(nn.ConvTranspose2d(c0, c0 // 2, 2, 2), nn.BatchNorm2d(c0 // 2), nn.GELU(),
                                  nn.ConvTranspose2d(c0 // 2, c0 // 4, 2, 2))
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(c1, c1 // 2, 2, 2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))
        self.out_channels = [c0 // 4, c1 // 2, channels[2], channels[3]]

    def forward(self, feats: list[torch.Tensor], **_: Any) -> list[torch.Tensor]:
        return [self.fpn1(feats[0]), self.fpn2(feats[1]), self.fpn3(feats[2]), self.fpn4(feats[3])]


class InterpolateToPyramidal(nn.Module):
    def __init__(self, scale_factor: int = 2, mode: str = "nearest"):
        super().__init__()
        self.scale_factor, self.mode = scale_factor, mode

    def forward(self, feats: list[torch.Tensor], **_: Any) -> list[torch.Tensor]:
        n = len(feats)
        return [F.interpolate(x, scale_factor=self.scale_factor ** (n - i), mode=self.mode)
                for i, x in enumerate(feats)]


class MaxpoolToPyramidal(nn.Module):
    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, feats: list[torch.Tensor], **_: Any) -> list[torch.Tensor]:
        return [x if i == 0 else F.max_pool2d(x, kernel_size=self.kernel_size ** i) for i, x in enumerate(feats)]


def build_necks(specs: Sequence[dict], channels: list[int]) -> tuple[nn.ModuleList, list[int]]:
    """TerraTorch ``necks`` entries -> modules (in order; their index is the key prefix) and output channels."""
    mods = nn.ModuleList()
    for spec in specs:
        spec = dict(spec)
        name = spec.pop("name", None)
        if name == "SelectIndices":
            m: nn.Module = SelectIndices(spec["indices"])
            channels = [channels[i] for i in m.indices]
        elif name == "ReshapeTokensToImage":
            m = ReshapeTokensToImage(spec.get("effective_time_dim", 1), spec.get("remove_cls_token", True))
        elif name == "LearnedInterpolateToPyramidal":
            m = LearnedInterpolateToPyramidal(channels)
            channels = list(m.out_channels)
        elif name == "InterpolateToPyramidal":
            m = InterpolateToPyramidal(**spec)
        elif name == "MaxpoolToPyramidal":
            m = MaxpoolToPyramidal(**spec)
        else:
            raise CheckpointError(f"TerraTorch neck {name!r} is not supported; geofm runs SelectIndices, "
                                  "ReshapeTokensToImage, LearnedInterpolateToPyramidal, InterpolateToPyramidal, "
                                  "MaxpoolToPyramidal")
        mods.append(m)
    return mods, channels


# --------------------------------------------------------------------------- decoders
class ConvModule(nn.Module):
    """TerraTorch's ConvModule: conv (no bias) + BatchNorm + ReLU (keys conv, norm)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


class UperNetDecoder(nn.Module):
    """UPerNet (mmseg design as TerraTorch ships it): PPM on the last map, FPN on the others, bilinear
    resizing with ``align_corners`` (True by default). (B, c_i, h_i, w_i) × n -> (B, channels, h_0, w_0).

    ``low_precision``: in bf16/fp16 inference (:func:`geofm.infer.precision.prepare_model`) its
    convolutions run in that precision, channels-last (about 6x faster than fp32 on CPUs with AMX).
    """

    low_precision = True

    def __init__(self, embed_dim: Sequence[int], pool_scales: Sequence[int] = (1, 2, 3, 6), channels: int = 256,
                 align_corners: bool = True):
        super().__init__()
        c = int(channels)
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(embed_dim[-1], c, 1))
                                         for s in pool_scales)
        self.bottleneck = ConvModule(embed_dim[-1] + len(pool_scales) * c, c, 3, padding=1)
        self.lateral_convs = nn.ModuleList(ConvModule(e, c, 1) for e in embed_dim[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(c, c, 3, padding=1) for _ in embed_dim[:-1])
        self.fpn_bottleneck = ConvModule(len(embed_dim) * c, c, 3, padding=1)
        self.out_channels = c

    def _resize(self, x: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        top = feats[-1]
        psp = [top] + [self._resize(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(feats[i]) for i, conv in enumerate(self.lateral_convs)] + [self.bottleneck(torch.cat(psp, 1))]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + self._resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals) - 1)] + [laterals[-1]]
        outs = [outs[0]] + [self._resize(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class Conv2dReLU(nn.Sequential):
    """3×3 conv (no bias) + BatchNorm + ReLU (keys .0, .1), the U-Net decoder's unit."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU())


class UNetBlock(nn.Module):
    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv1 = Conv2dReLU(in_ch + skip_ch, out_ch)
        self.conv2 = Conv2dReLU(out_ch, out_ch)

    def forward(self, x: torch.Tensor, size, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class _UNetCore(nn.Module):
    """The U-Net decoder of segmentation_models_pytorch (no centre block, no attention, batch norm)."""

    def __init__(self, embed_dim: Sequence[int], channels: Sequence[int]):
        super().__init__()
        rev = list(embed_dim)[::-1]
        ins = [rev[0], *channels[:-1]]
        skips = rev[1:] + [0]
        self.blocks = nn.ModuleList(UNetBlock(i, s, o) for i, s, o in zip(ins, skips, channels))


class UNetDecoder(nn.Module):
    """TerraTorch's UNetDecoder: the first map is duplicated (so none is dropped), then smp's U-Net decoder:
    start from the deepest map, upsample (nearest) to the next map's size, concatenate it, 2 × Conv2dReLU."""

    def __init__(self, embed_dim: Sequence[int], channels: Sequence[int]):
        super().__init__()
        if len(embed_dim) != len(channels):
            raise CheckpointError(f"UNetDecoder: {len(channels)} channels for {len(embed_dim)} feature maps")
        self.decoder = _UNetCore(embed_dim, channels)
        self.out_channels = int(channels[-1])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = [feats[0], *feats]
        sizes = [f.shape[2:] for f in feats][::-1]
        rev = feats[1:][::-1]
        x, skips = rev[0], rev[1:]
        for i, block in enumerate(self.decoder.blocks):
            x = block(x, sizes[i + 1], skips[i] if i < len(skips) else None)
        return x


class SegmentationHead(nn.Module):
    """Optional 3×3 conv+ReLU blocks, dropout, 1×1 classifier (keys ``head.0``, ``head.2``)."""

    def __init__(self, in_ch: int, num_classes: int, channel_list: Sequence[int] | None = None, dropout: float = 0.0):
        super().__init__()
        if channel_list:
            widths = [in_ch, *channel_list]
            pre: nn.Module = nn.Sequential(*(nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
                                             for a, b in zip(widths[:-1], widths[1:])))
            in_ch = widths[-1]
        else:
            pre = nn.Identity()
        drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head = nn.Sequential(pre, drop, nn.Conv2d(in_ch, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


# --------------------------------------------------------------------------- the model
class TerraTorchSegmenter(nn.Module):
    """A v2 fine-tune: (B, C, T, H, W) normalized reflectance (+ optional TL coordinates) -> (B, K, H, W) logits.

    As TerraTorch's ``PixelWiseModel``: the input is reflect-padded on both sides to a multiple of
    twice the patch size, the logits are resized to the padded size if needed and centre-cropped.

    ``decoder_chunk``: when set (inference: :func:`geofm.infer.precision.prepare_model` sets it)
    and gradients are off, the decoder and head run that many samples at a time. Their maps at a
    quarter of the input resolution (UperNet fuses 4 x 256 channels there) are the largest
    activations of a forward; per sample the result is the same.
    """

    decoder_chunk: int | None = None

    def __init__(self, cfg: TerraTorchConfig):
        super().__init__()
        self.config = cfg
        p = cfg.patch_size
        self.encoder = TerraTorchPrithviViT(
            img_size=cfg.img_size, patch_size=(1, p, p), num_frames=cfg.num_frames, in_chans=cfg.in_chans,
            embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
            norm_eps=1e-5, coords_encoding=cfg.coords_encoding, coords_scale_learn=bool(cfg.coords_encoding))
        channels = [cfg.embed_dim * cfg.num_frames] * cfg.depth
        self.neck, channels = build_necks(cfg.necks, channels)
        args = dict(cfg.decoder_args)
        if cfg.decoder == "UperNetDecoder":
            self.decoder: nn.Module = UperNetDecoder(
                channels, tuple(args.get("pool_scales", (1, 2, 3, 6))), int(args.get("channels", 256)),
                bool(args.get("align_corners", True)))
        else:
            self.decoder = UNetDecoder(channels, list(args["channels"]))
        self.head = SegmentationHead(self.decoder.out_channels, cfg.num_classes, cfg.head_channel_list,
                                     cfg.head_dropout)
        self.num_classes = cfg.num_classes
        self.num_frames = cfg.num_frames

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, T, H, W) -> logits (B, K, H, W); temporal (B, T, 2) year/day-of-year, location (B, 2) lat/lon."""
        H, W = x.shape[-2:]
        if self.config.padding:
            x = pad_to_patches(x, 2 * self.config.patch_size, mode=self.config.padding, centered=True)
        size = x.shape[-2:]
        first = self.neck[0] if len(self.neck) else None
        keep = first.indices if isinstance(first, SelectIndices) else None
        feats: Any = self.encoder.features(x, temporal_coords, location_coords, keep=keep)
        for m in self.neck:
            feats = m(feats, image_size=tuple(size), patch_size=self.config.patch_size)
        c = self.decoder_chunk
        if c and not torch.is_grad_enabled() and x.shape[0] > c:
            y = torch.cat([self.head(self.decoder([f[i:i + c] for f in feats])) for i in range(0, x.shape[0], c)])
        else:
            y = self.head(self.decoder(feats))
        if self.config.rescale and y.shape[-2:] != size:
            y = F.interpolate(y, size=size, mode="bilinear")
        top, left = max((y.shape[-2] - H) // 2, 0), max((y.shape[-1] - W) // 2, 0)
        return y[..., top:top + H, left:left + W]


_OLD_SCALE = re.compile(r"^decoder\.(fpn[1-4])\.")


def adapt_keys(sd: dict[str, torch.Tensor], model: TerraTorchSegmenter) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A TerraTorch state dict (prefix ``model.`` already removed) -> this model's keys.

    Handles ``_timm_module.`` (old encoders) and the old UperNet scale modules
    ``decoder.fpn1..4.*`` -> ``neck.<i>.fpn1..4.*``. Returns (state dict, ignored keys: aux heads).
    """
    scale_idx = next((i for i, m in enumerate(model.neck) if isinstance(m, LearnedInterpolateToPyramidal)), None)
    out, ignored = {}, []
    for k, v in sd.items():
        k = k.replace("_timm_module.", "")
        if k.startswith("aux_heads."):
            ignored.append(k)
            continue
        m = _OLD_SCALE.match(k)
        if m and scale_idx is not None:
            k = f"neck.{scale_idx}.{k[len('decoder.'):]}"
        out[k] = v
    return out, ignored


__all__ = ["BACKBONES", "LearnedInterpolateToPyramidal", "SegmentationHead", "TerraTorchConfig",
           "TerraTorchPrithviViT", "TerraTorchSegmenter", "UNetDecoder", "UperNetDecoder", "adapt_keys",
           "build_necks", "tokens_to_image"]
