"""geofm's own shard encoder writes what zarr-python reads, and what ShardReader reads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from geofm.bands import HLS_NODATA
from geofm.data import store


def test_encoded_shards_read_back_through_zarr_and_shard_reader(tmp_path):
    loc = store.Location(str(tmp_path / "s.zarr"))
    store.create_chip_array(loc, n_slots=12, frames=2, bands=6, chip=8, shard=4, attrs={"bands": list("abcdef")})
    rng = np.random.default_rng(0)
    chips = rng.integers(-2000, 10000, size=(4, 2, 6, 8, 8)).astype(np.int16)
    present = [True, False, True, True]
    store.write_shard(loc, 4, chips, present)
    arr = zarr.open_array(loc.zarr_store(read_only=True), path=store.CHIPS, mode="r")
    got = arr[4:8]
    for i, keep in enumerate(present):
        expected = chips[i] if keep else np.full_like(chips[i], HLS_NODATA)
        np.testing.assert_array_equal(got[i], expected)
    np.testing.assert_array_equal(arr[0:4], np.full((4, 2, 6, 8, 8), HLS_NODATA, np.int16))  # never written
    reader = store.ShardReader(loc)
    assert reader.fast
    np.testing.assert_array_equal(reader.read([7, 4, 6]), chips[[3, 0, 2]])
    # rewriting a shard replaces it whole
    store.write_shard(loc, 4, chips[::-1].copy())
    np.testing.assert_array_equal(zarr.open_array(loc.zarr_store(read_only=True), path=store.CHIPS)[4:8],
                                  chips[::-1])


def test_encoder_rejects_wrong_chips(tmp_path):
    loc = store.Location(str(tmp_path / "s.zarr"))
    store.create_chip_array(loc, n_slots=4, frames=1, bands=6, chip=8, shard=4, attrs={})
    enc = store.ShardEncoder(loc)
    with pytest.raises(ValueError, match="int16 chip of shape"):
        enc.compress(np.zeros((1, 6, 8, 8), np.float32))
    with pytest.raises(ValueError, match="whole shards"):
        store.write_shard(loc, 1, np.zeros((4, 1, 6, 8, 8), np.int16))
