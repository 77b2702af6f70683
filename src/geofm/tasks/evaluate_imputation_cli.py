"""``geofm evaluate-imputation`` arguments and entry point; the work is in :mod:`geofm.tasks.evaluate_imputation`.

Kept apart so that ``geofm evaluate-imputation --help`` does not import torch.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="fine-tuned imputation export to evaluate")
    what.add_argument("--predictions", help="a T x 6-band prediction GeoTIFF of the protocol's first sample")
    what.add_argument("--write-cloudy", metavar="DIR", help="write the protocol's first sample as per-date "
                      "GeoTIFFs + sidecar Fmask (the input of geofm predict), then stop")
    p.add_argument("--series", nargs="+", required=True, action="append",
                   help="one series: per-date GeoTIFFs / HLS granules / a folder (repeat --series for more)")
    p.add_argument("--masks", nargs="+", required=True, help="real cloud masks: 1-band HLS Fmask GeoTIFFs (globs ok)")
    p.add_argument("--own-masks", action="store_true", help="also the series' own partly cloudy dates' masks")
    p.add_argument("--stacked-bands", default="1,2,3,4,5,6", help="1-based model bands of stacked GeoTIFFs")
    p.add_argument("--stacked-fmask-band", type=int, help="1-based Fmask band (else sidecar X.Fmask.tif)")
    p.add_argument("--fmask-kind", choices=("hls", "cfmask"), default="hls", help="Fmask bits (HLS) or CFmask classes")
    p.add_argument("--stack-frames", type=int, default=1, help="T of each file when a file is a T x 6 stack")
    p.add_argument("--equal-spacing", action="store_true",
                   help="take series without acquisition dates as equally spaced in time (else refused)")
    p.add_argument("--frames", type=int, default=3, help="dates per sample (--predictions / --write-cloudy)")
    p.add_argument("--target-frames", help="comma-separated dates of each window that get the masks (default: middle)")
    p.add_argument("--stride", type=int, help="dates between windows (default: T)")
    p.add_argument("--tile", type=int, help="tile size in px (default: the model's training size)")
    p.add_argument("--correction", choices=("always", "auto", "never"), default="always",
                   help="--checkpoint: score the model's fill (always), what geofm predict --correction auto "
                        "writes, decided per sample on its cloudy input (auto), or the baseline (never)")
    p.add_argument("--out", help="write the scores as JSON here")


def run(args: argparse.Namespace) -> int:
    from geofm.data.datasets.imputation import mask_bank
    from geofm.data.series import load_series
    from geofm.progress import done_of_total, progress_bar
    from geofm.tasks.evaluate_imputation import (evaluate_checkpoint, evaluate_predictions, format_table,
                                                 write_cloudy)

    bands = tuple(int(b) for b in args.stacked_bands.split(","))
    series = []
    for entry in args.series:
        series += load_series([",".join(entry)], stacked_bands=bands, stacked_fmask_band=args.stacked_fmask_band,
                              fmask_kind=args.fmask_kind, stack_frames=args.stack_frames,
                              equal_spacing=args.equal_spacing)
    masks = mask_bank(args.masks, series if args.own_masks else ())
    targets = [int(v) for v in args.target_frames.split(",")] if args.target_frames else None
    if args.write_cloudy:
        paths = write_cloudy(series[0], masks, args.write_cloudy, args.frames, targets)
        print(f"wrote {len(paths)} dates (+ .Fmask.tif) to {args.write_cloudy}")
        return 0
    if args.predictions:
        scores = evaluate_predictions(args.predictions, series[0], masks, frames=args.frames, target_frames=targets)
    else:
        bar = progress_bar(unit="sample", desc="evaluate")
        progress = done_of_total(bar)
        scores = evaluate_checkpoint(args.checkpoint, series, masks, target_frames=targets, stride=args.stride,
                                     tile=args.tile, progress=progress, correction=args.correction)
        bar.close()
    print(format_table(scores))
    if args.out:
        from geofm.io import atomic_path

        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(scores, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0
