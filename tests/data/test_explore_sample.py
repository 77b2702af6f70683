import json

import numpy as np
import pytest

from geofm import cli
from geofm.data import store, synthetic
from geofm.data.loader import ChipDataset
from geofm.data.sampling import allocate, strata_keys, stratified_sample
from geofm.errors import ConfigError


def test_allocate_balance_property():
    rng = np.random.default_rng(0)
    for _ in range(500):
        sizes = rng.integers(0, 30, size=rng.integers(1, 9))
        n = int(rng.integers(0, 120))
        take = allocate(sizes, n)
        assert sum(take) == min(n, int(sizes.sum()))
        assert all(0 <= t <= s for t, s in zip(take, sizes))
        # balance: a stratum below another's count must be exhausted (it had nothing more to give)
        for i, ti in enumerate(take):
            for j, tj in enumerate(take):
                if ti < tj - 1:
                    assert ti == sizes[i], (sizes, n, take)
    assert allocate([100, 100, 100], 30) == [10, 10, 10]
    assert allocate([2, 100, 100], 30) == [2, 14, 14]  # the small stratum's quota is redistributed
    assert allocate([5, 5], 100) == [5, 5]


def _meta(lc, lat, month):
    n = len(lc)
    return {"slot": np.arange(n) * 3, "landcover": np.array(lc), "lat": np.array(lat, float),
            "dates": np.array([[f"2020-{m:02d}-15"] * 3 for m in month]), "tile": np.array(["10SEG"] * n)}


def test_strata_keys_and_hemisphere_seasons():
    m = _meta([1, 2], [45.0, -33.0], [7, 7])
    keys = strata_keys(m, ["landcover", "lat_band", "season"])
    assert keys.tolist() == ["landcover=1|lat_band=40..50|season=JJA", "landcover=2|lat_band=-40..-30|season=DJF"]
    with pytest.raises(ConfigError, match="unknown strata"):
        strata_keys(m, ["biome"])


def test_stratified_sample_balances_a_skewed_corpus():
    rng = np.random.default_rng(1)
    lc = np.r_[np.zeros(900, int), np.ones(90, int), np.full(10, 2)]  # 90 % class 0
    meta = _meta(lc, rng.uniform(30, 40, 1000), rng.integers(1, 13, 1000))
    slots, report = stratified_sample(meta, ["landcover"], 90, seed=4)
    chosen = lc[np.searchsorted(meta["slot"], slots)]
    assert np.bincount(chosen).tolist() == [40, 40, 10]
    assert report["before"] == {"landcover=0": 900, "landcover=1": 90, "landcover=2": 10}
    again, _ = stratified_sample(meta, ["landcover"], 90, seed=4)
    assert np.array_equal(slots, again)
    other, _ = stratified_sample(meta, ["landcover"], 90, seed=5)
    assert not np.array_equal(slots, other)


def test_ingest_explore_sample_end_to_end(tmp_path, capsys):
    """geofm ingest -> explore -> sample on generated tiles with a land-cover map, then the loader."""
    src = tmp_path / "hls"
    synthetic.write_time_series(src, tile="10SEG", size=192, seed=11, cloud_cover=[0.0, 0.0, 0.05])
    lc = synthetic.write_landcover(tmp_path / "lc.tif", tile="10SEG", size=192, seed=11)
    out = tmp_path / "store.zarr"
    assert cli.main(["ingest", str(src), "--out", str(out), "--chip-size", "32", "--max-cloud", "0.2",
                     "--landcover", str(lc), "--scheduler", "sync"]) == 0
    assert cli.main(["explore", str(out), "--out", str(tmp_path / "explore")]) == 0
    summary = json.loads((tmp_path / "explore" / "summary.json").read_text())
    meta = store.read_metadata(out)
    assert summary["chips"] == len(meta["slot"]) > 10
    assert sum(summary["landcover"].values()) == summary["chips"] and len(summary["landcover"]) >= 2
    for png in ["locations.png", "cloud_nodata.png", "band_histograms.png", "season_latitude.png", "landcover.png"]:
        assert (tmp_path / "explore" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["acquisitions_per_month"]["Mar"] == summary["chips"]
    assert 0 < summary["band_mean"]["NIR_NARROW"] < 6000
    idx = tmp_path / "index.parquet"
    assert cli.main(["sample", str(out), "--strata", "landcover", "--n", "12", "--out", str(idx)]) == 0
    text = capsys.readouterr().out
    assert "selected 12 of" in text
    report = json.loads(idx.with_suffix(".json").read_text())
    after, before = list(report["after"].values()), list(report["before"].values())
    assert sum(after) == 12
    assert all(a == b for a, b in zip(after, before) if a < max(after) - 1)  # balanced unless exhausted
    assert idx.with_suffix(".png").exists()
    ds = ChipDataset(out, index=str(idx))
    got = sorted(s["index"] for s in ds)
    assert len(got) == 12 and set(got) <= set(meta["slot"].tolist())
