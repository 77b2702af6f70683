"""A released-model architecture on a whole HLS-size scene: geofm's streaming scene writer vs TerraTorch's
``tiled_inference`` (its default in-memory source and sink), peak RSS and wall time side by side.

    .venv/bin/python bench/released.py --peer-python .peer-venv/bin/python            # 3660 x 3660, 300M-TL
    .venv/bin/python bench/released.py --peer-python ... --size 1024 --depth 6        # a quicker look

Model: the Prithvi-EO-2.0-300M-TL-Sen1Floods11 architecture (prithvi_eo_v2_300_tl backbone, SelectIndices
[5, 11, 17, 23], ReshapeTokensToImage, LearnedInterpolateToPyramidal, UperNetDecoder 256 channels, 2 classes),
built by TerraTorch's EncoderDecoderFactory with random weights and saved as a Lightning checkpoint;
geofm loads that same file with ``geofm.models.load_finetuned``. ``--depth`` shortens the backbone (the
indices follow) when the CPU cannot afford 24 blocks over the whole scene.

Scene: one frame, six int16 bands (reflectance x10000, smooth random fields), EPSG:32615, 30 m.
Both sides use tiles of 224 px, 32 px of overlap (TerraTorch: stride 192), batches of 8, the same
normalization and TL location, ``--threads`` torch threads, one process each (run one after the
other). TerraTorch is given the scene as one normalized tensor (what tiled_inference takes) read from
a .npy copy and its class map is saved as .npy; geofm reads the GeoTIFF window by window and writes a
COG. Peak RSS is the process's VmHWM; "after load" is RSS once the model is loaded (before the
scene), so the difference is what the scene costs. Class maps are compared pixel by pixel.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from model import peak_rss_mib  # noqa: E402  (bench/model.py)
TILE, OVERLAP, CLASSES = 224, 32, 2
MEAN = [1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0]  # Prithvi-EO-2.0 pretraining statistics (x10000)
STD = [2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0]


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def model_args(depth: int) -> dict:
    step = depth // 4
    indices = [step - 1, 2 * step - 1, 3 * step - 1, depth - 1]
    return dict(backbone="prithvi_eo_v2_300_tl", backbone_pretrained=False, backbone_num_frames=1,
                backbone_depth=depth, backbone_bands=["BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2"],
                decoder="UperNetDecoder", decoder_channels=256, num_classes=CLASSES, head_dropout=0.1,
                necks=[{"name": "SelectIndices", "indices": indices}, {"name": "ReshapeTokensToImage"},
                       {"name": "LearnedInterpolateToPyramidal"}])


# --------------------------------------------------------------------------- workers
def worker_build(args) -> dict:
    """(peer venv) TerraTorch model with random weights -> Lightning checkpoint."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from terratorch_peer import import_terratorch

    tt = import_terratorch()
    torch.manual_seed(0)
    margs = model_args(args.depth)
    model = tt.EncoderDecoderFactory().build_model(task="segmentation", **margs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorm statistics and TL scales away from their init values too
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    sd = {"model." + k: v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "hyper_parameters": {"model_args": margs}}, args.ckpt)
    return {"terratorch": tt.version, "params_m": sum(v.numel() for v in model.state_dict().values()) / 1e6}


def worker_terratorch(args) -> dict:
    """(peer venv) the scene through ``tiled_inference`` with its default in-memory source/sink."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from terratorch_peer import import_terratorch

    torch.set_num_threads(args.threads)
    tt = import_terratorch()
    raw = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    model = tt.EncoderDecoderFactory().build_model(task="segmentation", **raw["hyper_parameters"]["model_args"])
    model.load_state_dict({k[len("model."):]: v for k, v in raw["state_dict"].items()})
    model.eval()
    del raw
    after_load = current_rss_mib()
    t0 = time.perf_counter()
    scene = np.load(args.scene_npy)  # (6, H, W) int16
    mean = np.asarray(MEAN, np.float32)[:, None, None]
    std = np.asarray(STD, np.float32)[:, None, None]
    x = torch.from_numpy((scene.astype(np.float32) - mean) / std)[None]  # (1, 6, H, W)
    del scene
    loc = torch.tensor([[args.lat, args.lon]], dtype=torch.float32)
    model_s = [0.0]

    def forward(chips: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = model(chips.unsqueeze(2), location_coords=loc.expand(chips.shape[0], -1)).output
        model_s[0] += time.perf_counter() - t
        return out

    with torch.no_grad():
        logits = tt.tiled_inference(forward, x, crop=TILE, stride=TILE - OVERLAP, batch_size=args.batch_size,
                                    padding="reflect")
    classes = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    np.save(args.out, classes)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "model_seconds": model_s[0], "peak_rss_mib": peak_rss_mib(), "after_load_mib": after_load}


def worker_geofm(args) -> dict:
    """(geofm venv) geofm's streaming scene prediction of the same checkpoint."""
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from geofm.infer.predict import predict_checkpoint
    from geofm.models import load_finetuned
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(args.threads)
    load_finetuned(args.ckpt)  # warm the file cache and imports; the timed call loads it again
    after_load = current_rss_mib()
    t0 = time.perf_counter()
    res = predict_checkpoint(args.ckpt, [args.scene_tif], args.out, tile=TILE, overlap=OVERLAP,
                             batch_size=args.batch_size, overviews=False, resume=False, precision="fp32")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "model_seconds": res.model_seconds, "peak_rss_mib": peak_rss_mib(),
            "after_load_mib": after_load, "tiles": res.tiles}


# --------------------------------------------------------------------------- driver
def write_scene(folder: Path, size: int) -> tuple[Path, Path, float, float]:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp

    tif, npy = folder / f"scene_{size}.tif", folder / f"scene_{size}.npy"
    transform = from_origin(600000.0, 4300000.0, 30.0, 30.0)
    if not tif.exists():
        rng = np.random.default_rng(0)
        coarse = rng.normal(size=(6, size // 64 + 2, size // 64 + 2))
        yy = np.linspace(0, coarse.shape[1] - 1.001, size)
        xx = np.linspace(0, coarse.shape[2] - 1.001, size)
        y0, x0 = yy.astype(int), xx.astype(int)
        fy, fx = (yy - y0)[:, None], (xx - x0)[None, :]
        scene = np.empty((6, size, size), np.int16)
        for b in range(6):
            c = coarse[b]
            field = (c[y0][:, x0] * (1 - fy) * (1 - fx) + c[y0 + 1][:, x0] * fy * (1 - fx)
                     + c[y0][:, x0 + 1] * (1 - fy) * fx + c[y0 + 1][:, x0 + 1] * fy * fx)
            noise = rng.normal(scale=0.2, size=(size, size))
            scene[b] = np.clip(MEAN[b] + STD[b] * 0.5 * (field + noise), 0, 10000).astype(np.int16)
        with rasterio.open(tif, "w", driver="GTiff", width=size, height=size, count=6, dtype="int16",
                           crs="EPSG:32615", transform=transform, nodata=-9999, tiled=True, blockxsize=512,
                           blockysize=512, compress="deflate") as dst:
            dst.write(scene)
        np.save(npy, scene)
    lon, lat = warp("EPSG:32615", "EPSG:4326", [600000.0 + 15.0 * size], [4300000.0 - 15.0 * size])
    return tif, npy, lat[0], lon[0]


def run_worker(python: str, role: str, extra: list[str]) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", role, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{role} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-python", default=str(REPO / ".peer-venv" / "bin" / "python"))
    p.add_argument("--size", type=int, default=3660)
    p.add_argument("--depth", type=int, default=24, help="backbone blocks (24 = the released 300M)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=str(REPO / "outputs" / "bench_released"))
    p.add_argument("--worker", choices=["build", "terratorch", "geofm"], help=argparse.SUPPRESS)
    for name in ("ckpt", "scene-npy", "scene-tif", "out"):
        p.add_argument(f"--{name}", help=argparse.SUPPRESS)
    p.add_argument("--lat", type=float, help=argparse.SUPPRESS)
    p.add_argument("--lon", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps({"build": worker_build, "terratorch": worker_terratorch,
                          "geofm": worker_geofm}[args.worker](args)))
        return

    import numpy as np
    import rasterio

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    tif, npy, lat, lon = write_scene(work, args.size)
    ckpt = work / f"v2_300m_tl_upernet_depth{args.depth}.ckpt"
    common = ["--depth", str(args.depth), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
              "--ckpt", str(ckpt)]
    if not ckpt.exists():
        built = run_worker(args.peer_python, "build", common)
        print(f"built the model with TerraTorch {built['terratorch']}: {built['params_m']:.1f} M values")
    tt = run_worker(args.peer_python, "terratorch", common + ["--scene-npy", str(npy), "--out",
                                                               str(work / "terratorch.npy"),
                                                               "--lat", str(lat), "--lon", str(lon)])
    gf = run_worker(sys.executable, "geofm", common + ["--scene-tif", str(tif), "--out", str(work / "geofm.tif")])
    with rasterio.open(work / "geofm.tif") as src:
        a = src.read(1)
    b = np.load(work / "terratorch.npy")
    agree = float((a == b).mean())
    print(f"\nscene {args.size} x {args.size} x 6 bands, prithvi_eo_v2_300_tl depth {args.depth} + UperNet, "
          f"tile {TILE}, overlap {OVERLAP}, batch {args.batch_size}, {args.threads} threads")
    print(f"{'':12} {'wall s':>8} {'model s':>8} {'peak RSS MiB':>13} {'after load':>11} {'scene cost':>11}")
    for name, r in (("terratorch", tt), ("geofm", gf)):
        print(f"{name:12} {r['seconds']:8.1f} {r['model_seconds']:8.1f} {r['peak_rss_mib']:13.0f} "
              f"{r['after_load_mib']:11.0f} {r['peak_rss_mib'] - r['after_load_mib']:11.0f}")
    print(f"geofm / terratorch: time {gf['seconds'] / tt['seconds']:.2f}x, peak RSS "
          f"{gf['peak_rss_mib'] / tt['peak_rss_mib']:.2f}x, scene cost "
          f"{(gf['peak_rss_mib'] - gf['after_load_mib']) / max(1.0, tt['peak_rss_mib'] - tt['after_load_mib']):.2f}x; "
          f"class maps agree on {100 * agree:.2f} % of pixels")


if __name__ == "__main__":
    main()
