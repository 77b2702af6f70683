"""``geofm predict --checkpoint CKPT --inputs FRAMES... --out OUT.tif``: a whole scene to a GeoTIFF."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="fine-tuned model: a geofm export folder (config.json + model.safetensors) or a released "
                        "fine-tune as published (hls-foundation-os <name>.pth + <name>.py, TerraTorch .ckpt or "
                        "Hugging Face folder with config.yaml)")
    p.add_argument("--inputs", nargs="+", required=True,
                   help="one frame per time step: HLS band files / granule folders, or stacked GeoTIFFs")
    p.add_argument("--out", required=True, help="output GeoTIFF (Cloud-Optimized)")
    p.add_argument("--tile", type=int, default=224, help="tile size in px (0: the model's training size)")
    p.add_argument("--overlap", type=int, default=32, help="px shared by neighbouring tiles (blended)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--probabilities", action="store_true", help="write per-class probabilities, not a class map")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="number format of the transformer blocks' weights (default auto: bf16 on CUDA and on CPUs "
                        "with native bf16, AVX-512 BF16 or AMX; else fp32)")
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default=None,
                   help="run the model with torch, or with ONNX Runtime (--checkpoint: an .onnx file written by "
                        "geofm export-onnx; needs geofm[onnx]). Default: onnxruntime for .onnx files, else torch")
    p.add_argument("--quicklook", nargs="?", const=True, default=False, metavar="PNG",
                   help="also write a PNG quicklook (default path: OUT with .png)")
    p.add_argument("--block", type=int, default=512, help="output block size in px (and resume granularity)")
    p.add_argument("--no-overviews", action="store_true", help="do not add overviews to the output")
    p.add_argument("--restart", action="store_true", help="ignore finished parts of an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and the quicklook) if it exists")
    p.add_argument("--stacked-bands", default=None,
                   help="1-based bands of stacked GeoTIFF inputs in model order (Blue, Green, Red, NIR, SWIR1, "
                        "SWIR2), e.g. 2,3,4,9,12,13 for a 13-band Sentinel-2 stack (default: the model's own "
                        "bands for released models, else 1,2,3,4,5,6)")
    p.add_argument("--stacked-fmask-band", type=int,
                   help="1-based Fmask band (HLS bits) of stacked GeoTIFF inputs; without it a sidecar X.Fmask.tif "
                        "beside X.tif is used. Imputation models need one or the other (or HLS granules)")
    p.add_argument("--view", action="store_true",
                   help="then show the result over its inputs in the local web map (geofm view) and open it")
    p.add_argument("--fmask-kind", choices=("hls", "cfmask"), default="hls",
                   help="what the cloud layer holds: HLS Fmask bits (default) or Landsat CFmask classes (0 clear, "
                        "1 water, 2 shadow, 3 snow, 4 cloud, 255 fill)")
    p.add_argument("--correction", choices=("auto", "always", "never"), default="auto",
                   help="imputation: write the model's correction per band only where it beats temporal linear "
                        "interpolation on the series' own cloud masks (auto), always, or never (the baseline)")
    p.add_argument("--equal-spacing", action="store_true",
                   help="imputation: take inputs without acquisition dates as equally spaced in time (else refused)")


def run(args: argparse.Namespace) -> int:
    from geofm.data.ingest_cli import int_list
    from pathlib import Path

    from geofm.infer.precision import resolve_precision
    from geofm.infer.predict import check_device, check_runtime, predict_checkpoint
    from geofm.progress import progress_bar
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    check_device(args.device)
    runtime = check_runtime(args.runtime, Path(args.checkpoint))
    precision = "fp32" if runtime == "onnxruntime" else resolve_precision(args.precision, args.device)
    print(f"runtime {runtime}, precision {precision}" + (" (auto)" if args.precision == "auto" and
                                                          runtime == "torch" else ""))
    if args.view:
        from geofm.viz.view_cli import check_installed

        check_installed()
    bars: list = []  # created at the first batch, so that input errors print no empty bar

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(progress_bar(total=total, initial=0, unit="tiles", desc="predict"))
        bars[0].n = done
        bars[0].refresh()

    res = predict_checkpoint(args.checkpoint, args.inputs, args.out, tile=args.tile or None, overlap=args.overlap,
                             batch_size=args.batch_size, probabilities=args.probabilities, device=args.device,
                             block=args.block, overviews=not args.no_overviews, resume=not args.restart,
                             quicklook=args.quicklook, stacked_fmask_band=args.stacked_fmask_band,
                             stacked_bands=None if args.stacked_bands is None else
                             int_list(args.stacked_bands, "--stacked-bands"),
                             progress=progress, overwrite=args.overwrite, fmask_kind=args.fmask_kind,
                             correction=args.correction, equal_spacing=args.equal_spacing,
                             precision=precision, runtime=runtime)
    for bar in bars:
        bar.close()
    if res.resumed_from_row:
        print(f"resumed an interrupted run at row {res.resumed_from_row}")
    print(f"predicted {res.width}x{res.height} px ({res.tiles} tiles) in {res.seconds:.1f} s "
          f"(model {res.model_seconds:.1f} s) -> {res.path}")
    import rasterio

    with rasterio.open(res.path) as src:
        tags = src.tags()
    if "geofm_correction" in tags:
        print(f"correction {tags['geofm_correction']}, model's fill per date: {tags['geofm_correction_bands']} "
              "(else linear interpolation by day; scores in the geofm_correction_* tags)")
    if args.quicklook:
        png = Path(args.out).with_suffix(".png") if args.quicklook is True else Path(args.quicklook)
        print(f"quicklook -> {png}")
    if args.view:
        from geofm.viz.view_cli import view

        return view([str(i) for i in args.inputs] + [str(args.out)], open_browser=True)
    return 0
