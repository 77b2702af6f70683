"""The chip store: a Zarr v3 group on local disk or object storage.

Layout::

    STORE/zarr.json              group; attrs["geofm"] = store description (bands, frames, chip size,
                                 shard size, complete flag)
    STORE/chips                  int16 (N_slots, T, C, H, W), one chunk per chip, S chips per shard,
                                 Blosc-LZ4 + byte shuffle; fill value -9999 (unwritten slots)
    STORE/plan.json              the ingest plan (what each task writes), for resume checks
    STORE/meta/parts/*.parquet   per-task metadata, written after the task's shard
    STORE/metadata.parquet       all accepted chips (consolidated), one row per chip

Shards are encoded by :class:`ShardEncoder` (the same bytes zarr-python would write) and
written as one object each. A slot holds a chip only if a metadata row names it: a crash can leave a shard file half
written, but never a metadata row pointing at it, so readers never see a half chip.

Reading: :class:`ShardReader` reads whole shards (or byte ranges) and decodes the Blosc
chunks directly with numcodecs, which avoids zarr-python's per-chunk overhead (about
2.5 ms per chunk) that otherwise bounds a per-sample loader.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geofm.bands import HLS_NODATA
from geofm.errors import DataError
from geofm.io import atomic_path

log = logging.getLogger(__name__)

CHIPS = "chips"
METADATA = "metadata.parquet"
PLAN = "plan.json"
PARTS = "meta/parts"
_EMPTY = 2**64 - 1


# --------------------------------------------------------------------------- locations
@dataclass
class Location:
    """A store root: a local folder or an fsspec URL (``s3://bucket/key``) with storage options."""

    url: str
    storage_options: dict[str, Any] | None = None

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> Path:
        return Path(self.url.removeprefix("file://"))

    def fs(self):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url, **(self.storage_options or {}))
        return fs

    def _key(self, rel: str) -> str:
        return self.url.rstrip("/") + "/" + rel

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return (self.local_path / rel).exists()
        return self.fs().exists(self._key(rel))

    def read_bytes(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        if self.is_local:
            with open(self.local_path / rel, "rb") as f:
                if start is not None:
                    f.seek(start if start >= 0 else os.fstat(f.fileno()).st_size + start)
                    return f.read((end - start) if end is not None and start >= 0 else -1)
                return f.read()
        return self.fs().cat_file(self._key(rel), start=start, end=end)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object atomically (local: temp + rename; object stores: one PUT)."""
        if self.is_local:
            with atomic_path(self.local_path / rel) as tmp:
                tmp.write_bytes(data)
        else:
            self.fs().pipe_file(self._key(rel), data)

    def delete(self, rel: str) -> None:
        """Remove an object if it exists."""
        if self.is_local:
            (self.local_path / rel).unlink(missing_ok=True)
        else:
            fs = self.fs()
            if fs.exists(self._key(rel)):
                fs.rm(self._key(rel))

    def listdir(self, rel: str) -> list[str]:
        if self.is_local:
            d = self.local_path / rel
            return sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) if d.is_dir() else []
        fs = self.fs()
        key = self._key(rel)
        if not fs.exists(key):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(key, detail=False))

    def zarr_store(self, read_only: bool = False):
        import zarr.storage

        if self.is_local:
            return zarr.storage.LocalStore(str(self.local_path), read_only=read_only)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options or {},
                                                 read_only=read_only)


def as_location(store: str | os.PathLike | Location, storage_options: dict | None = None) -> Location:
    if isinstance(store, Location):
        return store
    return Location(str(store), storage_options)


# --------------------------------------------------------------------------- creating and writing
def create_chip_array(loc: Location, n_slots: int, frames: int, bands: int, chip: int, shard: int,
                      attrs: dict) -> None:
    """Create the group and the sharded chips array (no data written)."""
    import zarr
    from zarr.codecs import BloscCodec

    group = zarr.open_group(loc.zarr_store(), mode="a", zarr_format=3)
    group.attrs["geofm"] = attrs
    if CHIPS in group:
        return
    group.create_array(CHIPS, shape=(n_slots, frames, bands, chip, chip), dtype="int16",
                       chunks=(1, frames, bands, chip, chip), shards=(shard, frames, bands, chip, chip),
                       compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                       fill_value=HLS_NODATA, dimension_names=("chip", "time", "band", "y", "x"),
                       config={"write_empty_chunks": False})


def write_shard(loc: Location, start: int, chips: np.ndarray, present: Sequence[bool] | None = None) -> None:
    """Write ``chips`` (S, T, C, H, W) int16 at slots ``start:start+S`` (one whole shard).

    ``present`` (S bools) marks the chips to store; the others stay unwritten (fill value).
    The shard is encoded by :class:`ShardEncoder` and written as one object, atomically.
    """
    enc = ShardEncoder(loc)
    if start % enc.per_shard or len(chips) != enc.per_shard:
        raise ValueError(f"write_shard writes whole shards: start {start}, {len(chips)} chips, shard {enc.per_shard}")
    present = [True] * len(chips) if present is None else list(present)
    chunks = [enc.compress(np.ascontiguousarray(c)) if keep else None for c, keep in zip(chips, present)]
    enc.write(start // enc.per_shard, chunks)


class ShardEncoder:
    """Encodes whole shards of the ``chips`` array in the zarr v3 ``sharding_indexed`` format.

    Each chip is one Blosc-compressed chunk (the array's own Blosc settings, from
    ``chips/zarr.json``); the shard is the chunks back to back, then the index: per chunk an
    (offset, nbytes) little-endian uint64 pair (2**64-1 twice for an absent chunk), then the
    CRC32C of the index. zarr-python reads these shards as its own (tested). Encoding here
    avoids zarr-python's per-chunk overhead on the write path of the ingest.
    """

    def __init__(self, loc: Location):
        self.loc = loc
        meta = json.loads(loc.read_bytes(f"{CHIPS}/zarr.json"))
        if not fast_layout(meta):
            raise DataError(f"chips array of '{loc.url}' does not have geofm's shard layout: cannot encode shards")
        self.shape = tuple(meta["shape"])
        self.per_shard = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
        blosc = meta["codecs"][0]["configuration"]["codecs"][1]["configuration"]
        self.cname = str(blosc.get("cname", "lz4"))
        self.clevel = int(blosc.get("clevel", 5))
        self.shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[blosc.get("shuffle", "shuffle")]
        self.sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")

    def compress(self, chip: np.ndarray) -> bytes:
        """One (T, C, H, W) int16 C-contiguous chip -> its Blosc chunk."""
        import numcodecs.blosc

        if chip.shape != self.shape[1:] or chip.dtype != np.int16 or not chip.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous int16 chip of shape {self.shape[1:]}, got "
                             f"{chip.dtype} {chip.shape}")
        return numcodecs.blosc.compress(chip.astype("<i2", copy=False), self.cname.encode(), self.clevel,
                                        self.shuffle)

    def encode(self, chunks: Sequence[bytes | None]) -> bytes:
        """Compressed chunks (None = absent) -> the shard object's bytes."""
        import numcodecs

        if len(chunks) != self.per_shard:
            raise ValueError(f"a shard holds {self.per_shard} chunks, got {len(chunks)}")
        index = np.full((self.per_shard, 2), _EMPTY, dtype="<u8")
        offset = 0
        for i, c in enumerate(chunks):
            if c is not None:
                index[i] = (offset, len(c))
                offset += len(c)
        tail = bytes(numcodecs.CRC32C(location="end").encode(index.tobytes()))
        return b"".join([c for c in chunks if c is not None] + [tail])

    def write(self, shard: int, chunks: Sequence[bytes | None]) -> None:
        """Write shard number ``shard`` as one object (nothing at all if every chunk is absent)."""
        key = f"{CHIPS}/" + self.sep.join(["c", str(shard)] + ["0"] * (len(self.shape) - 1))
        if all(c is None for c in chunks):
            self.loc.delete(key)
            return
        self.loc.write_bytes(key, self.encode(chunks))


def store_attrs(loc: Location) -> dict:
    """The ``geofm`` attributes of a store; :class:`DataError` if it is not a geofm chip store."""
    try:
        meta = json.loads(loc.read_bytes("zarr.json"))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"'{loc.url}' is not a geofm chip store: no zarr.json ({e})") from e
    except ValueError as e:  # JSONDecodeError
        raise DataError(f"'{loc.url}/zarr.json' is not valid JSON (damaged store?): {e}") from e
    attrs = meta.get("attributes", {}).get("geofm")
    if not attrs:
        raise DataError(f"'{loc.url}' is a Zarr group without geofm chip-store attributes")
    return attrs


def set_store_attrs(loc: Location, **updates) -> None:
    import zarr

    group = zarr.open_group(loc.zarr_store(), mode="r+", zarr_format=3)
    attrs = dict(group.attrs["geofm"])
    attrs.update(updates)
    group.attrs["geofm"] = attrs


# --------------------------------------------------------------------------- metadata tables
def table_to_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def table_from_bytes(data: bytes):
    """A Parquet file's bytes -> a :class:`pyarrow.Table`, decoded in this thread.

    Not ``pq.read_table`` nor a threaded read: Arrow's pool threads then release readers that hold
    the Python bytes after the call returns, and one that does so while the interpreter exits
    aborts the process ("terminate called without an active exception").
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(pa.BufferReader(data))
    try:
        return parquet.read(use_threads=False)
    finally:
        parquet.close()


def read_metadata(store: str | os.PathLike | Location, storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """The store's chip table as ``{column: numpy array}`` (list columns become 2D arrays)."""
    loc = as_location(store, storage_options)
    if not loc.exists(METADATA):
        raise DataError(f"'{loc.url}' has no {METADATA}: the ingest did not finish (rerun it to resume)")
    import pyarrow as pa

    try:
        table = table_from_bytes(loc.read_bytes(METADATA))
    except pa.ArrowException as e:
        raise DataError(f"'{loc.url}/{METADATA}' is not a readable Parquet table (damaged? delete it and rerun "
                        f"the ingest to rebuild it from the task parts): {e}") from e
    return table_columns(table)


def table_columns(table) -> dict[str, np.ndarray]:
    import pyarrow as pa

    out = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
            out[name] = np.array(col.to_pylist())
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


# --------------------------------------------------------------------------- fast reading
def fast_layout(meta: dict) -> bool:
    """True if ``chips/zarr.json`` describes geofm's layout: one-chip int16 chunks, bytes + Blosc,
    sharded with the index at the end (bytes + CRC32C), default chunk keys."""
    try:
        shape = tuple(meta["shape"])
        codecs = meta["codecs"]
        if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
            return False
        cfg = codecs[0]["configuration"]
        inner = [c["name"] for c in cfg["codecs"]]
        index = [c["name"] for c in cfg["index_codecs"]]
        ok = (inner == ["bytes", "blosc"] and index == ["bytes", "crc32c"]
              and cfg.get("index_location", "end") == "end" and meta["data_type"] == "int16"
              and tuple(cfg["chunk_shape"])[0] == 1 and tuple(cfg["chunk_shape"])[1:] == shape[1:]
              and cfg["codecs"][0]["configuration"].get("endian", "little") == "little")
        return ok and meta.get("chunk_key_encoding", {}).get("name", "default") == "default"
    except (KeyError, IndexError, TypeError):
        return False


class ShardReader:
    """Read chips of the sharded ``chips`` array by decoding shards directly.

    The shard layout (zarr v3 ``sharding_indexed``, index at the end: per chunk an
    (offset, nbytes) uint64 pair, then a CRC32C) and the inner codecs (bytes + Blosc) are
    checked against ``chips/zarr.json`` on open; any other layout falls back to zarr-python.
    """

    def __init__(self, store: str | os.PathLike | Location, storage_options: dict | None = None):
        self.loc = as_location(store, storage_options)
        meta = json.loads(self.loc.read_bytes(f"{CHIPS}/zarr.json"))
        self.shape = tuple(meta["shape"])
        self.chunk_shape = tuple(meta["codecs"][0]["configuration"]["chunk_shape"]) if meta.get("codecs") else None
        self.shard_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        self.fill = meta.get("fill_value", HLS_NODATA)
        self.fast = fast_layout(meta)
        self.per_shard = self.shard_shape[0]
        self.sep = meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/")
        self._index_cache: dict[int, np.ndarray] = {}
        self._zarr = None
        import numcodecs.blosc

        # loader workers are already one process per core: blosc's own threads only contend with them
        numcodecs.blosc.use_threads = False
        if not self.fast:
            log.info("chips array layout not recognised; reading through zarr-python (slower)")

    def shard_key(self, shard: int) -> str:
        parts = ["c", str(shard)] + ["0"] * (len(self.shape) - 1)
        return f"{CHIPS}/" + self.sep.join(parts)

    def shard_index(self, shard: int) -> np.ndarray | None:
        """(S, 2) uint64 (offset, nbytes) of each chunk of a shard, or None if the shard is absent."""
        if shard not in self._index_cache:
            n = self.per_shard
            try:
                raw = self.loc.read_bytes(self.shard_key(shard), -(16 * n + 4), None)
            except FileNotFoundError:
                return None
            self._index_cache[shard] = np.frombuffer(raw[: 16 * n], dtype="<u8").reshape(n, 2)
        return self._index_cache[shard]

    def read(self, slots: Sequence[int]) -> np.ndarray:
        """Chips at ``slots`` (any order) as (len(slots), T, C, H, W) int16."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), *self.shape[1:]), dtype=np.int16)
        if not self.fast:
            import zarr

            if self._zarr is None:
                self._zarr = zarr.open_array(self.loc.zarr_store(read_only=True), path=CHIPS, mode="r")
            for i, s in enumerate(slots):
                out[i] = self._zarr[int(s)]
            return out
        by_shard: dict[int, list[int]] = {}
        for i, s in enumerate(slots):
            by_shard.setdefault(int(s) // self.per_shard, []).append(i)
        for shard, rows in by_shard.items():
            self._read_shard_rows(shard, slots, rows, out)
        return out

    def _read_shard_rows(self, shard: int, slots: np.ndarray, rows: list[int], out: np.ndarray) -> None:
        import numcodecs.blosc

        index = self.shard_index(shard)
        within = [int(slots[r]) % self.per_shard for r in rows]
        spans = [] if index is None else [(int(index[w, 0]), int(index[w, 1])) for w in within]
        live = [sp for sp in spans if sp[0] != _EMPTY]
        if not live:
            out[rows] = self.fill
            return
        lo = min(o for o, _ in live)
        hi = max(o + n for o, n in live)
        blob = memoryview(self.loc.read_bytes(self.shard_key(shard), lo, hi))  # one range covering what is needed
        nbytes = int(np.prod(self.shape[1:])) * 2
        for r, (off, n) in zip(rows, spans):
            if off == _EMPTY:
                out[r] = self.fill
                continue
            dest = out[r]
            try:  # decode straight into the output (little-endian int16 on every platform we run on)
                numcodecs.blosc.decompress(blob[off - lo: off - lo + n], dest)
            except (RuntimeError, ValueError) as e:
                raise DataError(f"chunk of slot {int(slots[r])} in '{self.loc.url}' does not decode to "
                                f"{nbytes} bytes: {e}") from e
