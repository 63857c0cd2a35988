"""Tasks of ``segment_sharded``: plan the shards, start one deployment run per shard, wait.

A shard is the set of images whose relative path hashes to it (``segflow.scale.shard_of``), so a
child run only needs ``shard_index`` / ``shard_count`` in its ``RunConfig``: no file lists travel
through the API, and every child lists, hashes and skips (idempotence) exactly as a plain
``segment_batch`` run does.
"""

from __future__ import annotations

import time
from typing import Any, cast
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from segflow import ingest
from segflow.config import RunConfig
from segflow.scale import shard_of
from segflow.store import Store

__all__ = ["plan_shards", "shard_summary", "start_shard", "wait_for_shards"]


@task(
    name="plan-shards",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=5,
)
def plan_shards(config: RunConfig, shards: int) -> list[int]:
    """Images listed per shard (listing only: no hashing), for progress and the summary."""
    items = ingest.list_images(
        config.input, extensions=config.extensions, recursive=config.recursive, exclude=[config.out]
    )
    counts = [0] * shards
    for item in items:
        counts[shard_of(item.rel_path, shards)] += 1
    get_run_logger().info("%d images in %d shards: %s", len(items), shards, counts)
    return counts


@task(
    name="start-shard",
    task_run_name="start-shard-{index}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def start_shard(
    deployment: str, config: RunConfig, index: int, shards: int, idempotency_key: str
) -> str:
    """Create the child flow run of shard ``index`` (returns at once with its id).

    The ``idempotency_key`` makes a retried parent find its existing children instead of
    starting new ones.
    """
    child = config.model_copy(update={"shard_index": index, "shard_count": shards})
    flow_run = cast(
        FlowRun,
        run_deployment(
            name=deployment,
            parameters={"config": child.model_dump(mode="json")},
            timeout=0,
            idempotency_key=idempotency_key,
            flow_run_name=f"shard-{index}-of-{shards}",
            tags=["segflow", "shard"],
        ),
    )
    get_run_logger().info("shard %d/%d: flow run %s", index, shards, flow_run.id)
    return str(flow_run.id)


@task(name="wait-for-shards", cache_policy=NO_CACHE, persist_result=False)
def wait_for_shards(
    run_ids: list[str], counts: list[int], *, poll_seconds: float, timeout_seconds: float | None
) -> dict[str, str]:
    """Poll the child runs until all are final; a progress artifact follows the finished shards.

    Returns ``{run id: final state type}`` (``"TIMEOUT"`` for runs still going at the deadline).
    """
    logger = get_run_logger()
    total = max(1, sum(counts))
    artifact: UUID | None = None
    try:
        artifact = create_progress_artifact(  # type: ignore[assignment]
            progress=0.0, description=f"images in finished shards, of {sum(counts)}"
        )
    except Exception as exc:  # monitoring never fails the run
        logger.warning("cannot create the progress artifact: %s", exc)
    final: dict[str, str] = {}
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    with get_client(sync_client=True) as client:
        while True:
            for index, run_id in enumerate(run_ids):
                if run_id in final:
                    continue
                state = client.read_flow_run(UUID(run_id)).state
                if state is not None and state.is_final():
                    final[run_id] = state.type.value
                    logger.info("shard %d finished: %s", index, state.type.value)
                    done = sum(c for i, c in enumerate(counts) if run_ids[i] in final)
                    if artifact is not None:
                        try:
                            update_progress_artifact(
                                artifact_id=artifact, progress=100.0 * done / total
                            )
                        except Exception as exc:
                            logger.warning("cannot update the progress artifact: %s", exc)
            if len(final) == len(run_ids):
                return final
            if deadline is not None and time.monotonic() > deadline:
                for run_id in run_ids:
                    final.setdefault(run_id, "TIMEOUT")
                return final
            time.sleep(poll_seconds)


@task(name="shard-summary", cache_policy=NO_CACHE, persist_result=False)
def shard_summary(out: str, run_ids: list[str], states: dict[str, str]) -> dict[str, Any]:
    """Totals of the children's ``runs`` rows (done / skipped / failed images) and their states."""
    runs = Store(out).read("runs")
    mine = runs[runs["run_id"].isin(run_ids)] if len(runs) else runs
    return {
        "shards": len(run_ids),
        "child_runs": run_ids,
        "child_states": [states.get(r, "UNKNOWN") for r in run_ids],
        "listed": int(mine["n_images"].sum()) if len(mine) else 0,
        "done": int(mine["n_done"].sum()) if len(mine) else 0,
        "skipped": int(mine["n_skipped"].sum()) if len(mine) else 0,
        "failed": int(mine["n_failed"].sum()) if len(mine) else 0,
    }
