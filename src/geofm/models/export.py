"""The fine-tuned model export: a folder with ``model.safetensors`` + ``config.json``.

>>> save_finetuned(model, "out/export", task="segmentation", mean=m, std=s, bands=b)  # doctest: +SKIP
>>> model, info = load_export("out/export")  # doctest: +SKIP

``config.json`` keeps geofm's pretraining layout (``pretrained_cfg`` = the encoder/MAE options) and
adds ``geofm_task``, the head options (``head``) and the data description (``data``: per-band
mean/std in reflectance ×10000, band names, class names, tile size, frames). A plain MAE export of
:func:`geofm.models.save_pretrained` (no ``geofm_task``) loads as an imputation model.
:class:`FinetunedInfo` is what every fine-tuned model carries, ours and the released ones
(:mod:`geofm.models.released`); :func:`geofm.models.load_finetuned` opens either.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from geofm.bands import HLS_NODATA, norm_stats
from geofm.errors import CheckpointError
from geofm.models.checkpoints import (config_from_json, empty_model, load_safetensors, load_strict,
                                      low_precision_modules, write_model_folder)
from geofm.models.imputer import Imputer
from geofm.models.mae import PrithviMAE
from geofm.models.segmentation import SegmentationModel
from geofm.models.vit import PrithviViT

log = logging.getLogger(__name__)

TASKS = ("segmentation", "imputation")


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
    out = write_model_folder(out_dir, model.state_dict(), config, {"geofm_task": task})
    log.info("exported %s model to %s", task, out)
    return out


def _segmentation_model(model_cfg, num_classes: int, kwargs: dict) -> SegmentationModel:
    encoder = PrithviViT(**model_cfg.encoder_kwargs())
    encoder.config = model_cfg
    return SegmentationModel(encoder, num_classes, **kwargs)


def load_export(path: str | os.PathLike, *,
                block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    """Load an export of :func:`save_finetuned` (or a plain MAE export) in eval mode.

    ``path`` is the export folder or its ``model.safetensors``. Returns the model
    (``model(x) -> (B, K, H, W)`` logits for segmentation; an :class:`~geofm.models.imputer.Imputer`
    for imputation: ``model(x, hidden)`` -> gap-filled (B, C, T, H, W); a plain MAE export loads as
    ``Imputer(mae, residual="none")``) and its :class:`FinetunedInfo`.
    """
    from geofm.models.presets import build_config, create_model

    p = Path(path)
    folder = p.parent if p.is_file() else p
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(f"'{path}' is not a geofm export: expected config.json + model.safetensors")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"'{cfg_file}' is not valid JSON: {e}") from e
    if "released" in raw:
        raise CheckpointError(f"'{cfg_file}' is a converted released model: use geofm.models.load_finetuned")
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
    if task == "imputation" and not raw.get("imputer"):  # a plain MAE export: the paper's pure reconstruction
        model: nn.Module = Imputer(create_model(None, folder), residual="none")
        for m in low_precision_modules(model) if block_dtype is not None else ():
            m.to(block_dtype)
    else:
        if task == "imputation":
            model = empty_model(lambda: Imputer(PrithviMAE(model_cfg), **raw["imputer"]))
        else:
            if not head.get("num_classes"):
                raise CheckpointError(f"'{cfg_file}': a segmentation export needs head.num_classes")
            kwargs = {k: head[k] for k in ("neck", "num_frames", "neck_channels", "layers", "head_channels",
                                           "head_convs", "dropout") if k in head}
            model = empty_model(_segmentation_model, model_cfg, int(head["num_classes"]), kwargs)
        sd = load_safetensors(weights)
        if hasattr(model, "checkpoint_filter"):
            sd = model.checkpoint_filter(sd)
        load_strict(model, sd, "geofm", str(weights), block_dtype=block_dtype)
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


__all__ = ["TASKS", "FinetunedInfo", "load_export", "save_finetuned"]
