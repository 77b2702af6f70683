"""``geofm ingest INPUTS... --out STORE``: HLS scenes to a Zarr chip store (resumable, Dask)."""

from __future__ import annotations

import argparse
import tempfile

from geofm.data.hls import DEFAULT_CLOUD_BITS, FMASK_BITS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="HLS band files / stacked GeoTIFFs, or folders (local or s3://, https://), "
                                             "or a STAC manifest from 'geofm search' (its COGs are streamed over "
                                             "HTTPS with your Earthdata credentials)")
    p.add_argument("--out", required=True, help="chip store (folder or s3:// URL)")
    p.add_argument("--chip-size", type=int, default=224)
    p.add_argument("--frames", type=int, default=3, help="acquisitions per time series (T)")
    p.add_argument("--max-cloud", type=float, default=0.05, help="max fraction of cloudy pixels per chip")
    p.add_argument("--max-nodata", type=float, default=0.0, help="max fraction of nodata pixels per chip")
    p.add_argument("--cloud-bits", default=",".join(DEFAULT_CLOUD_BITS),
                   help=f"Fmask conditions counted as cloud (of {','.join(FMASK_BITS)})")
    p.add_argument("--landcover", help="land-cover GeoTIFF; the majority class of each chip is recorded")
    p.add_argument("--stacked-bands", default="1,2,3,4,5,6", help="1-based band indices of stacked GeoTIFF inputs")
    p.add_argument("--stacked-fmask-band", type=int, help="1-based Fmask band of stacked inputs")
    p.add_argument("--fmask-kind", choices=("hls", "cfmask"), default="hls",
                   help="stacked Fmask encoding: HLS bits or Landsat CFmask classes")
    p.add_argument("--rows-per-task", type=int, help="chip rows per task (default: align strips with file blocks)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (default: start a LocalCluster); "
                                       "'sync' runs in this process")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: CPU count)")
    p.add_argument("--endpoint-url", help="S3 endpoint (e.g. a MinIO or moto server)")


def int_list(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,3"`` -> (1, 2, 3); a :class:`ConfigError` naming ``option`` otherwise."""
    from geofm.errors import ConfigError

    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"{option} expects comma-separated whole numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from geofm.data.ingest import IngestConfig, ingest
    from geofm.errors import ConfigError

    cfg = IngestConfig(chip_size=args.chip_size, frames=args.frames, max_cloud=args.max_cloud,
                       max_nodata=args.max_nodata, cloud_bits=tuple(b for b in args.cloud_bits.split(",") if b),
                       landcover=args.landcover, stacked_bands=int_list(args.stacked_bands, "--stacked-bands"),
                       stacked_fmask_band=args.stacked_fmask_band, fmask_kind=args.fmask_kind,
                       rows_per_task=args.rows_per_task)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    so = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    from geofm.progress import done_of_total, progress_bar

    bar = progress_bar(total=0, unit="tasks", desc="ingest")
    progress = done_of_total(bar)

    from geofm.data.remote.stream import WorkerGdalOptions, apply_gdal_env, resolve_inputs, restore_env

    # manifests -> https URLs + GDAL auth/retry options; a login's session cookie lives in a private
    # temporary folder, removed when the ingest ends (however it ends)
    with tempfile.TemporaryDirectory(prefix="geofm-login-") as login_dir:
        inputs, gdal_options = resolve_inputs(args.inputs, workdir=login_dir)
        old_env = apply_gdal_env(gdal_options)  # this process (planning, sync) and the LocalCluster it starts
        # workers of an external cluster did not inherit that environment: the tasks carry the options
        external = args.scheduler not in (None, "sync")
        try:
            res = ingest(inputs, args.out, cfg, storage_options=so, scheduler=args.scheduler, n_workers=args.workers,
                         progress=progress,
                         gdal_options=WorkerGdalOptions(gdal_options) if gdal_options and external else None)
        finally:
            restore_env(old_env)
    bar.close()
    for what, why in res.skipped:
        print(f"skipped {what}: {why}")
    if res.already_complete:
        print(f"{res.store} is already complete ({res.chips} chips): nothing to do")
        return 0
    mb = res.bytes_read / 1e6
    print(f"ingested {res.tasks_run}/{res.tasks_total} tasks in {res.seconds:.1f} s ({mb / max(res.seconds, 1e-9):.1f} "
          f"MB/s decoded): {res.chips} chips kept, rejected {res.rejected.get('cloud', 0)} cloudy and "
          f"{res.rejected.get('nodata', 0)} with nodata -> {res.store}")
    return 0
