"""Run labels for the Prefect UI: tags that say which batch and which segmenter a run was.

``label_run`` is meant for the first lines of ``segment_batch`` (one call, before the work)::

    label_run(batch=input_name(config.input), segmenter=config.segmenter,
              expected_images=expected_images, listed=len(items))

It adds the tags ``batch:<name>`` and ``segmenter:<name>`` to the current flow run (filter the
Runs page by them), and logs a warning when the listed image count differs from the count the
watcher announced (``expected_images``, from the ``segflow.batch.arrived`` payload): a batch that
changed after it was declared complete. Monitoring never fails a run: API errors are logged.
"""

from __future__ import annotations

import logging
from uuid import UUID

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

__all__ = ["label_run", "run_tags"]

logger = logging.getLogger(__name__)


def run_tags(*, batch: str, segmenter: str) -> list[str]:
    """``["batch:<batch>", "segmenter:<segmenter>"]``."""
    return [f"batch:{batch}", f"segmenter:{segmenter}"]


def label_run(
    *, batch: str, segmenter: str, expected_images: int | None = None, listed: int | None = None
) -> list[str]:
    """Tag the current flow run (keeping its tags); return the tags it has now ([] outside a run)."""
    current_id = flow_run.get_id()
    if current_id is None:
        return []
    run_id = UUID(str(current_id))
    log = get_run_logger()
    if expected_images is not None and listed is not None and expected_images != listed:
        log.warning(
            "batch %s was announced with %d images, %d are listed now (it changed after completion)",
            batch,
            expected_images,
            listed,
        )
    try:
        with get_client(sync_client=True) as client:
            current = list(client.read_flow_run(run_id).tags or [])
            tags = list(dict.fromkeys([*current, *run_tags(batch=batch, segmenter=segmenter)]))
            client.update_flow_run(run_id, tags=tags)
    except Exception as exc:  # monitoring must not fail the run
        log.warning("cannot tag the flow run: %s", exc)
        return []
    return tags
