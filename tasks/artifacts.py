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


#: Seconds between two updates of a batch run's progress artifact (each is an API call; a
#: 200-image run collects 25 chunks in about 5 s).
PROGRESS_MIN_INTERVAL_S = 1.0


class Progress:
    """A run's progress artifact: ``done / total`` in percent, created at 0 %.

    :meth:`update` sets it, skipping updates closer than ``min_interval_s`` to the previous one
    except the final one (``done == total``). When the API refuses the artifact, a warning is
    logged and updates do nothing: monitoring must not fail the run.
    """

    def __init__(self, name: str, total: int, *, min_interval_s: float = 0.0) -> None:
        self.total = total
        self.min_interval_s = min_interval_s
        self._last = -math.inf
        self.artifact_id: UUID | None = None
        try:
            self.artifact_id = create_progress_artifact(  # type: ignore[assignment]  # sync call returns the UUID
                progress=0.0 if total else 100.0,
                key=artifact_key("progress", name),
                description=f"images processed of {total}",
            )
        except Exception as exc:
            logger.warning("cannot create the progress artifact: %s", exc)

    def update(self, done: int) -> None:
        """Set the artifact to ``done / total`` (see the class docstring for the throttle)."""
        if self.artifact_id is None:
            return
        now = time.monotonic()
        if done < self.total and now - self._last < self.min_interval_s:
            return
        self._last = now
        try:
            update_progress_artifact(
                artifact_id=self.artifact_id, progress=100.0 * done / max(self.total, 1)
            )
        except Exception as exc:
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
