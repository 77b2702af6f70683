"""Loader throughput: Zarr chip store (geofm ChipDataset) vs per-chip LZW GeoTIFFs of the same chips.

    .venv/bin/python bench/loader.py [--workers 2] [--batch-size 8] [--epochs 3]

Uses the store written by bench/ingest.py (run it first, or this script runs it), exports
the same chips as one LZW GeoTIFF per chip (the format the Prithvi paper replaced), and
reads both with the same batch size and workers: the store through ChipLoader (what
``geofm pretrain`` uses: a worker decodes a shard run and hands over one batch tensor),
the GeoTIFFs through a plain DataLoader; both produce the same normalized (6, 3, 224, 224)
float32 tensors and validity masks. Epochs of the two sides alternate (the best is kept);
the first epoch (worker start-up, cold caches) is not timed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


class GeoTiffChips(Dataset):
    """Baseline: one GeoTIFF per chip (T*C bands), read whole with rasterio, normalized like ChipDataset."""

    def __init__(self, files, frames: int, normalize: str = "v1"):
        from geofm.bands import norm_stats

        self.files = [str(f) for f in files]
        self.frames = frames
        mean, std = norm_stats(normalize)
        self.mean = np.asarray(mean, np.float32)[:, None, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None, None]

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import rasterio

        with rasterio.open(self.files[i]) as src:
            a = src.read()
        t = self.frames
        chip = a.reshape(t, a.shape[0] // t, *a.shape[1:])
        nodata = (chip == -9999).any(axis=1)
        img = chip.transpose(1, 0, 2, 3).astype(np.float32)
        img -= self.mean
        img /= self.std
        img[:, nodata] = 0.0001
        return {"image": torch.from_numpy(img), "valid": torch.from_numpy(~nodata), "index": i}


def make_loader(ds, args, workers: int):
    """The loader each side gets: ChipLoader (batches built in the workers) for the store, a plain shuffled
    DataLoader for the GeoTIFFs; both with persistent workers (start-up is not timed)."""
    from geofm.data.loader import ChipLoader, ChipDataset

    kw = dict(num_workers=workers, persistent_workers=workers > 0)
    if isinstance(ds, ChipDataset):
        return ChipLoader(ds, batch_size=args.batch_size, **kw)
    return DataLoader(ds, batch_size=args.batch_size, shuffle=True, **kw)


def epoch_rate(ds, dl, epoch: int) -> float:
    """Chips per second of one full epoch."""
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    t0 = time.perf_counter()
    n = 0
    for b in dl:
        n += len(b["index"])
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per side, interleaved (after a warm-up epoch)")
    args = ap.parse_args()
    from geofm.data.ingest import export_geotiffs
    from geofm.data.loader import ChipDataset
    from geofm.data.store import read_metadata

    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    torch.set_num_threads(1)
    store = REPO / "bench" / "_out" / "ingest_store.zarr"
    if not (store / "metadata.parquet").exists():
        subprocess.run([sys.executable, str(REPO / "bench" / "ingest.py")], check=True)
    meta = read_metadata(store)
    tif_dir = REPO / "bench" / "_out" / "chips_lzw"
    files = sorted(tif_dir.glob("*.tif"))
    if len(files) != len(meta["slot"]):
        files = export_geotiffs(str(store), str(tif_dir), compress="lzw")
    zarr_mb = sum(p.stat().st_size for p in (store / "chips").rglob("*") if p.is_file()) / 1e6
    tif_mb = sum(p.stat().st_size for p in files) / 1e6
    for f in files:  # page cache warm for both
        f.read_bytes()
    zarr_ds = ChipDataset(str(store))
    tif_ds = GeoTiffChips(files, frames=len(meta["dates"][0]))
    # identical tensors from both
    a = next(iter(ChipDataset(str(store), shuffle=False)))
    b = tif_ds[0]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"])
    import os

    load0 = os.getloadavg()
    results = {}
    for workers in sorted({0, args.workers}):
        loaders = {"tif": (tif_ds, make_loader(tif_ds, args, workers)), "zarr": (zarr_ds, make_loader(zarr_ds, args, workers))}
        for name, (ds, dl) in loaders.items():  # warm-up epoch: worker start-up, caches
            epoch_rate(ds, dl, 0)
        best = {"tif": 0.0, "zarr": 0.0}
        for epoch in range(1, args.epochs + 1):  # interleaved epochs, best of each side
            for name, (ds, dl) in loaders.items():
                best[name] = max(best[name], epoch_rate(ds, dl, epoch))
        results[workers] = (best["tif"], best["zarr"])
        del loaders
    print(f"\n{len(meta['slot'])} chips of (3, 6, 224, 224) int16 -> normalized float32; batch {args.batch_size}; "
          f"best of {args.epochs} interleaved epochs; load average {load0[0]:.1f} before, {os.getloadavg()[0]:.1f} "
          f"after ({os.cpu_count()} CPUs)\n")
    print(f"| {'source':40s} | {'workers':>7s} | {'MB on disk':>10s} | {'chips/s':>8s} | {'ratio':>6s} |")
    print(f"|{'-' * 42}|{'-' * 9}|{'-' * 12}|{'-' * 10}|{'-' * 8}|")
    for workers, (r_tif, r_zarr) in results.items():
        print(f"| {'per-chip GeoTIFF (LZW), rasterio':40s} | {workers:7d} | {tif_mb:10.0f} | {r_tif:8.0f} | "
              f"{1.0:5.2f}x |")
        print(f"| {'Zarr v3 sharded, Blosc-LZ4 (ChipLoader)':40s} | {workers:7d} | {zarr_mb:10.0f} | "
              f"{r_zarr:8.0f} | {r_zarr / r_tif:5.2f}x |")
    for workers, (r_tif, r_zarr) in results.items():
        target = 6 if workers == 0 else 4
        print(f"Zarr / GeoTIFF with {workers} workers = {r_zarr / r_tif:.2f}x (target >= {target}x; the paper saw 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
