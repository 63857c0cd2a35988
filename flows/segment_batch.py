"""``segment_batch``: a folder (or bucket) of images -> masks and metrics in the Parquet store.

Wiring only::

    list-images -> select-todo -> process-chunk x N (bounded in flight) -> write-rows -> write-run
                                                                        -> publish-report

* One task run per chunk of ``config.chunk_size`` images: task runs grow with images / chunk,
  never with tiles (tiles are batched inside the segment step).
* Backpressure: at most ``config.in_flight(workers)`` chunks are submitted and not yet collected,
  and collected rows are flushed to the store every ``FLUSH_IMAGES`` images (or ``FLUSH_MASKS``
  mask rows), so memory does not grow with the batch size.
* Numeric libraries get one thread each (the thread pool parallelises over images).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from typing import Any, cast

from prefect import Flow, flow
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

import segflow
from segflow.config import (
    RunConfig,
    apply_malloc_settings,
    apply_thread_limits,
    default_workers,
)
from segflow.evaluate import ChunkResult, RunStats, items_by_chunk
from segflow.scale import effective_chunk_size
from tasks.artifacts import PROGRESS_MIN_INTERVAL_S, Progress, publish_report
from tasks.ingest import list_images, select_todo
from tasks.monitoring import label_run
from tasks.process import process_chunk
from tasks.runners import needs_dask, run_on_dask, task_runner_for
from tasks.store import write_rows, write_run

#: Collected images (or mask rows) that trigger a write: one Parquet file per dataset per flush.
FLUSH_IMAGES = 256
FLUSH_MASKS = 20_000

#: Progress events for callers such as the CLI (``extra``: ``segflow_done``, ``segflow_total``).
progress_log = logging.getLogger("segflow.progress")


def input_name(source: str) -> str:
    """The input folder's name: ``/data/dsb2018/images/`` -> ``images``."""
    return os.path.basename(str(source).rstrip("/")) or str(source)


def _run_name() -> str:
    config = flow_run.parameters.get("config")
    source = config.input if isinstance(config, RunConfig) else dict(config or {}).get("input", "")
    return f"{input_name(source)}-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"


def _write_rows(out: str, rows: ChunkResult) -> None:
    # quote: Prefect would otherwise walk every row looking for futures to track (about a
    # second per 200 images of rows); the rows hold none
    write_rows(out, cast(ChunkResult, quote(rows)))


def _workers() -> int:
    return default_workers()


@flow(
    name="segment-batch",
    flow_run_name=_run_name,
    task_runner=ThreadPoolTaskRunner(max_workers=_workers()),  # type: ignore[arg-type]
    persist_result=False,
    validate_parameters=True,
)
def segment_batch(config: RunConfig, expected_images: int | None = None) -> State:
    """Segment every new image under ``config.input`` and store the rows under ``config.out``.

    Returns a Completed state whose result is the run summary (a dict: run_id, config_hash,
    listed / done / skipped / failed counts, mean scores, dataset locations); a Failed state with
    the same summary when ``config.fail_on_error`` and some image failed. ``expected_images`` is
    the image count announced by the ``segflow.batch.arrived`` event (a warning when it differs).
    """
    if needs_dask(config):  # issue 7: task_runner="dask" -> this flow again, on a DaskTaskRunner
        return run_on_dask(segment_batch, config)
    started = dt.datetime.now(dt.UTC)
    apply_thread_limits(1)
    apply_malloc_settings()  # images reuse freed memory instead of page-faulting it back in
    run_id = str(flow_run.get_id() or "local")
    name = input_name(config.input)
    config_hash = config.config_hash()
    workers = _workers()

    items = list_images(config)
    label_run(
        batch=name,
        segmenter=config.segmenter,
        expected_images=expected_images,
        listed=len(items),
    )
    todo, n_skipped = select_todo(config, items, config_hash)
    stats = RunStats(listed=len(items), skipped=n_skipped)
    progress = Progress(name, len(todo), min_interval_s=PROGRESS_MIN_INTERVAL_S)
    progress_log.info(
        "%d images, %d to do",
        len(items),
        len(todo),
        extra={"segflow_done": 0, "segflow_total": len(todo)},
    )

    pending = ChunkResult()
    in_flight: list[PrefectFuture[ChunkResult]] = []
    status = "failed"

    def collect(future: PrefectFuture[ChunkResult]) -> None:
        nonlocal pending
        in_flight.remove(future)
        chunk = future.result()
        stats.add(chunk)
        pending.extend(chunk)
        if pending.n_images >= FLUSH_IMAGES or len(pending.masks) >= FLUSH_MASKS:
            _write_rows(config.out, pending)
            pending = ChunkResult()
        done = stats.done + stats.failed
        progress.update(done)
        progress_log.info(
            "%d / %d", done, len(todo), extra={"segflow_done": done, "segflow_total": len(todo)}
        )

    try:
        limit = config.in_flight(workers)
        for index, chunk in enumerate(items_by_chunk(todo, effective_chunk_size(config))):
            while len(in_flight) >= limit:
                collect(next(as_completed(in_flight)))
            in_flight.append(process_chunk.submit(chunk, config, run_id, config_hash, index=index))
        while in_flight:
            collect(next(as_completed(in_flight)))
        status = "completed"
    finally:
        if pending.n_images:
            _write_rows(config.out, pending)
        if status != "completed" or (config.fail_on_error and stats.failed):
            status = "failed"
        write_run(
            config.out,
            {
                "run_id": run_id,
                "flow_run_name": flow_run.get_name(),
                "parameters": config.model_dump_json(),
                "config_hash": config_hash,
                "segflow_version": segflow.__version__,
                "n_images": stats.listed,
                "n_done": stats.done,
                "n_skipped": stats.skipped,
                "n_failed": stats.failed,
                "started_at": started,
                "ended_at": dt.datetime.now(dt.UTC),
                "status": status,
            },
        )

    publish_report(stats, name=name, config_hash=config_hash, out=config.out)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "flow_run_name": flow_run.get_name(),
        "config_hash": config_hash,
        "listed": stats.listed,
        "done": stats.done,
        "skipped": stats.skipped,
        "failed": stats.failed,
        "means": stats.means(),
        "out": str(config.out),
        "status": status,
    }
    if status == "failed":
        return Failed(
            message=f"{stats.failed} of {len(todo)} images failed (fail_on_error)", data=summary
        )
    return Completed(message=f"{stats.done} images done", data=summary)


def segment_batch_for(config: RunConfig, *, workers: int | None = None) -> Flow[Any, State]:
    """``segment_batch`` with the task runner ``config`` asks for, chosen before the run starts.

    Called from Python or the CLI this saves the Dask case its hand-over subflow (one flow run
    instead of two: about a second less per run); deployments, whose parameters arrive with the
    run, keep the hand-over inside ``segment_batch``. ``workers`` sizes the thread pool.
    """
    if config.task_runner == "threads" and workers is None:
        return segment_batch  # the decorator's thread pool
    return segment_batch.with_options(task_runner=task_runner_for(config, workers=workers))
