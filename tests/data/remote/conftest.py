"""The fake NASA server (tests/data/remote/fake_nasa.py) filled with tiny synthetic HLS granules of tile 10SEG."""

from __future__ import annotations

import datetime as dt

import pytest
from fake_nasa import (BBOX_10SEG, BBOX_11SKA, CLOUDY_ID, L30_ID, OTHER_TILE_ID, PASSWORD, S30_DATES, USER, FakeNasa,
                       hls_item)  # this folder is on sys.path (pytest's rootdir-relative imports)

from geofm.data import synthetic
from geofm.data.hls import model_band_files



@pytest.fixture(scope="session")
def hls_catalog(tmp_path_factory):
    """(files: key -> bytes, items, S30 granule ids): three S30 granules + one L30 with real GeoTIFF bytes."""
    d = tmp_path_factory.mktemp("remote_hls")
    paths = synthetic.write_time_series(d, tile="10SEG", dates=S30_DATES, size=64, seed=5,
                                        cloud_cover=[0.0, 0.05, 0.1])
    paths += synthetic.write_granule(d, "10SEG", dt.datetime(2021, 5, 30, 18, 37, 12), size=64, seed=9,
                                     product="L30")
    files: dict[str, bytes] = {}
    for p in paths:
        gid = p.name.rsplit(".", 2)[0]
        product = gid.split(".")[1]
        files[f"HLS{product}.020/{gid}/{p.name}"] = p.read_bytes()
    s30_ids = sorted({k.split("/")[1] for k in files if ".S30." in k})
    extra = ("B01", "B05", "B08", "SAA", "VZA")  # served, never requested by --bands prithvi
    for gid in s30_ids:
        for k in extra:
            files[f"HLSS30.020/{gid}/{gid}.{k}.tif"] = b"II*\x00" + bytes(1000)
    return files, s30_ids, extra


@pytest.fixture()
def nasa(hls_catalog):
    """A fresh server (faults off) with 6 items: 3 S30 + 1 L30 of 10SEG, 1 cloudy S30, 1 S30 of 11SKA."""
    files, s30_ids, extra = hls_catalog
    server = FakeNasa(dict(files), [], page_size=2)
    url = server.file_url
    s30_keys = (*model_band_files("S30"), "Fmask", *extra)
    items = [hls_item(gid, BBOX_10SEG, cc, s30_keys, url) for gid, cc in zip(s30_ids, (3.0, 12.0, 25.0))]
    items.append(hls_item(L30_ID, BBOX_10SEG, 7.0, (*model_band_files("L30"), "Fmask", "B01"), url))
    items.append(hls_item(CLOUDY_ID, BBOX_10SEG, 85.0, s30_keys, url))
    items.append(hls_item(OTHER_TILE_ID, BBOX_11SKA, 1.0, s30_keys, url))
    server.items = items
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def no_earthdata_env(monkeypatch, tmp_path):
    """No Earthdata credentials from the environment or the user's ~/.netrc."""
    for k in ("EARTHDATA_TOKEN", "EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "EARTHDATA_LOGIN_HOST", "NETRC"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.fixture()
def netrc_login(no_earthdata_env, tmp_path):
    """A netrc file for the fake login host 'localhost' (NETRC points to it)."""
    p = tmp_path / "netrc"
    p.write_text(f"machine localhost login {USER} password {PASSWORD}\n")
    p.chmod(0o600)
    no_earthdata_env.setenv("NETRC", str(p))
    no_earthdata_env.setenv("EARTHDATA_LOGIN_HOST", "localhost")
    return p
