"""Lean inference: fp32 vs bf16 weights vs ONNX Runtime per model, against TerraTorch's ``tiled_inference`` fp32.

    .venv/bin/python bench/lean.py                                  # 1024 x 1024 scene
    .venv/bin/python bench/lean.py --size 3660 --peer-python .peer-venv/bin/python
    .venv/bin/python bench/lean.py --size 3660 --only v2_300m_tl --variants bf16   # the targets' rows

Models (random weights): ``seg100m``, the Prithvi-EO-1.0-100M encoder + geofm's reference neck and FCN
head (one frame, 2 classes, a geofm export); ``v2_300m_tl``, the Prithvi-EO-2.0-300M-TL + UperNet
architecture of the Sen1Floods11 fine-tune, built by TerraTorch and saved as a Lightning checkpoint
(``bench/released.py``; without the peer venv geofm builds it). Each is also exported with
``geofm export-onnx``.

Measured in one run:

* GEMM peak, fp32 and bf16 (as ``bench/model.py``), and the Prithvi-100M encoder (batch 4, 3 frames,
  224 px) with fp32 and with bf16 weights: achieved FLOP/s against each peak. One process, rounds
  interleaved, best round kept.
* chips/s: batches of 8 chips of 224 px through each variant (fp32, bf16 weights, ONNX Runtime) of
  each model in one process, rounds interleaved, best round kept.
* scene: ``predict_checkpoint`` of the generated six-band scene (``bench/released.py``'s) per model
  and variant, each in a fresh child process: wall seconds and peak RSS (VmHWM); for
  ``v2_300m_tl`` also TerraTorch's ``tiled_inference`` fp32 on the peer's interpreter (same tiles,
  overlap, batches and threads); class-map agreement with fp32.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from model import peak_rss_mib  # noqa: E402  (bench/model.py)
TILE, OVERLAP, BATCH = 224, 32, 8
VARIANTS = ("fp32", "bf16", "onnxruntime")


def _geofm_path() -> None:
    sys.path.insert(0, str(REPO / "src"))


# --------------------------------------------------------------------------- workers (child processes)
def worker_build100(args) -> dict:
    """geofm export of the 100M segmentation model (random weights)."""
    import torch

    _geofm_path()
    from geofm.bands import MODEL_BANDS
    from geofm.models import build_segmentation_model, save_finetuned
    from released import MEAN, STD

    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_eo_v1_100m", num_classes=2, num_frames=1)
    save_finetuned(model, args.ckpt, task="segmentation", mean=MEAN, std=STD, bands=MODEL_BANDS, img_size=TILE)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def worker_build300_geofm(args) -> dict:
    """Without the peer: the 300M-TL + UperNet built by geofm, saved with TerraTorch's key names."""
    import torch

    _geofm_path()
    from geofm.models.released import save_released
    from geofm.models.released.terratorch_prithvi import TerraTorchConfig, TerraTorchSegmenter
    from released import model_args

    torch.manual_seed(0)
    model = TerraTorchSegmenter(TerraTorchConfig.from_model_args(model_args(24))).eval()
    from geofm.models.export import FinetunedInfo
    from released import MEAN, STD

    info = FinetunedInfo(task="segmentation", num_classes=2, class_names=None, in_chans=6, num_frames=1,
                         img_size=TILE, patch_size=(1, 16, 16), mean=MEAN, std=STD, bands=[], layout="terratorch")
    save_released(model, info, args.ckpt)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def worker_export(args) -> dict:
    _geofm_path()
    from geofm.infer.onnx_model import export_onnx

    t0 = time.perf_counter()
    coords = None if args.coords is None else [c for c in args.coords.split(",") if c]
    res = export_onnx(args.ckpt, args.out, size=TILE, coords=coords)
    return {"seconds": time.perf_counter() - t0, "max_rel_error": res["max_rel_error"], "mib": res["bytes"] / 2**20}


def worker_throughput(args) -> dict:
    """Chips/s of every variant of every model, the GEMM peaks and the 100M encoder, rounds interleaved."""
    import torch

    _geofm_path()
    from model import encoder_flops, gemm_peak  # bench/model.py
    from geofm.infer.onnx_model import load_onnx
    from geofm.infer.precision import prepare_model
    from geofm.models import create_model, load_finetuned
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    calls, flops = {}, {}
    models = json.loads(args.models)
    for name, paths in models.items():
        fp32, info = load_finetuned(paths["ckpt"])
        fp32 = prepare_model(fp32, "fp32")
        bf16 = prepare_model(copy.deepcopy(fp32), "bf16")
        ort, _ = load_onnx(paths["onnx"])
        x = torch.randn(BATCH, 6, 1, TILE, TILE, generator=g)
        given = {"temporal_coords": torch.tensor([[[2020.0, 200.0]]]).expand(BATCH, -1, -1),
                 "location_coords": torch.tensor([[38.8, -90.1]]).expand(BATCH, -1)}
        coords = [given[n] for n in ort.inputs[1:]]  # what the graph takes; torch gets the same
        tc, lc = given["temporal_coords"] if "temporal_coords" in ort.inputs else None, \
            given["location_coords"] if "location_coords" in ort.inputs else None

        def run_torch(m=None, x=x, tc=tc, lc=lc, model=None):
            with torch.inference_mode():
                model(x, tc, lc)

        calls[f"{name}:fp32"] = (lambda m=fp32, x=x, tc=tc, lc=lc: run_torch(model=m, x=x, tc=tc, lc=lc))
        calls[f"{name}:bf16"] = (lambda m=bf16, x=x, tc=tc, lc=lc: run_torch(model=m, x=x, tc=tc, lc=lc))
        calls[f"{name}:onnxruntime"] = (lambda s=ort, x=x, c=coords: s.run(x, *c))
    mae = create_model("prithvi_eo_v1_100m").eval()
    enc32 = mae.encoder
    enc16 = prepare_model(copy.deepcopy(enc32), "bf16")
    xe = torch.randn(4, 6, 3, 224, 224, generator=g)
    for key, enc in (("encoder:fp32", enc32), ("encoder:bf16", enc16)):
        calls[key] = (lambda e=enc: run_torch(model=lambda a, b, c: e(a), x=xe))
        flops[key] = encoder_flops(4)
    for fn in calls.values():  # warm-up (first-call allocations, oneDNN primitive creation)
        fn()
    best = {k: float("inf") for k in calls}
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(args.rounds):
        for dt in peaks:
            peaks[dt] = max(peaks[dt], gemm_peak(dt)["gflops"])
        for key, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    out = {"peak_gflops": peaks, "seconds": best,
           "encoder_gflops": {k: flops[k] / best[k] / 1e9 for k in flops}}
    return out


def worker_scene(args) -> dict:
    """(geofm venv) one variant of one model over the scene, in its own process."""
    import torch

    _geofm_path()
    from geofm.infer.predict import predict_checkpoint
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    kw = {"runtime": "onnxruntime"} if args.variant == "onnxruntime" else {"precision": args.variant}
    t0 = time.perf_counter()
    res = predict_checkpoint(args.ckpt, [args.scene_tif], args.out, tile=TILE, overlap=OVERLAP, batch_size=BATCH,
                             overviews=False, resume=False, **kw)
    return {"seconds": time.perf_counter() - t0, "model_seconds": res.model_seconds, "peak_rss_mib": peak_rss_mib(),
            "tiles": res.tiles}


# --------------------------------------------------------------------------- driver
def run_worker(python: str, role: str, extra: list[str], script: Path | None = None) -> dict:
    cmd = [python, str(script or Path(__file__).resolve()), "--worker", role, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{role} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def class_map(path: Path):
    import numpy as np
    import rasterio

    if path.suffix == ".npy":
        return np.load(path)
    with rasterio.open(path) as src:
        return src.read(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="scene side in px (3660: an HLS tile)")
    p.add_argument("--peer-python", default=str(REPO / ".peer-venv" / "bin" / "python"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workdir", default=str(REPO / "outputs" / "bench_lean"))
    p.add_argument("--only", default="seg100m,v2_300m_tl", help="models to run (comma-separated)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="scene variants to run besides fp32 (the baseline, always run); chips/s covers all")
    p.add_argument("--worker", choices=["build100", "build300_geofm", "export", "throughput", "scene"],
                   help=argparse.SUPPRESS)
    for name in ("ckpt", "out", "scene-tif", "variant", "models", "coords"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        fn = {"build100": worker_build100, "build300_geofm": worker_build300_geofm, "export": worker_export,
              "throughput": worker_throughput, "scene": worker_scene}[args.worker]
        print(json.dumps(fn(args)))
        return

    import released

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    peer = Path(args.peer_python).is_file()
    tif, npy, lat, lon = released.write_scene(work, args.size)
    threads = ["--threads", str(args.threads)]
    ckpts = {"seg100m": work / "seg100m", "v2_300m_tl": work / ("v2_300m_tl.ckpt" if peer else "v2_300m_tl")}
    only = [m for m in args.only.split(",") if m]
    if not only or set(only) - set(ckpts):
        raise SystemExit(f"--only: choose among {', '.join(ckpts)}")
    variants = ["fp32", *(v for v in VARIANTS if v != "fp32" and v in args.variants.split(","))]
    if "seg100m" in only and not ckpts["seg100m"].exists():
        run_worker(sys.executable, "build100", ["--ckpt", str(ckpts["seg100m"])])
    if "v2_300m_tl" in only and not ckpts["v2_300m_tl"].exists():
        if peer:
            run_worker(args.peer_python, "build", ["--depth", "24", "--ckpt", str(ckpts["v2_300m_tl"])],
                       REPO / "bench" / "released.py")
        else:
            run_worker(sys.executable, "build300_geofm", ["--ckpt", str(ckpts["v2_300m_tl"])])
    ckpts = {n: c for n, c in ckpts.items() if n in only}
    exports = {}
    onnx_files = {n: work / f"{n}.onnx" for n in ckpts}
    onnx_files["v2_300m_tl"] = work / "v2_300m_tl_location.onnx"  # the scene has no date: location only, as torch
    for name, ckpt in ckpts.items():
        if not onnx_files[name].exists():
            coords = ["--coords", "location_coords"] if name == "v2_300m_tl" else []
            exports[name] = run_worker(sys.executable, "export", ["--ckpt", str(ckpt), "--out",
                                                                  str(onnx_files[name]), *coords])
    models = {n: {"ckpt": str(c), "onnx": str(onnx_files[n])} for n, c in ckpts.items()}
    tp = run_worker(sys.executable, "throughput", [*threads, "--rounds", str(args.rounds), "--models",
                                                    json.dumps(models)])
    scene: dict[tuple[str, str], dict] = {}
    for name, ckpt in ckpts.items():
        if name == "v2_300m_tl" and peer:
            scene[(name, "terratorch")] = run_worker(
                args.peer_python, "terratorch",
                ["--ckpt", str(ckpt), "--scene-npy", str(npy), "--out", str(work / "terratorch.npy"), "--lat",
                 str(lat), "--lon", str(lon), "--batch-size", str(BATCH), *threads], REPO / "bench" / "released.py")
        for variant in variants:
            ck = onnx_files[name] if variant == "onnxruntime" else ckpt
            scene[(name, variant)] = run_worker(
                sys.executable, "scene", [*threads, "--ckpt", str(ck), "--scene-tif", str(tif), "--variant", variant,
                                          "--out", str(work / f"{name}_{variant}.tif")])

    # ----------------------------------------------------------------------- report
    peak = tp["peak_gflops"]
    enc = tp["encoder_gflops"]
    print(f"\nGEMM peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"({peak['bf16'] / peak['fp32']:.2f}x); {args.threads} threads")
    print(f"Prithvi-100M encoder (batch 4, 3x224x224): fp32 weights {enc['encoder:fp32']:.0f} GFLOP/s "
          f"({100 * enc['encoder:fp32'] / peak['fp32']:.0f} % of the fp32 peak), bf16 weights "
          f"{enc['encoder:bf16']:.0f} GFLOP/s ({100 * enc['encoder:bf16'] / peak['bf16']:.0f} % of the bf16 peak, "
          f"{enc['encoder:bf16'] / enc['encoder:fp32']:.2f}x fp32)  [targets: >= 70 %, >= 1.5x]")
    for name, info in exports.items():
        print(f"export-onnx {name}: {info['seconds']:.0f} s, {info['mib']:.0f} MiB, "
              f"max relative error vs torch {info['max_rel_error']:.1e}")
    print(f"\nscene {args.size} x {args.size} x 6 bands, tile {TILE}, overlap {OVERLAP}, batch {BATCH}")
    print("| model | variant | chips/s | vs fp32 | scene s | vs fp32 | vs TerraTorch | peak RSS MiB | "
          "vs fp32 | vs TerraTorch | classes = fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, ckpt in ckpts.items():
        ref_map = class_map(work / f"{name}_fp32.tif")
        base = scene[(name, "fp32")]
        tt = scene.get((name, "terratorch"))
        t32 = tp["seconds"][f"{name}:fp32"]
        rows = ([("terratorch", None)] if tt else []) + [(v, tp["seconds"][f"{name}:{v}"]) for v in variants]
        for variant, secs in rows:
            r = scene[(name, variant)]
            out = work / ("terratorch.npy" if variant == "terratorch" else f"{name}_{variant}.tif")
            agree = float((class_map(out) == ref_map).mean())
            chips = f"{BATCH / secs:.2f} | {t32 / secs:.2f}x" if secs else "- | -"
            vs_tt_s = f"{r['seconds'] / tt['seconds']:.2f}x" if tt else "-"
            vs_tt_m = f"{r['peak_rss_mib'] / tt['peak_rss_mib']:.2f}x" if tt else "-"
            print(f"| {name} | {variant} | {chips} | {r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x | "
                  f"{vs_tt_s} | {r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | "
                  f"{vs_tt_m} | {100 * agree:.2f} % |")
    print("\n(vs fp32: speed-up for chips/s and scene s; RSS ratio for peak RSS)")
    if not peer:
        print("TerraTorch peer venv absent (bash bench/setup_peer.sh): geofm fp32 is the baseline")
    (work / "lean.json").write_text(json.dumps({"throughput": tp, "exports": exports,
                                                "scene": {f"{k[0]}:{k[1]}": v for k, v in scene.items()}}, indent=2))


if __name__ == "__main__":
    main()
