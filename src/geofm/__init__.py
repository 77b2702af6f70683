"""geofm: pretrain, fine-tune and run Prithvi-style geospatial foundation models on HLS.

Packages: ``models`` (the Prithvi ViT-MAE, segmentation and imputation networks, checkpoints,
exports, released fine-tunes), ``data`` (HLS granules to chips, the Zarr store, loaders,
datasets, remote services), ``tasks`` (pretraining and fine-tuning: configs, LightningModules,
commands, experiments), ``infer`` (whole-scene and region prediction to GeoTIFF, mosaics, STAC).
Modules: ``bands`` (band names, normalization statistics), ``config`` (typed YAML configs),
``errors``, ``io`` (atomic writes, output checks, GeoTIFF writing), ``progress`` (bars and plain
lines), ``runtime`` (process settings, log levels, device checks), ``training`` (the training
step: AdamW, precision, compile), ``correction`` (imputation: the model's correction only where it
beats interpolation), ``viz`` (quicklooks), ``resources`` (bundled configs and sample
data), ``cli`` (the ``geofm`` command), ``demo`` (``geofm demo``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy imports (torch) only when asked for
    if name == "train_step":
        from geofm.training import train_step

        return train_step
    raise AttributeError(f"module 'geofm' has no attribute {name!r}")
