"""HLS data, from granules to batches.

* ``hls`` (granules, bands, Fmask, rasters), ``series`` (time series of per-date files or stacks);
* ``ingest/`` + ``ingest_cli`` (``geofm ingest``: scenes -> chips, planned, then run as Dask tasks),
  ``store`` (the sharded Zarr v3 chip store), ``sample_store`` (a small store from the bundled sample
  images), ``synthetic`` (HLS-like test scenes);
* ``explore`` (``geofm explore``), ``sampling`` (``geofm sample``: stratified indices);
* ``loader`` (the streaming chip dataset and loader), ``loader_config`` (its config section),
  ``datamodule`` (the chip store as a LightningDataModule), ``transforms`` (augmentations);
* ``datasets/``: the fine-tuning datasets; ``remote/``: NASA CMR-STAC search, Earthdata Login, downloads.
"""
