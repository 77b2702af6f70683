import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geofm.bands import NORM_STATS
from geofm.data import ingest, store
from geofm.data.loader import ChipDataset, consumed_per_worker
from geofm.errors import DataError


@pytest.fixture(scope="module")
def store16(hls_series, tmp_path_factory):
    """16x16 chips: 8 shards of 8 chips (64 chips)."""
    d, _ = hls_series
    out = tmp_path_factory.mktemp("s16") / "s.zarr"
    ingest.ingest([str(d)], str(out), ingest.IngestConfig(chip_size=16, max_cloud=1.0, max_nodata=1.0),
                  scheduler="sync")
    return out


def indices(ds, batch_size=4, workers=2, limit=None):
    out = []
    dl = DataLoader(ds, batch_size=batch_size, num_workers=workers)
    for i, b in enumerate(dl):
        if limit is not None and i == limit:
            break
        out += b["index"].tolist()
    return out


def test_sample_values_normalization_and_nodata(store16):
    ds = ChipDataset(store16, normalize="v1", return_coords=True, shuffle=False)
    meta = store.read_metadata(store16)
    raw = store.ShardReader(store16).read(meta["slot"])
    samples = list(ds)
    assert len(samples) == 64 == len(ds)
    mean = np.array(NORM_STATS["v1"]["mean"])[:, None, None, None]
    std = np.array(NORM_STATS["v1"]["std"])[:, None, None, None]
    n_nodata = 0
    for s, chip in zip(samples, raw):
        x = chip.transpose(1, 0, 2, 3).astype(np.float64)
        nodata = (chip == -9999).any(axis=1)
        expected = np.where(nodata[None], 0.0001, (x - mean) / std)
        np.testing.assert_allclose(s["image"].numpy(), expected, rtol=1e-5, atol=1e-5)
        assert s["image"].shape == (6, 3, 16, 16) and s["image"].dtype == torch.float32
        assert torch.equal(s["valid"], torch.from_numpy(~nodata))
        n_nodata += int(nodata.sum())
        assert s["temporal_coords"].tolist() == [[2020, 75], [2020, 172], [2020, 254]]
        assert 37 < s["location_coords"][0] < 38 and -124 < s["location_coords"][1] < -122
    assert n_nodata > 0  # the swath edge is in the store (max_nodata 1.0)


def test_band_subset_and_raw(store16):
    ds = ChipDataset(store16, bands=[2, 1, 0], normalize=None, shuffle=False)
    s = next(iter(ds))
    raw = store.ShardReader(store16).read([s["index"]])[0]
    x = raw[:, [2, 1, 0]].transpose(1, 0, 2, 3).astype(np.float32)
    nodata = (raw == -9999).any(axis=1)[None]
    np.testing.assert_allclose(s["image"].numpy(), np.where(nodata, np.float32(0.0001), x), rtol=1e-7)
    assert ds.band_names == ["RED", "GREEN", "BLUE"]
    with pytest.raises(DataError, match="out of range"):
        ChipDataset(store16, bands=[6])


def test_every_chip_once_per_epoch_and_reshuffled(store16):
    ds = ChipDataset(store16, seed=1)
    e0 = indices(ds)
    ds.set_epoch(1)
    e1 = indices(ds)
    assert sorted(e0) == sorted(e1) == sorted(store.read_metadata(store16)["slot"].tolist())
    assert len(set(e0)) == 64 and e0 != e1
    ds.set_epoch(0)
    assert indices(ds) == e0  # deterministic from seed + epoch


def test_reads_stay_within_shards(store16):
    ds = ChipDataset(store16, seed=2)
    shard_size = ds.per_shard
    for w in range(2):
        pos, _ = ds.worker_positions(0, 0, 1, w, 2)
        shards = ds.slots[pos] // shard_size
        switches = int((np.diff(shards) != 0).sum())
        assert switches <= len(np.unique(shards))  # each shard visited in one run


def test_resume_mid_epoch(store16):
    ds = ChipDataset(store16, seed=3)
    ds.set_epoch(2)
    full = indices(ds, batch_size=5, workers=2)
    first = indices(ds, batch_size=5, workers=2, limit=7)
    ds2 = ChipDataset(store16, seed=3)
    ds2.resume(epoch=2, batches=7, batch_size=5)
    rest = indices(ds2, batch_size=5, workers=2)
    assert sorted(first + rest) == sorted(full) and len(set(first) & set(rest)) == 0


def test_consumed_per_worker_matches_dataloader_order():
    # worker 0 has 3 batches, worker 1 has 1: order w0 w1 w0 w0
    assert consumed_per_worker([10, 4], 4, 1) == [4, 0]
    assert consumed_per_worker([10, 4], 4, 2) == [4, 4]
    assert consumed_per_worker([10, 4], 4, 3) == [8, 4]
    assert consumed_per_worker([10, 4], 4, 4) == [10, 4]


def test_index_restricts_chips(store16, tmp_path):
    meta = store.read_metadata(store16)
    chosen = meta["slot"][::5]
    np.save(tmp_path / "idx.npy", chosen)
    ds = ChipDataset(store16, index=str(tmp_path / "idx.npy"))
    assert sorted(indices(ds)) == sorted(chosen.tolist())
    with pytest.raises(DataError, match="absent from store"):
        ChipDataset(store16, index=[10**6])


def _ddp_worker(rank, world, store_path, out_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = ChipDataset(store_path, seed=5)
        for epoch in range(2):
            ds.set_epoch(epoch)
            got = indices(ds, batch_size=3, workers=2)
            np.save(os.path.join(out_dir, f"r{rank}_e{epoch}.npy"), np.array(got))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_two_workers_each_chip_once(store16, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, str(store16), str(tmp_path), port), nprocs=2)
    all_slots = sorted(store.read_metadata(store16)["slot"].tolist())
    for epoch in range(2):
        r0 = np.load(tmp_path / f"r0_e{epoch}.npy").tolist()
        r1 = np.load(tmp_path / f"r1_e{epoch}.npy").tolist()
        assert sorted(r0 + r1) == all_slots and not set(r0) & set(r1)
        assert abs(len(r0) - len(r1)) <= 1
    assert np.load(tmp_path / "r0_e0.npy").tolist() != np.load(tmp_path / "r0_e1.npy").tolist()


def test_drop_last_gives_equal_counts(store16, monkeypatch):
    counts = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        ds = ChipDataset(store16, drop_last=True)
        counts.append(len(indices(ds, workers=0)))
    assert counts == [21, 21, 21]


def test_raw_output_normalized_on_the_consumer_side(store16):
    ref = ChipDataset(store16, shuffle=False)
    raw = ChipDataset(store16, shuffle=False, raw=True)
    a = next(iter(DataLoader(ref, batch_size=16)))
    b = next(iter(DataLoader(raw, batch_size=16)))
    assert b["image"].dtype == torch.int16 and torch.equal(a["valid"], b["valid"])
    torch.testing.assert_close(raw.normalize_batch(b["image"]), a["image"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(raw.normalize_batch(b["image"], b["valid"]), a["image"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("raw", [False, True])
def test_worker_built_batches_equal_collated_samples(store16, workers, raw):
    """ChipLoader (batches built in the worker, one tensor each) == per-sample DataLoader, batch by batch."""
    from geofm.data.loader import ChipLoader

    ref = ChipDataset(store16, seed=4, return_coords=True, raw=raw, bands=[0, 3, 5])
    fast = ChipDataset(store16, seed=4, return_coords=True, raw=raw, bands=[0, 3, 5])
    ref.set_epoch(1)
    fast.set_epoch(1)
    a = list(DataLoader(ref, batch_size=5, num_workers=workers))
    loader = ChipLoader(fast, batch_size=5, num_workers=workers)
    b = list(loader)
    assert len(b) == len(a) == len(loader)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
    assert b[0]["image"].shape == (5, 3, 3, 16, 16)
    assert any(not bool(x["valid"].all()) for x in b)  # nodata pixels were in play


def test_worker_built_batches_resume_mid_epoch(store16):
    from geofm.data.loader import ChipLoader

    ds = ChipDataset(store16, seed=3)
    ds.set_epoch(2)
    full = [i for b in ChipLoader(ds, batch_size=5, num_workers=2) for i in b["index"].tolist()]
    first = full[:0]
    for k, b in enumerate(ChipLoader(ds, batch_size=5, num_workers=2)):
        if k == 7:
            break
        first += b["index"].tolist()
    ds2 = ChipDataset(store16, seed=3)
    ds2.resume(epoch=2, batches=7, batch_size=5)
    rest = [i for b in ChipLoader(ds2, batch_size=5, num_workers=2) for i in b["index"].tolist()]
    assert sorted(first + rest) == sorted(full) and len(set(first) & set(rest)) == 0
    ref = ChipDataset(store16, seed=3)
    ref.set_epoch(2)
    assert full == indices(ref, batch_size=5)  # the same order as per-sample loading
