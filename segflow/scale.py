"""Scale-out settings without Prefect: Dask task runner options, chunk sizes, shard selection.

The Prefect side (``tasks/runners.py``) turns these plain values into a ``DaskTaskRunner``;
``flows/segment_sharded.py`` uses :func:`shard_of` through ``RunConfig.shard_index``.

Dask needs a Prefect API server
-------------------------------
Prefect's ephemeral mode (no ``PREFECT_API_URL``) starts a temporary API server inside every
process that talks to the API: with Dask, every worker process would start its own server, and
task runs would be recorded in places nobody reads (STACK-NOTES). :func:`require_api_server`
refuses to start a Dask run without a real server and says how to get one.

Chunking
--------
Prefect's per-task overhead is 5-8 ms on the thread pool but 235-420 ms on Dask (measured here:
the task's context is serialised on every submit; ``docs/scaling.md``). With Dask and no chunk size
given, :func:`effective_chunk_size` uses :data:`DASK_CHUNK_SIZE` images per task run, so the
overhead stays a few percent of the work.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TypeVar

__all__ = [
    "DASK_CHUNK_SIZE",
    "ApiServerRequiredError",
    "dask_runner_options",
    "effective_chunk_size",
    "require_api_server",
    "select_shard",
    "shard_of",
]

#: Images per task run on Dask when the configuration does not set ``chunk_size``: at ~50 ms
#: per 1 MP image and ~0.3 s of Prefect overhead per Dask task, 64 images keep the overhead
#: under 10 %.
DASK_CHUNK_SIZE = 64


class ApiServerRequiredError(RuntimeError):
    """A Dask run was asked for without a Prefect API server (``PREFECT_API_URL``)."""


def require_api_server(api_url: str | None, *, check: bool = True, timeout: float = 5.0) -> str:
    """The API URL a Dask run will use; :class:`ApiServerRequiredError` when there is none.

    Parameters
    ----------
    api_url : str or None
        Prefect's ``PREFECT_API_URL`` setting (``prefect.settings.PREFECT_API_URL.value()``).
    check : bool
        Also check that ``<api_url>/health`` answers (an http(s) URL only).
    """
    how = (
        "start one with `segflow server` (or `prefect server start`) and set "
        "PREFECT_API_URL=http://127.0.0.1:4200/api in the environment of the run and of every "
        "Dask worker; see docs/scaling.md"
    )
    if not api_url:
        raise ApiServerRequiredError(
            "task_runner='dask' needs a Prefect API server: without PREFECT_API_URL every Dask "
            f"worker would start its own temporary server and lose the task runs; {how}"
        )
    if check and api_url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
                ok = resp.status == 200
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ApiServerRequiredError(
                f"task_runner='dask' needs a Prefect API server, but PREFECT_API_URL={api_url} "
                f"does not answer ({exc}); {how}"
            ) from exc
        if not ok:
            raise ApiServerRequiredError(
                f"PREFECT_API_URL={api_url}/health did not answer 200; {how}"
            )
    return api_url


def dask_runner_options(
    *, address: str | None, workers: int | None, default_workers: int
) -> dict[str, Any]:
    """Keyword arguments of ``prefect_dask.DaskTaskRunner``.

    ``address`` (``tcp://host:8786``) connects to an existing cluster; otherwise a local cluster
    of ``workers`` (default ``default_workers``) single-threaded worker processes is started
    (processes, not threads: segmenters hold the GIL in Python code), without a dashboard.
    """
    if address:
        return {"address": address}
    n = workers if workers is not None else default_workers
    if n < 1:
        raise ValueError(f"dask workers must be >= 1, got {n}")
    return {
        "cluster_kwargs": {
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    }


def effective_chunk_size(config: Any) -> int:
    """``config.chunk_size`` when given; on Dask without one, :data:`DASK_CHUNK_SIZE`."""
    given = "chunk_size" in getattr(config, "model_fields_set", set())
    if getattr(config, "task_runner", "threads") == "dask" and not given:
        return DASK_CHUNK_SIZE
    return int(config.chunk_size)


def shard_of(key: str, count: int) -> int:
    """The shard ``0..count-1`` of ``key`` (a relative path): sha1 of its UTF-8 bytes, modulo.

    Stable across processes, machines and Python versions (unlike ``hash()``), so every child
    run of a sharded batch computes the same split without being sent the file list.
    """
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % count


T = TypeVar("T")


def select_shard(
    items: Sequence[T], *, index: int | None, count: int, key: str = "rel_path"
) -> list[T]:
    """The items of shard ``index`` of ``count`` (all items when ``index`` is None)."""
    if index is None:
        return list(items)
    if not 0 <= index < count:
        raise ValueError(f"shard index must be in [0, {count}), got {index}")
    return [item for item in items if shard_of(str(getattr(item, key)), count) == index]


def prefect_api_url_from_env() -> str | None:
    """``PREFECT_API_URL`` from the environment (the CLI's check before Prefect is imported)."""
    return os.environ.get("PREFECT_API_URL") or None
