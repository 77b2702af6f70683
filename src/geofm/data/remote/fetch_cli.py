"""``geofm fetch MANIFEST --out DIR``: download the granules' band files (Earthdata Login, resumable)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", help="STAC ItemCollection written by 'geofm search'")
    p.add_argument("--out", required=True, help="folder; files go to OUT/<granule id>/<file name>")
    p.add_argument("--bands", default="prithvi",
                   help="'prithvi' (the six model bands of each collection + Fmask) or asset keys, e.g. B02,B03,Fmask")
    p.add_argument("--workers", type=int, default=4, help="parallel downloads")
    p.add_argument("--retries", type=int, default=8, help="retries per file (backoff + jitter, resumed with Range)")
    p.add_argument("--access", choices=("https", "s3"), default="https",
                   help="https (anywhere) or s3 (in AWS us-west-2, temporary keys from /s3credentials)")
    p.add_argument("--s3-credentials-url", default="https://data.lpdaac.earthdatacloud.nasa.gov/s3credentials")
    p.add_argument("--s3-endpoint-url", help="S3 endpoint (tests, mirrors)")


def run(args: argparse.Namespace) -> int:
    import sys

    from geofm.data.remote import fetch, stac
    from geofm.progress import progress_bar

    items = stac.read_manifest(args.manifest)
    bar = progress_bar(total=0, unit="B", desc="fetch", unit_scale=True, unit_divisor=1024)

    def on_size(n: int) -> None:
        bar.total += n
        bar.refresh()

    res = fetch.fetch(items, args.out, bands=fetch.parse_bands(args.bands), workers=args.workers,
                      retries=args.retries, access=args.access, s3_credentials_url=args.s3_credentials_url,
                      s3_endpoint_url=args.s3_endpoint_url, progress=bar.update, on_size=on_size)
    bar.close()
    mb = res.bytes / 1e6
    print(f"{len(res.downloaded)} file(s) downloaded ({mb:.1f} MB in {res.seconds:.1f} s), "
          f"{len(res.skipped)} already complete, {len(res.failed)} failed -> {args.out} "
          f"(log: {args.out}/{fetch.LOG_NAME})")
    if res.failed:
        print("failed:", file=sys.stderr)
        for d, msg in res.failed:
            print(f"  {d.item_id} {d.asset}: {msg}", file=sys.stderr)
        return 1
    return 0
