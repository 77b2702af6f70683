"""``geofm search``: HLS granules in NASA CMR-STAC for an area, dates and a cloud limit -> STAC manifest."""

from __future__ import annotations

import argparse

DEFAULT_STAC_URL = "https://cmr.earthdata.nasa.gov/stac/LPCLOUD"  # = stac.DEFAULT_STAC_URL (kept light to import)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected W,S,E,N numbers, got '{text}'") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--collections", default="HLSS30,HLSL30",
                   help="comma-separated; HLSS30, HLSS30_2.0 and HLSS30.v2.0 all work (default: HLSS30,HLSL30)")
    area = p.add_argument_group("area (one of)")
    area.add_argument("--bbox", type=_floats, nargs="+", metavar="W,S,E,N",
                      help="W,S,E,N in degrees (-122.5,37.1,-121.9,37.6 or four numbers: -122.5 37.1 -121.9 37.6)")
    area.add_argument("--aoi", help="GeoJSON file with the area of interest (polygons)")
    area.add_argument("--tiles", help="MGRS tiles, e.g. 10SEG,10SFG (alone, or to keep only those tiles of the area)")
    p.add_argument("--start", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--end", required=True, help="last day, YYYY-MM-DD (inclusive)")
    p.add_argument("--max-cloud", type=float, help="max eo:cloud_cover in percent, as CMR reports it")
    p.add_argument("--max-items", type=int, help="stop after this many granules")
    p.add_argument("--out", required=True, help="manifest to write (STAC ItemCollection GeoJSON)")
    p.add_argument("--quicklook", help="PNG of the footprints over the area")
    p.add_argument("--stac-url", default=DEFAULT_STAC_URL, help=f"STAC API (default {DEFAULT_STAC_URL})")
    p.add_argument("--retries", type=int, default=8, help="retries on 429/5xx/connection errors (backoff + jitter)")
    p.add_argument("--page-interval", type=float, default=0.2, help="min seconds between page requests")


def run(args: argparse.Namespace) -> int:
    from geofm.data.remote import stac
    from geofm.progress import progress_bar

    aoi = stac.read_aoi(args.aoi) if args.aoi else None
    bbox = None if args.bbox is None else tuple(v for part in args.bbox for v in part)
    if bbox is not None and len(bbox) != 4:
        from geofm.errors import ConfigError

        raise ConfigError(f"--bbox: expected 4 numbers W,S,E,N, got {len(bbox)}")
    q = stac.SearchQuery(collections=tuple(c for c in args.collections.split(",") if c.strip()), start=args.start,
                         end=args.end, bbox=bbox, intersects=aoi,
                         tiles=tuple(args.tiles.split(",")) if args.tiles else (), max_cloud=args.max_cloud,
                         max_items=args.max_items)
    bar = progress_bar(desc="search", unit="pages")

    def progress(pages: int, items: int) -> None:
        bar.n = pages
        bar.set_postfix_str(f"{items} granules")
        bar.refresh()

    res = stac.search(q, args.stac_url, retries=args.retries, min_interval=args.page_interval, progress=progress)
    bar.close()
    path = stac.write_manifest(res, args.out, args.stac_url)
    print(stac.format_summary(stac.summarize(res.items)))
    notes = [f"{res.pages} page(s)"]
    if res.matched is not None:
        notes.append(f"service matched {res.matched}")
    if res.dropped_cloud:
        notes.append(f"{res.dropped_cloud} above --max-cloud dropped here (the service did not filter them)")
    if res.dropped_tile:
        notes.append(f"{res.dropped_tile} of other tiles dropped")
    print("  " + "; ".join(notes))
    if args.quicklook:
        stac.quicklook(res.items, args.quicklook, aoi=aoi, bbox=res.query.bbox if aoi is None else None)
        print(f"quicklook -> {args.quicklook}")
    print(f"manifest -> {path}")
    return 0
