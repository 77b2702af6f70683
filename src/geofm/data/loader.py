"""Streaming dataset over a chip store, aware of DDP ranks and DataLoader workers.

Each epoch has one global order: the store's shards in a seeded random order (seed +
epoch), and the chips of each shard in a seeded random order inside it. Ranks take
contiguous slices of that order and DataLoader workers contiguous slices of their rank's
slice, so every chip is read exactly once per epoch across all processes, and each worker
reads runs of chips from the same shard (one ranged read per run: sequential IO on disk
and few requests on object storage).

Mid-epoch resume: :meth:`ChipDataset.resume` takes the number of batches a rank had
consumed; each worker works out from the DataLoader's round-robin order how many of its
own samples were used, and skips them.

Batches built in the worker: with ``batch_size`` set (or through :class:`ChipLoader`) the
dataset yields whole batches: a worker decodes a run of chips of one shard and normalizes
them straight into one (B, C, T, H, W) tensor in shared memory, so a batch crosses the
worker -> main process boundary as one handle instead of B pickled samples that the main
process then collates. The batches are the ones a per-sample DataLoader would build (each
worker batches its own slice), so both modes give the same data in the same order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from geofm.bands import HLS_NODATA, NORMALIZED_NODATA, norm_stats, normalize
from geofm.data import store as chip_store
from geofm.errors import DataError

log = logging.getLogger(__name__)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def read_index(index: str | os.PathLike | Sequence[int]) -> np.ndarray:
    """Chip slots of a sampling index (a parquet/.npy file written by ``geofm sample``, or a sequence)."""
    if isinstance(index, (str, os.PathLike)):
        p = str(index)
        if p.endswith(".npy"):
            return np.load(p).astype(np.int64)
        import pyarrow.parquet as pq

        try:
            return pq.read_table(p, columns=["slot"]).column("slot").to_numpy().astype(np.int64)
        except Exception as e:
            raise DataError(f"cannot read sampling index '{p}': expected a parquet file with a 'slot' column ({e})") from e
    return np.asarray(index, dtype=np.int64)


def consumed_per_worker(lengths: Sequence[int], batch_size: int, batches: int) -> list[int]:
    """Samples of each worker used after ``batches`` batches of an in-order DataLoader.

    Worker ``w`` yields ceil(lengths[w] / batch_size) batches; the DataLoader takes one batch
    from each live worker in turn and skips exhausted workers.
    """
    n_batches = [-(-n // batch_size) for n in lengths]
    taken = [0] * len(lengths)
    left = batches
    while left > 0 and any(t < n for t, n in zip(taken, n_batches)):
        for w in range(len(lengths)):
            if left == 0:
                break
            if taken[w] < n_batches[w]:
                taken[w] += 1
                left -= 1
    return [min(t * batch_size, n) for t, n in zip(taken, lengths)]


class ChipDataset(IterableDataset):
    """Normalized chips of a geofm chip store (local path or fsspec URL).

    Yields dicts: ``image`` float32 (C, T, H, W) normalized with the ``normalize``
    statistics (nodata -> 0.0001), ``valid`` bool (T, H, W) True where every band has
    data, ``temporal_coords`` float32 (T, 2) = (year, day of year), ``location_coords``
    float32 (2,) = (lat, lon), ``index`` = the chip's slot in the store.

    Args:
        store: the store path or URL.
        index: optional sampling index (file or slots) restricting and ordering the chips.
        bands: optional band subset (indices into the store's bands).
        normalize: ``"v1"``, ``"v2"`` or None (raw reflectance x10000 as float).
        return_coords: include the coordinate tensors (TL models).
        shuffle: shuffle shards and chips within shards per epoch (seed + epoch).
        drop_last: give every rank the same number of chips (drops fewer than ``world`` per epoch).
        raw: yield ``image`` as int16 reflectance x10000 (nodata -9999) and leave the
            normalization to :meth:`normalize_batch` on the consumer side (typically on the
            accelerator): half the bytes cross the worker -> main process pipe.
        batch_size: yield batches (dicts of (B, ...) tensors, ``index`` an int64 tensor) instead
            of samples; use with ``DataLoader(batch_size=None)`` or :class:`ChipLoader`.
    """

    def __init__(self, store: str | os.PathLike, index: str | os.PathLike | Sequence[int] | None = None,
                 bands: Sequence[int] | None = None, normalize: str | None = "v1", return_coords: bool = False,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, storage_options: dict | None = None,
                 raw: bool = False, batch_size: int | None = None):
        super().__init__()
        self.loc = chip_store.as_location(store, storage_options)
        self.attrs = chip_store.store_attrs(self.loc)
        meta = chip_store.read_metadata(self.loc)
        slots = meta["slot"].astype(np.int64)
        rows = np.arange(len(slots))
        if index is not None:
            wanted = read_index(index)
            pos = np.searchsorted(slots, wanted)
            ok = (pos < len(slots)) & (slots[np.minimum(pos, len(slots) - 1)] == wanted)
            if not ok.all():
                raise DataError(f"sampling index names {int((~ok).sum())} chip(s) absent from store '{self.loc.url}'")
            rows = pos
        self.slots = slots[rows]
        self.years = meta["year"][rows].astype(np.float32)
        self.doys = meta["doy"][rows].astype(np.float32)
        self.latlon = np.stack([meta["lat"][rows], meta["lon"][rows]], axis=1).astype(np.float32)
        n_bands = len(self.attrs["bands"])
        self.bands = list(range(n_bands)) if bands is None else [int(b) for b in bands]
        if any(b < 0 or b >= n_bands for b in self.bands):
            raise DataError(f"band subset {self.bands} out of range for a store of {n_bands} bands")
        self.band_names = [self.attrs["bands"][b] for b in self.bands]
        if normalize is not None:
            mean, std = norm_stats(normalize)
            self.mean = np.asarray(mean, np.float32)[self.bands][:, None, None, None]
            self.std = np.asarray(std, np.float32)[self.bands][:, None, None, None]
        else:
            self.mean = self.std = None
        self.return_coords = return_coords
        self.raw = raw
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._resume: tuple[int, int, int] | None = None  # (epoch, batches, batch_size)
        self._reader: chip_store.ShardReader | None = None
        self.per_shard = int(self.attrs["shard"])
        self._rank_world = dist_rank_world()
        if batch_size is not None and int(batch_size) < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = None if batch_size is None else int(batch_size)

    def __len__(self) -> int:
        """Chips this rank yields per epoch (all workers together)."""
        rank, world = dist_rank_world()
        self._rank_world = (rank, world)
        return len(self._rank_slice(len(self.slots), rank, world))

    def batches_per_epoch(self, batch_size: int, workers: int = 0) -> int:
        """Batches this rank yields per epoch: each of ``workers`` workers batches its own slice."""
        n = len(self)
        bounds = np.linspace(0, n, max(1, workers) + 1).round().astype(int)
        return int(sum(-(-int(b - a) // batch_size) for a, b in zip(bounds[:-1], bounds[1:])))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._rank_world = dist_rank_world()  # DataLoader workers cannot query torch.distributed

    def resume(self, epoch: int, batches: int, batch_size: int) -> None:
        """Continue ``epoch`` after ``batches`` batches of ``batch_size`` were consumed on this rank."""
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(batches), int(batch_size))
        self._rank_world = dist_rank_world()

    # ----------------------------------------------------------------------- ordering
    def epoch_order(self, epoch: int) -> np.ndarray:
        """Positions (into this dataset's chips) in the global order of ``epoch``."""
        n = len(self.slots)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch])
        shard = self.slots // self.per_shard
        shards = np.unique(shard)
        order = []
        for s in rng.permutation(shards):
            members = np.flatnonzero(shard == s)
            order.append(rng.permutation(members))
        return np.concatenate(order) if order else np.arange(0)

    def _rank_slice(self, n: int, rank: int, world: int) -> slice | range:
        if self.drop_last:
            per = n // world
            return range(rank * per, (rank + 1) * per)
        bounds = np.linspace(0, n, world + 1).round().astype(int)
        return range(bounds[rank], bounds[rank + 1])

    def worker_positions(self, epoch: int, rank: int, world: int, worker: int,
                         workers: int) -> tuple[np.ndarray, list[int]]:
        """The positions one (rank, worker) reads in ``epoch`` (in order), and every worker's count."""
        order = self.epoch_order(epoch)
        mine = order[list(self._rank_slice(len(order), rank, world))]
        bounds = np.linspace(0, len(mine), workers + 1).round().astype(int)
        return mine[bounds[worker]:bounds[worker + 1]], [int(bounds[i + 1] - bounds[i]) for i in range(workers)]

    # ----------------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        # in the main process ask torch.distributed; workers use what the main process saw
        rank, world = dist_rank_world() if info is None else self._rank_world
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        positions, lengths = self.worker_positions(self.epoch, rank, world, worker, workers)
        if self._resume is not None and self._resume[0] == self.epoch:
            _, batches, bs = self._resume
            positions = positions[consumed_per_worker(lengths, bs, batches)[worker]:]
        if self._reader is None:
            self._reader = chip_store.ShardReader(self.loc)
        if self.batch_size is not None:
            yield from self._batches(positions, self.batch_size, shared=info is not None)
            return
        for run, chips in self._runs(positions):
            for k, pos in enumerate(run):
                yield self._sample(chips[k], int(pos))

    def _runs(self, positions: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, chips (n, T, C, H, W) int16) per run of ``positions`` in one shard: one read each."""
        shards = self.slots[positions] // self.per_shard
        cuts = np.flatnonzero(np.diff(shards)) + 1
        for run in np.split(positions, cuts):
            if len(run):
                yield run, self._reader.read(self.slots[run])

    def _batches(self, positions: np.ndarray, batch_size: int, shared: bool) -> Iterator[dict]:
        """Batches of ``batch_size`` consecutive positions (the last one shorter), built from shard runs."""
        pieces: list[tuple[np.ndarray, np.ndarray]] = []  # (positions, chips) not yet handed over
        held = 0
        for run, chips in self._runs(positions):
            pieces.append((run, chips))
            held += len(run)
            while held >= batch_size:
                yield self._collate(pieces, batch_size, shared)
                held -= batch_size
        if held:
            yield self._collate(pieces, held, shared)

    def _collate(self, pieces: list[tuple[np.ndarray, np.ndarray]], n: int, shared: bool) -> dict:
        """Take the first ``n`` chips of ``pieces`` (consumed in place) into one batch dict."""
        t, _, h, w = self._reader.shape[1:]
        dtype = torch.int16 if self.raw else torch.float32
        shape = (n, len(self.bands), t, h, w)
        image = _empty(shape, dtype, shared)
        valid = _empty((n, t, h, w), torch.bool, shared)
        img, ok = image.numpy(), valid.numpy()
        pos = np.empty(n, dtype=np.int64)
        k = 0
        while k < n:
            run, chips = pieces[0]
            m = min(n - k, len(run))
            self._fill(chips[:m], img[k:k + m], ok[k:k + m])
            pos[k:k + m] = run[:m]
            if m == len(run):
                pieces.pop(0)
            else:
                pieces[0] = (run[m:], chips[m:])
            k += m
        out = {"image": image, "valid": valid, "index": torch.from_numpy(self.slots[pos])}
        if self.return_coords:
            out["temporal_coords"] = torch.from_numpy(np.stack([self.years[pos], self.doys[pos]], axis=2))
            out["location_coords"] = torch.from_numpy(self.latlon[pos])
        return out

    def _fill(self, chips: np.ndarray, img: np.ndarray, valid: np.ndarray) -> None:
        """chips (n, T, C, H, W) int16 -> img (n, C', T, H, W) (normalized float32, or raw int16), valid (n, T, H, W)."""
        np.equal(chips[:, :, 0], HLS_NODATA, out=valid)
        for c in range(1, chips.shape[2]):
            valid |= chips[:, :, c] == HLS_NODATA
        nodata = valid.copy() if valid.any() else None
        np.logical_not(valid, out=valid)
        for i, b in enumerate(self.bands):  # band by band: (n, T, H, W) planes, cache-friendly
            src, dst = chips[:, :, b], img[:, i]
            if self.raw:
                dst[...] = src
                fill = HLS_NODATA
            elif self.mean is not None:
                normalize(src[None], self.mean[i].ravel(), self.std[i].ravel(), out=dst[None])
                fill = NORMALIZED_NODATA
            else:
                dst[...] = src
                fill = NORMALIZED_NODATA
            if nodata is not None:
                dst[nodata] = fill

    def _sample(self, chip: np.ndarray, pos: int) -> dict:
        """chip (T, C, H, W) int16 -> the sample dict."""
        x = chip[:, self.bands].transpose(1, 0, 2, 3)  # (C, T, H, W)
        nodata = (chip == HLS_NODATA).any(axis=1)  # (T, H, W), any band
        if self.raw:
            img = np.ascontiguousarray(x)
            if nodata.any():
                img[:, nodata] = HLS_NODATA
        else:
            img = x.astype(np.float32) if self.mean is None else normalize(x, self.mean.ravel(), self.std.ravel())
            if nodata.any():
                img[:, nodata] = NORMALIZED_NODATA
        out = {"image": torch.from_numpy(img), "valid": torch.from_numpy(~nodata), "index": int(self.slots[pos])}
        if self.return_coords:
            out["temporal_coords"] = torch.from_numpy(np.stack([self.years[pos], self.doys[pos]], axis=1))
            out["location_coords"] = torch.from_numpy(self.latlon[pos].copy())
        return out

    def normalize_batch(self, image: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Normalize a raw batch (B, C, T, H, W) int16 on its device, as the workers would have.

        Nodata pixels (-9999 in any band, or ``valid`` False) become 0.0001.
        """
        x = image.float()
        if self.mean is not None:
            x.sub_(torch.as_tensor(self.mean, device=x.device)).div_(torch.as_tensor(self.std, device=x.device))
        nodata = (image == HLS_NODATA).any(dim=1, keepdim=True) if valid is None else ~valid.unsqueeze(1)
        return x.masked_fill_(nodata, NORMALIZED_NODATA)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None  # opened lazily in each worker
        return state


def _empty(shape: tuple, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; ``shared``: allocated in shared memory (as DataLoader's collate does in a
    worker), so it crosses to the main process as a handle, without a copy."""
    if not shared:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


class ChipLoader(torch.utils.data.DataLoader):
    """DataLoader of whole batches built in the workers (see the module docstring).

    ``len`` is the number of batches really yielded: with ``W`` workers each worker batches
    its own slice, so an epoch has sum_w ceil(n_w / B) batches, not ceil(n / B).
    Other keyword arguments go to :class:`torch.utils.data.DataLoader`.
    """

    def __init__(self, dataset: ChipDataset, batch_size: int, num_workers: int = 0, **kwargs):
        dataset.batch_size = int(batch_size)
        self.chips_per_batch = int(batch_size)
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __len__(self) -> int:
        return self.dataset.batches_per_epoch(self.chips_per_batch, self.num_workers)
