"""Lightning data module over a chip store (the pretraining input), with an exact data position.

:class:`ChipDataModule` gives train/val :class:`~geofm.data.loader.ChipDataset` loaders. The fast
path reads raw int16 chips in the workers and normalizes on the device
(:meth:`~geofm.data.loader.ChipDataset.normalize_batch`). Its ``state_dict`` is the data position
(epoch, batches consumed), saved in every checkpoint and restored on resume, so a resumed run sees
exactly the samples the interrupted one had not yet seen. Its configuration is
:class:`~geofm.data.loader_config.ChipDataSection` (the ``data`` section of a pretraining config).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from geofm.data.loader import ChipLoader  # batches built in the workers, true batch count for Lightning
from geofm.data.loader_config import ChipDataSection
from geofm.errors import ConfigError

log = logging.getLogger(__name__)


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

    def __init__(self, data: ChipDataSection, normalize: str | None = None, return_coords: bool = False,
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
