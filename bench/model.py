"""Benchmark of the Prithvi-100M MAE on this CPU: training step, encoder inference, GEMM peak.

    .venv/bin/python bench/model.py                      # geofm only
    .venv/bin/python bench/model.py --peer-python PY     # + TerraTorch's PrithviMAE (see bench/README.md)

One long-lived process per interpreter holds the models: the project's (pinned) torch runs
geofm; with ``--peer-python`` the peer's interpreter runs geofm and TerraTorch's PrithviMAE
side by side in one process, on one torch build. Every (implementation, mode) is measured
once per round, rounds are interleaved and the best round is kept, so load from other
processes hits all alike. geofm's training step is ``geofm.train_step`` (what ``geofm
pretrain`` runs), its inference ``model.encode``. Achieved FLOP/s are analytic FLOPs
(attention included) over the step time, against the GEMM peak measured in the same run.
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


# --------------------------------------------------------------------------- one interpreter's models
def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM, not ``ru_maxrss``, which a child started by
    ``subprocess`` inherits from its parent's size at the fork (on Linux)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024.0
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _torchvision_ops_shim() -> None:
    """Let ``import torchvision`` succeed when its compiled ops cannot load (a CUDA torchvision wheel next
    to a CPU torch build): declare the two op schemas its Python registers fake kernels for. timm imports
    torchvision; PrithviMAE never calls these ops."""
    import torch

    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_ops_shim.lib = lib  # keep the library object alive


def build(impl: str):
    import torch

    torch.manual_seed(0)
    if impl == "geofm":
        from geofm.models import create_model

        return create_model("prithvi_eo_v1_100m")
    # TerraTorch's PrithviMAE, loaded from its file so that terratorch's heavy package
    # __init__ (torchgeo, smp, ...) is not needed.
    import importlib.util

    _torchvision_ops_shim()
    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("terratorch is not installed in this interpreter")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "backbones" / "prithvi_mae.py"
    mspec = importlib.util.spec_from_file_location("terratorch_prithvi_mae", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    c = CFG
    return mod.PrithviMAE(img_size=c["img_size"], patch_size=(c["tubelet"], c["patch"], c["patch"]),
                          num_frames=c["num_frames"], in_chans=c["in_chans"], embed_dim=c["embed_dim"],
                          depth=c["depth"], num_heads=c["num_heads"], decoder_embed_dim=c["decoder_embed_dim"],
                          decoder_depth=c["decoder_depth"], decoder_num_heads=c["decoder_num_heads"],
                          mlp_ratio=4.0, mask_ratio=c["mask_ratio"])


class Runner:
    """The measured calls of one interpreter, built on first use and kept (interleaved rounds reuse them)."""

    def __init__(self, threads: int):
        import torch

        torch.set_num_threads(threads)
        sys.path.insert(0, str(REPO / "src"))
        from geofm.runtime import tune_cpu_allocator  # what geofm's entry points apply

        if os.environ.get("BENCH_TUNE_ALLOC", "1") == "1":
            tune_cpu_allocator()
        self.models: dict[str, object] = {}
        self.calls: dict[str, object] = {}

    def model(self, impl: str):
        if impl not in self.models:
            self.models[impl] = build(impl.split("+")[0])
        return self.models[impl]

    def call(self, key: str):
        """``impl:what:dtype`` -> a function running one step (built on first use, with two warm-up steps)."""
        import torch

        if key in self.calls:
            return self.calls[key]
        impl, what, dtype = key.split(":")
        model = self.model(impl)
        bf16 = dtype == "bf16"
        if what == "train" and impl == "geofm":
            import geofm

            # exactly the step of geofm pretrain: fused AdamW, decay groups, autocast, compile default
            step = geofm.train_step(model, precision="bf16-mixed" if bf16 else "32", lr=1e-4, weight_decay=0.05)
            x = torch.randn(BATCH_TRAIN, *SHAPE)
            fn = lambda: step(x)  # noqa: E731
        elif what == "train":
            # TerraTorch's model with torch's AdamW as its tasks build it (defaults: foreach), or fused
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05,
                                    fused=True if impl.endswith("+fused") else None)
            x = torch.randn(BATCH_TRAIN, *SHAPE)

            def fn():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)[0]
                    loss = out["loss"] if isinstance(out, dict) else out  # TerraTorch may return {"loss": ...}
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            x = torch.randn(BATCH_INFER, *SHAPE)
            run = model.encode if impl == "geofm" else model.encoder.forward_features

            def fn():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    run(x)
        t0 = time.perf_counter()
        fn()  # the first call: compilation, allocator warm-up
        first = time.perf_counter() - t0
        self.calls[key] = fn
        self.first = first
        return fn

    def pairs(self, mode: str, n: int) -> dict:
        """``n`` adjacent (geofm, TerraTorch) steps of ``mode`` ("what:dtype"), the order alternating per pair:
        each pair runs within a few seconds, so the machine's slow swings hit both sides of it alike."""
        fg, ft = self.call(f"geofm:{mode}"), self.call(f"terratorch:{mode}")
        g, t = [], []
        for i in range(n):
            for fn, out in ((fg, g), (ft, t)) if i % 2 == 0 else ((ft, t), (fg, g)):
                t0 = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t0)
        return {"geofm_s": g, "terratorch_s": t}

    def measure(self, key: str, steps: int) -> dict:
        import torch

        if key.startswith("gemm:"):
            return gemm_peak(key.split(":")[2])
        if key.startswith("profile:"):
            return profile(self.call(key.split(":", 1)[1]), steps)
        if key.startswith("pair:"):
            return self.pairs(key.split(":", 1)[1], steps)
        self.first = None
        fn = self.call(key)
        times, cpu = [], []
        for _ in range(steps):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        # CPU time of the process: with --threads 1 a load-independent measure of the work done
        return {"time_s": statistics.median(times), "cpu_s": statistics.median(cpu), "first_s": self.first,
                "peak_rss_mib": peak_rss_mib(), "torch": torch.__version__}


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


# which kernels an op's self time belongs to: the products both implementations call alike,
# attention, the optimizer, and everything else (norms, activations, casts, adds, copies, ...)
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mkldnn_convolution",
            "aten::convolution_backward", "mkldnn::_linear_pointwise"}
CLASSES = ("GEMM/conv", "attention", "optimizer", "other")


def kernel_class(op: str) -> str:
    if op in GEMM_OPS:
        return "GEMM/conv"
    if "scaled_dot_product" in op:
        return "attention"
    if "adam" in op.lower() or op.startswith("aten::_foreach_"):
        return "optimizer"
    return "other"


def profile(fn, steps: int) -> dict:
    """Self CPU time of ``fn``'s ops (torch.profiler, ``steps`` calls) by :func:`kernel_class`, ms per call.

    Every op run inside ``Optimizer.step`` counts as "optimizer", whichever kernels it calls
    (TerraTorch's default AdamW on CPU is a loop of per-tensor mul_/lerp_/addcdiv_ ops).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    out: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in prof.events():
        parent, in_optimizer = e.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer = parent.name.startswith("Optimizer.step")
            parent = parent.cpu_parent
        cls = "optimizer" if in_optimizer else kernel_class(e.name)
        ms = e.self_cpu_time_total / 1e3 / steps
        out[cls] = out.get(cls, 0.0) + ms
        if cls == "other":
            top[e.name] = top.get(e.name, 0.0) + ms
    out["top_other"] = sorted(top.items(), key=lambda kv: -kv[1])[:4]
    return out


def serve(threads: int) -> int:
    """Answer ``KEY STEPS`` lines on stdin with one JSON line each (a long-lived measuring process)."""
    runner = Runner(threads)
    for line in sys.stdin:
        key, steps = line.split()
        print(json.dumps(runner.measure(key, int(steps))), flush=True)
    return 0


class Server:
    """A ``serve`` process on an interpreter."""

    def __init__(self, python: str, threads: int, tune_alloc: bool = True):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO / "src"),
                   BENCH_TUNE_ALLOC="1" if tune_alloc else "0")
        self.proc = subprocess.Popen([python, __file__, "--serve", "--threads", str(threads)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def measure(self, key: str, steps: int) -> dict:
        self.proc.stdin.write(f"{key} {steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench server died while measuring {key} (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------- driver
MODES = [("train", "fp32"), ("train", "bf16"), ("infer", "fp32"), ("infer", "bf16")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement and round (median)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best round is reported")
    ap.add_argument("--peer-python", default=os.environ.get("GEOFM_PEER_PYTHON"),
                    help="python of a venv with terratorch installed (baseline)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--pairs", type=int, default=0,
                    help="after the rounds, N adjacent geofm/TerraTorch steps per mode (median of the pair ratios)")
    ap.add_argument("--profile", action="store_true",
                    help="after the rounds, profile geofm and TerraTorch (same process) by kernel class")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.threads)

    load0 = os.getloadavg()
    servers = {"pinned": Server(sys.executable, args.threads)}
    # (row name, server, impl): geofm on the project's torch; on the peer interpreter both models side by
    # side (same process, same torch build), TerraTorch with torch's default AdamW and with the fused one
    rows = [("geofm", "pinned", "geofm")]
    if args.peer_python:
        servers["peer"] = Server(args.peer_python, args.threads)
        rows += [("geofm@peer", "peer", "geofm"), ("terratorch", "peer", "terratorch"),
                 ("terratorch+fused", "peer", "terratorch+fused")]
    plan = [(name, srv, impl, what, dt) for name, srv, impl in rows for what, dt in MODES
            if not (impl.endswith("+fused") and what != "train")]
    print(f"Prithvi-100M MAE, input ({BATCH_TRAIN}, {', '.join(map(str, SHAPE))}) for training, batch "
          f"{BATCH_INFER} for encoder inference; {args.threads} threads; median of {args.steps} steps per round, "
          f"best of {args.rounds} interleaved rounds", flush=True)
    res: dict[str, dict] = {}
    first: dict[str, float] = {}
    try:
        peak = {dt: servers["pinned"].measure(f"gemm:peak:{dt}", 1) for dt in ("fp32", "bf16")}
        for r in range(args.rounds):
            for name, srv, impl, what, dt in plan:
                out = servers[srv].measure(f"{impl}:{what}:{dt}", args.steps)
                key = f"{name}:{what}:{dt}"
                if out.get("first_s") is not None:
                    first[key] = out["first_s"]
                if key not in res or out["time_s"] < res[key]["time_s"]:
                    res[key] = dict(out, cpu_s=min(out["cpu_s"], res.get(key, out)["cpu_s"]))
                else:
                    res[key]["cpu_s"] = min(res[key]["cpu_s"], out["cpu_s"])
            print(f"  round {r + 1}/{args.rounds} done (load average {os.getloadavg()[0]:.1f})", flush=True)
            report(args, plan, res, first, peak, load0, final=r + 1 == args.rounds)
        if args.pairs and args.peer_python:
            report_pairs({mode: servers["peer"].measure(f"pair:{mode[0]}:{mode[1]}", args.pairs) for mode in MODES})
        if args.profile:
            srv = "peer" if args.peer_python else "pinned"
            prof = {(impl, what, dt): servers[srv].measure(f"profile:{impl}:{what}:{dt}", args.steps)
                    for _, s, impl, what, dt in plan if s == srv and not impl.endswith("+fused")}
            report_profile(prof)
    finally:
        for s in servers.values():
            s.close()
    return 0


def report(args, plan, res, first, peak, load0, final: bool) -> None:
    """Print the table and ratios of the best rounds so far (after every round: a killed run still reports)."""
    res = {k: dict(v) for k, v in res.items()}
    for key, r in res.items():
        what = key.split(":")[1]
        batch = BATCH_TRAIN if what == "train" else BATCH_INFER
        flops = mae_train_flops(batch) if what == "train" else encoder_flops(batch)
        r.update(samples_s=batch / r["time_s"], gflops=flops / r["time_s"] / 1e9, first_s=first.get(key))
    load1 = os.getloadavg()

    print(f"\nGEMM peak: fp32 {peak['fp32']['gflops']:.0f} GFLOP/s, bf16 {peak['bf16']['gflops']:.0f} GFLOP/s "
          f"(torch {peak['fp32']['torch']}); load average {load0[0]:.1f} before, {load1[0]:.1f} after, "
          f"{os.cpu_count()} CPUs\n")
    hdr = (f"| {'implementation':16s} | {'work':29s} | {'ms/step':>8s} | {'samples/s':>9s} | {'GFLOP/s':>7s} | "
           f"{'% own-dtype peak':>16s} | {'CPU ms':>7s} | {'first call s':>12s} | {'peak RSS MiB':>12s} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, srv, impl, what, dt in plan:
        r = res[f"{name}:{what}:{dt}"]
        work = ("train step fwd+bwd+AdamW" if what == "train" else "encoder inference") + f" {dt}"
        print(f"| {name:16s} | {work:29s} | {r['time_s'] * 1e3:8.0f} | {r['samples_s']:9.2f} | "
              f"{r['gflops']:7.0f} | {100 * r['gflops'] / peak[dt]['gflops']:15.1f}% | {r['cpu_s'] * 1e3:7.0f} | "
              f"{r['first_s'] or 0:12.1f} | "
              f"{r['peak_rss_mib']:12.0f} |")
    print("\n(peak RSS is per process: the peer process holds both models)")
    if args.peer_python:
        targets = {"train": 1.15, "infer": 1.1}
        print("\nSame process, same torch build: geofm@peer vs TerraTorch in the same mode "
              "(wall-time ratio; CPU-time ratio in brackets)")
        for what, dt in MODES:
            g, t = res[f"geofm@peer:{what}:{dt}"], res[f"terratorch:{what}:{dt}"]
            label = "train" if what == "train" else "encoder inference"
            print(f"  {label} {dt}: {t['time_s'] / g['time_s']:.2f}x ({t['cpu_s'] / g['cpu_s']:.2f}x) "
                  f"(target >= {targets[what]})")
        for dt in ("fp32", "bf16"):
            g, t = res[f"geofm@peer:train:{dt}"], res[f"terratorch+fused:train:{dt}"]
            print(f"  train {dt} vs TerraTorch given fused AdamW too: {t['time_s'] / g['time_s']:.2f}x")
        print(f"geofm on the pinned torch ({res['geofm:train:fp32']['torch']}) vs on the peer's build "
              f"({res['geofm@peer:train:fp32']['torch']}), time ratio (>1 = pinned slower; target <= 1.10):")
        for what, dt in MODES:
            print(f"  {what} {dt}: {res[f'geofm:{what}:{dt}']['time_s'] / res[f'geofm@peer:{what}:{dt}']['time_s']:.2f}")
    else:
        print("(TerraTorch not measured: pass --peer-python, see bench/README.md)")
    if args.json and final:
        Path(args.json).write_text(json.dumps({"peak": peak, "results": res}, indent=2))


def report_pairs(pairs: dict) -> None:
    """Median (and quartiles) of the per-pair time ratios TerraTorch / geofm, with the ratio of the best steps."""
    print("\nAdjacent pairs, same process (ratio TerraTorch / geofm time of each pair; >1 = geofm faster):")
    targets = {"train": 1.15, "infer": 1.1}
    for (what, dt), p in pairs.items():
        r = sorted(t / g for g, t in zip(p["geofm_s"], p["terratorch_s"]))
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        print(f"  {what} {dt}: median {q[1]:.2f}x (quartiles {q[0]:.2f}-{q[2]:.2f}, {len(r)} pairs); best steps "
              f"{min(p['terratorch_s']) / min(p['geofm_s']):.2f}x (geofm {min(p['geofm_s']) * 1e3:.0f} ms, TerraTorch "
              f"{min(p['terratorch_s']) * 1e3:.0f} ms); target >= {targets[what]}")


def report_profile(prof: dict) -> None:
    """Kernel-class table, and the ratio geofm could reach if everything but its GEMMs and attention took no time."""
    classes = CLASSES
    print("\nProfile (torch.profiler, self CPU time per step in ms, same process; the profiler adds overhead):\n")
    print("| implementation | mode | " + " | ".join(classes) + " | total | largest 'other' ops |")
    print("|---|---|" + "---|" * (len(classes) + 2))
    for (impl, what, dt), p in prof.items():
        total = sum(p.get(c, 0.0) for c in classes)
        top = ", ".join(f"{k.replace('aten::', '')} {v:.0f}" for k, v in p["top_other"])
        print(f"| {impl} | {what} {dt} | " + " | ".join(f"{p.get(c, 0.0):.0f} ({100 * p.get(c, 0.0) / total:.0f}%)"
                                                       for c in classes) + f" | {total:.0f} | {top} |")
    impls = {impl for impl, _, _ in prof}
    if {"geofm", "terratorch"} <= impls:
        print("\nUpper bound with the same GEMM and attention kernels: TerraTorch's total over geofm's "
              "GEMM+attention time (geofm's optimizer and every other op taking no time at all):")
        for what, dt in MODES:
            g, t = prof.get(("geofm", what, dt)), prof.get(("terratorch", what, dt))
            if g and t:
                kern = g["GEMM/conv"] + g["attention"]
                print(f"  {what} {dt}: {sum(t.get(c, 0.0) for c in classes) / kern:.2f}x "
                      f"(GEMM+attention geofm {kern:.0f} ms, TerraTorch {t['GEMM/conv'] + t['attention']:.0f} ms)")


if __name__ == "__main__":
    sys.exit(main())
