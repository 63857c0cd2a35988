"""Prefect artifacts of a run: progress (per chunk), per-image scores table, markdown summary.

Artifacts are monitoring, not data: a failure to publish one is logged and never fails the run.
"""

from __future__ import annotations

import logging
import math
import re
import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from segflow.evaluate import RunStats, summary_markdown

logger = logging.getLogger(__name__)


def artifact_key(kind: str, name: str) -> str:
    """``segflow-<kind>-<name>`` reduced to what Prefect accepts (lowercase letters, digits, dashes)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    return f"segflow-{kind}-{slug}"


def create_progress(name: str, total: int) -> UUID | None:
    """Create the run's progress artifact at 0 % (``None`` if the API refused it)."""
    try:
        return create_progress_artifact(  # type: ignore[return-value]  # sync call returns the UUID
            progress=0.0 if total else 100.0,
            key=artifact_key("progress", name),
            description=f"images processed of {total}",
        )
    except Exception as exc:  # monitoring must not fail the run
        logger.warning("cannot create the progress artifact: %s", exc)
        return None


#: Seconds between two updates of a run's progress artifact (each is an API call; a 200-image
#: run collects 25 chunks in about 5 s).
PROGRESS_MIN_INTERVAL_S = 1.0


def update_progress(
    artifact_id: UUID | None,
    done: int,
    total: int,
    *,
    last: list[float] | None = None,
) -> None:
    """Set the progress artifact to ``done / total`` (called by the flow after every chunk).

    With ``last`` (a one-element list holding the ``time.monotonic()`` of the previous update,
    updated here), updates closer than :data:`PROGRESS_MIN_INTERVAL_S` are skipped, except the
    final one (``done == total``).
    """
    if artifact_id is None:
        return
    if last is not None:
        now = time.monotonic()
        if done < total and now - last[0] < PROGRESS_MIN_INTERVAL_S:
            return
        last[0] = now
    try:
        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / max(total, 1))
    except Exception as exc:  # monitoring must not fail the run
        logger.warning("cannot update the progress artifact: %s", exc)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


@task(name="publish-report", cache_policy=NO_CACHE, persist_result=False)
def publish_report(stats: RunStats, *, name: str, config_hash: str, out: str) -> str:
    """Table artifact of per-image scores (worst first) and the markdown summary; returns the markdown."""
    log = get_run_logger()
    markdown = summary_markdown(stats, config_hash=config_hash, out=out)
    table = [{k: _jsonable(v) for k, v in row.items()} for row in stats.worst()]
    try:
        if table:
            create_table_artifact(
                table=table,
                key=artifact_key("scores", name),
                description=f"per-image scores, worst foreground IoU first (at most {stats.keep} images)",
            )
        create_markdown_artifact(
            markdown=markdown, key=artifact_key("summary", name), description="segflow run summary"
        )
    except Exception as exc:  # monitoring must not fail the run
        log.warning("cannot publish the report artifacts: %s", exc)
    return markdown
