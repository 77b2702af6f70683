"""MAE pretraining of Prithvi models on a chip store, with PyTorch Lightning.

Pieces:

* :class:`~geofm.tasks.pretrain_config.PretrainConfig` — the run's configuration and its checks
  (:mod:`geofm.tasks.pretrain_config`).
* :class:`~geofm.data.datamodule.ChipDataModule` — train/val loaders with an exact data position
  (:mod:`geofm.data.datamodule`).
* :class:`MAEPretrainTask` — the LightningModule: masked-patch MSE (nodata pixels excluded),
  AdamW (no weight decay on biases, norms, tokens, position embeddings), linear warmup then
  cosine decay per optimizer step. Masks come from per-chip noise seeded by (seed, epoch,
  chip), so they do not depend on the number of processes or on a restart.
* :func:`run_pretrain` — builds the Trainer (devices, precision, strategy, checkpoints, loggers
  are its business; strategies in :mod:`geofm.tasks.distributed`, callbacks in
  :mod:`geofm.tasks.callbacks`), fits, exports the MAE with :func:`geofm.models.save_pretrained`.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from geofm.config import save_config, to_dict
from geofm.data.datamodule import ChipDataModule, ChipDataSection, ChipLoader, split_slots
from geofm.errors import ConfigError, DataError
from geofm.runtime import quiet_engine_logs
from geofm.tasks.callbacks import Quicklook, ThroughputLogger, progress_callback
from geofm.tasks.distributed import CPUFSDPStrategy, SafeCheckpointIO, clip_gradients_for, make_strategy
from geofm.training import adamw, compile_module, decay_groups, lr_factor, resolve_compile
from geofm.tasks.pretrain_config import (
    PRECISIONS,
    PretrainConfig,
    PretrainModelSection,
    PretrainOptimSection,
    PretrainTrainerSection,
    check_config,
    load_pretrain_config,
    model_options,
    prepare_store,
)

log = logging.getLogger(__name__)

__all__ = ["PRECISIONS", "CPUFSDPStrategy", "ChipDataModule", "ChipDataSection", "ChipLoader", "MAEPretrainTask",
           "PretrainConfig", "PretrainModelSection", "PretrainOptimSection", "PretrainTrainerSection", "Quicklook",
           "ThroughputLogger",
           "build_task", "build_trainer", "check_config", "export", "load_pretrain_config", "lr_factor",
           "make_strategy", "model_options", "prepare_store", "resolve_resume", "run_pretrain", "split_slots",
           "to_dict"]


# =========================================================================== model
def _chip_noise(indices: torch.Tensor, n_tokens: int, seed: int, epoch: int) -> torch.Tensor:
    """(B, L) uniform noise, one seeded stream per chip: masks independent of batching and ranks."""
    out = torch.empty(len(indices), n_tokens)
    g = torch.Generator()
    for i, idx in enumerate(indices.tolist()):
        g.manual_seed(int(np.random.SeedSequence([seed, epoch + 1, int(idx)]).generate_state(1, np.uint64)[0] >> 1))
        out[i] = torch.rand(n_tokens, generator=g)
    return out


class MAEPretrainTask(pl.LightningModule):
    """Masked-autoencoder pretraining of a :class:`~geofm.models.PrithviMAE`.

    Batches are dicts from :class:`ChipDataModule`: ``image`` (B, C, T, H, W) normalized,
    ``valid`` (B, T, H, W), ``index`` (B,), and for TL models ``temporal_coords`` (B, T, 2)
    = (year, day of year) and ``location_coords`` (B, 2) = (lat, lon).
    """

    def __init__(self, model_name: str = "prithvi_tiny", model_overrides: dict | None = None,
                 checkpoint: str | None = None, mask_ratio: float = 0.75, optim: dict | None = None,
                 exclude_nodata: bool = True, seed: int = 0, compile: bool | str = "auto",
                 model_config: dict | None = None):
        super().__init__()
        from geofm.models import create_model

        self.model = create_model(model_name, checkpoint, **dict(model_overrides or {}))
        # model_config: what read_checkpoint/create_model(None, ckpt) need to rebuild the model
        self.save_hyperparameters({"model_name": model_name, "model_overrides": dict(model_overrides or {}),
                                   "checkpoint": checkpoint, "mask_ratio": mask_ratio, "optim": dict(optim or {}),
                                   "exclude_nodata": exclude_nodata, "seed": seed, "compile": compile,
                                   "model_config": self.model.config.to_dict()})
        self.optim = PretrainOptimSection(**(optim or {})) if not isinstance(optim, PretrainOptimSection) else optim
        self.mask_ratio = mask_ratio
        self.exclude_nodata = exclude_nodata
        self.seed = seed
        self.uses_coords = bool(self.model.config.coords_encoding)
        if resolve_compile(compile, "cpu" if not torch.cuda.is_available() else "cuda"):
            compile_module(self.model)

    # ---------------------------------------------------------------- forward
    def n_tokens(self, x: torch.Tensor) -> int:
        t, h, w = self.model.encoder.grid_of(x)
        return t * h * w

    def _step(self, batch: dict, epoch: int, return_pred: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = batch["image"]
        noise = _chip_noise(batch["index"].cpu(), self.n_tokens(x), self.seed, epoch).to(x.device)
        tc = batch.get("temporal_coords") if self.uses_coords else None
        lc = batch.get("location_coords") if self.uses_coords else None
        valid = batch["valid"][:, None] if self.exclude_nodata else None  # (B, 1, T, H, W)
        return self.model(x, self.mask_ratio, tc, lc, valid=valid, noise=noise, return_pred=return_pred)

    def forward(self, batch: dict, epoch: int = -1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, pred (B, L, u*p*q*C), mask (B, L)) for a batch, masks seeded by (seed, epoch, chip)."""
        return self._step(batch, epoch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # the global RNG (coordinate dropping) reseeded per (rank, epoch, batch): restarts replay it
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.global_rank, self.current_epoch,
                                                      batch_idx]).generate_state(1)[0]))
        loss, _, _ = self._step(batch, self.current_epoch, return_pred=False)  # prediction on masked tokens only
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(batch["index"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _, _ = self._step(batch, -1, return_pred=False)  # fixed masks: comparable across validations
        self.log("val/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=len(batch["index"]))
        return loss

    # ---------------------------------------------------------------- optimizer
    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by global norm (see :func:`geofm.tasks.distributed.clip_gradients_for`)."""
        clip_gradients_for(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def param_groups(self) -> list[dict]:
        """AdamW groups: weight decay on matrices only (not biases, norms, tokens, embeddings)."""
        return decay_groups(self.model, self.optim.weight_decay)

    def configure_optimizers(self):
        o = self.optim
        tr = self.trainer
        lr = o.lr
        if o.lr_base_batch:  # lr = base lr x effective batch / base batch (He et al. 2022)
            batch = tr.datamodule.cfg.batch_size if tr.datamodule is not None else 1
            lr = o.lr * batch * tr.accumulate_grad_batches * tr.world_size / o.lr_base_batch
            log.info("learning rate %.3g (base %.3g per %d samples, effective batch %d)", lr, o.lr, o.lr_base_batch,
                     batch * tr.accumulate_grad_batches * tr.world_size)
        # what geofm.train_step uses; fp16's GradScaler must unscale before clipping: no fused kernel there
        opt = adamw(self.param_groups(), lr=lr, betas=o.betas, weight_decay=o.weight_decay,
                    fused=str(tr.precision) != "16-mixed")
        per_epoch = math.ceil(tr.datamodule.batches_per_epoch() / tr.accumulate_grad_batches) \
            if tr.datamodule is not None else 0
        total = tr.max_steps if tr.max_steps > 0 else per_epoch * max(1, tr.max_epochs or 1)
        warmup = o.warmup_steps or int(round(o.warmup_epochs * per_epoch))
        min_ratio = o.min_lr / lr if lr > 0 else 0.0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, warmup, total, min_ratio, o.schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


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


def build_trainer(cfg: PretrainConfig, run_dir: Path, callbacks: Sequence[Callback] = (),
                  preloaded: tuple[str, object] | None = None) -> pl.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
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
        cbs.append(progress_callback(t.log_every))
    cbs.extend(callbacks)
    # one version_N folder per session: a resumed run adds version_1, ... and keeps the earlier logs
    loggers = [CSVLogger(run_dir, name="logs"), TensorBoardLogger(run_dir, name="tb")]
    quiet_engine_logs()  # Lightning reset its loggers to INFO when imported
    return pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=make_strategy(cfg.trainer.strategy),
        precision=t.precision, max_steps=t.max_steps, max_epochs=t.max_epochs if t.max_epochs else -1,
        accumulate_grad_batches=o.accumulate, gradient_clip_val=o.grad_clip,
        gradient_clip_algorithm="norm" if o.grad_clip else None,
        val_check_interval=val_every * o.accumulate if has_val else None,
        check_val_every_n_epoch=None if has_val else 1, limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=0, log_every_n_steps=t.log_every, callbacks=cbs, logger=loggers,
        enable_progress_bar=t.progress_bar, deterministic=t.deterministic, default_root_dir=run_dir,
        reload_dataloaders_every_n_epochs=1, use_distributed_sampler=False, enable_model_summary=False,
        plugins=[SafeCheckpointIO(preloaded)],
    )


def build_task(cfg: PretrainConfig) -> MAEPretrainTask:
    return MAEPretrainTask(model_name=cfg.model.name, model_overrides=dict(cfg.model.overrides),
                           checkpoint=cfg.model.checkpoint, mask_ratio=cfg.model.mask_ratio,
                           optim=to_dict(cfg.optim), exclude_nodata=cfg.data.exclude_nodata,
                           seed=cfg.trainer.seed, compile=cfg.trainer.compile if cfg.trainer.strategy != "fsdp" else False)


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

    from geofm.io import check_output_dir
    from geofm.models.checkpoints import load_torch_file
    from geofm.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # as geofm.train_step and the other entry points
    prepare_store(cfg)
    mopts = model_options(cfg)
    check_config(cfg)
    run_dir = Path(cfg.out_dir)
    check_output_dir(run_dir, "out_dir")
    ckpt_path = resolve_resume(cfg, run_dir)
    # a refused checkpoint fails here, before the run folder changes; Lightning's resume gets this read
    preloaded = (ckpt_path, load_torch_file(ckpt_path)) if ckpt_path is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    trainer = build_trainer(cfg, run_dir, callbacks, preloaded)
    del preloaded  # the Trainer's checkpoint IO holds it until the resume takes it
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
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # a resume
    log.info("pretraining %s -> %s%s", cfg.model.name, run_dir, f" (resuming {ckpt_path})" if ckpt_path else "")
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    if trainer.global_step == 0:
        raise DataError(f"no optimizer step was taken (no training batch from data.store '{cfg.data.store}'"
                        f"{f' with data.index {cfg.data.index!r}' if cfg.data.index else ''}): nothing exported")
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
