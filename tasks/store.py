"""Tasks that append rows to the Parquet store (atomic files, one per dataset and call)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from segflow.evaluate import ChunkResult
from segflow.store import Store


@task(
    name="write-rows", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2
)
def write_rows(out: str, rows: ChunkResult) -> dict[str, int]:
    """Write ``rows`` to the store at ``out``: masks, then errors, then metrics.

    ``metrics`` goes last because a metrics row is what marks an image as done: a crash between
    the writes leaves the image to be redone, never a metrics row without its masks.
    """
    store = Store(out)
    written = {}
    for dataset in ("masks", "errors", "metrics"):
        batch = getattr(rows, dataset)
        if batch:
            store.write(dataset, batch)
        written[dataset] = len(batch)
    get_run_logger().info("wrote %s", ", ".join(f"{n} {d} rows" for d, n in written.items()))
    return written


@task(
    name="write-run", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=2
)
def write_run(out: str, row: dict[str, Any]) -> None:
    """Append the one ``runs`` row of this run."""
    Store(out).write("runs", [row])
