"""Prithvi ViT masked autoencoders: presets, checkpoints, necks and heads.

>>> from geofm.models import create_model
>>> model = create_model("prithvi_tiny")
>>> loss, pred, mask = model(torch.randn(2, 6, 3, 64, 64))  # doctest: +SKIP
"""

import importlib

_HOME = {
    "read_checkpoint": "checkpoints", "save_pretrained": "checkpoints",
    "PrithviConfig": "mae", "PrithviMAE": "mae", "patchify": "mae", "random_masking": "mae", "unpatchify": "mae",
    "FinetunedInfo": "segmentation", "SegmentationModel": "segmentation",
    "build_segmentation_model": "segmentation", "load_finetuned": "segmentation", "save_finetuned": "segmentation",
    "PRESETS": "presets", "build_config": "presets", "create_encoder": "presets", "create_model": "presets",
    "list_models": "presets", "PrithviViT": "vit",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Names load on first use, so a command's ``--help`` (e.g. ``geofm convert``) does not import torch."""
    if name in _HOME:
        return getattr(importlib.import_module(f"geofm.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'geofm.models' has no attribute {name!r}")
