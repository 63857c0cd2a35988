"""The work task: one chunk of images -> store rows (never fails for one bad image)."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from segflow.config import RunConfig, apply_malloc_settings, apply_thread_limits
from segflow.evaluate import ChunkResult
from segflow.evaluate import process_chunk as _process_chunk
from segflow.ingest import ImageItem
from tasks.cloudinary import prepare_segmenter


@task(
    name="process-chunk",
    task_run_name="chunk-{index}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def process_chunk(
    items: list[ImageItem], config: RunConfig, run_id: str, config_hash: str, index: int = 0
) -> ChunkResult:
    """Read, preprocess, segment (tiled), stitch and evaluate ``items``; overlays to ``OUT/overlays``.

    A broken image becomes one ``errors`` row (logged here as a warning); the chunk carries on.
    """
    # one thread per library per task: on a Dask worker (another process) the flow's own limit
    # does not apply, and OpenCV would otherwise start a thread per core in every worker
    apply_thread_limits(1)
    apply_malloc_settings()  # likewise: a Dask worker is another process
    # segmenters needing the orchestration layer (a Prefect Secret, a concurrency limit) are
    # built here; None lets the chunk build any other segmenter itself
    result = _process_chunk(
        items,
        config=config,
        run_id=run_id,
        config_hash=config_hash,
        segmenter=prepare_segmenter(config),
    )
    logger = get_run_logger()
    for err in result.errors:
        logger.warning(
            "%s failed at %s: %s: %s",
            err["source_uri"],
            err["stage"],
            err["error_type"],
            err["message"],
        )
    logger.info(
        "chunk %d: %d images done, %d failed", index, len(result.metrics), len(result.errors)
    )
    return result
