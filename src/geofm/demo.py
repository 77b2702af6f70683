"""``geofm demo``: the main job end to end on the bundled sample data.

Steps (each prints what it did and where its outputs are):

1. ``granules``: generate a small HLS S30 time series of MGRS tile 10SEG (3 dates, six
   band COGs + Fmask each, real UTM 10N grid) and a land-cover map on the same grid.
2. ``ingest``: Dask LocalCluster ingest of the granules into a sharded Zarr v3 chip store,
   rejecting cloudy and nodata chips from Fmask.
3. ``explore``: summary JSON and PNGs of the store.
4. ``sample``: stratified sample over land cover, with the before/after distribution.
5. ``pretrain``: tiny Prithvi MAE pretraining (Lightning) on real sample chips (the bundled
   HLS and Sen1Floods11 S2 chips cut into 32 px chips), with reconstruction quicklooks.
6. ``finetune``: flood mapping on the real Sen1Floods11 chip (64 px tiles, seeded split),
   starting from the step-5 encoder; test scores, GeoTIFF predictions and PNGs.
7. ``predict``: whole-scene prediction with the fine-tuned model, written window by window
   to georeferenced COGs: the 512 px Sen1Floods11 S2 scene (EPSG:4326) and one generated
   10SEG granule read from its per-band files (UTM 10N), each with a PNG.
8. ``map``: a two-tile region map with ``geofm map``: two dates of 10SEG and its eastern
   neighbour 10SFG (coarse 109.8 km granules that overlap by 10 km); per tile the clearer date by
   Fmask, one Dask task per tile, then the mosaic and its STAC catalog.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from geofm.resources import sample_dir

log = logging.getLogger(__name__)


def _metric_curve(csv_path: Path, column: str) -> list[float]:
    import csv

    with open(csv_path) as f:
        return [float(r[column]) for r in csv.DictReader(f) if r.get(column) not in (None, "")]


def step_pretrain(out: Path, steps: int) -> dict:
    """Tiny MAE pretraining (the bundled pretrain/tiny config) on the real sample chips."""
    from geofm.tasks.pretrain import load_pretrain_config, run_pretrain

    cfg = load_pretrain_config("pretrain/tiny", [
        f"data.store={out / 'stores' / 'sample_chips32.zarr'}", f"out_dir={out / 'pretrain'}",
        f"trainer.max_steps={steps}", f"trainer.quicklook_every={max(1, steps // 2)}",
        f"trainer.checkpoint_every={max(1, steps // 2)}"])
    run_dir = Path(run_pretrain(cfg))
    csvs = sorted((run_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    loss = _metric_curve(csvs[-1], "train/loss") if csvs else []
    val = _metric_curve(csvs[-1], "val/loss") if csvs else []
    k = max(1, len(loss) // 5)
    pngs = sorted((run_dir / "quicklooks").glob("*.png"))
    return {"run_dir": run_dir, "export": run_dir / "export", "first_loss": sum(loss[:k]) / k if loss else None,
            "last_loss": sum(loss[-k:]) / k if loss else None, "val_loss": val[-1] if val else None,
            "quicklook": pngs[-1] if pngs else None}


def step_finetune(out: Path, encoder: Path, epochs: int) -> dict:
    """Flood fine-tuning (the bundled finetune/tiny_flood config) from the pretrained encoder, then predictions."""
    import json

    from geofm.tasks.finetune import load_finetune_config, run_finetune

    cfg = load_finetune_config("finetune/tiny_flood", [
        f"model.checkpoint={encoder}", "model.name=null", f"run_dir={out / 'finetune'}",
        f"trainer.max_epochs={epochs}"])
    export = Path(run_finetune(cfg, "fit"))
    preds = Path(run_finetune(cfg, "predict"))
    scores = json.loads((export.parent / "metrics.json").read_text())["test"]
    return {"export": export, "predictions": preds, "scores": scores,
            "tifs": len(list(preds.glob("*.tif"))), "pngs": len(list(preds.glob("*.png")))}


def step_predict(out: Path, export: Path, granules: Path) -> list[dict]:
    """Whole-scene flood maps: the Sen1Floods11 S2 scene (stacked bands) and one generated granule."""
    import rasterio

    from geofm.data.datasets.sen1floods11 import S2_BANDS_0BASED
    from geofm.data.hls import stacked_frame
    from geofm.infer.predict import predict_checkpoint

    s2 = sample_dir() / "sen1floods11" / "S2Hand" / "Spain_7370579_S2Hand.tif"
    one_date = sorted(granules.glob("HLS.S30.T10SEG.*.tif"))[:7]  # the first granule: 6 bands + Fmask
    jobs = [("flood_map_spain.tif", [stacked_frame(str(s2), [b + 1 for b in S2_BANDS_0BASED])]),
            ("flood_map_10SEG.tif", [str(p) for p in one_date])]
    results = []
    for name, inputs in jobs:
        res = predict_checkpoint(export, inputs, out / name, tile=64, overlap=16, batch_size=8, quicklook=True)
        with rasterio.open(out / name) as src:
            crs = src.crs.to_string()
        results.append({"tif": out / name, "png": (out / name).with_suffix(".png"), "result": res, "crs": crs})
    return results


def step_map(out: Path, export: Path, scheduler: str | None, size: int = 128) -> dict:
    """Two tiles x two dates of coarse granules (``size`` px over 109.8 km) -> ``geofm map`` -> tiles + mosaic."""
    import datetime as dt

    from geofm.data import synthetic
    from geofm.infer.region import map_region

    region = out / "region_granules"
    for i, tile in enumerate(("10SEG", "10SFG")):
        for k, cloud in enumerate((0.3, 0.05)):
            when = dt.datetime(2021, 6, 1 + 16 * k, 18, 49, 19)
            synthetic.write_granule(region, tile, when, size=size, seed=20 + 2 * i + k, cloud_cover=cloud,
                                    pixel_size=109_800 / size)
    res = map_region(export, [str(region)], out / "region_map", tile=64, overlap=16, resolution=1000.0,
                     scheduler=scheduler, workers=2)
    return {"result": res, "granules": region}


def step_granules(out: Path, size: int) -> dict:
    """Generate 3 S30 granules of 10SEG (size x size px) and a land-cover map on their grid."""
    from geofm.data import synthetic

    gdir = out / "granules"
    paths = synthetic.write_time_series(gdir, tile="10SEG", size=size, seed=11,
                                        cloud_cover=[0.0, 0.02, 0.1], swath_edge=0.08)
    lc = synthetic.write_landcover(out / "landcover_10SEG.tif", tile="10SEG", size=size)
    return {"dir": gdir, "files": len(paths), "landcover": lc}


def step_ingest(out: Path, granules: Path, landcover: Path, chip: int, scheduler: str | None) -> dict:
    from geofm.data.ingest import IngestConfig, ingest

    cfg = IngestConfig(chip_size=chip, frames=3, max_cloud=0.05, max_nodata=0.0, landcover=str(landcover))
    res = ingest([str(granules)], str(out / "chips.zarr"), cfg, scheduler=scheduler, n_workers=2)
    return {"store": res.store, "chips": res.chips, "rejected": res.rejected, "seconds": res.seconds,
            "already": res.already_complete}


def step_explore(out: Path, store: str) -> dict:
    from geofm.data.explore import explore

    summary = explore(store, out / "explore")
    return {"dir": out / "explore", "summary": summary}


def step_sample(out: Path, store: str, n: int) -> dict:
    from geofm.data import store as chip_store
    from geofm.data.sampling import plot_report, stratified_sample, write_index

    meta = chip_store.read_metadata(store)
    slots, report = stratified_sample(meta, ["landcover"], n, seed=0)
    index = write_index(out / "sample_index.parquet", slots, report)
    png = plot_report(report, index.with_suffix(".png"))
    return {"index": index, "png": png, "report": report}


def run_demo(out: str | Path, *, size: int = 600, chip: int = 64, pretrain_steps: int = 300,
             finetune_epochs: int = 8, scheduler: str | None = None, echo=print) -> dict:
    """Run every step of the demo into ``out``; returns what each step produced.

    ``scheduler``: None starts a Dask LocalCluster for the ingest, ``"sync"`` runs it in-process.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    n_steps = 8
    t0 = time.perf_counter()

    echo(f"[1/{n_steps}] Generating an HLS S30 time series of MGRS tile 10SEG ({size} px, 3 dates, UTM 10N) ...")
    g = results["granules"] = step_granules(out, size)
    echo(f"      wrote {g['files']} band/Fmask COGs to {g['dir']} and {g['landcover']}")

    echo(f"[2/{n_steps}] Ingesting them into a Zarr v3 chip store ({chip} px chips, 3 frames, Dask) ...")
    i = results["ingest"] = step_ingest(out, g["dir"], g["landcover"], chip, scheduler)
    if i["already"]:
        echo(f"      {i['store']} is already complete ({i['chips']} chips): nothing to redo")
    else:
        echo(f"      {i['chips']} chips kept; rejected {i['rejected'].get('cloud', 0)} cloudy and "
             f"{i['rejected'].get('nodata', 0)} with nodata in {i['seconds']:.1f} s -> {i['store']}")

    echo(f"[3/{n_steps}] Exploring the store ...")
    e = results["explore"] = step_explore(out, i["store"])
    s = e["summary"]
    echo(f"      {s['chips']} chips, lat {s['lat']['min']:.2f}..{s['lat']['max']:.2f}, mean cloud "
         f"{s['cloud_frac']['mean']:.3f}, land cover {s['landcover']} -> {e['dir']}/summary.json + 5 PNGs")

    echo(f"[4/{n_steps}] Stratified sample over land cover ...")
    n = max(1, s["chips"] // 2)
    sm = results["sample"] = step_sample(out, i["store"], n)
    before = "/".join(str(v) for v in sm["report"]["before"].values())
    after = "/".join(str(v) for v in sm["report"]["after"].values())
    echo(f"      {before} -> {after} chips per land-cover class -> {sm['index']}, {sm['png']}")

    echo(f"[5/{n_steps}] Tiny MAE pretraining ({pretrain_steps} steps) on real sample chips "
         "(HLS + Sentinel-2, 32 px) ...")
    p = results["pretrain"] = step_pretrain(out, pretrain_steps)
    if p["first_loss"] is not None:
        echo(f"      train loss {p['first_loss']:.3f} -> {p['last_loss']:.3f}, val loss "
             f"{p['val_loss'] if p['val_loss'] is None else round(p['val_loss'], 3)}")
    echo(f"      encoder export {p['export']}; reconstructions {p['quicklook']}")

    echo(f"[6/{n_steps}] Flood fine-tuning ({finetune_epochs} epochs) on the real Sen1Floods11 chip "
         "from that encoder ...")
    f = results["finetune"] = step_finetune(out, p["export"], finetune_epochs)
    sc = f["scores"]
    echo(f"      test tiles: mIoU {sc.get('test/mIoU', float('nan')):.3f}, water IoU "
         f"{sc.get('test/IoU_water', float('nan')):.3f}, aAcc {sc.get('test/aAcc', float('nan')):.3f}; "
         f"{f['tifs']} GeoTIFFs + {f['pngs']} PNGs in {f['predictions']}; model {f['export']}")

    echo(f"[7/{n_steps}] Whole-scene flood maps, written window by window as COGs ...")
    maps = results["predict"] = step_predict(out, f["export"], g["dir"])
    for m in maps:
        r = m["result"]
        echo(f"      {m['tif']} ({r.width}x{r.height} px, {m['crs']}, {r.tiles} tiles in {r.seconds:.1f} s) + {m['png']}")

    echo(f"[8/{n_steps}] A two-tile region map (10SEG + 10SFG, the clearer of two dates each) with geofm map ...")
    rm = results["map"] = step_map(out, f["export"], scheduler)["result"]
    for t in rm.tiles:
        echo(f"      {t.tile}: {t.outcome} {', '.join(str(d) for d in t.dates)} -> {t.path}")
    echo(f"      {rm.area_km2:,.0f} km² in {rm.seconds:.1f} s; mosaic {rm.mosaic} ({rm.crs}); catalog {rm.catalog}; "
         f"log {rm.log}")
    echo(f"done in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    echo(f"look at the maps: geofm view {out}")
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--size", type=int, default=600, help="side of the generated HLS granules (px)")
    p.add_argument("--pretrain-steps", type=int, default=300, help="MAE pretraining steps")
    p.add_argument("--finetune-epochs", type=int, default=8, help="flood fine-tuning epochs")


def run(args: argparse.Namespace) -> int:
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    run_demo(args.out, size=args.size, pretrain_steps=args.pretrain_steps, finetune_epochs=args.finetune_epochs)
    return 0
