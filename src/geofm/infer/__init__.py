"""Whole-scene windowed inference to georeferenced GeoTIFF.

>>> from geofm.infer import predict_checkpoint, predict_scene, OutputSpec  # doctest: +SKIP
"""

from geofm.infer.predict import (
    frames_from_inputs, imputation_predictor, predict_checkpoint, scene_quicklook, segmentation_predictor,
)
from geofm.infer.scene import AxisTiling, OutputSpec, SceneResult, predict_scene, ramp_weights

__all__ = ["AxisTiling", "OutputSpec", "SceneResult", "frames_from_inputs", "imputation_predictor",
           "predict_checkpoint", "predict_scene", "ramp_weights", "scene_quicklook", "segmentation_predictor"]
