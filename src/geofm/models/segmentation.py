"""Segmentation model (Prithvi encoder + neck + head) and the fine-tuned model export format.

>>> model = build_segmentation_model("prithvi_tiny", num_classes=2)
>>> logits = model(torch.randn(1, 6, 3, 64, 64))  # (1, 2, 64, 64)  # doctest: +SKIP
>>> save_finetuned(model, "out/export", task="segmentation", mean=m, std=s, bands=b)  # doctest: +SKIP
>>> model, info = load_finetuned("out/export")  # doctest: +SKIP

An export is a folder with ``model.safetensors`` + ``config.json``. ``config.json`` keeps
geofm's pretraining layout (``pretrained_cfg`` = the encoder/MAE options) and adds
``geofm_task``, the head options (``head``) and the data description (``data``: per-band
mean/std in reflectance ×10000, band names, class names, tile size, frames). A plain MAE
export of :func:`geofm.models.save_pretrained` (no ``geofm_task``) loads as an imputation model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geofm.bands import HLS_NODATA, norm_stats
from geofm.errors import CheckpointError
from geofm.io import atomic_path
from geofm.models.heads import FCNHead
from geofm.models.imputer import Imputer
from geofm.models.mae import PrithviConfig, PrithviMAE
from geofm.models.necks import NECKS
from geofm.models.vit import PrithviViT

log = logging.getLogger(__name__)

TASKS = ("segmentation", "imputation")


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
        _, p, q = self.encoder.patch_size
        pad_h, pad_w = (-H) % p, (-W) % q
        if pad_h or pad_w:
            mode = "reflect" if pad_h < H and pad_w < W else "replicate"
            x = F.pad(x.flatten(1, 2), (0, pad_w, 0, pad_h), mode=mode).unflatten(1, (c, t))
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


# --------------------------------------------------------------------------- export format
@dataclass
class FinetunedInfo:
    """What a caller needs to feed a loaded fine-tuned model.

    ``mean``/``std`` are per band in reflectance ×10000: ``x = (raw - mean) / std``; raw
    ``nodata`` pixels become :data:`geofm.bands.NORMALIZED_NODATA`. ``img_size`` is the tile
    size the model was trained on (any multiple of the patch size works).

    Released models (:mod:`geofm.models.released`) also set ``layout`` ("hls_foundation",
    "terratorch"), ``nodata_fill`` (per band, the normalized value nodata pixels get, as the
    released pipeline's nodata replacement gives; None: NORMALIZED_NODATA) and ``stacked_bands``
    (1-based bands of a stacked GeoTIFF: one list per frame when one file holds every frame, as
    the v1 crop chips, or one list for every file, e.g. [[2, 3, 4, 9, 12, 13]] for the 13-band
    Sentinel-2 stacks of Sen1Floods11; None: bands 1-6).
    """

    task: str
    num_classes: int | None
    class_names: list[str] | None
    in_chans: int
    num_frames: int
    img_size: int
    patch_size: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    bands: list[str]
    nodata: float | None = HLS_NODATA
    ignore_index: int | None = -1
    source: str = ""
    extra: dict = field(default_factory=dict)
    layout: str = "geofm"
    nodata_fill: list[float] | None = None
    stacked_bands: list[list[int]] | None = None


def save_finetuned(model: SegmentationModel | PrithviMAE, out_dir: str | os.PathLike, *, task: str,
                   mean: Sequence[float], std: Sequence[float], bands: Sequence[str],
                   class_names: Sequence[str] | None = None, img_size: int | None = None,
                   num_frames: int | None = None, nodata: float | None = HLS_NODATA, ignore_index: int | None = -1,
                   extra: dict | None = None) -> Path:
    """Write ``out_dir/model.safetensors`` + ``out_dir/config.json`` (each atomically); returns ``out_dir``.

    ``task`` is "segmentation" (a :class:`SegmentationModel`) or "imputation" (a :class:`PrithviMAE`).
    """
    from safetensors.torch import save_file

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "segmentation" and not isinstance(model, SegmentationModel):
        raise TypeError(f"task 'segmentation' exports a SegmentationModel, got {type(model).__name__}")
    if task == "imputation" and not isinstance(model, (Imputer, PrithviMAE)):
        raise TypeError(f"task 'imputation' exports an Imputer or a PrithviMAE, got {type(model).__name__}")
    enc_cfg = model.encoder_config if isinstance(model, SegmentationModel) else model.config
    n_bands = enc_cfg.in_chans
    if not (len(mean) == len(std) == len(bands) == n_bands):
        raise ValueError(f"mean/std/bands must have {n_bands} entries each, got {len(mean)}/{len(std)}/{len(bands)}")
    pretrained = enc_cfg.to_dict()
    pretrained.pop("extra", None)
    pretrained.update(mean=[float(v) for v in mean], std=[float(v) for v in std], bands=list(bands))
    head = model.head_config if isinstance(model, SegmentationModel) else None
    if head is not None and class_names is not None and len(class_names) != head["num_classes"]:
        raise ValueError(f"{len(class_names)} class names for {head['num_classes']} classes")
    frames = num_frames or (head["num_frames"] if head else enc_cfg.num_frames)
    config = {
        "library": "geofm", "format_version": 1, "geofm_task": task,
        "model_type": "prithvi_segmentation" if head else "prithvi_mae",
        "pretrained_cfg": pretrained, "head": head,
        "data": {"mean": pretrained["mean"], "std": pretrained["std"], "bands": list(bands),
                 "class_names": list(class_names) if class_names is not None else None,
                 "img_size": int(img_size or enc_cfg.img_size), "num_frames": int(frames),
                 "nodata": nodata, "ignore_index": ignore_index},
        "extra": extra or {},
    }
    if isinstance(model, Imputer):
        config["model_type"], config["imputer"] = "prithvi_imputer", model.imputer_config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", "geofm_task": task})
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    log.info("exported %s model to %s", task, out)
    return out


def _load_checked(model: nn.Module, weights: Path, cfg_file: Path) -> None:
    """Load ``weights`` into ``model``; a CheckpointError lists missing/unexpected/misshapen tensors."""
    from safetensors.torch import load_file

    try:
        sd = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read safetensors file '{weights}': {e}") from e
    from geofm.models.checkpoints import check_keys

    check_keys(model.state_dict(), sd, f"'{weights}' does not fit the model described by '{cfg_file}'")
    model.load_state_dict(sd)


def load_finetuned(path: str | os.PathLike) -> tuple[nn.Module, FinetunedInfo]:
    """Load a fine-tuned model in eval mode: an export of :func:`save_finetuned` (or a plain MAE
    export), or a released fine-tune as published (hls-foundation-os ``.pth`` + ``.py``, TerraTorch
    Lightning checkpoint or Hugging Face folder; see :mod:`geofm.models.released`).

    ``path`` is the export folder or its ``model.safetensors``, or the released file/folder. Returns
    the model (``model(x) -> (B, K, H, W)`` logits for segmentation; an
    :class:`~geofm.models.imputer.Imputer` for imputation: ``model(x, hidden)`` -> gap-filled
    (B, C, T, H, W); a plain MAE export loads as ``Imputer(mae, residual="none")``) and its
    :class:`FinetunedInfo`.
    """
    from geofm.models.checkpoints import config_from_json
    from geofm.models.presets import build_config, create_model
    from geofm.models.released import find_layout, load_released

    p = Path(path)
    folder = p.parent if p.is_file() else p
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        find_layout(path)  # raises, naming the layouts tried, when none fits
        return load_released(path)
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"'{cfg_file}' is not valid JSON: {e}") from e
    if "released" in raw:
        return load_released(folder)
    task = raw.get("geofm_task", "imputation")
    if task not in TASKS:
        raise CheckpointError(f"'{cfg_file}': geofm_task must be one of {TASKS}, got {task!r}")
    model_cfg = build_config(None, config_from_json(raw))
    data = raw.get("data") or {}
    pre = raw.get("pretrained_cfg") or {}
    mean, std = data.get("mean") or pre.get("mean"), data.get("std") or pre.get("std")
    if mean is None or std is None:
        mean, std = map(list, norm_stats(model_cfg.norm_stats or "v1"))
    head = raw.get("head") or {}
    if task == "imputation" and raw.get("imputer"):
        model: nn.Module = Imputer(PrithviMAE(model_cfg), **raw["imputer"])
        _load_checked(model, weights, cfg_file)
    elif task == "imputation":  # a plain MAE export: the paper's pure reconstruction
        model = Imputer(create_model(None, folder), residual="none")
    else:
        if not head.get("num_classes"):
            raise CheckpointError(f"'{cfg_file}': a segmentation export needs head.num_classes")
        encoder = PrithviViT(**model_cfg.encoder_kwargs())
        encoder.config = model_cfg
        kwargs = {k: head[k] for k in ("neck", "num_frames", "neck_channels", "layers", "head_channels",
                                       "head_convs", "dropout") if k in head}
        model = SegmentationModel(encoder, int(head["num_classes"]), **kwargs)
        _load_checked(model, weights, cfg_file)
    model.eval()
    info = FinetunedInfo(
        task=task, num_classes=int(head["num_classes"]) if task == "segmentation" else None,
        class_names=data.get("class_names"), in_chans=model_cfg.in_chans,
        num_frames=int(data.get("num_frames") or head.get("num_frames") or model_cfg.num_frames),
        img_size=int(data.get("img_size") or model_cfg.img_size), patch_size=tuple(model_cfg.patch_size),
        mean=[float(v) for v in mean], std=[float(v) for v in std],
        bands=list(data.get("bands") or pre.get("bands") or model_cfg.bands),
        nodata=data.get("nodata", HLS_NODATA), ignore_index=data.get("ignore_index", -1), source=str(folder),
        extra=raw.get("extra") or {})
    return model, info


__all__ = ["FinetunedInfo", "SegmentationModel", "build_segmentation_model", "default_layers",
           "default_neck_channels", "load_finetuned", "save_finetuned"]
