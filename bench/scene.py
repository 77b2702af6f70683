"""Whole-scene prediction: time and peak memory vs scene size, against pure model compute.

    .venv/bin/python bench/scene.py [--sizes 1000 2000 3660] [--encoder-depth 4] [--threads 2]

Generates (once, into bench/_data/scene/) HLS time series of 3 frames x 6 bands (+ Fmask)
of each size with geofm.data.synthetic, and a fine-tuned export with random weights: the
Prithvi-EO-1.0 100M encoder cut to ``--encoder-depth`` blocks + reference neck + FCN head
(geofm.models.SegmentationModel). Each size runs in a fresh subprocess, which

1. predicts the scene with ``geofm.infer.predict_checkpoint`` (tile 224, overlap 32, batch 8:
   read windows, normalize, tile, model, blend, write a COG class map) and reads the peak RSS
   (``ru_maxrss``) right after;
2. before and after that, pushes the same number of tiles, in the same batch sizes, as random
   tensors through the same predictor (model + softmax): the pure model compute time is the
   mean of the two (other processes' load drifts during a run).

total / model is the overhead of everything that is not the model (target <= 1.15); on a
shared machine the two runs may see different loads, so total / in-predictor (the time spent
inside the predictor during the scene run itself) is printed too. Peak RSS should stay flat
as the scene grows (target <= 1.5 GiB at 3660 x 3660); it grows only with the scene width
(strip buffers: about 60 MB per strip of a 3660 px wide, 3-frame scene).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO / "bench" / "_data" / "scene"
OUT = REPO / "bench" / "_out" / "scene"


def make_model(depth: int) -> Path:
    from geofm.bands import MODEL_BANDS, norm_stats
    from geofm.models import build_segmentation_model, save_finetuned

    export = DATA / f"model_v1_100m_depth{depth}"
    if not (export / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        model = build_segmentation_model("prithvi_eo_v1_100m", num_classes=2, depth=depth)
        mean, std = norm_stats("v1")
        save_finetuned(model, export, task="segmentation", mean=mean, std=std, bands=MODEL_BANDS,
                       class_names=["land", "water"])
    return export


def make_scene(size: int) -> Path:
    from geofm.data import synthetic

    d = DATA / f"scene_{size}"
    if len(list(d.glob("*.tif"))) < 21:
        synthetic.write_time_series(d, size=size, seed=size, cloud_cover=[0.0, 0.1, 0.3], swath_edge=0.03)
    return d


def worker(args: argparse.Namespace) -> None:
    import torch

    from geofm.infer.predict import predict_checkpoint, segmentation_predictor
    from geofm.infer.scene import AxisTiling
    from geofm.models.finetuned import load_finetuned
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    export, scene = make_model(args.encoder_depth), DATA / f"scene_{args.worker}"
    model, info = load_finetuned(export)
    predictor = segmentation_predictor(model, "cpu")
    shape = (args.batch_size, info.in_chans, info.num_frames, args.tile, args.tile)
    with torch.inference_mode():  # warm-up (one-time allocations, kernel selection), not timed
        predictor(torch.randn(shape))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    def model_only(batch_sizes: list[int]) -> float:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batch_sizes:
                predictor(torch.randn((b, *shape[1:]), generator=g))
        return time.perf_counter() - t0

    out = OUT / f"pred_{args.worker}.tif"
    ax = AxisTiling(args.worker, args.tile, args.overlap)
    n = ax.count ** 2
    sizes = [args.batch_size] * (n // args.batch_size) + ([n % args.batch_size] if n % args.batch_size else [])
    before = model_only(sizes)  # the same batches before and after the scene run: load drift averages out
    res = predict_checkpoint(export, [str(scene)], out, tile=args.tile, overlap=args.overlap,
                             batch_size=args.batch_size, resume=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (ru_maxrss is KiB on Linux)
    assert res.batch_sizes == sizes, (res.batch_sizes, sizes)
    after = model_only(res.batch_sizes)
    print(json.dumps({"size": args.worker, "tiles": res.tiles, "batches": len(res.batch_sizes),
                      "total_s": res.seconds, "in_predictor_s": res.model_seconds, "model_s": (before + after) / 2,
                      "model_before_s": before, "model_after_s": after, "load": os.getloadavg()[0],
                      "rss_gib": rss, "rss_model_gib": rss_model, "out_mb": out.stat().st_size / 1e6}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 3660])
    p.add_argument("--encoder-depth", type=int, default=4, help="blocks of the Prithvi-100M encoder kept")
    p.add_argument("--tile", type=int, default=224)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_model(args.encoder_depth)
    for s in args.sizes:
        make_scene(s)
    print(f"data ready in {time.perf_counter() - t0:.0f} s ({DATA}); torch threads: {args.threads}, "
          f"encoder depth {args.encoder_depth}, tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}")
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    for s in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(s), "--encoder-depth", str(args.encoder_depth),
               "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode:
            sys.exit(f"size {s} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"  {s}: done (1-min load average {rows[-1]['load']:.1f} on {os.cpu_count()} CPUs)", flush=True)
    print()
    print("| scene px | tiles | total s | model-only s (before/after) | total/model | in-predictor s "
          "| total/in-predictor | peak RSS GiB | RSS after model load GiB | output MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']}x{r['size']} | {r['tiles']} | {r['total_s']:.1f} | {r['model_s']:.1f} "
              f"({r['model_before_s']:.0f}/{r['model_after_s']:.0f}) | "
              f"{r['total_s'] / r['model_s']:.3f} | {r['in_predictor_s']:.1f} | "
              f"{r['total_s'] / r['in_predictor_s']:.3f} | {r['rss_gib']:.2f} | {r['rss_model_gib']:.2f} | "
              f"{r['out_mb']:.1f} |")


if __name__ == "__main__":
    main()
