"""``watch-batches``: one look at an inbox root; announce each new complete batch once.

The scheduled alternative to the long-running ``segflow watch`` (deployment
``watch-batches/every-minute`` in ``deployments/prefect.yaml``, created paused). Detection rules and
the exactly-once state are :mod:`segflow.watch`'s; the event is :mod:`tasks.events`'s. Runs of this
flow must share the state file (a path on a persistent disk), and only one may run at a time (the
deployment's concurrency limit is 1; a second run finding the state file locked fails).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow

from segflow.watch import DEFAULT_QUIET_PERIOD
from tasks.events import poll_batches


@flow(name="watch-batches", flow_run_name="watch-{root}", persist_result=False)
def watch_batches(
    root: str, state_path: str | None = None, quiet_period: float | None = DEFAULT_QUIET_PERIOD
) -> list[dict[str, Any]]:
    """Announce (``segflow.batch.arrived``) every complete batch under ``root`` not announced before.

    Returns the payloads sent (``uri``, ``n_images``, ``name``, ``reason``).
    """
    return poll_batches(
        root,
        state_path=state_path or os.environ.get("SEGFLOW_WATCH_STATE"),
        quiet_period=quiet_period,
    )
