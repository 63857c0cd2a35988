"""Helpers of the operations tests (imported as ``ops_helpers``): child processes in their own process groups, a free port,
polling with a deadline, and a tiny REST client of the Prefect API (no Prefect import here, so
these tests never change the pytest process's Prefect settings)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    """Call ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last value {last!r})")


def base_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """The test environment for children: temporary PREFECT_HOME, no telemetry, one BLAS thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEGFLOW_"))}
    env.update(
        {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    env.update(extra)
    return env


class Processes:
    """Children started in their own sessions; :meth:`stop_all` ends each whole process group."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path = PROJECT_ROOT
    ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, name: str, *, grace: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)  # the session id is the child's pid: its whole group
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                # children of the group (flow-run processes, server services) may outlive it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            break

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


class Api:
    """POST/GET against ``http://127.0.0.1:PORT/api``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=30.0)

    def get(self, path: str) -> Any:
        response = self.http.get(f"{self.url}{path}")
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = self.http.post(f"{self.url}{path}", json=dict(body or {}))
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        try:
            return self.http.get(f"{self.url}/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def flow_runs(self, **flow_run_filter: Any) -> list[dict[str, Any]]:
        return list(self.post("/flow_runs/filter", {"flow_runs": flow_run_filter, "limit": 200}))

    def events(self, name: str) -> list[dict[str, Any]]:
        page = self.post("/events/filter", {"filter": {"event": {"name": [name]}}, "limit": 50})
        return list(page["events"])


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
