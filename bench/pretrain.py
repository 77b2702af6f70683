"""Pretraining throughput: chips from the Zarr store vs from memory, and DDP scaling on this machine.

    .venv/bin/python bench/pretrain.py [--steps 150] [--batch-size 32] [--workers 2] [--dim 128]

Every case is the same Lightning fit (``geofm.tasks.pretrain.run_pretrain``) of a small Prithvi
MAE (``--dim`` x 4 blocks) on the sample store of real 32x32 chips x 8 rotations/flips (2440
chips, built from the bundled sample data into bench/_data on first use), each case in its own process with
one compute thread per process:

* ``memory``: the chips preloaded as normalized tensors (no IO, no decoding): the ceiling;
* ``zarr, N workers``: ``ChipDataModule`` reading the store (raw int16, normalized in the
  training process), with N DataLoader workers;
* ``ddp 2 x zarr``: two processes (gloo) through the same code, ``trainer.strategy=ddp``.

Throughput = samples per second between optimizer step ``--warmup`` and the last step, all
processes together; the cases run in ``--repeats`` interleaved rounds and the best round of
each counts (load from other programs only ever slows a case down). Ratios are against cases measured in the same run. Small chips and a small
model make the loader's share of the work as large as it gets; at 224 px the model dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
DATA = REPO / "bench" / "_data"
OUT = REPO / "bench" / "_out" / "pretrain"


def overrides(args, store: Path, out: Path, extra: dict) -> list[str]:
    d = args.dim
    base = {
        "model.name": "prithvi_tiny",
        "model.overrides": f"{{img_size: 32, num_frames: 1, patch_size: 8, embed_dim: {d}, depth: 4, "
                           f"num_heads: 4, decoder_embed_dim: 64, decoder_depth: 2, decoder_num_heads: 4}}",
        "data.store": str(store), "data.batch_size": args.batch_size, "data.val_fraction": 0.0,
        "trainer.max_steps": args.steps, "trainer.accelerator": "cpu", "trainer.devices": 1,
        "trainer.checkpoint_every": args.steps, "trainer.log_every": 50, "trainer.progress_bar": False,
        "trainer.resume": "null", "optim.lr": 1e-3, "optim.warmup_steps": 10, "out_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def child(spec: dict) -> None:
    """One measured fit (runs in its own process; under DDP Lightning starts the second rank)."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from geofm.data.datamodule import ChipDataModule
    from geofm.tasks.pretrain import load_pretrain_config, run_pretrain

    torch.set_num_threads(1)

    class Timer(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == spec["warmup"] and not hasattr(self, "t0"):
                self.t0 = time.perf_counter()
                self.step0 = trainer.global_step

        def on_train_end(self, trainer, pl_module):
            dt = time.perf_counter() - self.t0
            n = (trainer.global_step - self.step0) * spec["batch_size"] * trainer.world_size
            if trainer.is_global_zero:
                Path(spec["result"]).write_text(json.dumps({"samples_per_s": n / dt, "seconds": dt, "samples": n}))

    class InMemory(ChipDataModule):
        """The same chips, normalized once and held as tensors; shuffled batches, no workers."""

        def setup(self, stage=None):
            if self.train_ds is not None:
                return
            super().setup(stage)
            ds = self.train_ds
            ds.raw, shuffle = False, ds.shuffle
            ds.shuffle = False
            samples = list(ds)
            ds.shuffle = shuffle
            self.images = torch.stack([s["image"] for s in samples])
            self.valid = torch.stack([s["valid"] for s in samples])
            self.index = torch.tensor([s["index"] for s in samples])

        def train_dataloader(self):
            data = [{"image": i, "valid": v, "index": k} for i, v, k in zip(self.images, self.valid, self.index)]
            g = torch.Generator().manual_seed(self.trainer.current_epoch)
            return torch.utils.data.DataLoader(data, batch_size=self.cfg.batch_size, shuffle=True, generator=g,
                                               drop_last=False)

    cfg = load_pretrain_config(None, spec["overrides"])
    dm = InMemory(cfg.data, normalize="v1") if spec["memory"] else None
    run_pretrain(cfg, [Timer()], datamodule=dm)


def run_case(name: str, args, store: Path, extra: dict, memory: bool = False) -> dict:
    out = OUT / name.replace(" ", "_").replace(",", "")
    result = out.with_suffix(".json")
    result.unlink(missing_ok=True)
    spec = {"overrides": overrides(args, store, out, extra), "memory": memory, "warmup": args.warmup,
            "batch_size": args.batch_size, "result": str(result)}
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0 or not result.exists():
        sys.exit(f"case {name!r} failed:\n{proc.stderr[-4000:]}")
    r = json.loads(result.read_text())
    r["name"], r["wall"] = name, time.perf_counter() - t0
    print(f"  {name:<28} {r['samples_per_s']:8.1f} samples/s  ({r['samples']} samples in {r['seconds']:.1f} s)",
          flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best round of each case counts")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    from geofm.data.sample_store import build_sample_store

    store = build_sample_store(DATA / "pretrain_sample_chips32_x8.zarr", dihedral=True)
    print(f"store {store} (305 real 32x32 chips x 8 rotations/flips), model dim {args.dim} x 4 blocks, batch {args.batch_size} "
          f"per process, {args.steps} steps (first {args.warmup} not timed), 1 thread per process, "
          f"{os.cpu_count()} CPUs")
    cases = [("memory (tensors)", {}, True), ("zarr, 0 workers", {"data.num_workers": 0}, False),
             (f"zarr, {args.workers} workers", {"data.num_workers": args.workers}, False),
             ("ddp 2 x zarr, 0 workers", {"data.num_workers": 0, "trainer.strategy": "ddp", "trainer.devices": 2}, False)]
    best: dict[str, dict] = {}
    for rep in range(args.repeats):  # interleaved rounds; the best of each case counts (other load only slows)
        print(f"round {rep + 1}/{args.repeats}")
        for name, extra, memory in cases:
            r = run_case(name, args, store, extra, memory)
            if name not in best or r["samples_per_s"] > best[name]["samples_per_s"]:
                best[name] = r
    mem, z0, zw, ddp = (best[c[0]] for c in cases)
    print()
    print(f"best of {args.repeats} rounds:")
    print("| case | samples/s | ratio |")
    print("|---|---:|---|")
    print(f"| memory (tensors) | {mem['samples_per_s']:.1f} | 1.00 (baseline) |")
    for r in (z0, zw):
        print(f"| {r['name']} | {r['samples_per_s']:.1f} | {r['samples_per_s'] / mem['samples_per_s']:.2f} of memory |")
    eff = ddp["samples_per_s"] / (2 * z0["samples_per_s"])
    print(f"| {ddp['name']} | {ddp['samples_per_s']:.1f} | {ddp['samples_per_s'] / z0['samples_per_s']:.2f}x one "
          f"process = {eff:.0%} scaling efficiency |")


if __name__ == "__main__":
    main()
