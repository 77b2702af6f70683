"""HLS data: granules, Fmask, chips, Zarr store, streaming loader, downstream datasets."""
