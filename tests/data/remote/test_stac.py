"""geofm search against the fake CMR-STAC: paging, retries, cloud re-filter, tiles, manifest, summary."""

from __future__ import annotations

import json
import time

import pytest
from fake_nasa import BBOX_10SEG, CLOUDY_ID, L30_ID, OTHER_TILE_ID

from geofm.data.remote import stac
from geofm.errors import ConfigError, DataError, RemoteError


def _q(**kw):
    base = dict(collections=("HLSS30", "HLSL30.v2.0"), start="2021-05-01", end="2021-09-30", bbox=tuple(BBOX_10SEG))
    base.update(kw)
    return stac.SearchQuery(**base)


def test_collection_names_as_users_write_them():
    assert {stac.collection_id(c) for c in ("HLSS30", "hlss30", "HLSS30_2.0", "HLSS30.v2.0", "HLSS30v2.0")} == {
        "HLSS30_2.0"}
    assert stac.collection_id("HLSL30.v1.5") == "HLSL30_1.5"
    assert stac.collection_id("C2021957295-LPCLOUD") == "C2021957295-LPCLOUD"


def test_mgrs_tile_bounds_match_the_hls_grid():
    # the HLS/Sentinel-2 grid: 10SEG upper-left (499980, 4200000), 31UDQ (399960, 5500020), 109.8 km
    assert stac.mgrs_tile_bounds("10SEG") == (32610, (499980.0, 4090200.0, 609780.0, 4200000.0))
    assert stac.mgrs_tile_bounds("T31UDQ") == (32631, (399960.0, 5390220.0, 509760.0, 5500020.0))
    w, s, e, n = stac.tiles_bbox(["10SEG"])
    assert -123.01 < w < -122.99 and 36.9 < s < 37.0 and -121.8 < e < -121.7 and 37.9 < n < 38.0
    with pytest.raises(ConfigError, match="10SIG"):
        stac.mgrs_tile_bounds("10SIG")  # no row I in MGRS


def test_search_follows_every_page_after_post(nasa):
    res = stac.search(_q(), nasa.stac_url, min_interval=0)
    ids = [it["id"] for it in res.items]
    assert len(ids) == 6 and res.matched == 6
    assert res.pages == 3  # page size clamped to 2 by the server
    methods = [(r["method"], "cursor" in r["path"] or r["method"]) for r in nasa.requests_to("/search")]
    assert methods[0][0] == "POST" and all(m == "GET" for m, _ in methods[1:])
    assert ids == sorted(ids, key=lambda i: next(it["properties"]["datetime"] for it in res.items if it["id"] == i))


def test_cloud_filter_is_sent_and_reapplied(nasa):
    res = stac.search(_q(max_cloud=30), nasa.stac_url, min_interval=0)
    assert CLOUDY_ID not in {it["id"] for it in res.items} and res.dropped_cloud == 0
    nasa.faults["ignore_cloud_filter"] = True
    res2 = stac.search(_q(max_cloud=30), nasa.stac_url, min_interval=0)
    assert [it["id"] for it in res2.items] == [it["id"] for it in res.items]
    assert res2.dropped_cloud == 1
    assert all(it["properties"]["eo:cloud_cover"] <= 30 for it in res2.items)


def test_tiles_filter_on_the_item_id_and_bbox_from_tiles(nasa):
    res = stac.search(_q(bbox=None, tiles=("10SEG",)), nasa.stac_url, min_interval=0)
    ids = {it["id"] for it in res.items}
    assert OTHER_TILE_ID not in ids and L30_ID in ids and len(ids) == 5
    assert res.dropped_tile == 1  # the 11SKA granule overlaps the bbox of 10SEG: dropped by its id


def test_retries_honour_retry_after_and_503(nasa):
    nasa.faults["search_429"] = 1
    nasa.faults["search_503"] = 2
    t = time.perf_counter()
    res = stac.search(_q(), nasa.stac_url, min_interval=0, backoff=0.05)
    assert len(res.items) == 6
    assert time.perf_counter() - t >= 1.0  # Retry-After: 1 was honoured
    statuses = len(nasa.requests_to("/search"))
    assert statuses == 3 + 3  # 3 pages + 3 faulty answers retried


def test_retries_exhausted_is_a_clear_error(nasa):
    nasa.faults["search_503"] = 100
    with pytest.raises(RemoteError, match="STAC search .* failed"):
        stac.search(_q(), nasa.stac_url, retries=2, backoff=0.01, min_interval=0)


def test_max_items_and_validation(nasa):
    assert len(stac.search(_q(max_items=3), nasa.stac_url, min_interval=0).items) == 3
    with pytest.raises(ConfigError, match="--end"):
        stac.validate_query(_q(start="2021-09-01", end="2021-05-01"))
    with pytest.raises(ConfigError, match="area"):
        stac.validate_query(_q(bbox=None))
    with pytest.raises(ConfigError, match="max-cloud"):
        stac.validate_query(_q(max_cloud=130))


def test_manifest_summary_quicklook(nasa, tmp_path):
    res = stac.search(_q(max_cloud=30), nasa.stac_url, min_interval=0)
    path = stac.write_manifest(res, tmp_path / "m.json", nasa.stac_url)
    items = stac.read_manifest(path)
    assert [it["id"] for it in items] == [it["id"] for it in res.items]
    assert stac.is_manifest(str(path))
    import pystac

    ic = pystac.ItemCollection.from_file(str(path))  # a valid STAC ItemCollection for other tools too
    assert [i.id for i in ic] == [it["id"] for it in items] and ic.items[0].assets["B02"].href.endswith(".B02.tif")
    s = stac.summarize(items)
    assert s["collections"] == {"HLSL30_2.0": 1, "HLSS30_2.0": 4}
    assert s["tiles"] == {"10SEG": 4, "11SKA": 1}
    assert s["months"] == {"2021-05": 3, "2021-06": 1, "2021-07": 1}
    assert s["cloud_cover"]["max"] == 25.0 and s["cloud_cover"]["min"] == 1.0
    text = stac.format_summary(s)
    assert "HLSS30_2.0: 4" in text and "10SEG: 4" in text and "median 7 %" in text
    png = stac.quicklook(items, tmp_path / "q.png", bbox=BBOX_10SEG)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_search_with_an_aoi_geojson(nasa, tmp_path):
    aoi = tmp_path / "aoi.geojson"
    ring = [[-122.5, 37.2], [-122.2, 37.2], [-122.2, 37.5], [-122.5, 37.5], [-122.5, 37.2]]  # inside 10SEG only
    aoi.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    geom = stac.read_aoi(aoi)
    assert geom == {"type": "Polygon", "coordinates": [ring]}
    res = stac.search(_q(bbox=None, intersects=geom), nasa.stac_url, min_interval=0)
    assert OTHER_TILE_ID not in {it["id"] for it in res.items} and len(res.items) == 5
    png = stac.quicklook(res.items, tmp_path / "q.png", aoi=geom)
    assert png.stat().st_size > 5000
    (tmp_path / "line.geojson").write_text(json.dumps({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}))
    with pytest.raises(DataError, match="line.geojson"):
        stac.read_aoi(tmp_path / "line.geojson")


def test_pages_are_requested_at_a_polite_rate(nasa):
    t = time.perf_counter()
    res = stac.search(_q(), nasa.stac_url, min_interval=0.4)
    assert res.pages == 3
    assert time.perf_counter() - t >= 0.4 * 3  # landing page + 3 pages, 0.4 s apart


def test_connection_errors_are_retried_then_reported():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    t = time.perf_counter()
    with pytest.raises(RemoteError, match=f"127.0.0.1:{port}"):
        stac.search(_q(), f"http://127.0.0.1:{port}/stac", retries=2, backoff=0.2, min_interval=0)
    assert time.perf_counter() - t >= 0.4  # urllib3: no wait before the first retry, 0.2 * 2 before the second
