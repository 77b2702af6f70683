"""MAE pretraining of Prithvi models on a chip store, with PyTorch Lightning.

Pieces:

* :class:`PretrainConfig` — the run's configuration (YAML + ``section.key=value`` overrides,
  checked by :mod:`geofm.config`), see ``configs/pretrain/*.yaml``.
* :class:`ChipDataModule` — train/val :class:`~geofm.data.loader.ChipDataset` loaders. The fast
  path reads raw int16 chips in the workers and normalizes on the device
  (:meth:`~geofm.data.loader.ChipDataset.normalize_batch`). Its ``state_dict`` is the data
  position (epoch, batches consumed), saved in every checkpoint and restored on resume, so a
  resumed run sees exactly the samples the interrupted one had not yet seen.
* :class:`MAEPretrainTask` — the LightningModule: masked-patch MSE (nodata pixels excluded),
  AdamW (no weight decay on biases, norms, tokens, position embeddings), linear warmup then
  cosine decay per optimizer step. Masks come from per-chip noise seeded by (seed, epoch,
  chip), so they do not depend on the number of processes or on a restart.
* :func:`run_pretrain` — builds the Trainer (devices, precision, strategy, checkpoints, loggers
  are its business), fits, exports the MAE with :func:`geofm.models.save_pretrained`.

The Trainer owns devices, precision and the distributed strategy: ``trainer.strategy`` is
``auto`` (one process, or DDP when several devices), ``ddp`` or ``fsdp``. On CPU, FSDP runs
with the gloo backend through :class:`CPUFSDPStrategy` (Lightning's own check refuses CPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from geofm.config import load_config, save_config, to_dict
from geofm.errors import ConfigError, DataError

log = logging.getLogger(__name__)


# =========================================================================== configuration
PRECISIONS = ("32", "bf16-mixed", "16-mixed")


@dataclass
class ModelSection:
    """Which model: a preset name, option overrides, optional starting weights."""

    name: str = "prithvi_tiny"
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {img_size: 32, num_frames: 1}
    checkpoint: str | None = None  # start from these weights (any layout read_checkpoint reads)
    mask_ratio: float = 0.75


@dataclass
class DataSection:
    """Where the chips come from and how they are batched."""

    store: str = ""  # chip store path or URL (s3://...)
    storage_options: dict[str, Any] = field(default_factory=dict)
    build_sample_store: bool = False  # store missing -> build it from the bundled data/sample images
    index: str | None = None  # stratified sampling index (parquet/.npy from `geofm sample`)
    bands: list[int] | None = None  # band subset (indices into the store's bands)
    normalize: Literal["v1", "v2"] | None = None  # None: the model's norm_stats
    batch_size: int = 8  # per process
    num_workers: int = 0
    raw: bool = True  # int16 through the loader, normalized on the device (fast path)
    val_fraction: float = 0.05  # of the chips, held out (ignored when val_store is given)
    val_store: str | None = None
    seed: int = 0
    exclude_nodata: bool = True  # nodata pixels do not count in the loss


@dataclass
class OptimSection:
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
class TrainerSection:
    """What Lightning's Trainer gets."""

    max_steps: int = -1  # optimizer steps; -1: use max_epochs
    max_epochs: int | None = None
    devices: int | str = 1
    num_nodes: int = 1
    accelerator: str = "auto"  # cpu, gpu, auto
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    precision: str = "32"  # "32", "bf16-mixed" or "16-mixed"
    compile: bool = False  # torch.compile the model
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
    """A pretraining run (``geofm pretrain --config configs/pretrain/tiny.yaml``)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
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
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {list(PRECISIONS)}, got {t.precision!r}")
    if t.strategy == "fsdp" and t.compile:
        raise ConfigError("trainer.compile with trainer.strategy=fsdp is not supported here; use one of them")
    return attrs or {}


def prepare_store(cfg: PretrainConfig) -> None:
    """Build the sample store at ``data.store`` if asked (``data.build_sample_store``) and missing."""
    from geofm.data import store as chip_store

    d = cfg.data
    if d.build_sample_store and d.store and "://" not in d.store and not (Path(d.store) / chip_store.METADATA).exists():
        from geofm.data.sample_store import build_sample_store

        log.info("store %s not found: building it from the bundled sample data", d.store)
        build_sample_store(d.store)


# =========================================================================== data
class ChipLoader(torch.utils.data.DataLoader):
    """DataLoader over a :class:`ChipDataset` whose ``len`` counts the batches it really yields.

    With ``W`` workers each worker batches its own slice, so an epoch has
    sum_w ceil(n_w / B) batches, not ceil(n / B); Lightning needs the true count.
    """

    def __len__(self) -> int:
        ds = self.dataset
        n = len(ds)
        workers = max(1, self.num_workers)
        bounds = np.linspace(0, n, workers + 1).round().astype(int)
        return int(sum(-(-int(b - a) // self.batch_size) for a, b in zip(bounds[:-1], bounds[1:])))


def split_slots(store: str, index: str | None, fraction: float, seed: int,
                storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of the store's (or the index's) chip slots into (train, val), both sorted."""
    from geofm.data import store as chip_store
    from geofm.data.loader import read_index

    slots = read_index(index) if index is not None else chip_store.read_metadata(store, storage_options)["slot"]
    slots = np.asarray(slots, dtype=np.int64)
    n_val = int(round(len(slots) * fraction))
    if fraction > 0 and len(slots) > 1:
        n_val = min(max(n_val, 1), len(slots) - 1)
    perm = np.random.default_rng([seed, 12345]).permutation(len(slots))
    return np.sort(slots[perm[n_val:]]), np.sort(slots[perm[:n_val]])


class ChipDataModule(pl.LightningDataModule):
    """Train/val loaders over a chip store; checkpoints carry the train data position.

    Args:
        data: the ``data`` section of :class:`PretrainConfig`.
        normalize: ``v1``/``v2`` statistics (default: ``data.normalize``).
        return_coords: yield dates and lat/lon (temporal/location-aware models).
        drop_last: every process gets the same number of chips (required for DDP).
    """

    def __init__(self, data: DataSection, normalize: str | None = None, return_coords: bool = False,
                 drop_last: bool = True):
        super().__init__()
        self.cfg = data
        self.normalize = normalize or data.normalize or "v1"
        self.return_coords = return_coords
        self.drop_last = drop_last
        self.train_ds = self.val_ds = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches) from a checkpoint

    def _dataset(self, store: str, index, shuffle: bool):
        from geofm.data.loader import ChipDataset

        d = self.cfg
        return ChipDataset(store, index=index, bands=d.bands, normalize=self.normalize,
                           return_coords=self.return_coords, shuffle=shuffle, seed=d.seed,
                           drop_last=self.drop_last, storage_options=d.storage_options or None, raw=d.raw)

    def setup(self, stage: str | None = None) -> None:
        if self.train_ds is not None:
            return
        d = self.cfg
        if d.val_store is not None:
            train_idx = d.index
            val_idx = None
            val_store = d.val_store
        else:
            train_idx, val_idx = split_slots(d.store, d.index, d.val_fraction, d.seed, d.storage_options or None)
            val_store = d.store
        self.train_ds = self._dataset(d.store, train_idx, shuffle=True)
        if val_idx is None or len(val_idx):
            self.val_ds = self._dataset(val_store, val_idx, shuffle=False)

    def _loader(self, ds) -> ChipLoader:
        d = self.cfg
        return ChipLoader(ds, batch_size=d.batch_size, num_workers=d.num_workers, pin_memory=False,
                          persistent_workers=False, prefetch_factor=4 if d.num_workers else None)

    def train_dataloader(self) -> ChipLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        self.train_ds.set_epoch(epoch)
        if self._resume is not None and self._resume[0] == epoch:
            self.train_ds.resume(epoch, self._resume[1], self.cfg.batch_size)
            log.info("resuming epoch %d after %d batches", epoch, self._resume[1])
            self._resume = None
        return self._loader(self.train_ds)

    def batches_per_epoch(self) -> int:
        """Train batches per epoch on this process (without starting any loader)."""
        self.setup("fit")
        return len(self._loader(self.train_ds))

    def val_dataloader(self):
        return self._loader(self.val_ds) if self.val_ds is not None else []

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Raw int16 chips -> normalized float on the device (nodata -> 0.0001)."""
        if self.cfg.raw and batch["image"].dtype == torch.int16:
            batch["image"] = self.train_ds.normalize_batch(batch["image"], batch["valid"])
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The train data position: the epoch and the batches this process consumed in it."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(self.trainer.current_epoch), "batches": int(progress.processed),
                "batch_size": int(self.cfg.batch_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if state.get("batch_size", self.cfg.batch_size) != self.cfg.batch_size:
            raise ConfigError(f"cannot resume exactly: the checkpoint was written with data.batch_size="
                              f"{state['batch_size']}, the config says {self.cfg.batch_size}")
        self._resume = (int(state["epoch"]), int(state["batches"]))


# =========================================================================== model
def _chip_noise(indices: torch.Tensor, n_tokens: int, seed: int, epoch: int) -> torch.Tensor:
    """(B, L) uniform noise, one seeded stream per chip: masks independent of batching and ranks."""
    out = torch.empty(len(indices), n_tokens)
    g = torch.Generator()
    for i, idx in enumerate(indices.tolist()):
        g.manual_seed(int(np.random.SeedSequence([seed, epoch + 1, int(idx)]).generate_state(1, np.uint64)[0] >> 1))
        out[i] = torch.rand(n_tokens, generator=g)
    return out


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0, schedule: str = "cosine") -> float:
    """Learning-rate multiplier at optimizer step ``step``: linear warmup, then cosine to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class MAEPretrainTask(pl.LightningModule):
    """Masked-autoencoder pretraining of a :class:`~geofm.models.PrithviMAE`.

    Batches are dicts from :class:`ChipDataModule`: ``image`` (B, C, T, H, W) normalized,
    ``valid`` (B, T, H, W), ``index`` (B,), and for TL models ``temporal_coords`` (B, T, 2)
    = (year, day of year) and ``location_coords`` (B, 2) = (lat, lon).
    """

    def __init__(self, model_name: str = "prithvi_tiny", model_overrides: dict | None = None,
                 checkpoint: str | None = None, mask_ratio: float = 0.75, optim: dict | None = None,
                 exclude_nodata: bool = True, seed: int = 0, compile: bool = False,
                 model_config: dict | None = None):
        super().__init__()
        from geofm.models import create_model

        self.model = create_model(model_name, checkpoint, **dict(model_overrides or {}))
        # model_config: what read_checkpoint/create_model(None, ckpt) need to rebuild the model
        self.save_hyperparameters({"model_name": model_name, "model_overrides": dict(model_overrides or {}),
                                   "checkpoint": checkpoint, "mask_ratio": mask_ratio, "optim": dict(optim or {}),
                                   "exclude_nodata": exclude_nodata, "seed": seed, "compile": compile,
                                   "model_config": self.model.config.to_dict()})
        self.optim = OptimSection(**(optim or {})) if not isinstance(optim, OptimSection) else optim
        self.mask_ratio = mask_ratio
        self.exclude_nodata = exclude_nodata
        self.seed = seed
        self.uses_coords = bool(self.model.config.coords_encoding)
        if compile:
            self.model.compile()

    # ---------------------------------------------------------------- forward
    def n_tokens(self, x: torch.Tensor) -> int:
        t, h, w = self.model.encoder.grid_of(x)
        return t * h * w

    def _step(self, batch: dict, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch["image"]
        noise = _chip_noise(batch["index"].cpu(), self.n_tokens(x), self.seed, epoch).to(x.device)
        tc = batch.get("temporal_coords") if self.uses_coords else None
        lc = batch.get("location_coords") if self.uses_coords else None
        valid = batch["valid"][:, None] if self.exclude_nodata else None  # (B, 1, T, H, W)
        return self.model(x, self.mask_ratio, tc, lc, valid=valid, noise=noise)

    def forward(self, batch: dict, epoch: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, pred (B, L, u*p*q*C), mask (B, L)) for a batch, masks seeded by (seed, epoch, chip)."""
        return self._step(batch, epoch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # the global RNG (coordinate dropping) reseeded per (rank, epoch, batch): restarts replay it
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.global_rank, self.current_epoch,
                                                      batch_idx]).generate_state(1)[0]))
        loss, _, _ = self._step(batch, self.current_epoch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["index"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._step(batch, -1)  # fixed masks: comparable across validations
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(batch["index"]))
        return loss

    # ---------------------------------------------------------------- optimizer
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm; under FSDP with FSDP's own (sharded) ``clip_grad_norm_``."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel):
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def param_groups(self) -> list[dict]:
        """AdamW groups: weight decay on matrices only (not biases, norms, tokens, embeddings)."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            if p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": self.optim.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self):
        o = self.optim
        tr = self.trainer
        lr = o.lr
        if o.lr_base_batch:  # lr = base lr x effective batch / base batch (He et al. 2022)
            batch = tr.datamodule.cfg.batch_size if tr.datamodule is not None else 1
            lr = o.lr * batch * tr.accumulate_grad_batches * tr.world_size / o.lr_base_batch
            log.info("learning rate %.3g (base %.3g per %d samples, effective batch %d)", lr, o.lr, o.lr_base_batch,
                     batch * tr.accumulate_grad_batches * tr.world_size)
        opt = torch.optim.AdamW(self.param_groups(), lr=lr, betas=tuple(o.betas))
        per_epoch = math.ceil(tr.datamodule.batches_per_epoch() / tr.accumulate_grad_batches) \
            if tr.datamodule is not None else 0
        total = tr.max_steps if tr.max_steps > 0 else per_epoch * max(1, tr.max_epochs or 1)
        warmup = o.warmup_steps or int(round(o.warmup_epochs * per_epoch))
        min_ratio = o.min_lr / lr if lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, warmup, total, min_ratio, o.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


# =========================================================================== callbacks
class ThroughputLogger(Callback):
    """Logs learning rate, samples/s and tokens/s (all processes together) every optimizer step."""

    def __init__(self):
        self._t = None
        self._samples = 0
        self._tokens = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._t is None:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        b = len(batch["index"]) * trainer.world_size
        self._samples += b
        self._tokens += b * pl_module.n_tokens(batch["image"])
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        dt = max(now - self._t, 1e-9)
        opt = trainer.optimizers[0]
        pl_module.log_dict({"train/lr": opt.param_groups[0]["lr"], "train/samples_per_s": self._samples / dt,
                            "train/tokens_per_s": self._tokens / dt}, on_step=True, on_epoch=False)
        self._t, self._samples, self._tokens = now, 0, 0


class Quicklook(Callback):
    """Every ``every`` optimizer steps: PNG of input / masked input / reconstruction for a few chips."""

    def __init__(self, out_dir: Path, every: int, n_chips: int = 4):
        self.out_dir = Path(out_dir)
        self.every = every
        self.n_chips = n_chips
        self._batch = None
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._batch is None:
            self._batch = {k: v[: self.n_chips].detach().clone() if torch.is_tensor(v) else v for k, v in batch.items()}
        step = trainer.global_step
        if step % self.every == 0 and step != self._last and step > 0:  # on every rank: FSDP forwards are collective
            self._last = step
            self.save(pl_module, step)

    @torch.no_grad()
    def save(self, pl_module: MAEPretrainTask, step: int) -> Path | None:
        from geofm.bands import norm_stats
        from geofm.viz import rgb_stretch, save_panels, stretch_limits

        model = pl_module.model
        was_training = model.training
        model.eval()
        batch = self._batch
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = pl_module.trainer.strategy.model
        runner = wrapped if isinstance(wrapped, FullyShardedDataParallel) else pl_module
        loss, pred, mask = runner(batch, -1)
        if not pl_module.trainer.is_global_zero:
            model.train(was_training)
            return None
        x = batch["image"].float()
        recon = model.reconstruct(x, pred, mask).float()
        pm = model.unpatchify(mask[:, :, None].expand(-1, -1, pred.shape[-1]).float(), x.shape)[:, 0] > 0  # (B,T,H,W)
        model.train(was_training)
        mean, std = (np.asarray(v, np.float32)[:, None, None] for v in norm_stats(model.config.norm_stats))
        dm = pl_module.trainer.datamodule
        if dm is not None and dm.train_ds is not None and dm.train_ds.mean is not None:  # the data's statistics
            mean, std = dm.train_ds.mean[:, :, :, 0], dm.train_ds.std[:, :, :, 0]
        panels = []
        t = x.shape[2] - 1  # last frame
        for i in range(x.shape[0]):
            img = x[i, :, t].cpu().numpy() * std + mean  # (C, H, W) reflectance x10000
            rec = recon[i, :, t].cpu().numpy() * std + mean
            valid = batch["valid"][i, t].cpu().numpy()
            limits = stretch_limits(img, valid=valid)
            rgb = rgb_stretch(img, limits=limits, valid=valid)
            masked = rgb.copy()
            masked[pm[i, t].cpu().numpy()] = 0.5
            panels += [(f"chip {int(batch['index'][i])}: input", rgb), ("masked", masked),
                       ("reconstruction", rgb_stretch(rec, limits=limits))]
        path = self.out_dir / f"step{step:07d}.png"
        save_panels(path, panels, ncols=3, suptitle=f"step {step}: masked-patch MSE {float(loss):.4f} (normalized)")
        return path


# =========================================================================== strategies
def make_strategy(cfg: PretrainConfig):
    """The Trainer's strategy: "auto", DDP (gloo on CPU, nccl on GPU) or FSDP (also on CPU, gloo)."""
    s = cfg.trainer.strategy
    if s == "ddp":
        return DDPStrategy(find_unused_parameters=False)
    if s == "fsdp":
        from geofm.models.vit import Block

        return CPUFSDPStrategy(auto_wrap_policy={Block}, sharding_strategy="FULL_SHARD",
                               state_dict_type="full")
    return "auto"


@contextmanager
def _cpu_full_state_dict(strategy):
    """On CPU, gather full state dicts without ``offload_to_cpu`` (which crashes when params already are on CPU).

    Lightning's FSDP strategy builds its full-state-dict context in a module-level helper; it is
    swapped for the duration of the call.
    """
    import lightning.pytorch.strategies.fsdp as lfsdp

    if strategy.root_device.type != "cpu":
        yield
        return

    def ctx(module, world_size, rank0_only=True):
        from torch.distributed.fsdp import FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.api import FullOptimStateDictConfig

        return FSDP.state_dict_type(module=module, state_dict_type=StateDictType.FULL_STATE_DICT,
                                    state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False,
                                                                                     rank0_only=rank0_only))

    saved = lfsdp._get_full_state_dict_context
    lfsdp._get_full_state_dict_context = ctx
    try:
        yield
    finally:
        lfsdp._get_full_state_dict_context = saved


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, also with ``accelerator="cpu"`` (gloo): torch FSDP runs on CPU.

    Lightning refuses FSDP without a GPU (a check on the exact class, which a subclass passes);
    torch's FSDP looks for an accelerator unless ``device_id`` names the CPU; and full state
    dicts are gathered without ``offload_to_cpu``, which crashes when parameters are on the CPU.
    On GPUs it behaves exactly like ``FSDPStrategy``.
    """

    def _setup_model(self, model):
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy,
                                        device_id=torch.device("cpu"), **self.kwargs)

    def lightning_module_state_dict(self):
        with _cpu_full_state_dict(self):
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with _cpu_full_state_dict(self):
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None):
        with _cpu_full_state_dict(self):
            return super().load_checkpoint(checkpoint_path, weights_only)


# =========================================================================== the run
def resolve_resume(cfg: PretrainConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from: ``trainer.resume`` as a path, or with ``auto`` the newest of
    ``checkpoints/last.ckpt`` and Lightning's SLURM pre-emption checkpoints (``hpc_ckpt_*.ckpt``)."""
    r = cfg.trainer.resume
    if r is None:
        return None
    if r == "auto":
        found = [p for p in [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None
    if not Path(r).is_file():
        raise ConfigError(f"trainer.resume '{r}' does not exist (use 'auto', a .ckpt path or null)")
    return r


def build_trainer(cfg: PretrainConfig, run_dir: Path, callbacks: Sequence[Callback] = ()) -> pl.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t, o = cfg.trainer, cfg.optim
    ckpt_dir = run_dir / "checkpoints"
    val_every = t.val_every or t.checkpoint_every
    cbs: list[Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                        every_n_train_steps=t.checkpoint_every, save_top_k=1, save_last="link"),
        ThroughputLogger(),
    ]
    has_val = cfg.data.val_fraction > 0 or cfg.data.val_store is not None
    if has_val:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val/loss", mode="min",
                                   save_top_k=1, enable_version_counter=False))
    if t.quicklook_every:
        cbs.append(Quicklook(run_dir / "quicklooks", t.quicklook_every, t.quicklook_chips))
    if t.progress_bar:
        cbs.append(TQDMProgressBar(refresh_rate=max(1, t.log_every // 2)))
    cbs.extend(callbacks)
    # one version_N folder per session: a resumed run adds version_1, ... and keeps the earlier logs
    loggers = [CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")]
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=make_strategy(cfg),
        precision=t.precision, max_steps=t.max_steps, max_epochs=t.max_epochs if t.max_epochs else -1,
        accumulate_grad_batches=o.accumulate, gradient_clip_val=o.grad_clip,
        gradient_clip_algorithm="norm" if o.grad_clip else None,
        val_check_interval=val_every * o.accumulate if has_val else None,
        check_val_every_n_epoch=None if has_val else 1, limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every, callbacks=cbs, logger=loggers,
        enable_progress_bar=t.progress_bar, deterministic=t.deterministic, default_root_dir=run_dir,
        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, enable_model_summary=False,
    )


def build_task(cfg: PretrainConfig) -> MAEPretrainTask:
    return MAEPretrainTask(model_name=cfg.model.name, model_overrides=dict(cfg.model.overrides),
                           checkpoint=cfg.model.checkpoint, mask_ratio=cfg.model.mask_ratio,
                           optim=to_dict(cfg.optim), exclude_nodata=cfg.data.exclude_nodata,
                           seed=cfg.trainer.seed, compile=cfg.trainer.compile)


def run_pretrain(cfg: PretrainConfig, callbacks: Sequence[Callback] = (),
                 datamodule: pl.LightningDataModule | None = None) -> Path:
    """Pretrain as ``cfg`` says; returns the run directory.

    The run directory (``cfg.out_dir``) holds ``config.yaml`` (resolved), ``checkpoints/``
    (``last.ckpt``, ``best.ckpt``, ``stepNNNNNNN.ckpt``), ``logs/metrics.csv``, ``tb/``
    (TensorBoard), ``quicklooks/*.png`` and ``export/`` (``model.safetensors`` +
    ``config.json``: ``create_model(None, checkpoint=run_dir / "export" / "model.safetensors")``).
    With ``trainer.resume: auto`` a rerun continues from ``checkpoints/last.ckpt`` exactly.
    ``callbacks`` are added to the Trainer's; ``datamodule`` replaces the :class:`ChipDataModule`
    (benchmarks feed in-memory tensors this way).
    """
    from lightning.fabric.utilities.seed import seed_everything

    prepare_store(cfg)
    mopts = model_options(cfg)
    check_config(cfg)
    run_dir = Path(cfg.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resolve_resume(cfg, run_dir)
    seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    trainer = build_trainer(cfg, run_dir, callbacks)
    if trainer.is_global_zero:
        save_config(cfg, run_dir / "config.yaml")
    dm = datamodule or ChipDataModule(cfg.data, normalize=cfg.data.normalize or mopts["norm_stats"],
                        return_coords=bool(mopts["coords_encoding"]), drop_last=True)
    task = build_task(cfg)
    # the data position is restored by ChipDataModule (state_dict), not by a stateful DataLoader
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval")  # per epoch, small stores
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")  # lightning vs torch 2.13
    log.info("pretraining %s -> %s%s", cfg.model.name, run_dir, f" (resuming {ckpt_path})" if ckpt_path else "")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    state = trainer.strategy.lightning_module_state_dict()  # collective under FSDP (full state dict)
    if trainer.is_global_zero:
        export(task, state, run_dir / "export", cfg.model.name)
    trainer.strategy.barrier("export")
    return run_dir


def export(task: MAEPretrainTask, state: dict[str, torch.Tensor], out: Path, name: str) -> Path:
    """Write the trained MAE (encoder + decoder) as ``model.safetensors`` + ``config.json``.

    ``state`` is the LightningModule's full state dict (``model.*`` keys), gathered by the strategy.
    """
    from geofm.models import PrithviMAE, save_pretrained

    model = PrithviMAE(task.model.config)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    return save_pretrained(model, out, name=name)


# =========================================================================== command line
def add_arguments(p) -> None:
    p.add_argument("--config", required=True, help="YAML file, e.g. configs/pretrain/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. trainer.max_steps=100 optim.lr=1e-4 data.batch_size=32")


def run(args) -> int:
    cfg = load_pretrain_config(args.config, args.overrides)
    run_dir = run_pretrain(cfg)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0:
        print(f"run directory: {run_dir}")
        print(f"  exported MAE: {run_dir / 'export'} (model.safetensors + config.json)")
        print(f"  metrics: {run_dir / 'logs'}/version_*/metrics.csv; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return 0
