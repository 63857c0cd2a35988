"""``segment_sharded``: one large batch as N child runs of a ``segment-batch`` deployment.

Wiring only::

    plan-shards -> start-shard x N (run_deployment, no wait) -> wait-for-shards -> shard-summary

Each child is a normal ``segment_batch`` run with ``config.shard_index = i`` and
``config.shard_count = N``: it lists the input, keeps the images whose relative path hashes to
its shard (``segflow.scale.shard_of``), hashes them and skips those already in the store. Every
worker of the deployment's work pool therefore takes whole shards; the parent only waits,
reporting progress (a progress artifact over the finished shards' images, and log lines).

Idempotent like everything else: a retried parent finds its existing children through
``run_deployment``'s idempotency key (``segment-sharded/<parent run id>/<i>-of-<N>``); a new
parent over the same batch starts children that skip every image already in the store.

The deployment can be any ``segment-batch`` deployment (its own ``config`` parameters are
replaced per shard); ``segment-batch/nightly`` of ``deployments/prefect.yaml`` by default.
The parent needs a Prefect API server (deployments live there) and workers on the pool.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from segflow.config import RunConfig
from tasks.shards import plan_shards, shard_summary, start_shard, wait_for_shards

DEFAULT_DEPLOYMENT = "segment-batch/nightly"


@flow(name="segment-sharded", persist_result=False, validate_parameters=True)
def segment_sharded(
    config: RunConfig,
    shards: int = 4,
    deployment: str = DEFAULT_DEPLOYMENT,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
) -> State:
    """Split ``config.input`` into ``shards`` child runs of ``deployment`` and wait for them.

    Returns a Completed state whose data is the summary (child runs and states; images listed,
    done, skipped, failed over all children), Failed when a child did not complete.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    parent = str(flow_run.get_id() or "local")
    counts = plan_shards(config, shards)
    run_ids = [
        start_shard(deployment, config, i, shards, f"segment-sharded/{parent}/{i}-of-{shards}")
        for i in range(shards)
    ]
    states = wait_for_shards(
        run_ids, counts, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds
    )
    summary = shard_summary(config.out, run_ids, states)
    summary["images_per_shard"] = counts
    bad = [s for s in summary["child_states"] if s != "COMPLETED"]
    if bad:
        return Failed(
            message=f"{len(bad)} of {shards} shards did not complete: {bad}", data=summary
        )
    return Completed(
        message=f"{shards} shards completed, {summary['done']} images done", data=summary
    )
