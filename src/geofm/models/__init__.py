"""Prithvi ViT masked autoencoders: presets, checkpoints, necks and heads.

>>> from geofm.models import create_model
>>> model = create_model("prithvi_tiny")
>>> loss, pred, mask = model(torch.randn(2, 6, 3, 64, 64))  # doctest: +SKIP
"""

from geofm.models.checkpoints import read_checkpoint, save_pretrained
from geofm.models.mae import PrithviConfig, PrithviMAE, patchify, random_masking, unpatchify
from geofm.models.segmentation import (
    FinetunedInfo, SegmentationModel, build_segmentation_model, load_finetuned, save_finetuned,
)
from geofm.models.presets import PRESETS, build_config, create_encoder, create_model, list_models
from geofm.models.vit import PrithviViT

__all__ = [
    "FinetunedInfo", "PRESETS", "PrithviConfig", "SegmentationModel", "build_segmentation_model",
    "load_finetuned", "save_finetuned", "PrithviMAE", "PrithviViT", "build_config", "create_encoder", "create_model",
    "list_models", "patchify", "random_masking", "read_checkpoint", "save_pretrained", "unpatchify",
]
