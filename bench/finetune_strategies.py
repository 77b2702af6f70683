"""Full vs frozen vs scratch fine-tuning on the real bundled Sen1Floods11 chip (data-efficiency grid).

    .venv/bin/python bench/finetune_strategies.py [--pretrain-steps 600] [--epochs 10] [--seeds 3]

1. Pretrains a tiny Prithvi MAE (``prithvi_tiny``, one frame, 8-pixel patches) on real
   imagery only: the *training* tiles of the Spain_7370579 Sentinel-2 chip (labels unused;
   validation and test tiles excluded) and the bundled 30 m HLS chip (UTM 14N), random
   64×64 crops with flips/rot90; exports it with ``save_pretrained``.
2. Runs ``geofm experiment`` on the bundled ``finetune/tiny_flood`` config with that export:
   strategies full / frozen / scratch × label fractions × seeds.
Writes into ``bench/_out/finetune/`` (results.csv, data_efficiency.png, curves.png) and
prints the test mIoU / water IoU table. Small data: the numbers show the machinery and the
trend, not the paper's scores.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def pretraining_images() -> list[torch.Tensor]:
    """Normalized (6, 1, H, W) real images: Sen1Floods11 training tiles and the HLS chip."""
    from geofm.bands import norm_stats
    from geofm.data.sample_store import SAMPLE, SOURCES, read_sample_image
    from geofm.tasks.finetune import build_datamodule, load_finetune_config

    cfg = load_finetune_config("finetune/tiny_flood")
    dm = build_datamodule(cfg)
    train = dm.train_set.subset(range(len(dm.train_set)))  # no crops / flips: plain tiles
    images = [train[i]["image"] for i in range(len(train))]
    rel, bands, _ = SOURCES[0]  # the bundled real HLS chip
    hls = read_sample_image(SAMPLE / rel, bands)[0].astype(np.float32)
    mean, std = (np.array(s, np.float32)[:, None, None] for s in norm_stats("v1"))
    images.append(torch.from_numpy((hls - mean) / std)[:, None])
    return images


def pretrain(out: Path, steps: int, seed: int = 0) -> Path:
    from geofm.data.transforms import dihedral
    from geofm.models import create_model, save_pretrained

    torch.manual_seed(seed)
    images = pretraining_images()
    model = create_model("prithvi_tiny", num_frames=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.5e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        batch = []
        for _ in range(16):
            img = images[int(torch.randint(len(images), (), generator=g))]
            h, w = img.shape[-2:]
            r, c = int(torch.randint(h - 63, (), generator=g)), int(torch.randint(w - 63, (), generator=g))
            k, flip = int(torch.randint(4, (), generator=g)), bool(torch.randint(2, (), generator=g))
            batch.append(dihedral(img[..., r:r + 64, c:c + 64], k, flip))
        loss, _, _ = model(torch.stack(batch), mask_ratio=0.75)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    print(f"pretraining: {steps} steps in {time.perf_counter() - t0:.0f} s, masked MSE "
          f"{np.mean(losses[:20]):.3f} -> {np.mean(losses[-20:]):.3f}", flush=True)
    return save_pretrained(model, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", default="1,0.5,0.25,0.1")
    ap.add_argument("--out", default=str(REPO / "bench" / "_out" / "finetune"))
    args = ap.parse_args()
    from geofm.runtime import tune_cpu_allocator
    from geofm.tasks.experiment import run_experiment

    tune_cpu_allocator()
    out = Path(args.out)
    pre = out / "pretrained_tiny"
    if not (pre / "model.safetensors").is_file():
        pretrain(pre, args.pretrain_steps)
    fractions = [float(f) for f in args.fractions.split(",")]
    t0 = time.perf_counter()
    overrides = [f"model.checkpoint={pre}", "model.name=null", f"trainer.max_epochs={args.epochs}"]
    paths = run_experiment("finetune/tiny_flood", ["full", "frozen", "scratch"], fractions,
                           args.seeds, overrides, out / "grid")
    print(f"grid: {time.perf_counter() - t0:.0f} s; {paths['csv']}")
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    print(f"{'strategy':<8} {'labels':>6} {'test mIoU':>16} {'water IoU':>16} {'aAcc':>16}")
    for s in ("full", "frozen", "scratch"):
        for fr in fractions:
            sel = [r for r in rows if r["strategy"] == s and float(r["label_fraction"]) == fr]
            cols = [np.array([float(r[c]) for r in sel]) for c in ("test/mIoU", "test/IoU_water", "test/aAcc")]
            cells = [f"{c.mean():>8.3f} ± {c.std(ddof=1) if len(c) > 1 else 0:.3f}" for c in cols]
            print(f"{s:<8} {fr * 100:>5.0f}% " + " ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
