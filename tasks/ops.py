"""``segflow setup``: the work pools and concurrency limits the deployments expect (idempotent).

Not a task: a plain Prefect-client helper that the CLI calls once per server. It creates or updates

* work pools :data:`segflow.ops.CPU_POOL` and :data:`segflow.ops.GPU_POOL`, both ``process``
  pools with Prefect's default process job template (a GPU worker is a process worker started
  on a machine with a GPU; ``gpu_pool_limit`` caps the GPU pool's concurrent flow runs);
* global concurrency limits ``gpu`` and ``cloudinary`` (:data:`segflow.ops.CONCURRENCY_LIMITS`),
  taken by GPU and Cloudinary code with ``prefect.concurrency.sync.concurrency(name)``.

The same as these commands (which take about 3 s each)::

    prefect work-pool create segflow-cpu --type process --overwrite
    prefect work-pool create segflow-gpu --type process --overwrite
    prefect gcl create gpu --limit 1          # or: prefect gcl update gpu --limit 1
    prefect gcl create cloudinary --limit 4
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolCreate,
)
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

from segflow.ops import CONCURRENCY_LIMITS, CPU_POOL, GPU_POOL

__all__ = ["setup"]


def setup(
    *,
    limits: Mapping[str, int] = CONCURRENCY_LIMITS,
    gpu_pool_limit: int | None = None,
) -> dict[str, Any]:
    """Create or update the pools and limits; return ``{"pools": {...}, "limits": {...}}``.

    ``limits`` maps limit name to slots (each >= 1); ``gpu_pool_limit`` (>= 1 or ``None`` for no
    cap) is the GPU pool's concurrency limit.
    """
    for name, slots in limits.items():
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"concurrency limit {name!r} must be an integer >= 1, got {slots!r}")
    if gpu_pool_limit is not None and gpu_pool_limit < 1:
        raise ValueError(f"gpu_pool_limit must be >= 1 or None (no cap), got {gpu_pool_limit}")
    template = ProcessWorker.get_default_base_job_template()
    report: dict[str, Any] = {"pools": {}, "limits": {}}
    with get_client(sync_client=True) as client:
        for pool, cap, description in (
            (CPU_POOL, None, "segflow CPU work: process workers on any machine"),
            (GPU_POOL, gpu_pool_limit, "segflow GPU work: process workers on machines with a GPU"),
        ):
            created = client.create_work_pool(
                WorkPoolCreate(
                    name=pool,
                    type="process",
                    description=description,
                    base_job_template=template,
                    concurrency_limit=cap,
                ),
                overwrite=True,
            )
            report["pools"][pool] = {
                "type": created.type,
                "concurrency_limit": created.concurrency_limit,
            }
        for name, slots in limits.items():
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots, active=True)
                )
            else:
                client.update_global_concurrency_limit(
                    name, GlobalConcurrencyLimitUpdate(limit=slots, active=True)
                )
            report["limits"][name] = client.read_global_concurrency_limit_by_name(name).limit
    return report
