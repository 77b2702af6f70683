"""``geofm map --checkpoint CKPT INPUTS... --out DIR``: a region and a season -> tiles, mosaic, STAC catalog."""

from __future__ import annotations

import argparse
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="fine-tuned segmentation or imputation model (as for geofm predict)")
    p.add_argument("inputs", nargs="+",
                   help="HLS band files or folders (several MGRS tiles and dates), stacked GeoTIFFs, or a "
                        "'geofm search' manifest (its COGs are streamed over HTTPS with your Earthdata credentials)")
    p.add_argument("--out", required=True, help="output folder: tiles/, mosaic.tif, catalog.json, map-log.jsonl")
    p.add_argument("--start", help="first date of the season, YYYY-MM-DD (default: the earliest input)")
    p.add_argument("--end", help="last date of the season, YYYY-MM-DD, inclusive (default: the latest input)")
    p.add_argument("--frames", type=int, help="dates per tile (default: the model's frame count)")
    p.add_argument("--crs", help="CRS of the mosaic, e.g. EPSG:32610 (default: the UTM zone holding most of the area)")
    p.add_argument("--resolution", type=float, default=30.0, help="pixel size of the mosaic in metres")
    p.add_argument("--aoi", help="GeoJSON polygon(s) in EPSG:4326: only tiles touching it run; the mosaic is clipped")
    p.add_argument("--probabilities", action="store_true", help="write per-class probabilities, not class maps")
    p.add_argument("--tile", type=int, default=224, help="model tile size in px (0: the model's training size)")
    p.add_argument("--overlap", type=int, default=32, help="px shared by neighbouring model tiles (blended)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda (one model per GPU worker) or cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="number format of the transformer blocks' weights (auto: bf16 on CUDA and on CPUs with "
                        "native bf16, else fp32; see docs/inference.md)")
    p.add_argument("--view", action="store_true",
                   help="then show the mosaic and tiles over their inputs in the local web map (geofm view)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://HOST:PORT); 'sync' runs in this "
                                       "process (default: a LocalCluster)")
    p.add_argument("--no-mosaic", action="store_true",
                   help="predict the tiles only (a later run without it writes the mosaic and the catalog)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes, one thread each (default: one per "
                                               "core, or per GPU with --device cuda)")


def run(args: argparse.Namespace) -> int:
    from geofm.infer.precision import resolve_precision
    from geofm.infer.predict import check_device
    from geofm.infer.region import map_region
    from geofm.progress import progress_bar

    check_device(args.device)
    precision = resolve_precision(args.precision, args.device)
    print(f"precision {precision}" + (" (auto)" if args.precision == "auto" else ""))
    if args.view:
        from geofm.viz.view_cli import check_installed

        check_installed()

    bars: list = []
    t0 = time.perf_counter()
    first: dict = {}

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(progress_bar(total=total, initial=done, unit="tiles", desc="map"))
            first["done"], first["t"] = done, time.perf_counter()
        bar = bars[0]
        bar.n = done
        ran = done - first["done"]
        if ran:
            eta = (time.perf_counter() - first["t"]) / ran * (total - done)
            bar.set_postfix_str(f"ETA {eta:.0f} s" if done < total else "", refresh=False)
        bar.refresh()

    res = map_region(args.checkpoint, args.inputs, args.out, start=args.start, end=args.end, frames=args.frames,
                     crs=args.crs, resolution=args.resolution, aoi=args.aoi, probabilities=args.probabilities,
                     tile=args.tile or None, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                     scheduler=args.scheduler, workers=args.workers, progress=progress,
                     mosaic=not args.no_mosaic, precision=precision)
    for bar in bars:
        bar.close()
    for t in res.skipped:
        print(f"skipped {t.tile}: {t.reason}")
    for t in res.failed:
        print(f"FAILED {t.tile}: {t.reason}")
    seconds = time.perf_counter() - t0
    km2 = res.area_km2
    print(f"{len(res.tiles)} tile(s): {len(res.predicted)} predicted, {len(res.finished) - len(res.predicted)} "
          f"already done, {len(res.skipped)} skipped, {len(res.failed)} failed; {km2:,.0f} km² predicted in "
          f"{seconds:.1f} s ({km2 / max(seconds, 1e-9):,.1f} km²/s) -> {res.out_dir}")
    if res.mosaic is not None:
        print(f"mosaic ({res.crs}, {args.resolution:g} m) -> {res.mosaic} in {res.mosaic_seconds:.1f} s; "
              f"catalog -> {res.catalog}")
    elif res.failed:
        print(f"mosaic not written: rerun the same command to finish the {len(res.failed)} failed tile(s)")
    if res.failed:
        return 1
    if args.view:
        from geofm.viz.view_cli import view

        return view([str(res.out_dir)], open_browser=True)
    return 0
