"""The chip store on an S3-compatible server (moto's server on 127.0.0.1)."""

import numpy as np
import pytest

from geofm.data import ingest, store
from geofm.data.loader import ChipDataset


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    opts = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": url, "region_name": "eu-west-1"}}
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.mkdir("geofm-test", create_parents=True, region_name="eu-west-1")
    yield opts
    server.stop()


def test_ingest_to_s3_and_stream_back(hls_series, tiny_store, s3):
    d, _ = hls_series
    url = "s3://geofm-test/stores/chips.zarr"
    cfg = ingest.IngestConfig(chip_size=32, frames=3, max_cloud=1.0, max_nodata=0.0, rows_per_task=1)
    res = ingest.ingest([str(d)], url, cfg, storage_options=s3, scheduler="sync")
    local, local_res = tiny_store
    assert res.chips == local_res.chips
    m_s3 = store.read_metadata(url, s3)
    m_local = store.read_metadata(local)
    np.testing.assert_array_equal(m_s3["slot"], m_local["slot"])
    reader = store.ShardReader(url, s3)
    assert reader.fast
    np.testing.assert_array_equal(reader.read(m_s3["slot"]), store.ShardReader(local).read(m_local["slot"]))
    # rerun against S3 is a no-op
    assert ingest.ingest([str(d)], url, cfg, storage_options=s3, scheduler="sync").already_complete
    # streaming loader over S3 == local
    a = [s["image"] for s in ChipDataset(url, storage_options=s3, shuffle=False)]
    b = [s["image"] for s in ChipDataset(str(local), shuffle=False)]
    assert len(a) == len(b) == res.chips
    for x, y in zip(a, b):
        assert np.array_equal(x.numpy(), y.numpy())
