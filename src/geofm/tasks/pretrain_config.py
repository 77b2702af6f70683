"""The configuration of a pretraining run and its checks before any work (no torch, no Lightning).

:class:`PretrainConfig` is read from YAML + ``section.key=value`` overrides, checked by
:mod:`geofm.config` (bundled: ``geofm/configs/pretrain/*.yaml``); :func:`check_config` checks it against its
store(s) and model before anything is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geofm.config import load_config
from geofm.data.loader_config import ChipDataSection
from geofm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass
class PretrainModelSection:
    """Which model: a preset name, option overrides, optional starting weights."""

    name: str = "prithvi_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {img_size: 32, num_frames: 1}
    checkpoint: str | None = None  # start from these weights (any layout read_checkpoint reads)
    mask_ratio: float = 0.75


@dataclass
class PretrainOptimSection:
    """AdamW + linear warmup + cosine decay (per optimizer step)."""

    lr: float = 1.5e-4
    lr_base_batch: int | None = None  # MAE rule: lr is per this many samples, scaled by the effective batch
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # used when warmup_steps is 0
    min_lr: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = None  # max gradient norm
    accumulate: int = 1  # gradient accumulation (batches per optimizer step)


@dataclass
class PretrainTrainerSection:
    """What Lightning's Trainer gets."""

    max_steps: int = -1  # optimizer steps; -1: use max_epochs
    max_epochs: int | None = None
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"  # cpu, gpu, auto
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    precision: str = "32"  # "32", "bf16-mixed" or "16-mixed"
    compile: bool | Literal["auto"] = "auto"  # torch.compile the model; auto: where measured to win (geofm.training)
    deterministic: bool = False
    seed: int = 0
    checkpoint_every: int = 100  # optimizer steps between checkpoints (last + best by val loss)
    val_every: int | None = None  # optimizer steps between validations (default: checkpoint_every)
    log_every: int = 10
    quicklook_every: int = 0  # steps between reconstruction PNGs (0: none)
    quicklook_chips: int = 4
    progress_bar: bool = True
    resume: str | None = "auto"  # "auto": <out_dir>/checkpoints/last.ckpt if present; a path; null: fresh


@dataclass
class PretrainConfig:
    """A pretraining run (``geofm pretrain --config pretrain/tiny``)."""

    model: PretrainModelSection = field(default_factory=PretrainModelSection)
    data: ChipDataSection = field(default_factory=ChipDataSection)
    optim: PretrainOptimSection = field(default_factory=PretrainOptimSection)
    trainer: PretrainTrainerSection = field(default_factory=PretrainTrainerSection)
    out_dir: str = "outputs/pretrain/run"


def load_pretrain_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a pretraining YAML with ``section.key=value`` overrides (strict: see :mod:`geofm.config`)."""
    return load_config(PretrainConfig, path, overrides)

# =========================================================================== checks before any work
def model_options(cfg: PretrainConfig) -> dict[str, Any]:
    """The model's resolved hyperparameters (preset + overrides), ConfigError if invalid."""
    from geofm.models.presets import build_config

    return build_config(cfg.model.name, None, **dict(cfg.model.overrides)).to_dict()


def check_config(cfg: PretrainConfig) -> dict[str, Any]:
    """Check a config against its store(s) and model before any work; returns the store attributes.

    Raises :class:`ConfigError` for a missing store, bands or chip sizes the model cannot take,
    impossible schedules.
    """
    from geofm.data import store as chip_store

    t, d, o = cfg.trainer, cfg.data, cfg.optim
    if not d.store:
        raise ConfigError("data.store is required: the chip store path or URL (see `geofm ingest`)")
    if t.max_steps <= 0 and not t.max_epochs:
        raise ConfigError("set trainer.max_steps (> 0) or trainer.max_epochs")
    for name, value in (("data.batch_size", d.batch_size), ("optim.accumulate", o.accumulate),
                        ("trainer.checkpoint_every", t.checkpoint_every), ("trainer.log_every", t.log_every)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if not 0.0 <= cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio must be in [0, 1), got {cfg.model.mask_ratio}")
    mopts = model_options(cfg)
    if cfg.model.checkpoint is not None:
        from geofm.errors import CheckpointError
        from geofm.models.checkpoints import resolve_path

        try:
            resolve_path(cfg.model.checkpoint)
        except (CheckpointError, OSError) as e:
            raise ConfigError(f"model.checkpoint '{cfg.model.checkpoint}' cannot be found: {e}") from e
    attrs = None
    for key, url in (("data.store", d.store), ("data.val_store", d.val_store)):
        if url is None:
            continue
        loc = chip_store.as_location(url, d.storage_options or None)
        try:
            a = chip_store.store_attrs(loc)
            if not loc.exists(chip_store.METADATA):
                raise DataError(f"'{url}' has no {chip_store.METADATA}: its ingest did not finish")
        except (DataError, OSError) as e:
            raise ConfigError(f"{key} '{url}' is not a usable chip store: {e}") from e
        n_store = len(a["bands"])
        bands = d.bands if d.bands is not None else list(range(n_store))
        if any(b < 0 or b >= n_store for b in bands):
            raise ConfigError(f"data.bands {bands} out of range for {key} '{url}' with {n_store} bands {a['bands']}")
        if len(bands) != mopts["in_chans"]:
            raise ConfigError(f"model {cfg.model.name} expects {mopts['in_chans']} bands (in_chans), but {key} "
                              f"'{url}' gives {len(bands)} ({[a['bands'][b] for b in bands]}); set data.bands "
                              f"or model.overrides.in_chans")
        tub, ph, pw = mopts["patch_size"]
        if a["chip_size"] % ph or a["chip_size"] % pw:
            raise ConfigError(f"{key} '{url}' has {a['chip_size']} px chips, not a multiple of the model's "
                              f"patch size {ph}")
        if a["frames"] % tub:
            raise ConfigError(f"{key} '{url}' has {a['frames']} frames, not a multiple of the tubelet size {tub}")
        if a["frames"] != mopts["num_frames"] or a["chip_size"] != mopts["img_size"]:
            log.info("store chips (T=%d, %d px) differ from the model's (T=%d, %d px): position embeddings "
                     "are interpolated", a["frames"], a["chip_size"], mopts["num_frames"], mopts["img_size"])
        attrs = attrs or a
    if d.index is not None and not Path(d.index).is_file():
        raise ConfigError(f"data.index '{d.index}' does not exist")
    check_train_chips(cfg)
    from geofm.runtime import check_accelerator

    check_accelerator(t.accelerator)
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {list(PRECISIONS)}, got {t.precision!r}")
    if t.strategy == "fsdp" and t.compile is True:
        raise ConfigError("trainer.compile with trainer.strategy=fsdp is not supported here; use one of them")
    return attrs or {}


def check_train_chips(cfg: PretrainConfig) -> int:
    """Training chips (after the validation split) fill at least one batch; returns their count.

    An empty index or a store whose chips were all filtered at ingest would train 0 steps and
    export an untrained model: a :class:`ConfigError` instead.
    """
    import numpy as np

    from geofm.data import store as chip_store
    from geofm.data.loader import read_index

    d = cfg.data
    try:
        if d.index is not None:
            slots = read_index(d.index)
            known = chip_store.read_metadata(d.store, d.storage_options or None)["slot"]
            unknown = np.setdiff1d(slots, known)
            if len(unknown):
                raise ConfigError(f"data.index '{d.index}' names {len(unknown)} chip slot(s) not in data.store "
                                  f"'{d.store}' (e.g. {int(unknown[0])}): was it sampled from another store?")
        else:
            slots = chip_store.read_metadata(d.store, d.storage_options or None)["slot"]
    except DataError as e:
        raise ConfigError(f"data.index '{d.index}': {e}" if d.index else f"data.store '{d.store}': {e}") from e
    n = len(slots)
    n_train = n if d.val_store is not None else n - (min(max(round(n * d.val_fraction), 1), n - 1)
                                                     if d.val_fraction > 0 and n > 1 else 0)
    if n_train < d.batch_size:
        source = f"data.index '{d.index}'" if d.index else f"data.store '{d.store}'"
        raise ConfigError(f"{source} gives {n_train} training chip(s) ({n} in all), fewer than one batch "
                          f"(data.batch_size={d.batch_size}): nothing would be trained")
    return n_train


def prepare_store(cfg: PretrainConfig) -> None:
    """Build the sample store at ``data.store`` if asked (``data.build_sample_store``) and missing."""
    from geofm.data import store as chip_store

    d = cfg.data
    if d.build_sample_store and d.store and "://" not in d.store and not (Path(d.store) / chip_store.METADATA).exists():
        from geofm.data.sample_store import build_sample_store

        log.info("store %s not found: building it from the bundled sample data", d.store)
        build_sample_store(d.store)
