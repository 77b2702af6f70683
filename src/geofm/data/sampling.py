"""``geofm sample``: stratified sampling of chips, to reduce the geographic bias of HLS coverage.

Strata are combinations of chip attributes: ``landcover`` (majority class), ``lat_band``
(latitude in ``lat_step``-degree bands), ``season`` (meteorological season of the first
acquisition, flipped in the southern hemisphere), ``tile`` and ``month``.

Quota policy ("water filling"): the ``n`` chips are split equally among the non-empty
strata; a stratum smaller than its quota gives all its chips and its unused quota is
split equally among the strata that still have chips, until ``n`` chips are chosen or
every stratum is exhausted. Leftover units after an equal split go to the strata with the
most remaining chips (ties: stratum order). Within a stratum chips are drawn uniformly
without replacement with a seeded generator. The result is as balanced as the data
allows: any two strata differ by at most one chip unless the smaller one is exhausted.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.data import store as chip_store
from geofm.errors import ConfigError, DataError
from geofm.io import atomic_path

log = logging.getLogger(__name__)
STRATA = ("landcover", "lat_band", "season", "tile", "month")
_SEASONS = {12: "DJF", 1: "DJF", 2: "DJF", 3: "MAM", 4: "MAM", 5: "MAM", 6: "JJA", 7: "JJA", 8: "JJA",
            9: "SON", 10: "SON", 11: "SON"}
_FLIP = {"DJF": "JJA", "JJA": "DJF", "MAM": "SON", "SON": "MAM"}


def strata_keys(meta: dict[str, np.ndarray], strata: Sequence[str], lat_step: float = 10.0) -> np.ndarray:
    """One string key per chip, e.g. ``"landcover=3|lat_band=30..40|season=JJA"``."""
    unknown = set(strata) - set(STRATA)
    if unknown:
        raise ConfigError(f"unknown strata {sorted(unknown)}; available: {', '.join(STRATA)}")
    cols = []
    for s in strata:
        if s == "landcover":
            cols.append([f"landcover={int(v)}" for v in meta["landcover"]])
        elif s == "lat_band":
            lo = np.floor(meta["lat"] / lat_step) * lat_step
            cols.append([f"lat_band={a:g}..{a + lat_step:g}" for a in lo])
        elif s in ("season", "month"):
            months = [int(d[0][5:7]) for d in meta["dates"]]
            if s == "month":
                cols.append([f"month={m:02d}" for m in months])
            else:
                cols.append([f"season={_SEASONS[m] if lat >= 0 else _FLIP[_SEASONS[m]]}"
                             for m, lat in zip(months, meta["lat"])])
        else:
            cols.append([f"tile={t}" for t in meta["tile"]])
    return np.array(["|".join(parts) for parts in zip(*cols)]) if cols else np.array([""] * len(meta["slot"]))


def allocate(sizes: Sequence[int], n: int) -> list[int]:
    """Water-filling quotas: how many chips each stratum of ``sizes`` gives to a sample of ``n``."""
    sizes = list(map(int, sizes))
    take = [0] * len(sizes)
    left = min(n, sum(sizes))
    while left > 0:
        open_ = [i for i in range(len(sizes)) if take[i] < sizes[i]]
        share, extra = divmod(left, len(open_))
        if share == 0:  # fewer units than open strata: the largest remaining strata get one each
            for i in sorted(open_, key=lambda i: (-(sizes[i] - take[i]), i))[:extra]:
                take[i] += 1
            break
        for i in open_:
            add = min(share, sizes[i] - take[i])
            take[i] += add
            left -= add
    return take


def check_sample_options(strata: Sequence[str], n: int, lat_step: float) -> None:
    """:class:`ConfigError` for unknown strata, ``n`` < 1 or a latitude step <= 0 (before any reading)."""
    unknown = [s for s in strata if s not in STRATA]
    if unknown:
        raise ConfigError(f"--strata: unknown {unknown}; available: {', '.join(STRATA)}")
    if n < 1:
        raise ConfigError(f"--n is the number of chips to select and must be >= 1, got {n}")
    if not lat_step > 0:
        raise ConfigError(f"--lat-step must be > 0 degrees, got {lat_step}")


def stratified_sample(meta: dict[str, np.ndarray], strata: Sequence[str], n: int, seed: int = 0,
                      lat_step: float = 10.0) -> tuple[np.ndarray, dict]:
    """Choose ``n`` chip slots balanced over ``strata``. Returns (slots, report)."""
    check_sample_options(strata, n, lat_step)
    if len(meta["slot"]) == 0:
        raise DataError("the store holds no chips: nothing to sample (were all chips filtered at ingest?)")
    keys = strata_keys(meta, strata, lat_step)
    names, inverse, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    quotas = allocate(sizes, n)
    rng = np.random.default_rng(seed)
    chosen = []
    for k, q in enumerate(quotas):
        members = np.flatnonzero(inverse == k)
        chosen.append(rng.choice(members, size=q, replace=False) if q else np.zeros(0, int))
    rows = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, int)
    report = {"strata": list(strata), "requested": int(n), "selected": int(len(rows)), "seed": seed,
              "before": {str(a): int(b) for a, b in zip(names, sizes)},
              "after": {str(a): int(q) for a, q in zip(names, quotas)}}
    return meta["slot"][rows], report


def write_index(path: str | Path, slots: np.ndarray, report: dict) -> Path:
    """Write the index (parquet with a ``slot`` column) and ``<index>.json`` with the report."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"slot": pa.array(np.asarray(slots, np.int64))}), tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return path


def plot_report(report: dict, path: str | Path) -> Path:
    from geofm.viz import pyplot, save_figure

    plt = pyplot()
    names = list(report["before"])
    before = np.array([report["before"][k] for k in names])
    after = np.array([report["after"][k] for k in names])
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, before / max(before.sum(), 1), 0.4, label=f"store ({before.sum()} chips)")
    ax.bar(x + 0.2, after / max(after.sum(), 1), 0.4, label=f"sample ({after.sum()} chips)")
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="fraction of chips", title="strata: " + ", ".join(report["strata"]))
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="chip store (folder or s3:// URL)")
    p.add_argument("--strata", default="landcover,lat_band,season", help=f"comma list of {', '.join(STRATA)}")
    p.add_argument("--n", type=int, required=True, help="number of chips to select")
    p.add_argument("--out", required=True, help="index file to write (.parquet); a .json report and .png go beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lat-step", type=float, default=10.0, help="width of latitude bands (degrees)")
    p.add_argument("--endpoint-url", help="S3 endpoint")


def run(args: argparse.Namespace) -> int:
    from geofm.io import check_output_file

    so = {"client_kwargs": {"endpoint_url": args.endpoint_url}} if args.endpoint_url else None
    strata = [s for s in args.strata.split(",") if s]
    check_sample_options(strata, args.n, args.lat_step)
    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        raise ConfigError(f"--out '{out}' must end in .parquet: the index is a Parquet table of chip slots")
    for path in (out, out.with_suffix(".json"), out.with_suffix(".png")):
        check_output_file(path, "--out" if path == out else f"--out (its {path.suffix} beside it)")
    meta = chip_store.read_metadata(args.store, so)
    slots, report = stratified_sample(meta, strata, args.n, args.seed, args.lat_step)
    out = write_index(args.out, slots, report)
    png = plot_report(report, Path(args.out).with_suffix(".png"))
    width = max(len(k) for k in report["before"]) if report["before"] else 10
    print(f"{'stratum':{width}s}  {'store':>7s}  {'sample':>7s}")
    for k in report["before"]:
        print(f"{k:{width}s}  {report['before'][k]:7d}  {report['after'][k]:7d}")
    print(f"selected {report['selected']} of {len(meta['slot'])} chips (requested {args.n}) -> {out}, "
          f"{out.with_suffix('.json')}, {png}")
    return 0
