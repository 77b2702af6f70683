"""Ingest: HLS scenes -> T-frame time series -> filtered chips in a Zarr chip store.

Plan: inputs are grouped into frames (HLS granules, or stacked GeoTIFFs), frames by tile,
sorted by date and cut into disjoint series of ``frames`` consecutive acquisitions. Each
series is cut into a grid of ``chip_size`` chips (partial chips at the right/bottom edges
are dropped). One task = a strip of chip rows of one series, as many rows as make the strip
start and end on the files' block (tile) boundaries (224-px chips on 256-px COG blocks: 8
chip rows = 7 block rows), so every compressed block is decoded once. A task reads its
strip of every frame, computes the chips' metadata, keeps those within the cloud/nodata
thresholds, writes one shard per chip row and then its metadata part. Tasks run on Dask.

Resume: a task is done exactly when its metadata part exists. A rerun with the same plan
skips done tasks; a finished store (``metadata.parquet`` present) is left untouched.

Modules: ``plan`` (:class:`IngestConfig`, the checks before anything is written, inputs ->
frames -> series -> the task plan), ``task`` (:func:`~geofm.data.ingest.task.run_task`: one strip
of chip rows), ``run`` (:func:`ingest`: the tasks on Dask, resume, consolidation;
:func:`export_geotiffs`). Their public names are importable from here.
"""

from geofm.data.ingest.plan import (
    STORE_VERSION,
    IngestConfig,
    check_config,
    check_output,
    check_scheduler,
    date_from_name,
    discover_frames,
    expand_inputs,
    frame_from_json,
    frame_to_json,
    grid_key,
    plan_ingest,
    summarize_skipped,
)
from geofm.data.ingest.run import (IngestResult, consolidate, decode_threads_per_task, export_geotiffs, ingest,
                                    usable_cpus)
from geofm.data.ingest.task import run_task

__all__ = ["STORE_VERSION", "IngestConfig", "IngestResult", "check_config", "check_output", "check_scheduler",
           "consolidate", "date_from_name", "decode_threads_per_task", "discover_frames", "expand_inputs",
           "export_geotiffs", "frame_from_json", "frame_to_json", "grid_key", "ingest", "plan_ingest", "run_task",
           "summarize_skipped", "usable_cpus"]
