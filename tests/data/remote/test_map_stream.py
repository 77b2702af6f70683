"""``geofm search`` -> ``geofm map MANIFEST``: the granules are streamed from the fake NASA file server."""

from __future__ import annotations

import json

from fake_nasa import OTHER_TILE_ID, TOKEN

from geofm.cli import main


def test_map_streams_a_search_manifest_and_equals_the_map_of_the_fetched_files(nasa, land_water_export, tmp_path,
                                                                               no_earthdata_env, capsys):
    manifest, manifest_10seg = tmp_path / "manifest.json", tmp_path / "manifest_10seg.json"
    search = ["search", "--collections", "HLSS30,HLSL30", "--start", "2021-05-01", "--end", "2021-09-30",
              "--max-cloud", "30", "--stac-url", nasa.stac_url, "--page-interval", "0"]
    assert main([*search, "--bbox=-123,36.9,-120.5,38", "--out", str(manifest)]) == 0
    assert main([*search, "--tiles", "10SEG", "--out", str(manifest_10seg)]) == 0
    ids = [f["id"] for f in json.loads(manifest.read_text())["features"]]
    assert OTHER_TILE_ID in ids and len(ids) == 5  # 3 S30 + 1 L30 of 10SEG, 1 S30 of 11SKA
    no_earthdata_env.setenv("EARTHDATA_TOKEN", TOKEN)
    common = ["--checkpoint", str(land_water_export), "--scheduler", "sync", "--tile", "64", "--overlap", "16",
              "--batch-size", "4", "--no-mosaic"]
    n0 = len(nasa.log)
    assert main(["map", str(manifest), "--out", str(tmp_path / "streamed"), *common]) == 0
    printed = capsys.readouterr().out
    assert "skipped T11SKA: 1 date(s) in the window, the model takes 3" in printed
    reads = [r for r in nasa.log[n0:] if r["path"].startswith("/lp-prod-protected/")]
    assert reads and all(r["range"] for r in reads if r["method"] == "GET")  # byte ranges, never whole files
    assert all(r["auth_value"] == f"Bearer {TOKEN}" for r in reads)
    assert not any(OTHER_TILE_ID in r["path"] for r in reads)  # a skipped tile's files are never read
    # the same granules fetched, then mapped from disk: the same tile, byte for byte
    assert main(["fetch", str(manifest_10seg), "--out", str(tmp_path / "hls"), "--workers", "2"]) == 0
    assert main(["map", str(tmp_path / "hls"), "--out", str(tmp_path / "local"), *common]) == 0
    streamed = sorted((tmp_path / "streamed" / "tiles").glob("*.tif"))
    local = sorted((tmp_path / "local" / "tiles").glob("*.tif"))
    line = next(json.loads(s) for s in (tmp_path / "streamed" / "map-log.jsonl").read_text().splitlines()
                if json.loads(s)["tile"] == "T10SEG")
    assert line["outcome"] == "done" and len(line["inputs"]) == 3 and len(line["candidates"]) == 4
    name = f"T10SEG_{line['dates'][0]}_{line['dates'][-1]}.tif"
    assert [p.name for p in streamed] == [p.name for p in local] == [name]
    assert streamed[0].read_bytes() == local[0].read_bytes()
