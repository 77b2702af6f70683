"""Benchmark of the Prithvi-100M MAE on this CPU: training step, encoder inference, GEMM peak.

    .venv/bin/python bench/model.py                      # geofm only
    .venv/bin/python bench/model.py --peer-python PY     # + TerraTorch's PrithviMAE (see bench/README.md)

Every measurement runs in a fresh subprocess (so peak RSS is its own) with the same thread
count. Achieved FLOP/s are analytic FLOPs (attention included) over the median step time,
compared with the GEMM peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH_TRAIN, BATCH_INFER = 2, 4
SHAPE = (6, 3, 224, 224)  # C, T, H, W
CFG = dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
           patch=16, tubelet=1, in_chans=6, num_frames=3, img_size=224, mask_ratio=0.75)


# --------------------------------------------------------------------------- analytic FLOPs
def vit_flops(d: int, depth: int, n: int, mlp: float = 4.0) -> float:
    """Forward FLOPs (2 per multiply-add) of ``depth`` blocks on ``n`` tokens of width ``d``."""
    return depth * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * int(mlp * d))


def mae_train_flops(batch: int) -> float:
    c = CFG
    L = (c["num_frames"] // c["tubelet"]) * (c["img_size"] // c["patch"]) ** 2
    keep = int(L * (1 - c["mask_ratio"]))
    pdim = c["tubelet"] * c["patch"] ** 2 * c["in_chans"]
    d, dd = c["embed_dim"], c["decoder_embed_dim"]
    fwd = 2 * L * pdim * d  # patch embedding (all tokens, before masking)
    fwd += vit_flops(d, c["depth"], keep + 1)
    fwd += 2 * (keep + 1) * d * dd + vit_flops(dd, c["decoder_depth"], L + 1) + 2 * (L + 1) * dd * pdim
    return 3.0 * batch * fwd  # backward = 2x forward


def encoder_flops(batch: int) -> float:
    c = CFG
    L = (c["num_frames"] // c["tubelet"]) * (c["img_size"] // c["patch"]) ** 2
    pdim = c["tubelet"] * c["patch"] ** 2 * c["in_chans"]
    return batch * (2 * L * pdim * c["embed_dim"] + vit_flops(c["embed_dim"], c["depth"], L + 1))


# --------------------------------------------------------------------------- workers
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build(impl: str):
    import torch

    if impl == "geofm":
        sys.path.insert(0, str(REPO / "src"))
        from geofm.models import create_model

        return create_model("prithvi_eo_v1_100m")
    # TerraTorch's PrithviMAE, loaded from its file so that terratorch's heavy package
    # __init__ (torchgeo, smp, ...) is not needed.
    import importlib.util

    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("terratorch is not installed in this interpreter")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "backbones" / "prithvi_mae.py"
    mspec = importlib.util.spec_from_file_location("terratorch_prithvi_mae", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    c = CFG
    torch.manual_seed(0)
    return mod.PrithviMAE(img_size=c["img_size"], patch_size=(c["tubelet"], c["patch"], c["patch"]),
                          num_frames=c["num_frames"], in_chans=c["in_chans"], embed_dim=c["embed_dim"],
                          depth=c["depth"], num_heads=c["num_heads"], decoder_embed_dim=c["decoder_embed_dim"],
                          decoder_depth=c["decoder_depth"], decoder_num_heads=c["decoder_num_heads"],
                          mlp_ratio=4.0, mask_ratio=c["mask_ratio"])


def worker(impl: str, what: str, dtype: str, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if impl == "geofm" or os.environ.get("BENCH_TUNE_ALLOC") == "1":
        sys.path.insert(0, str(REPO / "src"))
        from geofm.runtime import tune_cpu_allocator  # what geofm's entry points apply

        tune_cpu_allocator()
    if impl == "gemm":
        return gemm_peak(dtype)
    model = build(impl)
    bf16 = dtype == "bf16"
    times = []
    if what == "train":
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
        x = torch.randn(BATCH_TRAIN, *SHAPE)
        for i in range(steps + 2):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x)[0]
                loss = loss["loss"] if isinstance(loss, dict) else loss  # TerraTorch returns {"loss": ...}
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        flops, batch = mae_train_flops(BATCH_TRAIN), BATCH_TRAIN
    else:
        model.eval()
        x = torch.randn(BATCH_INFER, *SHAPE)
        enc = model.encoder
        run = (lambda: enc(x)) if impl == "geofm" else (lambda: enc.forward_features(x))
        with torch.inference_mode():
            for i in range(steps + 2):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    run()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
        flops, batch = encoder_flops(BATCH_INFER), BATCH_INFER
    t = statistics.median(times)
    return {"time_s": t, "samples_s": batch / t, "gflops": flops / t / 1e9, "peak_rss_mib": peak_rss_mib(),
            "torch": torch.__version__}


def gemm_peak(dtype: str) -> dict:
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    best = 0.0
    # square and model-shaped products (tokens x width x hidden)
    for m, k, n in [(2048, 2048, 2048), (2356, 768, 3072), (2356, 3072, 768), (4096, 1024, 4096)]:
        a, b = torch.randn(m, k, dtype=dt), torch.randn(k, n, dtype=dt)
        for _ in range(2):
            a @ b
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            reps.append(time.perf_counter() - t0)
        best = max(best, 2 * m * k * n / min(reps) / 1e9)
    return {"gflops": best, "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}


# --------------------------------------------------------------------------- driver
def run_worker(python: str, impl: str, what: str, dtype: str, steps: int, threads: int, tune: bool = False) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO / "src"),
               BENCH_TUNE_ALLOC="1" if tune else "0")
    cmd = [python, __file__, "--worker", f"{impl}:{what}:{dtype}", "--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"worker {impl}:{what}:{dtype} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement (median reported)")
    ap.add_argument("--peer-python", default=os.environ.get("GEOFM_PEER_PYTHON"),
                    help="python of a venv with terratorch installed (baseline)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, what, dtype = args.worker.split(":")
        print(json.dumps(worker(impl, what, dtype, args.steps, args.threads)))
        return 0

    me = sys.executable
    res: dict[str, dict] = {}
    print(f"Prithvi-100M MAE, input ({BATCH_TRAIN}, {', '.join(map(str, SHAPE))}) for training, batch "
          f"{BATCH_INFER} for encoder inference; {args.threads} threads; median of {args.steps} steps", flush=True)
    for dt in ("fp32", "bf16"):
        res[f"gemm:{dt}"] = run_worker(me, "gemm", "peak", dt, args.steps, args.threads)
    impls = [("geofm", me)]
    if args.peer_python:
        # geofm@peer: geofm on the peer's torch build, so the ratio compares models, not builds;
        # terratorch+alloc: TerraTorch with geofm's allocator setting, for transparency.
        impls += [("terratorch", args.peer_python), ("geofm@peer", args.peer_python),
                  ("terratorch+alloc", args.peer_python)]
    for name, py in impls:
        impl = name.split("@")[0].split("+")[0]
        for what in ("train", "infer"):
            for dt in ("fp32", "bf16"):
                res[f"{name}:{what}:{dt}"] = run_worker(py, impl, what, dt, args.steps, args.threads,
                                                        tune=name.endswith("+alloc"))
                print(f"  measured {name:16s} {what:5s} {dt}", flush=True)

    peak = {dt: res[f"gemm:{dt}"]["gflops"] for dt in ("fp32", "bf16")}
    print(f"\nGEMM peak measured now: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"(torch {res['gemm:fp32']['torch']})\n")
    hdr = (f"| {'implementation':16s} | {'work':29s} | {'ms/step':>8s} | {'samples/s':>9s} | {'GFLOP/s':>7s} | "
           f"{'% fp32 peak':>11s} | {'% own-dtype peak':>16s} | {'peak RSS MiB':>12s} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, _ in impls:
        for what in ("train", "infer"):
            for dt in ("fp32", "bf16"):
                r = res[f"{name}:{what}:{dt}"]
                work = ("train step fwd+bwd+AdamW" if what == "train" else "encoder inference") + f" {dt}"
                print(f"| {name:16s} | {work:29s} | {r['time_s'] * 1e3:8.0f} | {r['samples_s']:9.2f} | "
                      f"{r['gflops']:7.0f} | {100 * r['gflops'] / peak['fp32']:10.1f}% | "
                      f"{100 * r['gflops'] / peak[dt]:15.1f}% | {r['peak_rss_mib']:12.0f} |")
    print()
    g = {k: v for k, v in res.items()}
    print(f"encoder inference fp32: {100 * g['geofm:infer:fp32']['gflops'] / peak['fp32']:.1f}% of the fp32 GEMM peak "
          f"(target >= 85%)")
    if args.peer_python:
        base = "terratorch:train:fp32"
        for name in ("geofm", "geofm@peer"):
            for dt, target in (("fp32", 1.15), ("bf16", 2.0)):
                ratio = g[f"{name}:train:{dt}"]["samples_s"] / g[base]["samples_s"]
                print(f"{name} train {dt} / TerraTorch train fp32 throughput: {ratio:.2f}x (target >= {target})")
            for dt in ("fp32", "bf16"):
                ratio = g[f"{name}:infer:{dt}"]["samples_s"] / g[f"terratorch:infer:{dt}"]["samples_s"]
                print(f"{name} encoder inference {dt} / TerraTorch {dt}: {ratio:.2f}x")
        print(f"TerraTorch train fp32 reaches {100 * g[base]['gflops'] / peak['fp32']:.1f}% of the fp32 GEMM peak")
    else:
        print("(TerraTorch not measured: pass --peer-python, see bench/README.md)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
