"""The operations commands of ``segflow``: ``server``, ``setup``, ``deploy``, ``worker``, ``watch``,
``report`` (see ``docs/operations.md``).

Registered by :func:`segflow.cli.build_parser` through :func:`add_commands`. This module stays
Prefect-free like the rest of the core: ``server``, ``deploy`` and ``worker`` run the ``prefect``
command lines of :mod:`segflow.ops`; the two commands that talk to the API in-process get their
Prefect side injected by the CLI (``setup``: :func:`tasks.ops.setup`; ``watch``:
:class:`tasks.events.EventSender`), which imports it lazily, after setting the telemetry defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from segflow import ops

__all__ = ["OpsHooks", "add_commands"]

#: ``setup(limits=..., gpu_pool_limit=...) -> report``; ``event_sender() -> emit(batch)``;
#: ``prepare(verbose=...)`` sets the Prefect environment defaults before any Prefect import.
OpsHooks = Mapping[str, Callable[..., Any]]

_CLIENT_ENV_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}


def _out(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


def _usage_error(command: str, exc: Exception) -> int:
    _err(f"segflow {command}: {exc}")
    return 2


def _require_api(command: str) -> bool:
    if os.environ.get("PREFECT_API_URL"):
        return True
    _err(
        f"segflow {command}: needs a Prefect server: start one with `segflow server`, then "
        f"export PREFECT_API_URL={ops.api_url()}"
    )
    return False


def _client_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in _CLIENT_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _quiet_period(text: str) -> float | None:
    if text.lower() in ("off", "none"):
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be seconds >= 0 or 'off', got {text!r}") from exc
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be seconds >= 0 or 'off', got {text!r}")
    return value


# -- commands -------------------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    """``prefect server start`` with the settings of :func:`segflow.ops.server_env` (replaces this process)."""
    try:
        argv = ops.server_argv(host=args.host, port=args.port, ui=not args.no_ui)
        env = ops.server_env(
            os.environ, host=args.host, port=args.port, database_url=args.database_url
        )
    except (ValueError, FileNotFoundError) as exc:
        return _usage_error("server", exc)
    url = ops.api_url(args.host, args.port)
    _err(
        f"segflow server: UI {url.removesuffix('/api')}  API {url}\n"
        f"  elsewhere: export PREFECT_API_URL={url}\n"
        f"  database: {'PostgreSQL' if args.database_url else 'SQLite under PREFECT_HOME'}"
    )
    os.execve(argv[0], argv, env)  # signals (Ctrl-C, docker stop) reach the server directly
    return 0  # pragma: no cover


def cmd_setup(args: argparse.Namespace, hooks: OpsHooks) -> int:
    """Create or update the work pools and concurrency limits (in-process Prefect client)."""
    hooks["prepare"](verbose=False)
    if not _require_api("setup"):
        return 2
    try:
        report = hooks["setup"](
            limits={"gpu": args.gpu_limit, "cloudinary": args.cloudinary_limit},
            gpu_pool_limit=args.gpu_pool_limit,
        )
    except ValueError as exc:
        return _usage_error("setup", exc)
    for pool, info in report["pools"].items():
        cap = info["concurrency_limit"]
        _out(f"work pool {pool}: type {info['type']}, concurrency limit {cap if cap else 'none'}")
    for name, slots in report["limits"].items():
        _out(f"global concurrency limit {name}: {slots} slots")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """``prefect deploy`` of ``deployments/prefect.yaml`` with the input root and store filled in."""
    if not _require_api("deploy"):
        return 2
    try:
        project = ops.find_project_dir(args.project_dir)
        env = ops.deploy_env(
            _client_env(), project_dir=project, input_root=args.input_root, store=args.store
        )
        argv = ops.deploy_argv(names=args.name or ())
    except (ValueError, FileNotFoundError) as exc:
        return _usage_error("deploy", exc)
    _err(
        f"segflow deploy: {project / ops.PREFECT_FILE} (input root {env[ops.ENV_INPUT_ROOT]}, "
        f"store {env[ops.ENV_STORE]})"
    )
    return subprocess.call(argv, cwd=project, env=env)


def cmd_worker(args: argparse.Namespace) -> int:
    """``prefect worker start --type process`` on a pool (replaces this process)."""
    if not _require_api("worker"):
        return 2
    try:
        argv = ops.worker_argv(pool=args.pool, name=args.name, limit=args.limit)
    except (ValueError, FileNotFoundError) as exc:
        return _usage_error("worker", exc)
    os.execve(argv[0], argv, _client_env())
    return 0  # pragma: no cover


def _print_batch(batch: Any) -> None:
    """``segflow watch --print``: one JSON line per batch instead of an event."""
    _out(json.dumps({"resource_id": batch.resource_id, **batch.payload()}))


def _log_to_stderr(*names: str) -> None:
    """INFO lines of these loggers on stderr (after Prefect's import configured logging)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in names:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False


def cmd_watch(args: argparse.Namespace, hooks: OpsHooks) -> int:
    """Poll ``ROOT`` and announce complete batches (events, or JSON lines with ``--print``)."""
    from segflow.watch import DEFAULT_MANIFESTS, DEFAULT_MARKERS, BatchWatcher, WatcherBusyError

    hooks["prepare"](verbose=args.verbose)
    try:
        watcher = BatchWatcher(
            args.root,
            state_path=args.state,
            quiet_period=args.quiet_period,
            markers=tuple(args.marker or DEFAULT_MARKERS),
            manifests=tuple(args.manifest or DEFAULT_MANIFESTS),
        )
    except ValueError as exc:
        return _usage_error("watch", exc)
    emit: Callable[[Any], Any] = _print_batch
    if not args.print:
        if not _require_api("watch"):
            return 2
        emit = hooks["event_sender"]()
    _log_to_stderr("segflow.watch", "tasks.events")
    quiet = "off" if args.quiet_period is None else f"{args.quiet_period:g} s"
    _err(
        f"segflow watch: {args.root} every {args.interval:g} s, quiet period {quiet}, state {watcher.state_path}"
    )
    # Ctrl-C and SIGTERM (``docker stop``; as PID 1 Python would ignore it) end the loop cleanly
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        count = watcher.run(emit, interval=args.interval, once=args.once, stop=stop)
    except (WatcherBusyError, OSError, ValueError) as exc:
        _err(f"segflow watch: {exc}")
        return 1
    _err(f"segflow watch: {count} batches announced")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report.md`` (plots inline) and the PNG files of a store."""
    from segflow.report import write_report

    try:
        path = write_report(args.store, args.out, last_runs=args.last_runs)
    except ValueError as exc:
        return _usage_error("report", exc)
    _out(str(path))
    return 0


# -- parser ---------------------------------------------------------------------------------------

COMMANDS: tuple[str, ...] = ("server", "setup", "deploy", "worker", "watch", "report")


def add_commands(sub: Any, hooks: OpsHooks) -> None:
    """Add the operations sub-commands to ``sub`` (an argparse sub-parsers action).

    ``hooks``: ``prepare`` (``verbose=`` -> None), ``setup`` (see :func:`tasks.ops.setup`) and
    ``event_sender`` (no argument -> ``emit(batch)`` callable), supplied by :mod:`segflow.cli`.
    """
    server = sub.add_parser(
        "server",
        help="start a Prefect server (UI + API), analytics off",
        description="prefect server start with analytics off and the offline v1 UI; SQLite under "
        "PREFECT_HOME, or PostgreSQL with --database-url (production).",
    )
    server.add_argument(
        "--host",
        default=ops.DEFAULT_HOST,
        help=f"address to listen on (default {ops.DEFAULT_HOST})",
    )
    server.add_argument(
        "--port", type=int, default=ops.DEFAULT_PORT, help=f"port (default {ops.DEFAULT_PORT})"
    )
    server.add_argument(
        "--database-url", help="postgresql+asyncpg://USER:PASSWORD@HOST:5432/DB (default: SQLite)"
    )
    server.add_argument("--no-ui", action="store_true", help="API only")
    server.set_defaults(func=cmd_server)

    setup = sub.add_parser(
        "setup",
        help="create the work pools and concurrency limits (once per server)",
        description=f"Create or update the process work pools {ops.CPU_POOL} and {ops.GPU_POOL} and "
        "the global concurrency limits gpu and cloudinary. Needs PREFECT_API_URL.",
    )
    setup.add_argument(
        "--gpu-limit",
        type=_positive,
        default=ops.CONCURRENCY_LIMITS["gpu"],
        help="slots of the gpu limit (default 1)",
    )
    setup.add_argument(
        "--cloudinary-limit",
        type=_positive,
        default=ops.CONCURRENCY_LIMITS["cloudinary"],
        help="slots of the cloudinary limit (default 4)",
    )
    setup.add_argument(
        "--gpu-pool-limit",
        type=_positive,
        default=None,
        help=f"flow runs at once in {ops.GPU_POOL} (default: no cap)",
    )
    setup.set_defaults(func=lambda args: cmd_setup(args, hooks))

    deploy = sub.add_parser(
        "deploy",
        help="register the deployments of deployments/prefect.yaml",
        description="prefect deploy --all with the input root and store filled in. Needs PREFECT_API_URL.",
    )
    deploy.add_argument(
        "--input-root",
        help=f"folder or URL whose sub-folders are batches (or ${ops.ENV_INPUT_ROOT})",
    )
    deploy.add_argument("--store", help=f"the Parquet store the runs write (or ${ops.ENV_STORE})")
    deploy.add_argument(
        "--project-dir",
        help=f"folder with deployments/ and flows/ as the workers see it (or ${ops.ENV_PROJECT_DIR}; default: this checkout)",
    )
    deploy.add_argument(
        "--name", action="append", help="deploy only this deployment (repeatable), e.g. nightly"
    )
    deploy.set_defaults(func=cmd_deploy)

    worker = sub.add_parser(
        "worker",
        help="start a process worker that runs the deployments' flow runs",
        description="prefect worker start --type process on a work pool. Needs PREFECT_API_URL.",
    )
    worker.add_argument(
        "--pool",
        default=ops.CPU_POOL,
        help=f"work pool (default {ops.CPU_POOL}; {ops.GPU_POOL} on GPU machines)",
    )
    worker.add_argument("--name", help="worker name (default: generated)")
    worker.add_argument(
        "--limit", type=_positive, default=None, help="flow runs at once on this worker"
    )
    worker.set_defaults(func=cmd_worker)

    watch = sub.add_parser(
        "watch",
        help="announce complete batch folders under ROOT (segflow.batch.arrived), once each",
        description="Watch ROOT (a folder or fsspec URL) and emit segflow.batch.arrived once per "
        "complete sub-folder: one with a _READY marker, a manifest whose files all arrived, or an "
        "unchanged listing for the quiet period. A restart never announces a batch again (state file).",
    )
    watch.add_argument("root", help="folder or URL whose direct sub-folders are batches")
    watch.add_argument(
        "--interval", type=float, default=10.0, help="seconds between looks (default 10)"
    )
    watch.add_argument(
        "--quiet-period",
        type=_quiet_period,
        default=300.0,
        help="seconds without change that complete a batch with no marker, or 'off' (default 300)",
    )
    watch.add_argument(
        "--state",
        help="state file (default ~/.segflow/watch/<hash of ROOT>.json; SEGFLOW_HOME moves it)",
    )
    watch.add_argument(
        "--marker", action="append", help="marker file name, repeatable (default _READY)"
    )
    watch.add_argument(
        "--manifest",
        action="append",
        help="manifest file name, repeatable (default manifest.json, MANIFEST.txt, manifest.txt)",
    )
    watch.add_argument("--once", action="store_true", help="look once and exit")
    watch.add_argument(
        "--print",
        action="store_true",
        help="print batches as JSON lines instead of sending events (no server needed)",
    )
    watch.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    watch.set_defaults(func=lambda args: cmd_watch(args, hooks))

    report = sub.add_parser(
        "report",
        help="write a markdown report of a store (scores per segmenter and over time, PNG plots)",
        description="report.md (plots inline) and the PNG files; the `report` flow publishes the same as an artifact.",
    )
    report.add_argument("store", help="folder of the store")
    report.add_argument(
        "--out", default="segflow-report", help="output folder (default segflow-report)"
    )
    report.add_argument(
        "--last-runs", type=_positive, default=20, help="runs in the run table (default 20)"
    )
    report.set_defaults(func=cmd_report)
