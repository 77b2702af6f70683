"""STAC catalog of a region map: round trip, relative links, extensions, sources, model hash."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from pystac.validation import RegisteredValidator
from rasterio.transform import from_origin
from rasterio.windows import Window

from geofm.errors import DataError
from geofm.infer.catalog import TileProduct, file_sha256, write_catalog
from geofm.infer.mosaic import mosaic_tiles
from geofm.infer.scene import OutputSpec
from geofm.io import write_cog

CMAP = {0: (10, 20, 30, 255), 1: (0, 90, 255, 255)}
CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def tile(path: Path, crs: str, x: float, y: float, spec: OutputSpec, colormap=None, size: int = 40) -> Path:
    data = np.random.default_rng(0).integers(0, 2, size=(spec.count, size, size))
    write_cog(path, [(Window(0, 0, size, size), data.astype(spec.dtype))], width=size, height=size,
              count=spec.count, dtype=spec.dtype, crs=crs, transform=from_origin(x, y, 30.0, 30.0),
              nodata=spec.nodata, block=32, descriptions=spec.descriptions,
              tags={"geofm_output": spec.kind, **spec.tags}, colormap=colormap)
    return path


@pytest.fixture
def region(tmp_path):
    """DIR/tiles/ with two class-map tiles (zones 10 and 11), DIR/mosaic.tif, a model file."""
    spec = OutputSpec.classes(2, ["dry land", "water"])
    out = tmp_path / "run"
    a = tile(out / "tiles" / "T10SGJ_2020-05-02_2020-06-03.tif", "EPSG:32610", 761010.0, 4212030.0, spec, CMAP)
    b = tile(out / "tiles" / "T11SKD_2020-05-04_2020-06-13.tif", "EPSG:32611", 237990.0, 4210020.0, spec, CMAP)
    m = mosaic_tiles([a, b], out / "mosaic.tif", crs="EPSG:32610", block=32)
    model = tmp_path / "model" / "model.safetensors"
    model.parent.mkdir()
    model.write_bytes(np.random.default_rng(1).bytes(3 << 20))  # larger than one read chunk
    granules = tmp_path / "granules"
    tiles = [
        TileProduct("10SGJ", a, [dt.date(2020, 5, 2), dt.date(2020, 5, 20), dt.date(2020, 6, 3)],
                    [str(granules / f"HLS.S30.T10SGJ.2020123T184919.v2.0.{b}.tif") for b in ("B02", "Fmask")],
                    ["https://stac.example/collections/HLSS30_2.0/items/HLS.S30.T10SGJ.2020123T184919.v2.0"]),
        TileProduct("11SKD", b, [dt.date(2020, 6, 13), dt.date(2020, 5, 4)],
                    ["https://data.example/HLS.L30.T11SKD.2020125T183000.v2.0.B02.tif"]),
    ]
    return out, tiles, m, model


def test_file_sha256_matches_hashlib(region):
    model = region[3]
    assert file_sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


def test_catalog_round_trips_with_relative_links_and_extensions(region):
    out, tiles, m, model = region
    sha = file_sha256(model)
    path = write_catalog(out, tiles, m.path, model_name="sen1floods11", model_path=model, model_sha256=sha,
                         created=CREATED, title="Flood map")
    assert path == out / "catalog.json"
    cat = pystac.read_file(path)
    items = {i.id: i for i in cat.get_items()}
    assert sorted(items) == ["T10SGJ_2020-05-02_2020-06-03", "T11SKD_2020-05-04_2020-06-13", "mosaic"]
    assert cat.title == "Flood map"

    # Self-contained: every href inside the catalog is relative, and resolves to the files.
    raw_cat = json.loads(path.read_text())
    assert all(not lk["href"].startswith("/") for lk in raw_cat["links"]) and "self" not in \
        [lk["rel"] for lk in raw_cat["links"]]
    for f in (out / "items").glob("*.json"):
        raw = json.loads(f.read_text())
        assert raw["assets"]["data"]["href"].startswith("../")
        assert {lk["rel"]: lk["href"] for lk in raw["links"]}["root"] == "../catalog.json"
    moved = out.parent / "moved"
    shutil.move(out, moved)  # still readable from elsewhere: nothing points at the old folder
    items = {i.id: i for i in pystac.read_file(moved / "catalog.json").get_items()}
    a = items["T10SGJ_2020-05-02_2020-06-03"]
    assert Path(a.assets["data"].get_absolute_href()) == moved / "tiles" / "T10SGJ_2020-05-02_2020-06-03.tif"

    # Core STAC schemas (shipped with pystac, offline).
    validator = RegisteredValidator.get_validator()
    for it in items.values():
        validator.validate_core(it.to_dict(), pystac.STACObjectType.ITEM, pystac.get_stac_version())
    validator.validate_core(raw_cat, pystac.STACObjectType.CATALOG, pystac.get_stac_version())

    # Dates, created, model.
    assert a.datetime is None and a.properties["start_datetime"] == "2020-05-02T00:00:00Z"
    assert a.properties["end_datetime"] == "2020-06-03T23:59:59Z"
    assert a.properties["geofm:dates"] == ["2020-05-02", "2020-05-20", "2020-06-03"]
    b = items["T11SKD_2020-05-04_2020-06-13"]
    assert b.properties["geofm:dates"] == ["2020-05-04", "2020-06-13"]  # sorted
    mos = items["mosaic"]
    assert mos.properties["start_datetime"] == "2020-05-02T00:00:00Z"
    assert mos.properties["end_datetime"] == "2020-06-13T23:59:59Z"
    for it in items.values():
        assert it.common_metadata.created == CREATED
        assert it.properties["geofm:model"] == "sen1floods11"
        assert it.properties["geofm:model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert it.properties["geofm:model_file"] == "model.safetensors"
    assert a.properties["geofm:tile"] == "10SGJ"

    # derived_from: granule files (absolute, outside the catalog), search items, tile items.
    src_links = [lk.get_absolute_href() for lk in a.links if lk.rel == "derived_from"]
    assert src_links == [*tiles[0].source_items, *[str(Path(s).resolve()) for s in tiles[0].sources]]
    assert [lk.get_absolute_href() for lk in b.links if lk.rel == "derived_from"] == tiles[1].sources
    mos_links = [Path(lk.get_absolute_href()).name for lk in mos.links if lk.rel == "derived_from"]
    assert mos_links == [f"{i}.json" for i in sorted(items) if i != "mosaic"]

    # proj: the assets' grids, read back from the files.
    for it in items.values():
        with rasterio.open(it.assets["data"].get_absolute_href()) as src:
            p = it.properties
            assert p["proj:code"] == src.crs.to_string()
            assert p["proj:shape"] == [src.height, src.width]
            assert p["proj:transform"] == list(src.transform)[:6]
            assert p["proj:bbox"] == list(src.bounds)
            west, south, east, north = rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds)
            assert it.bbox == pytest.approx([west, south, east, north], abs=1e-6)
    assert b.properties["proj:code"] == "EPSG:32611" and mos.properties["proj:code"] == "EPSG:32610"
    assert any("projection" in e for e in a.stac_extensions)

    # raster + classification on the asset: dtype, nodata, classes with the colour table.
    for it in (a, mos):
        asset = it.assets["data"].to_dict()
        assert asset["raster:bands"] == [{"nodata": 255.0, "data_type": "uint8", "spatial_resolution": 30.0}]
        assert asset["classification:classes"] == [
            {"value": 0, "name": "dry_land", "description": "dry land", "color_hint": "0A141E"},
            {"value": 1, "name": "water", "description": "water", "color_hint": "005AFF"},
            {"value": 255, "name": "nodata", "description": "no prediction", "nodata": True}]
        assert {e.split("/")[3] for e in it.stac_extensions} >= {"raster", "classification", "projection"}


def test_probabilities_and_reflectance_bands(tmp_path):
    p = tile(tmp_path / "tiles" / "P.tif", "EPSG:32610", 500010.0, 4200000.0, OutputSpec.probabilities(2))
    r = tile(tmp_path / "tiles" / "R.tif", "EPSG:32610", 500010.0, 4200000.0,
             OutputSpec.reflectance(1, ["B", "G", "R"], [0, 0, 0], [1, 1, 1]))
    day = [dt.date(2021, 7, 1)]
    path = write_catalog(tmp_path, [TileProduct("10SEG", p, day, []), TileProduct("10SEG", r, day, [])], None,
                         model_name="m", model_path="m.pt", model_sha256="0" * 64, created=CREATED)
    items = {i.id: i for i in pystac.read_file(path).get_items()}
    assert sorted(items) == ["P", "R"]  # no mosaic item
    pa, ra = items["P"].assets["data"].to_dict(), items["R"].assets["data"].to_dict()
    assert pa["raster:bands"] == [{"nodata": -1.0, "data_type": "float32", "spatial_resolution": 30.0}] * 2
    assert ra["raster:bands"] == [{"nodata": -9999.0, "data_type": "int16", "spatial_resolution": 30.0,
                                   "scale": 1e-4}] * 3
    assert "classification:classes" not in pa
    assert items["P"].datetime == dt.datetime(2021, 7, 1, tzinfo=dt.timezone.utc)  # one date: datetime


def test_bad_catalog_inputs(tmp_path):
    p = tile(tmp_path / "tiles" / "P.tif", "EPSG:32610", 500010.0, 4200000.0, OutputSpec.classes(2))
    with pytest.raises(DataError, match="P.tif' has no dates"):
        write_catalog(tmp_path, [TileProduct("10SEG", p, [], [])], None, model_name="m", model_path="m.pt",
                      model_sha256="0" * 64)
    with pytest.raises(DataError, match="cannot read output"):
        write_catalog(tmp_path, [TileProduct("10SEG", tmp_path / "missing.tif", [dt.date(2020, 1, 1)], [])], None,
                      model_name="m", model_path="m.pt", model_sha256="0" * 64)
    assert not (tmp_path / "catalog.json").exists()
