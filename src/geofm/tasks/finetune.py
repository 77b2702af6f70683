"""``geofm finetune``: fit / validate / test / predict one downstream task from a YAML config.

>>> cfg = load_finetune_config("finetune/tiny_flood", ["optim.strategy=frozen"])
>>> export_dir = run_finetune(cfg, stage="fit")   # doctest: +SKIP

A run folder (``run_dir``, default ``outputs/finetune/<name>``) receives ``config.yaml`` (the
resolved configuration), ``logs/metrics.csv`` (per-step/epoch curves), ``checkpoints/``
(Lightning), ``metrics.json`` (best validation and test scores), ``export/`` (the fine-tuned
model: :func:`geofm.models.save_finetuned`) and, for ``predict``, ``predictions/`` (GeoTIFFs +
PNG quicklooks).

The configuration and its checks are :mod:`geofm.tasks.finetune_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import time
from pathlib import Path
from typing import Any

from geofm.config import save_config, to_dict
from geofm.errors import ConfigError
from geofm.runtime import quiet_engine_logs
from geofm.tasks.finetune_config import STAGES, FinetuneConfig, load_finetune_config, resolve_path, run_dir_of

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- building blocks
def build_datamodule(cfg: FinetuneConfig, run_dir: Path | None = None):
    """The LightningDataModule of ``cfg.data``."""
    d = cfg.data
    common = dict(batch_size=d.batch_size, eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                  label_fraction=d.label_fraction, seed=d.split_seed, label_seed=cfg.seed, val_fraction=d.val_fraction,
                  test_fraction=d.test_fraction, augment=d.augment, mean=d.mean, std=d.std)
    if d.dataset == "imputation":
        return build_imputation_datamodule(cfg, run_dir, common)
    if d.root is None:
        raise ConfigError(f"data.root is required for dataset {d.dataset!r}")
    root = resolve_path(d.root, run_dir)
    tiles = dict(tile_size=d.tile_size, crop_size=d.crop_size, eval_tile_size=d.eval_tile_size)
    if d.dataset == "sen1floods11":
        from geofm.data.datasets.sen1floods11 import Sen1Floods11DataModule

        return Sen1Floods11DataModule(root, split_dir=resolve_path(d.split_dir, run_dir),
                                      predict_split=d.predict_split, **tiles, **common)
    if d.dataset == "burn_scars":
        from geofm.data.datasets.burn_scars import BurnScarsDataModule

        return BurnScarsDataModule(root, **tiles, **common)
    from geofm.data.datasets.crops import CropsDataModule

    return CropsDataModule(root, **tiles, **common)


def build_imputation_datamodule(cfg: FinetuneConfig, run_dir: Path | None, common: dict):
    """The :class:`~geofm.data.datasets.imputation.ImputationDataModule` of ``cfg.data``."""
    from geofm.data.datasets.imputation import ImputationDataModule, generate_series, store_series
    from geofm.data.series import load_series

    d = cfg.data

    def paths(items):  # a trailing "?" marks an optional entry (e.g. a file in ../shared/data)
        out = []
        for f in items:
            p = resolve_path(f.rstrip("?"), run_dir)
            if not f.endswith("?") or glob.glob(p):
                out.append(p)
        return out

    def series_of(entries, stacks=()):
        kw = dict(stacked_bands=d.stacked_bands, stacked_fmask_band=d.stacked_fmask_band, fmask_kind=d.fmask_kind,
                  equal_spacing=d.equal_spacing)
        out = load_series(paths(stacks), stack_frames=d.stack_frames, **kw) if stacks else []
        for e in entries:
            own = dict(e) if isinstance(e, dict) else {"inputs": e}
            inputs = own.pop("inputs", None)
            unknown = set(own) - set(kw) - {"stack_frames"}
            if inputs is None or unknown:
                raise ConfigError(f"a data series entry needs 'inputs' and may set {sorted(kw)} / stack_frames, "
                                  f"got {sorted(own) + (['inputs'] if inputs else [])}")
            found = paths([inputs] if isinstance(inputs, str) else inputs)
            if found:
                out += load_series([",".join(found)], **{**kw, **own})
        return out

    series = series_of(d.series, d.stacks)
    fmask = paths(d.fmask)
    store = resolve_path(d.store, run_dir)
    if d.generate:
        if run_dir is None:
            raise ConfigError("data.generate needs a run folder")
        gen_store, gen_fmask = generate_series(run_dir / "data", size=d.generate_size, chip_size=d.crop_size or 32,
                                               seed=cfg.seed)
        store = store or str(gen_store)
        fmask += [str(p) for p in gen_fmask]
    if store is not None:
        series += store_series(store)
    test_series = series_of(d.test_series)
    if d.generate_from_image:
        from geofm.data import synthetic

        image = resolve_path(d.generate_from_image, run_dir)
        if run_dir is None:
            raise ConfigError("data.generate_from_image needs a run folder")
        with _open_image(image) as src:
            h, w = src.height, src.width
        days = d.generate_days or [16 * k for k in range(6)]
        parts = (("train", (0, h // 2), (0, w), cfg.seed, days),
                 ("test", (h // 2, min(h, h // 2 + 64)), (0, min(w, 128)), cfg.seed + 1, d.generate_test_days or days))
        for part, rows, cols, seed, part_days in parts:
            folder = run_dir / "data" / f"generated_{part}"
            if not any(folder.glob("series_*.Fmask.tif")):
                synthetic.write_series_from_image(image, folder, rows=rows, cols=cols, seed=seed, days=part_days)
            (series if part == "train" else test_series).extend(load_series([str(folder)]))
    frames = cfg.model.options.get("num_frames", 3)
    if cfg.model.name is not None:
        from geofm.models.presets import build_config

        frames = build_config(cfg.model.name, None, **cfg.model.options).num_frames
    return ImputationDataModule(
        series=series, fmask=fmask, frames=frames, crop_size=d.crop_size or 32, samples_per_epoch=d.samples_per_epoch,
        gap_frames=d.gap_frames, min_hidden=d.min_hidden, own_masks=d.own_masks, skip_dates=d.skip_dates,
        val_series=series_of(d.val_series) or None, test_series=test_series or None,
        test_masks=None if d.test_masks is None else paths(d.test_masks), test_frames=d.test_frames,
        test_stride=d.test_stride, val_samples=d.val_samples,
        **{k: common[k] for k in ("batch_size", "eval_batch_size", "num_workers", "augment", "mean", "std")})


def _open_image(path: str):
    from geofm.data.hls import open_raster

    if not Path(path).is_file():
        raise ConfigError(f"data.generate_from_image: file '{path}' does not exist")
    return open_raster(path)


def build_task(cfg: FinetuneConfig, dm):
    """The LightningModule of ``cfg.task`` for datamodule ``dm``."""
    m, o = cfg.model, cfg.optim
    optim = dict(strategy=o.strategy, lr=o.lr, weight_decay=o.weight_decay, scheduler=o.scheduler,
                 warmup_epochs=o.warmup_epochs, min_lr_ratio=o.min_lr_ratio)
    checkpoint = resolve_path(m.checkpoint)
    if cfg.task == "imputation":
        from geofm.tasks.imputation import ImputationTask

        return ImputationTask({"name": m.name, "checkpoint": checkpoint, "residual": m.residual,
                               "patch_threshold": m.patch_threshold, **m.options},
                              mean=dm.description["mean"], std=dm.description["std"], loss=o.loss,
                              baseline_anchor=o.baseline_anchor, **optim)
    from geofm.tasks.segmentation import SegmentationTask

    neck_channels: Any = m.neck_channels
    if m.neck == "upernet" and neck_channels is not None:
        neck_channels = int(neck_channels[0])
    model = {"name": m.name, "checkpoint": checkpoint, "num_classes": dm.num_classes, "neck": m.neck,
             "num_frames": dm.train_set.num_frames, "neck_channels": neck_channels, "layers": m.layers,
             "head_channels": m.head_channels, "head_convs": m.head_convs, "dropout": m.dropout, **m.options}
    return SegmentationTask(model, class_names=dm.class_names, loss=o.loss, class_weights=o.class_weights, **optim)


def export(task, dm, cfg: FinetuneConfig, out_dir: Path, scores: dict | None = None) -> Path:
    """Write the fine-tuned model with its data description (:func:`geofm.models.save_finetuned`)."""
    from geofm.models.export import save_finetuned

    desc = dm.description
    sample = dm.val_set[0]["image"]
    extra = {"dataset": desc.get("dataset"), "strategy": cfg.optim.strategy, "name": cfg.name,
             "label_fraction": cfg.data.label_fraction, "scores": scores or {}}
    return save_finetuned(task.model, out_dir, task=cfg.task, mean=desc["mean"], std=desc["std"],
                          bands=desc["bands"], class_names=dm.class_names or None,
                          img_size=int(sample.shape[-1]), num_frames=int(sample.shape[1]), extra=extra)


def make_trainer(cfg: FinetuneConfig, run_dir: Path, monitor: str | None = None):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from geofm.tasks.callbacks import progress_callback
    from geofm.tasks.distributed import make_strategy

    t = cfg.trainer
    callbacks = [progress_callback(t.log_every_n_steps)] if t.progress_bar else []
    if monitor is not None:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=monitor,
                                         mode="max", save_last=True, save_top_k=1))
    kwargs: dict[str, Any] = {}
    if t.limit_train_batches is not None:
        kwargs["limit_train_batches"] = int(t.limit_train_batches) if t.limit_train_batches >= 1 else \
            t.limit_train_batches
    quiet_engine_logs()  # Lightning reset its loggers to INFO when imported
    return pl.Trainer(default_root_dir=run_dir, max_epochs=t.max_epochs, accelerator=t.accelerator,
                      devices=t.devices, strategy=make_strategy(t.strategy), precision=t.precision,
                      log_every_n_steps=t.log_every_n_steps,
                      check_val_every_n_epoch=t.check_val_every_n_epoch, gradient_clip_val=t.gradient_clip_val,
                      deterministic=t.deterministic, enable_progress_bar=t.progress_bar,
                      enable_model_summary=False,
                      logger=CSVLogger(run_dir, name="logs", version="") if monitor is not None else False,
                      callbacks=callbacks, enable_checkpointing=monitor is not None, num_sanity_val_steps=0,
                      **kwargs)


def main_metric(task: str) -> str:
    """The score that picks the best epoch and that experiments plot."""
    return "mIoU" if task == "segmentation" else "ssim"


# --------------------------------------------------------------------------- the entry point
def run_finetune(cfg: FinetuneConfig, stage: str = "fit") -> Path:
    """Run one stage of a fine-tuning config.

    ``fit`` trains (best epoch by validation mIoU / SSIM), tests the best weights, writes
    ``metrics.json`` and exports to ``<run_dir>/export`` (returned). ``validate`` / ``test``
    evaluate ``model.finetuned`` (default ``<run_dir>/export``) and return the metrics JSON
    path; ``predict`` writes GeoTIFFs + quicklooks and returns ``<run_dir>/predictions``.
    """
    import lightning.pytorch as pl
    import torch

    from geofm.runtime import tune_cpu_allocator

    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    from geofm.io import check_output_dir

    tune_cpu_allocator()
    run_dir = check_output_dir(run_dir_of(cfg), "run_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / ("config.yaml" if stage == "fit" else f"config_{stage}.yaml"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg, run_dir)
    if stage == "fit" and cfg.optim.strategy != "scratch" and cfg.model.checkpoint is None:
        log.warning("strategy %r without model.checkpoint: the encoder starts from random weights",
                    cfg.optim.strategy)
    if stage != "fit" and cfg.model.name is not None:  # weights come from the export: skip the checkpoint
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=None))
    task = build_task(cfg, dm)
    key = main_metric(cfg.task)
    t0 = time.perf_counter()
    if stage == "fit":
        trainer = make_trainer(cfg, run_dir, monitor=f"val/{key}")
        trainer.fit(task, datamodule=dm)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            task.load_state_dict(state)
        fit_seconds = time.perf_counter() - t0
        best_epoch, val = best_epoch_scores(run_dir / "logs" / "metrics.csv", f"val/{key}")
        test = make_trainer(cfg, run_dir).test(task, datamodule=dm, verbose=False)[0]
        scores = {"val": val, "test": _plain(test), "fit_seconds": fit_seconds,
                  "best_checkpoint": Path(best).name if best else None, "best_epoch": best_epoch,
                  "n_train": len(dm.train_set), "n_val": len(dm.val_set), "n_test": len(dm.test_set),
                  "strategy": cfg.optim.strategy, "label_fraction": cfg.data.label_fraction, "seed": cfg.seed}
        _write_json(run_dir / "metrics.json", scores)
        out = export(task, dm, cfg, run_dir / "export", {k: scores["test"].get(f"test/{k}") for k in (key,)})
        log.info("fit done in %.0f s: val %s %.4f, test %s %.4f; exported to %s", fit_seconds, key,
                 val.get(f"val/{key}", float("nan")), key, test.get(f"test/{key}", float("nan")), out)
        return out
    _load_finetuned_into(task, cfg, run_dir)
    if stage == "predict":
        from geofm.tasks.chip_predictions import write_predictions

        return write_predictions(task, dm, run_dir / "predictions", quicklooks=cfg.predict.quicklooks)
    trainer = make_trainer(cfg, run_dir)
    res = (trainer.validate if stage == "validate" else trainer.test)(task, datamodule=dm, verbose=False)[0]
    path = run_dir / f"metrics_{stage}.json"
    _write_json(path, _plain(res))
    return path


def _load_finetuned_into(task, cfg: FinetuneConfig, run_dir: Path) -> None:
    from geofm.models.finetuned import load_finetuned

    src = resolve_path(cfg.model.finetuned, run_dir) or str(run_dir / "export")
    if not (Path(src) / "config.json").is_file() and not Path(src).is_file():
        raise ConfigError(f"no fine-tuned model at '{src}': run the fit stage first or set model.finetuned")
    model, info = load_finetuned(src)
    if info.task != cfg.task:
        raise ConfigError(f"'{src}' is a {info.task} model, the config's task is {cfg.task}")
    task.model = model


def _plain(d: dict) -> dict:
    return {k: float(v) for k, v in d.items()}


def _write_json(path: Path, obj: dict) -> None:
    from geofm.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def best_epoch_scores(metrics_csv: Path, column: str) -> tuple[int | None, dict[str, float]]:
    """(epoch, its ``val/*`` scores) of the epoch with the highest ``column`` in a CSVLogger ``metrics.csv``."""
    import csv

    if not metrics_csv.is_file():
        return None, {}
    with open(metrics_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    if not rows:
        return None, {}
    best = max(rows, key=lambda r: float(r[column]))
    return int(float(best["epoch"])), {k: float(v) for k, v in best.items() if k.startswith("val/") and v != ""}


def read_epoch_metrics(metrics_csv: Path, column: str) -> list[tuple[int, float]]:
    """(epoch, value) of ``column`` from a Lightning CSVLogger ``metrics.csv`` (rows where it is set)."""
    import csv

    if not metrics_csv.is_file():
        return []
    out = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            v = row.get(column)
            if v not in (None, ""):
                out.append((int(float(row["epoch"])), float(v)))
    return out


# --------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file, or a bundled config by name: finetune/tiny_flood, finetune/sen1floods11, ...")
    p.add_argument("--stage", choices=STAGES, default="fit", help="what to run (default: fit)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.strategy=frozen")


def run(args: argparse.Namespace) -> int:
    cfg = load_finetune_config(args.config, args.overrides)
    cfg.trainer.progress_bar = True
    print(f"geofm finetune: {cfg.task} on {cfg.data.dataset}, strategy {cfg.optim.strategy}, "
          f"stage {args.stage} -> {run_dir_of(cfg)}", flush=True)
    out = run_finetune(cfg, args.stage)
    if args.stage in ("fit", "validate", "test"):
        metrics = json.loads((run_dir_of(cfg) / ("metrics.json" if args.stage == "fit" else out.name)).read_text())
        flat = metrics.get("test", metrics) if args.stage == "fit" else metrics
        key = main_metric(cfg.task)
        shown = {k: round(v, 4) for k, v in flat.items() if k.split("/")[-1].startswith((key, "aAcc", "mae", "psnr"))}
        print(json.dumps(shown, indent=1))
    print(f"wrote {out}")
    return 0


__all__ = ["FinetuneConfig", "build_datamodule", "build_task", "load_finetune_config", "read_epoch_metrics",
           "run_finetune", "to_dict"]
