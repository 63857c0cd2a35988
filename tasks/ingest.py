"""Tasks that find the work: list and hash the images, drop those already in the store."""

from __future__ import annotations

from typing import Any

from prefect import State, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from segflow import ingest
from segflow.config import RunConfig
from segflow.evaluate import done_hashes
from segflow.scale import select_shard
from segflow.store import Store


def _transient(task: Any, task_run: Any, state: State[Any]) -> bool:
    """Retry listing on I/O hiccups (remote stores), not on a missing or wrong input folder."""
    try:
        state.result()
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError):
        return False
    except Exception:
        return True
    return False


@task(
    name="list-images",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
)
def list_images(config: RunConfig) -> list[ingest.ImageItem]:
    """List ``config.input`` (leaving ``config.out`` out), pair ground truth, hash the bytes."""
    logger = get_run_logger()
    items = ingest.list_images(
        config.input, extensions=config.extensions, recursive=config.recursive, exclude=[config.out]
    )
    if config.shard_index is not None:  # issue 7: one shard of a sharded batch (segment_sharded)
        items = select_shard(items, index=config.shard_index, count=config.shard_count)
    if config.ground_truth:
        items = ingest.pair_ground_truth(items, config.ground_truth)
        with_gt = sum(i.gt_uri is not None for i in items)
        logger.info(
            "%d of %d images have ground truth in %s", with_gt, len(items), config.ground_truth
        )
    items = ingest.hash_items(items)
    logger.info("listed %d images under %s", len(items), config.input)
    return items


@task(name="select-todo", cache_policy=NO_CACHE, persist_result=False)
def select_todo(
    config: RunConfig, items: list[ingest.ImageItem], config_hash: str
) -> tuple[list[ingest.ImageItem], int]:
    """``(images to process, number skipped)``: skip those the store already holds for this config."""
    if config.force:
        return list(items), 0
    done = done_hashes(Store(config.out), config_hash, retry_errors=config.retry_errors)
    todo, skipped = ingest.split_done(items, done)
    if skipped:
        get_run_logger().info(
            "%d images already processed with config %s: skipped (force=True recomputes them)",
            len(skipped),
            config_hash,
        )
    return todo, len(skipped)
