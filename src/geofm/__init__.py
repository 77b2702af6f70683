"""geofm: pretrain, fine-tune and run Prithvi-style geospatial foundation models on HLS."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # heavy imports (torch) only when asked for
    if name == "train_step":
        from geofm.training import train_step

        return train_step
    raise AttributeError(f"module 'geofm' has no attribute {name!r}")
