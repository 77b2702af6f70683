"""Whole-scene windowed inference to georeferenced GeoTIFF: ``scene`` (tiles, blending, windowed COG
writing: :func:`predict_scene`), ``predict`` (a fine-tuned model on a scene: :func:`predict_checkpoint`),
``predict_cli`` (``geofm predict``); ``region`` (a region and a season: granules -> tiles -> frames, one Dask
task per tile: :func:`map_region`) + ``map_cli`` (``geofm map``), ``mosaic`` (tile outputs -> one COG),
``catalog`` (the STAC catalog of a map); ``precision`` (fp32/bf16/fp16 weights, the default by a CPU
probe), ``onnx_model`` (ONNX export and an ONNX Runtime model) + ``export_onnx_cli`` (``geofm export-onnx``).

>>> from geofm.infer import predict_checkpoint, predict_scene, OutputSpec  # doctest: +SKIP
"""

import importlib

_HOME = {"frames_from_inputs": "predict", "imputation_predictor": "predict", "predict_checkpoint": "predict",
         "scene_quicklook": "predict", "segmentation_predictor": "predict", "AxisTiling": "scene",
         "OutputSpec": "scene", "map_region": "region", "MapResult": "region", "SceneResult": "scene",
         "predict_scene": "scene", "ramp_weights": "scene"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Names load on first use, so ``geofm predict --help`` does not import torch."""
    if name in _HOME:
        return getattr(importlib.import_module(f"geofm.infer.{_HOME[name]}"), name)
    raise AttributeError(f"module 'geofm.infer' has no attribute {name!r}")
