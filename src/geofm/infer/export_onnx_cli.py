"""``geofm export-onnx CKPT OUT.onnx [--opset N]``: a segmentation model as an ONNX file for ONNX Runtime."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT",
                   help="segmentation model: a geofm export folder or a released fine-tune (as geofm predict takes)")
    p.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.add_argument("--size", type=int, default=None,
                   help="tile size (px) of the example input the graph is traced with (default: the model's "
                        "training size); the graph takes any multiple of the patch size")


    p.add_argument("--coords", default=None,
                   help="TL coordinate inputs to keep, comma-separated: temporal_coords, location_coords, or none "
                        "(default: all the model uses; without temporal_coords the graph predicts as torch does "
                        "for inputs without dates)")


def run(args: argparse.Namespace) -> int:
    from geofm.infer.onnx_model import export_onnx

    coords = None if args.coords is None else [c for c in args.coords.split(",") if c and c != "none"]
    res = export_onnx(args.checkpoint, args.out, opset=args.opset, size=args.size, coords=coords)
    print(f"exported {args.checkpoint} -> {res['path']} ({res['bytes'] / 2**20:.1f} MiB, opset {res['opset']}, "
          f"inputs {', '.join(res['inputs'])}; H, W multiples of {res['size_multiple']} px; checked with "
          f"onnx.checker; ONNX Runtime vs torch: max relative error {res['max_rel_error']:.1e})")
    print(f"predict with: geofm predict --checkpoint {res['path']} --inputs ... --out OUT.tif")
    return 0
