"""Task runners from the run configuration: Prefect's thread pool, or Dask (prefect-dask).

``segment_batch`` is decorated with a thread pool. With ``config.task_runner == "dask"`` the
flow hands itself over to :func:`task_runner_for`'s ``DaskTaskRunner`` (``needs_dask``), so the
choice works the same from the CLI, from Python and from a deployment's parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from prefect import Flow
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from segflow.config import RunConfig, default_workers
from segflow.scale import dask_runner_options, require_api_server

__all__ = ["local_run_settings", "needs_dask", "run_on_dask", "task_runner_for"]


@contextmanager
def local_run_settings() -> Iterator[None]:
    """Settings for flow runs started in this process: no heartbeats on the embedded API.

    A flow-run heartbeat lets a server notice a run whose machine died. The embedded ephemeral
    API lives and dies with this process, so no one is there to notice, while Prefect's heartbeat
    thread (it sleeps in 1 s steps and is joined when the run ends) adds up to a second to
    every run. With ``PREFECT_API_URL`` set, heartbeats stay as configured.
    """
    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def task_runner_for(config: RunConfig, *, workers: int | None = None) -> TaskRunner[Any]:
    """The task runner ``config`` asks for.

    ``threads``: ``ThreadPoolTaskRunner(max_workers=workers or the CPUs available)``.
    ``dask``: ``DaskTaskRunner`` on ``config.dask_address`` or on a local cluster of
    ``config.dask_workers`` worker processes (default: the CPUs available). Raises
    ``segflow.scale.ApiServerRequiredError`` without a reachable Prefect API server and
    ``ImportError`` naming the extra to install without prefect-dask.
    """
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=workers or default_workers())  # type: ignore[return-value]
    require_api_server(PREFECT_API_URL.value())
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - dask is an optional extra
        raise ImportError(
            "task_runner='dask' needs prefect-dask and dask.distributed: pip install 'segflow[dask]'"
        ) from exc
    options = dask_runner_options(
        address=config.dask_address, workers=config.dask_workers, default_workers=default_workers()
    )
    return DaskTaskRunner(**options)  # type: ignore[return-value]


def needs_dask(config: RunConfig) -> bool:
    """True when ``config`` asks for Dask but the running flow's task runner is not Dask."""
    if config.task_runner != "dask":
        return False
    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    return type(runner).__name__ != "DaskTaskRunner"


def run_on_dask(flow: Flow[Any, Any], config: RunConfig) -> State:
    """Run ``flow(config)`` again as a subflow on :func:`task_runner_for`'s Dask runner.

    Returns a state with the child's message and result (the run summary), Completed or Failed
    as the child ended, so the calling flow run ends the same way.
    """
    runner = task_runner_for(config)
    child = cast(State, flow.with_options(task_runner=runner)(config, return_state=True))
    data = child.result(raise_on_failure=False)
    if child.is_completed():
        return Completed(message=child.message, data=data)
    return Failed(message=child.message or "the Dask run failed", data=data)
