"""geofm: pretrain, fine-tune and run Prithvi-style geospatial foundation models on HLS."""

__version__ = "0.1.0"
