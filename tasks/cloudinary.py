"""Prefect wiring of the ``cloudinary`` segmenter: Secret block credentials and a concurrency cap.

The core segmenter (:mod:`segflow.segmenters.cloudinary`) never imports Prefect. This module
gives it, per chunk, what only the orchestration layer has:

* credentials from the Prefect Secret block named by the segmenter parameter ``secret_block``
  (a ``cloudinary://<api_key>:<api_secret>@<cloud_name>`` string or a JSON object with
  ``cloud_name``, ``api_key``, ``api_secret``), resolved inside the task run, so the value is
  never a task parameter, a result or a log line;
* a guard entered around every HTTP request: a slot of the Prefect global concurrency limit
  named ``cloudinary`` (``prefect gcl create cloudinary --limit 4``), which caps the calls in
  flight across every worker, flow run and machine using the same Prefect API. When the limit
  does not exist, Prefect 3's ``concurrency(..., strict=False)`` would log "do not exist -
  skipping acquisition" on every call; the guard checks once per chunk instead, logs one
  warning with the command to create it, and lets calls through uncapped.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, cast

from segflow.config import RunConfig
from segflow.segmenters.base import Segmenter
from segflow.segmenters.cloudinary import CloudinarySegmenter

__all__ = ["CONCURRENCY_LIMIT", "call_guard", "prepare_segmenter", "resolve_secret"]

logger = logging.getLogger(__name__)

#: Name of the Prefect global concurrency limit that caps parallel Cloudinary requests.
CONCURRENCY_LIMIT = "cloudinary"


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run context
        return logger


def resolve_secret(block_name: str) -> Any:
    """The value of the Prefect Secret block ``block_name`` (a string or a JSON object).

    Raises ``ValueError`` naming the block (never its value) when it cannot be loaded.
    """
    from prefect.blocks.system import Secret

    try:
        block = cast(Secret[Any], Secret.load(block_name))  # sync context: the block itself
        return block.get()
    except Exception as exc:
        raise ValueError(
            f"cannot load the Prefect Secret block {block_name!r} holding the Cloudinary "
            f"credentials ({type(exc).__name__}); create it with "
            f"Secret(value='cloudinary://<api_key>:<api_secret>@<cloud_name>').save({block_name!r})"
        ) from None


def call_guard(name: str = CONCURRENCY_LIMIT) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of context managers holding one slot of the global concurrency limit ``name``.

    Falls back to a no-op (with one warning) when the limit does not exist or the Prefect API
    cannot be asked.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        _logger().warning(
            "Prefect global concurrency limit %r does not exist: Cloudinary requests are not "
            "capped; create it with `prefect gcl create %s --limit 4`",
            name,
            name,
        )
        return contextlib.nullcontext
    except Exception as exc:
        _logger().warning(
            "cannot read the Prefect concurrency limit %r (%s): Cloudinary requests are not capped",
            name,
            type(exc).__name__,
        )
        return contextlib.nullcontext

    def guard() -> AbstractContextManager[Any]:
        return concurrency(name, occupy=1, strict=False)

    return guard


def prepare_segmenter(config: RunConfig) -> Segmenter | None:
    """A ``cloudinary`` segmenter bound to its Secret block and concurrency guard, or ``None``
    for every other segmenter (the chunk then builds its own)."""
    if config.segmenter != "cloudinary":
        return None
    segmenter = config.create_segmenter()
    if not isinstance(segmenter, CloudinarySegmenter):  # pragma: no cover - registry guarantees it
        raise TypeError(f"segmenter 'cloudinary' built a {type(segmenter).__name__}")
    block = segmenter.secret_block
    credentials = resolve_secret(block) if block else None
    return segmenter.bind(credentials=credentials, call_guard=call_guard())
