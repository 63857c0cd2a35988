"""Operations: the command lines behind ``segflow server``, ``deploy``, ``worker`` (pure: no Prefect).

Each function returns an ``argv`` list or an environment mapping; the CLI runs them with
:mod:`subprocess`, and the same commands are documented in ``docs/operations.md`` for people who
prefer typing ``prefect ...`` themselves. Names shared with ``deployments/prefect.yaml``:

* work pools :data:`CPU_POOL` (``segflow-cpu``) and :data:`GPU_POOL` (``segflow-gpu``), both of
  type ``process``: a GPU worker is a process worker started on a machine with a GPU;
* global concurrency limits :data:`CONCURRENCY_LIMITS` ``gpu`` and ``cloudinary``: code that uses
  the GPU or the Cloudinary API takes a slot with ``prefect.concurrency.sync.concurrency(name)``;
* the environment variables that ``prefect.yaml`` reads at deploy time: :data:`ENV_PROJECT_DIR`,
  :data:`ENV_INPUT_ROOT`, :data:`ENV_STORE` (see :func:`deploy_env`).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "CONCURRENCY_LIMITS",
    "CPU_POOL",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEPLOYMENTS",
    "ENV_INPUT_ROOT",
    "ENV_PROJECT_DIR",
    "ENV_STORE",
    "GPU_POOL",
    "PREFECT_FILE",
    "api_url",
    "deploy_argv",
    "deploy_env",
    "find_project_dir",
    "prefect_executable",
    "server_argv",
    "server_env",
    "worker_argv",
]

CPU_POOL = "segflow-cpu"
GPU_POOL = "segflow-gpu"
CONCURRENCY_LIMITS: Mapping[str, int] = {"gpu": 1, "cloudinary": 4}
"""Default slots: one GPU job at a time per limit holder; four concurrent Cloudinary calls."""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
PREFECT_FILE = "deployments/prefect.yaml"
DEPLOYMENTS: tuple[str, ...] = (
    "segment-batch/nightly",
    "segment-batch/on-new-batch",
    "segment-batch/gpu",
    "watch-batches/every-minute",
    "report/daily",
)
"""Every deployment of ``deployments/prefect.yaml`` (``flow-name/deployment-name``)."""

ENV_PROJECT_DIR = "SEGFLOW_PROJECT_DIR"
ENV_INPUT_ROOT = "SEGFLOW_INPUT_ROOT"
ENV_STORE = "SEGFLOW_STORE"

#: Set on the server unless the user set them: no telemetry, no outside requests from the UI.
_SERVER_ENV_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # the v1 UI makes no outside requests (the v2 UI fetches a remote analytics config)
    "PREFECT_SERVER_UI_V2_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}


def prefect_executable() -> str:
    """The ``prefect`` command beside this Python (the virtual environment's), else on ``PATH``."""
    beside = Path(sys.executable).with_name("prefect")
    if beside.exists():
        return str(beside)
    found = shutil.which("prefect")
    if found is None:
        raise FileNotFoundError(
            "the prefect command was not found beside this Python nor on PATH; install segflow "
            "with pip (it depends on prefect)"
        )
    return found


def find_project_dir(
    start: str | Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The folder holding ``deployments/prefect.yaml`` and ``flows/`` (the code workers run).

    Looked up in this order: ``$SEGFLOW_PROJECT_DIR``; ``start`` (default the current folder) and
    its parents; the checkout this package was imported from (an editable install).
    Raises ``FileNotFoundError`` naming the places searched.
    """
    env = os.environ if environ is None else environ
    candidates: list[Path] = []
    if env.get(ENV_PROJECT_DIR):
        candidates.append(Path(env[ENV_PROJECT_DIR]))
    here = Path(start) if start is not None else Path.cwd()
    candidates.extend([here, *here.resolve().parents])
    candidates.append(Path(__file__).resolve().parents[1])
    for folder in candidates:
        if (folder / PREFECT_FILE).is_file() and (folder / "flows").is_dir():
            return folder.resolve()
    raise FileNotFoundError(
        f"no segflow project (a folder with {PREFECT_FILE} and flows/) at ${ENV_PROJECT_DIR}, "
        f"{here} or its parents, or beside the installed package; run from the checkout or set "
        f"{ENV_PROJECT_DIR}"
    )


def api_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """``http://HOST:PORT/api`` (what workers, the watcher and flows use as ``PREFECT_API_URL``)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/api"


def _check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, got {port}")


def server_argv(
    *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, ui: bool = True
) -> list[str]:
    """``prefect server start --host HOST --port PORT --analytics-off [--no-ui]``."""
    _check_port(port)
    argv = [
        prefect_executable(),
        "server",
        "start",
        "--host",
        host,
        "--port",
        str(port),
        "--analytics-off",
    ]
    if not ui:
        argv.append("--no-ui")
    return argv


def server_env(
    environ: Mapping[str, str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    database_url: str | None = None,
) -> dict[str, str]:
    """``environ`` plus the server's settings: analytics off, the v1 UI, where the UI finds the API.

    * ``PREFECT_SERVER_API_HOST`` / ``PREFECT_SERVER_API_PORT`` from ``host`` / ``port``;
    * ``PREFECT_SERVER_UI_API_URL`` = :func:`api_url` unless set (``PREFECT_UI_API_URL`` too):
      without it the UI calls port 4200 whatever ``--port`` says, and shows "Can't connect";
      behind a proxy or in Docker set it to the URL browsers reach;
    * ``PREFECT_SERVER_DATABASE_CONNECTION_URL`` = ``database_url``, e.g.
      ``postgresql+asyncpg://prefect:secret@db:5432/prefect`` (production); without it the
      server uses SQLite under ``PREFECT_HOME``.

    Other values the user already set are kept. ``PREFECT_API_URL`` is removed: it is the
    client's setting, and a stale one would point the server's own services elsewhere.
    """
    _check_port(port)
    env = dict(environ)
    for key, value in _SERVER_ENV_DEFAULTS.items():
        env.setdefault(key, value)
    env["PREFECT_SERVER_API_HOST"] = host
    env["PREFECT_SERVER_API_PORT"] = str(port)
    if not (env.get("PREFECT_SERVER_UI_API_URL") or env.get("PREFECT_UI_API_URL")):
        env["PREFECT_SERVER_UI_API_URL"] = api_url(host, port)
    if database_url:
        if not database_url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError(
                "database_url must start with postgresql+asyncpg:// or sqlite+aiosqlite://, got "
                f"{database_url.split('://')[0]}://..."
            )
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    env.pop("PREFECT_API_URL", None)
    return env


def deploy_env(
    environ: Mapping[str, str],
    *,
    project_dir: str | Path,
    input_root: str | None = None,
    store: str | None = None,
) -> dict[str, str]:
    """``environ`` plus what ``prefect.yaml`` reads at deploy time.

    ``SEGFLOW_PROJECT_DIR`` (where workers find ``flows/``), ``SEGFLOW_INPUT_ROOT`` (the folder
    or URL the nightly run scans, whose sub-folders the watcher announces) and ``SEGFLOW_STORE``
    (the Parquet store every run writes). Arguments override the environment; a missing input
    root or store raises ``ValueError``, since ``prefect deploy`` would keep the placeholder.
    """
    env = dict(environ)
    env[ENV_PROJECT_DIR] = str(Path(project_dir).resolve())
    if input_root:
        env[ENV_INPUT_ROOT] = input_root
    if store:
        env[ENV_STORE] = store
    for key, flag in ((ENV_INPUT_ROOT, "--input-root"), (ENV_STORE, "--store")):
        if not env.get(key):
            raise ValueError(f"{key} is not set: give {flag} or export {key}")
    for key in (ENV_INPUT_ROOT, ENV_STORE):
        value = env[key]
        if "://" not in value:
            env[key] = str(Path(value).expanduser().resolve())
    return env


def deploy_argv(*, names: Sequence[str] = ()) -> list[str]:
    """``prefect --no-prompt deploy --prefect-file deployments/prefect.yaml (--all | --name N ...)``.

    Run in the project folder (entry points are relative to it). ``names`` are deployment names
    (``nightly``) or ``flow/deployment`` names; empty means all.
    """
    argv = [prefect_executable(), "--no-prompt", "deploy", "--prefect-file", PREFECT_FILE]
    if not names:
        return [*argv, "--all"]
    for name in names:
        argv += ["--name", name]
    return argv


def worker_argv(
    *, pool: str = CPU_POOL, name: str | None = None, limit: int | None = None
) -> list[str]:
    """``prefect worker start --pool POOL --type process [--name N] [--limit L]``."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 (flow runs at once), got {limit}")
    argv = [prefect_executable(), "worker", "start", "--pool", pool, "--type", "process"]
    if name:
        argv += ["--name", name]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return argv
