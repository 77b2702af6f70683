"""``geofm experiment``: the paper's data-efficiency grid (strategy × label fraction × seed) as one command.

Each run is ``run_finetune(cfg, "fit")`` in ``<out>/<strategy>/frac<f>/seed<s>``; a run whose
``metrics.json`` exists is skipped, so an interrupted grid resumes where it stopped. The data
split is the same for every run (``data.split_seed``); the seed changes the label subsample,
the initialisation of new layers and the batch order. Outputs in ``<out>``:

* ``results.csv`` — one row per run: strategy, label_fraction, seed, training samples,
  best epoch, fit seconds and every validation/test score;
* ``data_efficiency.png`` — test score vs label fraction per strategy, mean ± std over seeds;
* ``curves.png`` — validation score per epoch of each strategy at the largest fraction
  (mean over seeds): pretrained (``full``/``frozen``) vs ``scratch``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.errors import ConfigError
from geofm.io import atomic_path
from geofm.tasks.finetune import main_metric, read_epoch_metrics, run_finetune
from geofm.tasks.finetune_config import STRATEGIES, load_finetune_config, run_dir_of
from geofm.viz import pyplot, save_figure

log = logging.getLogger(__name__)


def check_grid(strategies: Sequence[str], fractions: Sequence[float], seeds: int) -> None:
    """:class:`ConfigError` for an unknown or repeated strategy, a fraction outside (0, 1], seeds < 1."""
    known = STRATEGIES
    if not strategies:
        raise ConfigError(f"--strategies is empty; choose from {', '.join(known)}")
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ConfigError(f"--strategies: unknown {unknown}; choose from {', '.join(known)}")
    if len(set(strategies)) != len(strategies) or len(set(fractions)) != len(fractions):
        raise ConfigError(f"--strategies / --label-fractions repeat a value: {list(strategies)}, {list(fractions)}")
    if not fractions:
        raise ConfigError("--label-fractions is empty; e.g. 1,0.5,0.25,0.1")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ConfigError(f"--label-fractions must be in (0, 1], got {bad}")
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")


def run_key(strategy: str, fraction: float, seed: int) -> str:
    return f"{strategy}/frac{fraction:g}/seed{seed}"


def run_experiment(config: str | Path, strategies: Sequence[str] = STRATEGIES,
                   fractions: Sequence[float] = (1.0, 0.5, 0.25, 0.1), seeds: int = 3,
                   overrides: Sequence[str] = (), out_dir: str | Path | None = None,
                   progress=None) -> dict[str, Path]:
    """Run (or resume) the grid; returns the paths of ``results.csv``, ``data_efficiency.png``, ``curves.png``.

    The whole grid is checked first (strategy names, fractions, every run's config, the output
    folder): a typo fails before any run trains, not after the earlier ones did. ``progress(done,
    total, row)`` is called with ``(0, total, None)`` once the grid is checked, then after each run.
    """
    from geofm.io import check_output_dir

    base = load_finetune_config(config, list(overrides))
    check_grid(strategies, fractions, seeds)
    out = Path(out_dir) if out_dir is not None else Path("outputs/experiments") / base.name
    check_output_dir(out, "--out")
    key = main_metric(base.task)
    grid = [(s, float(f), seed) for s in strategies for f in fractions for seed in range(seeds)]
    configs = [load_finetune_config(config, [*overrides, f"optim.strategy={strategy}", f"data.label_fraction={fraction}",
                                             f"seed={seed}", f"run_dir={out / run_key(strategy, fraction, seed)}"])
               for strategy, fraction, seed in grid]
    out.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(0, len(grid), None)  # the grid is checked: the runs start
    rows = []
    for n, ((strategy, fraction, seed), cfg) in enumerate(zip(grid, configs)):
        metrics_file = run_dir_of(cfg) / "metrics.json"
        if metrics_file.is_file():
            log.info("skipping finished run %s", run_key(strategy, fraction, seed))
        else:
            log.info("run %d/%d: %s", n + 1, len(grid), run_key(strategy, fraction, seed))
            run_finetune(cfg, "fit")
        m = json.loads(metrics_file.read_text())
        row = {"strategy": strategy, "label_fraction": fraction, "seed": seed, "n_train": m.get("n_train"),
               "best_epoch": m.get("best_epoch"), "fit_seconds": round(float(m.get("fit_seconds", 0)), 2)}
        row.update({k: v for k, v in m.get("val", {}).items()})
        row.update({k: v for k, v in m.get("test", {}).items()})
        rows.append(row)
        if progress is not None:
            progress(n + 1, len(grid), row)
    paths = {"csv": write_results(rows, out / "results.csv")}
    paths["plot"] = plot_data_efficiency(rows, out / "data_efficiency.png", f"test/{key}", base.name)
    paths["curves"] = plot_curves(out, strategies, max(fractions), seeds, f"val/{key}", base.name)
    return paths


def write_results(rows: list[dict], path: Path) -> Path:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
    return path


def summarize(rows: list[dict], column: str) -> dict[str, list[tuple[float, float, float, int]]]:
    """strategy -> [(fraction, mean, std, n)] of ``column`` over seeds, by increasing fraction."""
    out: dict[str, list] = {}
    for s in dict.fromkeys(r["strategy"] for r in rows):
        pts = []
        for f in sorted({r["label_fraction"] for r in rows if r["strategy"] == s}):
            vals = np.array([float(r[column]) for r in rows
                             if r["strategy"] == s and r["label_fraction"] == f and r.get(column) is not None])
            if len(vals):
                pts.append((f, float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, len(vals)))
        out[s] = pts
    return out


def plot_data_efficiency(rows: list[dict], path: Path, column: str, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strategy, pts in summarize(rows, column).items():
        f, mean, std, _ = map(np.array, zip(*pts))
        ax.errorbar(f * 100, mean, yerr=std, marker="o", capsize=3, label=strategy)
    ax.set_xscale("log")
    ticks = sorted({r["label_fraction"] * 100 for r in rows})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training labels used (%)")
    ax.set_ylabel(f"{column} (mean ± std over seeds)")
    ax.set_title(f"{title}: data efficiency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_curves(out: Path, strategies: Sequence[str], fraction: float, seeds: int, column: str, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for strategy in strategies:
        series = [dict(read_epoch_metrics(out / run_key(strategy, float(fraction), s) / "logs" / "metrics.csv",
                                          column)) for s in range(seeds)]
        epochs = sorted(set().union(*series))
        if not epochs:
            continue
        mean = [np.mean([s[e] for s in series if e in s]) for e in epochs]
        init = "random init" if strategy == "scratch" else "pretrained"
        ax.plot(epochs, mean, marker=".", label=f"{strategy} ({init})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{column} (mean over seeds)")
    ax.set_title(f"{title}: validation per epoch, {fraction * 100:g} % labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, out / "curves.png")


# --------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="fine-tuning YAML, or a bundled config by name (finetune/tiny_flood, ...)")
    p.add_argument("--strategies", default="full,frozen,scratch", help="comma-separated: full, frozen, scratch")
    p.add_argument("--label-fractions", default="1,0.5,0.25,0.1", help="comma-separated fractions in (0, 1]")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (strategy, fraction)")
    p.add_argument("--out", default=None, help="experiment folder (default outputs/experiments/<name>)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every run")


def run(args: argparse.Namespace) -> int:
    from geofm.progress import progress_bar

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        fractions = [float(f) for f in args.label_fractions.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(f"--label-fractions expects comma-separated numbers, got {args.label_fractions!r}") from None
    bars = []  # made once run_experiment has checked the whole grid: a refused grid prints no bar

    def progress(done, total, row):
        if not bars:
            bars.append(progress_bar(total=total, desc="runs", unit="run"))
        if row is not None:
            bars[0].update(1)
            bars[0].set_postfix_str(f"{row['strategy']} {row['label_fraction']:g} seed {row['seed']}")

    paths = run_experiment(args.config, strategies, fractions, args.seeds, args.overrides, args.out, progress)
    if bars:
        bars[0].close()
    for k, p in paths.items():
        print(f"{k}: {p}")
    return 0


__all__ = ["run_experiment", "summarize"]
