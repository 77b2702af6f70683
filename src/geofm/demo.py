"""``geofm demo``: the main job end to end on the bundled sample data.

Steps (each prints what it did and where its outputs are):

1. ``granules``: generate a small HLS S30 time series of MGRS tile 10SEG (3 dates, six
   band COGs + Fmask each, real UTM 10N grid) and a land-cover map on the same grid.
2. ``ingest``: Dask LocalCluster ingest of the granules into a sharded Zarr v3 chip store,
   rejecting cloudy and nodata chips from Fmask.
3. ``explore``: summary JSON and PNGs of the store.
4. ``sample``: stratified sample over land cover, with the before/after distribution.
5. ``mae``: a small Prithvi MAE learns to reconstruct a real 30 m HLS chip (bundled from
   TerraTorch's test resources, UTM 14N) and writes input / masked input / reconstruction.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"
HLS_CHIP = SAMPLE / "hls_chip" / "regression_test_0_input.tif"
HLS_CHIP_BANDS = (2, 3, 4, 5, 6, 7)  # 1-based: Blue, Green, Red, NIR, SWIR1, SWIR2


def read_hls_chip(path: Path = HLS_CHIP) -> tuple[np.ndarray, dict]:
    """The six model bands of the bundled chip: (6, H, W) float32 reflectance x10000 + profile."""
    import rasterio

    with rasterio.open(path) as src:
        image = src.read(list(HLS_CHIP_BANDS)).astype(np.float32)
        profile = {"crs": src.crs, "transform": src.transform}
    return image, profile


def mae_reconstruction(out_dir: Path, steps: int = 300, seed: int = 0) -> dict:
    """Fit a tiny MAE on augmented views of one real chip; save a reconstruction PNG."""
    from geofm.bands import norm_stats
    from geofm.models import create_model
    from geofm.viz import rgb_stretch, save_panels, stretch_limits

    torch.manual_seed(seed)
    image, profile = read_hls_chip()
    mean, std = (np.array(s, dtype=np.float32)[:, None, None] for s in norm_stats("v1"))
    x = torch.from_numpy((image - mean) / std)[:, None]  # (C, T=1, H, W)
    model = create_model("prithvi_tiny", img_size=224, num_frames=1, patch_size=16, embed_dim=128, depth=4,
                         num_heads=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        views = []
        for _ in range(4):  # dihedral augmentations of the one chip
            v = torch.rot90(x, int(torch.randint(4, ())), dims=(2, 3))
            views.append(v.flip(3) if torch.rand(()) < 0.5 else v)
        loss, _, _ = model(torch.stack(views), mask_ratio=0.75)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        noise = torch.rand(1, model.encoder.num_tokens, generator=g)
        loss, pred, mask = model(x[None], mask_ratio=0.75, noise=noise)
        recon = model.unpatchify(pred, x[None].shape)[0, :, 0].numpy() * std + mean
        pasted = model.reconstruct(x[None], pred, mask)[0, :, 0].numpy() * std + mean
    pix_mask = model.unpatchify(mask[:, :, None].expand(-1, -1, pred.shape[-1]), x[None].shape)[0, 0, 0].numpy() > 0
    limits = stretch_limits(image)
    masked_rgb = rgb_stretch(image, limits=limits)
    masked_rgb[pix_mask] = 0.5
    path = save_panels(out_dir / "mae_reconstruction.png", [
        ("input (HLS RGB)", rgb_stretch(image, limits=limits)),
        ("masked input (75 %)", masked_rgb),
        ("reconstruction", rgb_stretch(recon, limits=limits)),
        ("reconstruction + visible", rgb_stretch(pasted, limits=limits)),
    ], suptitle=f"Prithvi MAE on a real HLS chip ({profile['crs'].to_string()}, 30 m); masked-patch MSE "
                f"{loss.item():.3f} (normalized units) after {steps} steps")
    rmse = float(np.sqrt(np.mean((recon - image)[:, pix_mask] ** 2)))
    return {"png": str(path), "first_loss": float(np.mean(losses[:10])), "last_loss": float(np.mean(losses[-10:])),
            "eval_loss": loss.item(), "masked_rmse_reflectance": rmse, "seconds": time.perf_counter() - t0}


def step_granules(out: Path, size: int) -> dict:
    """Generate 3 S30 granules of 10SEG (size x size px) and a land-cover map on their grid."""
    from geofm.data import synthetic

    gdir = out / "granules"
    paths = synthetic.write_time_series(gdir, tile="10SEG", size=size, seed=11,
                                        cloud_cover=[0.0, 0.02, 0.1], swath_edge=0.08)
    lc = synthetic.write_landcover(out / "landcover_10SEG.tif", tile="10SEG", size=size)
    return {"dir": gdir, "files": len(paths), "landcover": lc}


def step_ingest(out: Path, granules: Path, landcover: Path, chip: int, scheduler: str | None) -> dict:
    from geofm.data.ingest import IngestConfig, ingest

    cfg = IngestConfig(chip_size=chip, frames=3, max_cloud=0.05, max_nodata=0.0, landcover=str(landcover))
    res = ingest([str(granules)], str(out / "chips.zarr"), cfg, scheduler=scheduler, n_workers=2)
    return {"store": res.store, "chips": res.chips, "rejected": res.rejected, "seconds": res.seconds,
            "already": res.already_complete}


def step_explore(out: Path, store: str) -> dict:
    from geofm.data.explore import explore

    summary = explore(store, out / "explore")
    return {"dir": out / "explore", "summary": summary}


def step_sample(out: Path, store: str, n: int) -> dict:
    from geofm.data import store as chip_store
    from geofm.data.sampling import plot_report, stratified_sample, write_index

    meta = chip_store.read_metadata(store)
    slots, report = stratified_sample(meta, ["landcover"], n, seed=0)
    index = write_index(out / "sample_index.parquet", slots, report)
    png = plot_report(report, index.with_suffix(".png"))
    return {"index": index, "png": png, "report": report}


def run_demo(out: str | Path, *, size: int = 600, chip: int = 64, mae_steps: int = 300,
             scheduler: str | None = None, echo=print) -> dict:
    """Run every step of the demo into ``out``; returns what each step produced.

    ``scheduler``: None starts a Dask LocalCluster for the ingest, ``"sync"`` runs it in-process.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    n_steps = 5
    t0 = time.perf_counter()

    echo(f"[1/{n_steps}] Generating an HLS S30 time series of MGRS tile 10SEG ({size} px, 3 dates, UTM 10N) ...")
    g = results["granules"] = step_granules(out, size)
    echo(f"      wrote {g['files']} band/Fmask COGs to {g['dir']} and {g['landcover']}")

    echo(f"[2/{n_steps}] Ingesting them into a Zarr v3 chip store ({chip} px chips, 3 frames, Dask) ...")
    i = results["ingest"] = step_ingest(out, g["dir"], g["landcover"], chip, scheduler)
    if i["already"]:
        echo(f"      {i['store']} is already complete ({i['chips']} chips): nothing to redo")
    else:
        echo(f"      {i['chips']} chips kept; rejected {i['rejected'].get('cloud', 0)} cloudy and "
             f"{i['rejected'].get('nodata', 0)} with nodata in {i['seconds']:.1f} s -> {i['store']}")

    echo(f"[3/{n_steps}] Exploring the store ...")
    e = results["explore"] = step_explore(out, i["store"])
    s = e["summary"]
    echo(f"      {s['chips']} chips, lat {s['lat']['min']:.2f}..{s['lat']['max']:.2f}, mean cloud "
         f"{s['cloud_frac']['mean']:.3f}, land cover {s['landcover']} -> {e['dir']}/summary.json + 5 PNGs")

    echo(f"[4/{n_steps}] Stratified sample over land cover ...")
    n = max(1, s["chips"] // 2)
    sm = results["sample"] = step_sample(out, i["store"], n)
    before = "/".join(str(v) for v in sm["report"]["before"].values())
    after = "/".join(str(v) for v in sm["report"]["after"].values())
    echo(f"      {before} -> {after} chips per land-cover class -> {sm['index']}, {sm['png']}")

    echo(f"[5/{n_steps}] MAE reconstruction of a real HLS chip ({HLS_CHIP.name}, bands 2-7) ...")
    r = results["mae"] = mae_reconstruction(out, steps=mae_steps)
    echo(f"      loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} in {r['seconds']:.0f} s; "
         f"held-out masking: MSE {r['eval_loss']:.3f}, RMSE {r['masked_rmse_reflectance']:.0f} (reflectance x10000)")
    echo(f"      wrote {r['png']}")
    echo(f"done in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="outputs/demo", help="output folder")
    p.add_argument("--size", type=int, default=600, help="side of the generated HLS granules (px)")
    p.add_argument("--steps", type=int, default=300, help="MAE training steps of the reconstruction step")


def run(args: argparse.Namespace) -> int:
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    run_demo(args.out, size=args.size, mae_steps=args.steps)
    return 0
