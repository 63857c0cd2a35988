"""``report``: a markdown artifact summarising a whole store across runs (wiring only).

Scores per segmenter and over time with two PNG plots inline (:mod:`segflow.report`); the
artifact ``segflow-store-report`` appears on the run page and under Artifacts in the UI.
Deployment ``report/daily`` in ``deployments/prefect.yaml``.
"""

from __future__ import annotations

from prefect import flow

from tasks.report import build_store_report, publish_store_report


@flow(name="report", flow_run_name="report-{store}", persist_result=False)
def report(store: str, last_runs: int = 20, out_dir: str | None = None) -> str:
    """Summarise the store at ``store``; return the markdown (also written to ``out_dir`` if given)."""
    markdown = build_store_report(store, last_runs=last_runs, out_dir=out_dir)
    publish_store_report(markdown, store=store)
    return markdown
