"""A reduced ``geofm demo`` end to end: every step's outputs exist and are valid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from geofm.demo import run_demo


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_reduced_demo_writes_valid_outputs(tmp_path, sample_dir):
    lines: list[str] = []
    res = run_demo(tmp_path, size=256, chip=32, pretrain_steps=6, finetune_epochs=1, scheduler="sync",
                   echo=lines.append)
    # granules: six bands + Fmask for three dates, on the UTM 10N grid of 10SEG
    tifs = sorted((tmp_path / "granules").glob("*.tif"))
    assert len(tifs) == 21
    with rasterio.open(tifs[0]) as src:
        assert src.crs.to_epsg() == 32610 and src.width == 256
    # ingest kept some chips and rejected the cloudy ones
    assert 0 < res["ingest"]["chips"] < 64
    assert res["ingest"]["rejected"]["cloud"] > 0
    summary = json.loads((tmp_path / "explore" / "summary.json").read_text())
    assert summary["chips"] == res["ingest"]["chips"]
    for png in ["locations.png", "cloud_nodata.png", "band_histograms.png", "season_latitude.png", "landcover.png"]:
        assert (tmp_path / "explore" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the stratified sample is as balanced as the strata allow
    after = np.array(list(res["sample"]["report"]["after"].values()))
    before = np.array(list(res["sample"]["report"]["before"].values()))
    assert after.sum() == max(1, summary["chips"] // 2)
    assert np.all((after == before) | (after >= after.max() - 1))
    # pretraining exported an encoder and wrote reconstruction quicklooks
    assert (res["pretrain"]["export"] / "model.safetensors").is_file()
    assert res["pretrain"]["quicklook"].read_bytes()[:4] == b"\x89PNG"
    # fine-tuning scored the held-out tiles and wrote georeferenced predictions
    scores = res["finetune"]["scores"]
    assert 0.0 <= scores["test/mIoU"] <= 1.0 and res["finetune"]["tifs"] > 0
    # whole-scene maps keep the input grids: the Sen1Floods11 scene and the generated granule
    s2 = sample_dir / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif"
    granule_b02 = sorted((tmp_path / "granules").glob("*.B02.tif"))[0]
    for m, src_path in zip(res["predict"], [s2, granule_b02]):
        with rasterio.open(m["tif"]) as out, rasterio.open(src_path) as src:
            assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
            assert out.dtypes[0] == "uint8" and out.nodata == 255 and out.compression is not None
            assert out.block_shapes[0] == (512, 512)  # tiled blocks (COG layout)
            classes = set(np.unique(out.read(1)).tolist())
            assert classes <= {0, 1, 255}
        assert m["png"].read_bytes()[:4] == b"\x89PNG"
    # the region map: one tile per MGRS tile, the clearer date each, mosaic + catalog
    rm = res["map"]
    assert [(t.tile, t.outcome, [str(d) for d in t.dates]) for t in rm.tiles] == [
        ("T10SEG", "done", ["2021-06-17"]), ("T10SFG", "done", ["2021-06-17"])]
    for t in rm.tiles:
        with rasterio.open(t.path) as src:
            assert src.crs.to_epsg() == 32610 and src.tags()["geofm_task"] == "segmentation"
    with rasterio.open(rm.mosaic) as m:
        assert m.crs.to_epsg() == 32610 and m.res == (1000.0, 1000.0)
    assert rm.catalog.is_file()
    assert any(line.startswith("[8/8]") for line in lines) and lines[-2].startswith("done in")
    assert lines[-1] == f"look at the maps: geofm view {tmp_path}"
    # the viewer finds every kind of map in the demo's folder, with colours and names from the files
    from geofm.viz.layers import discover

    layers = {la.name: la for la in discover([tmp_path])}
    assert {la.kind for la in layers.values()} == {"classes", "reflectance", "fmask"}
    assert [e["name"] for e in layers["flood_map_10SEG"].legend] == ["dry", "water"]
    assert [e["name"] for e in layers["landcover_10SEG"].legend] == ["vegetation", "bare", "water", "cropland"]
    assert len(next(la for la in layers.values() if la.name == "HLS T10SEG").dates) == 3
