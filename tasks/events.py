"""Prefect side of batch detection: the ``segflow.batch.arrived`` event and who sends it.

The event (one per complete batch, see :mod:`segflow.watch`)::

    event     segflow.batch.arrived
    resource  {"prefect.resource.id": "segflow.batch.<name>", "prefect.resource.name": "<name>",
               "segflow.batch.uri": "<uri>"}
    payload   {"uri": "<uri>", "n_images": <int>, "name": "<name>", "reason": "marker|manifest|quiet"}
    id        uuid5 of the URI (:attr:`segflow.watch.Batch.event_id`): a repeat is dropped by the
              trigger service, which remembers the event ids it has evaluated

The deployment ``segment-batch/on-new-batch`` (``deployments/prefect.yaml``) has a
``DeploymentEventTrigger`` on it whose parameters are templated from the payload.

Two senders:

* :class:`EventSender` (the long-running ``segflow watch``): opens an events client per batch and
  returns only once the event went out on the API's websocket; it raises when the API cannot be
  reached, so the watcher keeps the batch pending and retries (``emit_event`` would only queue it
  and drop it silently on failure).
* :func:`poll_batches` (a task, for the scheduled ``watch-batches`` flow): one poll of the same
  watcher with the same sender; the state file must be on a disk that every run sees.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.events import Event

from segflow.watch import DEFAULT_QUIET_PERIOD, Batch, BatchWatcher

__all__ = ["BATCH_ARRIVED", "EventSender", "batch_event_fields", "poll_batches", "require_api_url"]

logger = logging.getLogger(__name__)

BATCH_ARRIVED = "segflow.batch.arrived"


def batch_event_fields(batch: Batch) -> dict[str, Any]:
    """Keyword arguments of ``emit_event`` / ``Event`` for ``batch``."""
    return {
        "event": BATCH_ARRIVED,
        "resource": {
            "prefect.resource.id": batch.resource_id,
            "prefect.resource.name": batch.name,
            "segflow.batch.uri": batch.uri,
        },
        "payload": batch.payload(),
        "id": UUID(batch.event_id),
    }


def require_api_url() -> str:
    """The configured ``PREFECT_API_URL``; ``ValueError`` when there is none (no server to tell)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ValueError(
            "announcing batches needs a running Prefect server: set PREFECT_API_URL, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (segflow server starts one)"
        )
    return str(url)


class EventSender:
    """Callable for :meth:`segflow.watch.BatchWatcher.poll`: sends one batch's event, confirmed.

    Parameters
    ----------
    reconnection_attempts : int
        Websocket reconnections before giving up on one event (it then raises).
    """

    def __init__(self, *, reconnection_attempts: int = 3) -> None:
        self.api_url = require_api_url()
        self.reconnection_attempts = reconnection_attempts

    async def _send(self, event: Event) -> None:
        from prefect.events.clients import get_events_client

        async with get_events_client(reconnection_attempts=self.reconnection_attempts) as client:
            await client.emit(event)

    def __call__(self, batch: Batch) -> Event:
        event = Event(**batch_event_fields(batch))
        asyncio.run(self._send(event))
        logger.info(
            "sent %s for %s (%d images) to %s",
            BATCH_ARRIVED,
            batch.uri,
            batch.n_images,
            self.api_url,
        )
        return event


@task(name="poll-batches", cache_policy=NO_CACHE, persist_result=False)
def poll_batches(
    root: str, *, state_path: str | None = None, quiet_period: float | None = DEFAULT_QUIET_PERIOD
) -> list[dict[str, Any]]:
    """One look at ``root``: announce every new complete batch (confirmed); return their payloads."""
    watcher = BatchWatcher(root, state_path=state_path, quiet_period=quiet_period)
    with watcher.locked():
        batches = watcher.poll(EventSender())
    log = get_run_logger()
    for batch in batches:
        log.info(
            "announced batch %s (%s, %d images): %s",
            batch.name,
            batch.reason,
            batch.n_images,
            batch.uri,
        )
    return [batch.payload() for batch in batches]
