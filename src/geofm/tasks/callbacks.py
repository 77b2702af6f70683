"""Training callbacks shared by the tasks: throughput logging, MAE reconstruction quicklooks, progress lines."""

from __future__ import annotations

import time
from pathlib import Path
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks.progress import ProgressBar


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
    def save(self, pl_module: pl.LightningModule, step: int) -> Path | None:
        """PNG of the cached batch; ``pl_module`` is the MAE pretraining task (``model`` a PrithviMAE)."""
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


class PlainProgressBar(ProgressBar):
    """Lightning's progress display as plain lines, for logs (stdout not a terminal, see :mod:`geofm.progress`).

    Prints ``train: epoch E, step S/MAX, <metrics>, X it/s`` every ``every_steps`` optimizer steps
    (if given) or every ``every_s`` seconds, a line per validation, and a last line at the end of fit.
    """

    def __init__(self, every_s: float | None = None, every_steps: int | None = None, stream=None):
        super().__init__()
        from geofm.progress import every_seconds

        self.every_s = every_seconds() if every_s is None else every_s
        self.every_steps = every_steps
        self.stream = stream
        self._enabled = True
        self._t0 = self._last_t = time.perf_counter()
        self._last_step = -1

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, text: str) -> None:
        import sys

        if self._enabled and self.trainer.is_global_zero:
            stream = self.stream or sys.stdout
            stream.write(text + "\n")
            stream.flush()

    def _metrics(self, trainer, pl_module, prefix: str) -> str:
        items = self.get_metrics(trainer, pl_module)
        parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in items.items()
                 if k.startswith(prefix) and k != "v_num"]
        return ", ".join(parts)

    def _train_line(self, trainer, pl_module) -> str:
        step = trainer.global_step
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        elapsed = time.perf_counter() - self._t0
        metrics = self._metrics(trainer, pl_module, "train")
        return (f"train: epoch {trainer.current_epoch}, step {step}{total}"
                f"{', ' + metrics if metrics else ''}, {elapsed:.1f} s")

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last_t = time.perf_counter()
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        now = time.perf_counter()
        due_steps = self.every_steps is not None and step % self.every_steps == 0
        due_time = self.every_steps is None and now - self._last_t >= self.every_s
        if due_steps or due_time:
            self._write(self._train_line(trainer, pl_module))
            self._last_t, self._last_step = now, step

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = self._metrics(trainer, pl_module, "val")
        self._write(f"validation: epoch {trainer.current_epoch}, step {trainer.global_step}"
                    f"{', ' + metrics if metrics else ''}")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self._last_step:
            self._write(self._train_line(trainer, pl_module) + " (done)")
            self._last_step = trainer.global_step


def progress_callback(log_every: int = 10) -> Callback:
    """A tqdm bar on a terminal, :class:`PlainProgressBar` lines otherwise (see :mod:`geofm.progress`)."""
    from geofm.progress import interactive

    if interactive():
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar(refresh_rate=max(1, log_every // 2))
    return PlainProgressBar()
