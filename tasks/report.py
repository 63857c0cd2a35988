"""Tasks of the ``report`` flow: build the store-wide report, publish it as a markdown artifact."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from segflow.report import build_report, write_report

__all__ = ["REPORT_ARTIFACT_KEY", "build_store_report", "publish_store_report"]

#: The artifact key: every report run adds a version under this key (the UI keeps the history).
REPORT_ARTIFACT_KEY = "segflow-store-report"


@task(
    name="build-store-report",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=1,
    retry_delay_seconds=5,
)
def build_store_report(store: str, *, last_runs: int = 20, out_dir: str | None = None) -> str:
    """The report's markdown (plots inline); also ``out_dir/report.md`` + PNGs when ``out_dir`` is given."""
    if out_dir:
        path = write_report(store, out_dir, last_runs=last_runs)
        get_run_logger().info("report written to %s", path)
        return path.read_text()
    return build_report(store, last_runs=last_runs).markdown


@task(name="publish-store-report", cache_policy=NO_CACHE, persist_result=False)
def publish_store_report(markdown: str, *, store: str) -> str:
    """Create the markdown artifact (key :data:`REPORT_ARTIFACT_KEY`); return its id."""
    artifact_id = create_markdown_artifact(
        markdown=markdown,
        key=REPORT_ARTIFACT_KEY,
        description=f"segflow report of the store {store}",
    )
    return str(artifact_id)
