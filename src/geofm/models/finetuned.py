"""Open any fine-tuned model: a geofm export or a released fine-tune as published.

>>> model, info = load_finetuned("outputs/finetune/tiny_flood/export")  # doctest: +SKIP
>>> model, info = load_finetuned("models/v2-flood")  # a TerraTorch release  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from geofm.models.export import FinetunedInfo, load_export
from geofm.models.released import find_layout, load_released


def load_finetuned(path: str | os.PathLike, *,
                   block_dtype: torch.dtype | None = None) -> tuple[nn.Module, FinetunedInfo]:
    """Load a fine-tuned model in eval mode with its :class:`~geofm.models.export.FinetunedInfo`.

    ``path`` is an export of :func:`~geofm.models.export.save_finetuned` (or a plain MAE export) or
    its ``model.safetensors`` (:func:`~geofm.models.export.load_export`), or a released fine-tune
    (hls-foundation-os ``.pth`` + ``.py``, TerraTorch Lightning checkpoint or Hugging Face folder, or
    their ``geofm convert`` export; :func:`~geofm.models.released.load_released`). A
    :class:`~geofm.errors.CheckpointError` names the layouts tried when none fits.
    ``block_dtype`` (bf16/fp16 inference): the transformer blocks' weights are converted while
    they are read, so the fp32 weights are never all in memory at once.
    """
    layout, files = find_layout(path)
    if layout == "geofm":
        try:
            released = "released" in json.loads(Path(files["config"]).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            released = False  # load_export names the fault
        if not released:
            return load_export(files["config"].parent, block_dtype=block_dtype)
    return load_released(path, block_dtype=block_dtype)


__all__ = ["load_finetuned"]
