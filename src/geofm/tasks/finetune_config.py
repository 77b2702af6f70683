"""The configuration of a fine-tuning run and its checks before any work (no torch, no Lightning).

:class:`FinetuneConfig` is read from YAML + ``section.key=value`` overrides, checked by
:mod:`geofm.config` (bundled: ``geofm/configs/finetune/*.yaml``) and by :func:`check_values`, before any data
is read. Paths in a config may start with ``{sample}`` (the bundled sample data), ``{shared}``
(``$GEOFM_SHARED_DATA``, else ``../shared/data``: see :mod:`geofm.resources`) or ``{run_dir}``.

Strategies: ``full`` (every weight trains, encoder from the checkpoint), ``frozen`` (the encoder's
weights are fixed and it stays in eval mode; neck/head or MAE decoder train), ``scratch`` (same
network, random initialisation, every weight trains).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geofm.config import load_config
from geofm.errors import ConfigError
from geofm.resources import sample_dir, shared_dir

Strategy = Literal["full", "frozen", "scratch"]  # fine-tune all, train only the new layers, random init
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)

STAGES = ("fit", "validate", "test", "predict")
Scheduler = Literal["cosine", "poly", "constant"]  # learning rate after warmup, per optimizer step
SCHEDULERS: tuple[str, ...] = typing.get_args(Scheduler)


@dataclass
class FinetuneDataSection:
    dataset: Literal["sen1floods11", "burn_scars", "crops", "imputation"] = "sen1floods11"
    root: str | None = None  # segmentation datasets: the dataset folder
    split_dir: str | None = None  # Sen1Floods11 split CSV folder (default: searched under root)
    tile_size: int | None = None  # split chips into tiles (all splits)
    crop_size: int | None = None  # random training crops
    eval_tile_size: int | None = None  # tiles for val/test (default: tile_size)
    batch_size: int = 4
    eval_batch_size: int | None = None
    num_workers: int = 0
    label_fraction: float = 1.0
    split_seed: int = 0  # seeds the splits of datasets without official ones (fixed across runs)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: bool = True
    mean: list[float] | None = None  # per band, reflectance x10000 (default: the dataset's)
    std: list[float] | None = None
    predict_split: str = "test"
    # imputation only (see docs/finetuning.md, "Cloud-gap imputation")
    # one entry per series: a folder / glob of per-date files, or {inputs: ..., stacked_fmask_band: ...,
    # fmask_kind: ..., stacked_bands: ...} with options of its own
    series: list[str | dict[str, Any]] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)  # T x 6-band stacks, one series each
    stack_frames: int = 3  # T of each stack
    store: str | None = None  # a geofm chip store: each chip is a series
    stacked_bands: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6])  # 1-based bands of each file
    stacked_fmask_band: int | None = None  # 1-based Fmask band (else a sidecar X.Fmask.tif, if any)
    fmask_kind: Literal["hls", "cfmask"] = "hls"
    equal_spacing: bool = False  # take undated series as equally spaced in time (else they are refused)
    fmask: list[str] = field(default_factory=list)  # gap masks: 1-band HLS Fmask files
    own_masks: bool = True  # also the series' own partly cloudy frames' cloud masks
    generate: bool = False  # synthesize an HLS series + store under {run_dir}/data (demos, tests)
    generate_size: int = 128
    # a real image made into two series with known truth under {run_dir}/data: its top half trains,
    # a 64 x 128 px part of its bottom half is added to the test series (bands 2-7: the HLS bands)
    generate_from_image: str | None = None
    generate_days: list[int] | None = None  # days of its dates from the first (default: 6 dates, 16 days apart)
    generate_test_days: list[int] | None = None  # the same for its held-out part (default: generate_days)
    samples_per_epoch: int = 8  # random samples per series and epoch
    skip_dates: int = 0  # a training window takes T of T + k consecutive dates, k random in 0..skip_dates
    gap_frames: list[int] | None = None  # dates (in the T-window) that may get the gap (default: any)
    min_hidden: float = 0.02
    val_series: list[str | dict[str, Any]] = field(default_factory=list)  # default: the training series
    test_series: list[str | dict[str, Any]] = field(default_factory=list)  # held out (default: val_series)
    test_masks: list[str] | None = None  # default: data.fmask
    test_frames: list[int] | None = None  # dates of each window that get the mask (default: the middle one)
    test_stride: int | None = None  # dates between evaluation windows (default: T)
    val_samples: int | None = 64  # evenly spaced samples of the validation protocol (None: all)


@dataclass
class FinetuneModelSection:
    name: str | None = "prithvi_eo_v1_100m"  # preset; null: architecture from the checkpoint
    checkpoint: str | None = None  # official checkpoint, HF folder, geofm pretraining export, or null
    finetuned: str | None = None  # a fine-tuned export to validate/test/predict with (default: run_dir/export)
    options: dict[str, Any] = field(default_factory=dict)  # encoder option overrides (embed_dim, img_size ...)
    neck: Literal["reference", "upernet"] = "reference"
    neck_channels: list[int] | None = None  # reference: width per x2 step; upernet: [width]
    layers: list[int] | None = None  # upernet: the 4 encoder blocks
    head_channels: int = 64
    head_convs: int = 1
    dropout: float = 0.1
    residual: Literal["linear", "none"] = "linear"  # imputation: correction of the temporal baseline, or none
    patch_threshold: float = 0.0  # imputation, residual none: hide a patch when its hidden fraction is above


@dataclass
class FinetuneOptimSection:
    strategy: Strategy = "full"
    loss: Literal["ce", "dice", "ce+dice", "l1", "l2"] = "ce"
    class_weights: list[float] | None = None
    # imputation: weight of the fill's distance to the temporal baseline in the loss (the correction moves a
    # pixel off the baseline only where more than (1 + w) / 2 of the training evidence agrees on the direction)
    baseline_anchor: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 0.05
    scheduler: Scheduler = "cosine"
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0


@dataclass
class FinetuneTrainerSection:
    max_epochs: int = 50
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: Literal["auto", "ddp"] = "auto"  # several devices: DDP (gloo on CPU), see geofm.tasks.distributed
    precision: str = "32-true"
    log_every_n_steps: int = 10
    check_val_every_n_epoch: int = 1
    limit_train_batches: float | None = None
    gradient_clip_val: float | None = None
    deterministic: bool = False
    progress_bar: bool = False


@dataclass
class FinetunePredictSection:
    quicklooks: int = 8  # PNG quicklooks written (GeoTIFFs are written for every sample)


@dataclass
class FinetuneConfig:
    task: Literal["segmentation", "imputation"] = "segmentation"
    name: str = "finetune"
    run_dir: str = "outputs/finetune/{name}"
    seed: int = 0
    data: FinetuneDataSection = field(default_factory=FinetuneDataSection)
    model: FinetuneModelSection = field(default_factory=FinetuneModelSection)
    optim: FinetuneOptimSection = field(default_factory=FinetuneOptimSection)
    trainer: FinetuneTrainerSection = field(default_factory=FinetuneTrainerSection)
    predict: FinetunePredictSection = field(default_factory=FinetunePredictSection)


def load_finetune_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Read and check a fine-tuning YAML (``section.key=value`` overrides applied)."""
    cfg = load_config(FinetuneConfig, path, list(overrides))
    if cfg.task == "imputation" and cfg.data.dataset != "imputation":
        raise ConfigError(f"task 'imputation' needs data.dataset 'imputation', got {cfg.data.dataset!r} ({path})")
    if cfg.task == "segmentation" and cfg.data.dataset == "imputation":
        raise ConfigError(f"data.dataset 'imputation' needs task 'imputation' ({path})")
    seg_loss, imp_loss = ("ce", "dice", "ce+dice"), ("l1", "l2")
    if cfg.optim.loss not in (seg_loss if cfg.task == "segmentation" else imp_loss):
        raise ConfigError(f"optim.loss {cfg.optim.loss!r} does not fit task {cfg.task!r} in {path}")
    check_values(cfg)
    return cfg


def check_values(cfg: FinetuneConfig) -> None:
    """Ranges of the numeric options and the accelerator, before any data is read (:class:`ConfigError`)."""
    from geofm.runtime import check_accelerator

    d, t = cfg.data, cfg.trainer
    if not 0.0 < d.label_fraction <= 1.0:
        raise ConfigError(f"data.label_fraction is the fraction of training labels used and must be in (0, 1], "
                          f"got {d.label_fraction}")
    for name, value in (("data.batch_size", d.batch_size), ("data.eval_batch_size", d.eval_batch_size),
                        ("data.tile_size", d.tile_size), ("data.crop_size", d.crop_size),
                        ("data.eval_tile_size", d.eval_tile_size), ("trainer.max_epochs", t.max_epochs),
                        ("trainer.log_every_n_steps", t.log_every_n_steps),
                        ("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch)):
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
    for name, value in (("data.val_fraction", d.val_fraction), ("data.test_fraction", d.test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if d.val_fraction + d.test_fraction >= 1.0:
        raise ConfigError(f"data.val_fraction + data.test_fraction must leave training chips, got "
                          f"{d.val_fraction} + {d.test_fraction}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr must be > 0, got {cfg.optim.lr}")
    if not 0.0 <= cfg.optim.baseline_anchor < 1.0:
        raise ConfigError(f"optim.baseline_anchor must be in [0, 1), got {cfg.optim.baseline_anchor}")
    if d.dataset != "imputation":
        root = resolve_path(d.root)
        if root is None:
            raise ConfigError(f"data.root is required: the {d.dataset} dataset folder")
        if not Path(root).is_dir():
            raise ConfigError(f"data.root '{root}' is not a folder: expected the {d.dataset} dataset there")
    check_accelerator(t.accelerator)


def resolve_path(value: str | None, run_dir: Path | None = None) -> str | None:
    """Expand ``{sample}``, ``{shared}`` and ``{run_dir}`` in a configured path."""
    if value is None:
        return None
    out = value.replace("{sample}", str(sample_dir())).replace("{shared}", str(shared_dir()))
    if run_dir is not None:
        out = out.replace("{run_dir}", str(run_dir))
    return out


def run_dir_of(cfg: FinetuneConfig) -> Path:
    return Path(resolve_path(cfg.run_dir.replace("{name}", cfg.name)))


__all__ = ["SCHEDULERS", "STAGES", "STRATEGIES", "FinetuneConfig", "FinetuneDataSection", "FinetuneModelSection",
           "FinetuneOptimSection", "FinetunePredictSection", "FinetuneTrainerSection", "check_values",
           "load_finetune_config", "resolve_path", "run_dir_of"]
