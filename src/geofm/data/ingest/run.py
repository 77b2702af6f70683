"""Running an ingest: the tasks on Dask (a LocalCluster, an external scheduler, or in-process with
``sync``), resume, consolidation of the metadata parts, and the per-chip GeoTIFF export.

The whole flow: :mod:`geofm.data.ingest`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geofm.bands import HLS_NODATA, MODEL_BANDS
from geofm.data import store
from geofm.data.ingest.plan import (
    STORE_VERSION,
    IngestConfig,
    check_config,
    check_output,
    check_scheduler,
    discover_frames,
    expand_inputs,
    plan_ingest,
    summarize_skipped,
)
from geofm.data.ingest.task import _schema, run_task
from geofm.errors import ConfigError, DataError, GeofmError
from geofm.io import write_geotiff
from geofm.runtime import close_dask

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    store: str
    tasks_total: int
    tasks_run: int
    chips: int
    rejected: dict
    bytes_read: int
    seconds: float
    skipped: list
    already_complete: bool = False


def ingest(inputs: Sequence[str], out: str, cfg: IngestConfig | None = None, *, storage_options: dict | None = None,
           scheduler: str | None = None, n_workers: int | None = None, processes: bool = True,
           progress: Callable[[int, int], None] | None = None, max_tasks: int | None = None,
           gdal_options=None) -> IngestResult:
    """Ingest ``inputs`` into the chip store ``out`` (resumable). See the module docstring.

    ``scheduler``: address of an existing Dask scheduler; ``None`` starts a LocalCluster of
    ``n_workers`` (default: CPU count) ``processes`` (or threads); ``"sync"`` runs in-process.
    ``max_tasks`` stops after that many tasks (for tests of resumption). ``gdal_options``: a
    :class:`~geofm.data.remote.stream.WorkerGdalOptions` that every task sets in its worker
    (credentials for streamed COGs on workers that did not inherit this process's environment).
    """
    t0 = time.perf_counter()
    cfg = cfg or IngestConfig()
    check_config(cfg)
    check_output(out, storage_options)
    check_scheduler(scheduler)
    loc = store.Location(out, storage_options)
    files = expand_inputs(inputs)
    if not files:
        raise DataError(f"no GeoTIFF files (.tif, .tiff, .gtif) found in {', '.join(repr(i) for i in inputs)}")
    frames, skipped = discover_frames(files, cfg)
    if not frames:
        raise DataError("no usable frames: " + summarize_skipped(skipped))
    plan, more = plan_ingest(frames, cfg)
    skipped += more
    plan_bytes = json.dumps(plan, sort_keys=True).encode()
    if loc.exists(store.PLAN):
        if loc.read_bytes(store.PLAN) != plan_bytes:
            raise DataError(f"store '{out}' was created by a different ingest (inputs or options differ); "
                            "use a new store path or delete it")
        if loc.exists(store.METADATA):
            log.info("store %s is complete: nothing to do", out)
            meta = store.read_metadata(loc)
            return IngestResult(out, len(plan["tasks"]), 0, len(meta["slot"]), {}, 0,
                                time.perf_counter() - t0, skipped, already_complete=True)
    else:
        attrs = {"version": STORE_VERSION, "bands": list(MODEL_BANDS), "frames": cfg.frames, "chip_size": cfg.chip_size,
                 "shard": plan["shard"], "complete": False, "reflectance_scale": 10000, "nodata": HLS_NODATA}
        store.create_chip_array(loc, plan["n_rows"] * plan["shard"], cfg.frames, len(MODEL_BANDS),
                                cfg.chip_size, plan["shard"], attrs)
        loc.write_bytes(store.PLAN, plan_bytes)
    done = {int(n.split("-")[1].split(".")[0]) for n in loc.listdir(store.PARTS) if n.endswith(".parquet")}
    todo = [i for i in range(len(plan["tasks"])) if i not in done]
    if max_tasks is not None:
        todo = todo[:max_tasks]
    results = _run_tasks(loc, plan, todo, scheduler, n_workers, processes, progress, len(done), gdal_options)
    rejected = {"cloud": sum(r["rejected"]["cloud"] for r in results),
                "nodata": sum(r["rejected"]["nodata"] for r in results)}
    finished = len(done) + len(results) == len(plan["tasks"])
    n_chips = sum(r["kept"] for r in results)
    if finished:
        n_chips = consolidate(loc)
    return IngestResult(out, len(plan["tasks"]), len(results), n_chips, rejected,
                        sum(r["bytes"] for r in results), time.perf_counter() - t0, skipped)


def _run_tasks(loc, plan, todo, scheduler, n_workers, processes, progress, n_done, gdal_options=None) -> list[dict]:
    total = len(plan["tasks"])
    results: list[dict] = []
    if not todo:
        return results
    if scheduler == "sync":
        for i in todo:
            with _gdal_applied(gdal_options):
                results.append(run_task(loc.url, loc.storage_options, plan, i, decode_threads_per_task(usable_cpus(), 1)))
            if progress:
                progress(n_done + len(results), total)
        return results
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed import KilledWorker

    cluster = None
    if scheduler is None:
        import os

        workers = n_workers or min(len(todo), os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                               dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
    else:
        try:
            client = Client(scheduler)
        except (OSError, ValueError) as e:  # unreachable (timeout) or not an address
            raise DataError(f"--scheduler '{scheduler}': cannot connect to a Dask scheduler there ({e}); give "
                            "the address of a running one (tcp://host:8786), omit it for a LocalCluster, or "
                            "use 'sync'") from e
    try:
        threads = _cluster_decode_threads(client)
        plan_future = client.scatter(plan, broadcast=True)
        futures = [client.submit(_run_task_reporting, loc.url, loc.storage_options, plan_future, i, threads,
                                 gdal_options, pure=False) for i in todo]
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except KilledWorker as e:
                raise DataError(f"an ingest task killed its Dask worker (out of memory, or a crash in GDAL on "
                                f"a damaged input?): {e}") from e
            if "error" in res:  # a data error on a worker: stop, and say it as the sync scheduler would
                client.cancel(futures)
                raise _ERRORS.get(res["kind"], DataError)(res["error"])
            results.append(res)
            if progress:
                progress(n_done + len(results), total)
    finally:
        close_dask(client, cluster)
    return results


_ERRORS = {"ConfigError": ConfigError, "DataError": DataError}


def usable_cpus() -> int:
    """CPUs this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def decode_threads_per_task(cpus: int, concurrent_tasks: int) -> int:
    """Decode threads of one task when ``concurrent_tasks`` tasks share ``cpus`` CPUs (at least 1)."""
    return max(1, cpus // max(1, concurrent_tasks))


def _cluster_decode_threads(client) -> int:
    """Decode threads per task on a Dask cluster: the fewest CPUs per task slot over its hosts.

    Each worker runs ``nthreads`` tasks at once; the workers of one host share its CPUs. 1 if
    the workers cannot be asked (the ingest still runs, with less decoding overlap).
    """
    try:
        info = client.scheduler_info()["workers"]
        cpus = client.run(usable_cpus)
    except Exception as e:  # noqa: BLE001 - a worker that cannot answer must not stop the ingest
        log.debug("cannot ask the Dask workers for their CPUs (%s): one decode thread per task", e)
        return 1
    slots: dict[str, int] = {}
    host_cpus: dict[str, int] = {}
    for addr, w in info.items():
        host = w.get("host", addr)
        slots[host] = slots.get(host, 0) + int(w.get("nthreads", 1))
        host_cpus[host] = max(host_cpus.get(host, 0), int(cpus.get(addr, 1)))
    if not slots:
        return 1
    return min(decode_threads_per_task(host_cpus[h], n) for h, n in slots.items())


def _gdal_applied(gdal_options):
    """``gdal_options.applied()``, or nothing to do without options."""
    import contextlib

    return gdal_options.applied() if gdal_options is not None else contextlib.nullcontext()


def _run_task_reporting(store_url: str, storage_options: dict | None, plan: dict, task_id: int,
                        decode_threads: int | None = None, gdal_options=None) -> dict:
    """:func:`run_task` on a Dask worker: geofm's errors (and IO errors) come back as a plain record.

    Exceptions pass through Dask pickled, and one whose cause cannot be pickled (rasterio's) arrives
    as a bare ``Exception`` with a traceback; a record keeps the message the sync scheduler shows.
    """
    try:
        with _gdal_applied(gdal_options):
            return run_task(store_url, storage_options, plan, task_id, decode_threads)
    except GeofmError as e:
        return {"task": task_id, "error": str(e), "kind": type(e).__name__}
    except OSError as e:
        return {"task": task_id, "error": f"task {task_id} could not write to the store '{store_url}': {e}",
                "kind": "DataError"}


def consolidate(loc: store.Location) -> int:
    """Merge the metadata parts into ``metadata.parquet`` and mark the store complete."""
    import pyarrow as pa

    parts = [n for n in loc.listdir(store.PARTS) if n.endswith(".parquet")]
    tables = [store.table_from_bytes(loc.read_bytes(f"{store.PARTS}/{n}")) for n in parts]
    table = pa.concat_tables(tables).sort_by("slot") if tables else _schema().empty_table()
    loc.write_bytes(store.METADATA, store.table_to_bytes(table))
    store.set_store_attrs(loc, complete=True, n_chips=table.num_rows)
    return table.num_rows


def export_geotiffs(store_url: str, out_dir: str, slots: Sequence[int] | None = None, compress: str = "lzw",
                    storage_options: dict | None = None) -> list[Path]:
    """Write chips as per-chip GeoTIFFs (T*C bands, int16, chip CRS/transform): the paper's old format."""
    from affine import Affine

    loc = store.Location(store_url, storage_options)
    meta = store.read_metadata(loc)
    reader = store.ShardReader(loc)
    sel = np.arange(len(meta["slot"])) if slots is None else np.searchsorted(meta["slot"], slots)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in sel:
        chip = reader.read([meta["slot"][i]])[0]  # (T, C, H, W)
        t, c, h, w = chip.shape
        p = out / f"chip_{int(meta['slot'][i]):07d}.tif"
        paths.append(write_geotiff(p, chip.reshape(t * c, h, w).astype(np.int16, copy=False), crs=meta["crs"][i],
                                   transform=Affine(*meta["transform"][i]), nodata=HLS_NODATA, compress=compress,
                                   tiled=False))
    return paths
