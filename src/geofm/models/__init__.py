"""Models: the Prithvi ViT masked autoencoder and what is built on it.

Core: ``vit`` (patch and position embeddings, blocks), ``mae`` (the masked autoencoder), ``presets``
(named configurations: ``create_model``), ``checkpoints`` (reading every published weights layout,
writing model folders), ``necks`` + ``heads`` + ``segmentation`` (the segmentation network),
``imputer`` (cloud-gap filling), ``export`` (the fine-tuned export format: ``FinetunedInfo``),
``finetuned`` (``load_finetuned``: an export or a release). ``released/``: the published
fine-tunes run as released (hls-foundation-os v1, TerraTorch v2). ``convert_cli``: ``geofm convert``.
``fast_cpu``: CPU speed paths (the probed fp32 attention kernel, cached weight casts under autocast).

>>> from geofm.models import create_model
>>> model = create_model("prithvi_tiny")
>>> loss, pred, mask = model(torch.randn(2, 6, 3, 64, 64))  # doctest: +SKIP
"""

import importlib

_HOME = {
    "read_checkpoint": "checkpoints", "save_pretrained": "checkpoints",
    "PrithviConfig": "mae", "PrithviMAE": "mae", "patchify": "mae", "random_masking": "mae", "unpatchify": "mae",
    "FinetunedInfo": "export", "load_export": "export", "save_finetuned": "export", "load_finetuned": "finetuned",
    "SegmentationModel": "segmentation", "build_segmentation_model": "segmentation",
    "PRESETS": "presets", "build_config": "presets", "create_encoder": "presets", "create_model": "presets",
    "list_models": "presets", "PrithviViT": "vit",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Names load on first use, so a command's ``--help`` (e.g. ``geofm convert``) does not import torch."""
    if name in _HOME:
        return getattr(importlib.import_module(f"geofm.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'geofm.models' has no attribute {name!r}")
