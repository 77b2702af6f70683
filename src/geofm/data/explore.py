"""``geofm explore STORE --out DIR``: summary statistics and plots of a chip store.

Writes ``summary.json`` and PNGs: chip locations, cloud-fraction histogram, per-band
reflectance histograms (pixels of a seeded sample of chips), acquisition month and
latitude distributions, and land-cover counts.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA
from geofm.data import store as chip_store
from geofm.errors import ConfigError
from geofm.io import atomic_path

log = logging.getLogger(__name__)
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def summarize(meta: dict[str, np.ndarray], attrs: dict) -> dict:
    """JSON-able summary of a chip table."""
    n = len(meta["slot"])
    months = np.array([int(d[5:7]) for row in meta["dates"] for d in row]) if n else np.zeros(0, int)
    lc, lc_counts = np.unique(meta["landcover"], return_counts=True) if n else (np.zeros(0), np.zeros(0))
    tiles, tile_counts = np.unique(meta["tile"], return_counts=True) if n else (np.zeros(0), np.zeros(0))

    def stats(x):
        x = np.asarray(x, float)
        return {"min": float(x.min()), "mean": float(x.mean()), "max": float(x.max())} if x.size else None

    return {
        "chips": int(n), "bands": attrs.get("bands"), "frames": attrs.get("frames"), "chip_size": attrs.get("chip_size"),
        "tiles": {str(t): int(c) for t, c in zip(tiles, tile_counts)},
        "dates": {"first": min((d for row in meta["dates"] for d in row), default=None),
                  "last": max((d for row in meta["dates"] for d in row), default=None)},
        "acquisitions_per_month": {MONTHS[m - 1]: int((months == m).sum()) for m in range(1, 13)},
        "lat": stats(meta["lat"]), "lon": stats(meta["lon"]),
        "cloud_frac": stats(meta["cloud_frac"]), "nodata_frac": stats(meta["nodata_frac"]),
        "band_mean": dict(zip(attrs.get("bands", []), np.nanmean(meta["band_mean"], 0).round(1).tolist()))
        if n else {},
        "landcover": {str(int(k)): int(c) for k, c in zip(lc, lc_counts)},
    }


def explore(store: str, out_dir: str | Path, storage_options: dict | None = None, sample_chips: int = 64,
            seed: int = 0) -> dict:
    """Write the summary and plots of ``store`` into ``out_dir``; returns the summary."""
    from geofm.io import check_output_dir
    from geofm.viz import pyplot, save_figure

    plt = pyplot()

    if sample_chips < 1:
        raise ConfigError(f"--sample-chips must be >= 1, got {sample_chips}")
    out = check_output_dir(out_dir, "--out")
    loc = chip_store.as_location(store, storage_options)
    attrs = chip_store.store_attrs(loc)
    meta = chip_store.read_metadata(loc)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(meta, attrs)
    n = summary["chips"]

    def save(fig, name):
        save_figure(fig, out / name, dpi=100)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    sc = ax.scatter(meta["lon"], meta["lat"], c=meta["cloud_frac"], s=12, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="cloud fraction")
    ax.set(xlabel="longitude (deg)", ylabel="latitude (deg)", title=f"{n} chip centres")
    save(fig, "locations.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].hist(meta["cloud_frac"], bins=20, range=(0, 1), color="tab:gray")
    axes[0].set(xlabel="cloud fraction", ylabel="chips", title="cloud fraction")
    axes[1].hist(meta["nodata_frac"], bins=20, range=(0, 1), color="tab:red")
    axes[1].set(xlabel="nodata fraction", title="nodata fraction")
    fig.tight_layout()
    save(fig, "cloud_nodata.png")

    # per-band reflectance histograms from the pixels of a sample of chips
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(meta["slot"], size=min(sample_chips, n), replace=False)) if n else []
    hist_edges = np.linspace(0, 8000, 81)
    counts = np.zeros((len(attrs["bands"]), len(hist_edges) - 1))
    if len(pick):
        chips = chip_store.ShardReader(loc).read(pick)  # (k, T, C, H, W)
        for b in range(chips.shape[2]):
            v = chips[:, :, b]
            counts[b] = np.histogram(v[v != HLS_NODATA], bins=hist_edges)[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    centres = (hist_edges[:-1] + hist_edges[1:]) / 2
    for b, name in enumerate(attrs["bands"]):
        ax.plot(centres, counts[b] / max(counts[b].sum(), 1), label=name)
    ax.set(xlabel="reflectance x10000", ylabel="fraction of pixels",
           title=f"band histograms ({len(pick)} chips sampled)")
    ax.legend(fontsize=8)
    save(fig, "band_histograms.png")
    summary["band_histograms"] = {"edges": hist_edges.tolist(),
                                  "counts": {name: counts[b].astype(int).tolist()
                                             for b, name in enumerate(attrs["bands"])}}

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar(MONTHS, list(summary["acquisitions_per_month"].values()), color="tab:green")
    axes[0].set(title="acquisitions per month", ylabel="frames")
    axes[0].tick_params(axis="x", labelsize=7)
    axes[1].hist(meta["lat"], bins=20, color="tab:blue")
    axes[1].set(xlabel="latitude (deg)", ylabel="chips", title="latitude")
    fig.tight_layout()
    save(fig, "season_latitude.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(summary["landcover"].keys()), list(summary["landcover"].values()), color="tab:olive")
    ax.set(xlabel="land-cover class (-1 = no map)", ylabel="chips", title="land cover")
    save(fig, "landcover.png")

    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="chip store (folder or s3:// URL)")
    p.add_argument("--out", required=True, help="output folder for summary.json and PNGs")
    p.add_argument("--sample-chips", type=int, default=64, help="chips whose pixels feed the band histograms")
    p.add_argument("--endpoint-url", help="S3 endpoint")


def run(args: argparse.Namespace) -> int:
    so = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    s = explore(args.store, args.out, storage_options=so, sample_chips=args.sample_chips)
    print(f"{s['chips']} chips from {len(s['tiles'])} tile(s), {s['dates']['first']} .. {s['dates']['last']}, "
          f"lat {s['lat']['min']:.2f}..{s['lat']['max']:.2f}, mean cloud {s['cloud_frac']['mean']:.3f}"
          if s["chips"] else "the store holds no chips")
    print(f"wrote {args.out}/summary.json and locations.png, cloud_nodata.png, band_histograms.png, "
          f"season_latitude.png, landcover.png")
    return 0

