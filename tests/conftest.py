"""Shared fixtures: the read-only real data in ``../shared`` (skipped when absent), a local HTTP
file server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Keep numeric libraries from oversubscribing the 2-core machines tests run on.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGFLOW_SHARED", PROJECT_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ``../shared``; skips the calling test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real data not available: {path} is absent (it lives in ../shared beside the project)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real images with ground truth; skips when absent."""
    return shared_path("data")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """``../shared/models``: real pretrained model files; skips when absent."""
    return shared_path("models")


class FileServer:
    """A real HTTP server on 127.0.0.1 serving a folder (Python's ``http.server``, with the
    directory index pages fsspec's HTTP filesystem lists folders from)."""

    def __init__(self, root: Path) -> None:
        import functools
        import http.server
        import threading

        self.requests: list[str] = []
        self.auth: str | None = None  # when set: the Authorization header every request needs
        log = self.requests
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real file servers

            def log_message(self, *args: object) -> None:
                log.append(self.path)  # the requested paths, for tests that count them

            def _authorised(self) -> bool:
                if outer.auth is None or self.headers.get("Authorization") == outer.auth:
                    return True
                self.send_error(401, "Unauthorized")
                return False

            def do_GET(self) -> None:
                if self._authorised():
                    super().do_GET()

            def do_HEAD(self) -> None:
                if self._authorised():
                    super().do_HEAD()

        class Server(http.server.ThreadingHTTPServer):
            # socketserver's backlog of 5 drops some of zarr's concurrent chunk requests while
            # the test holds the CPU; each dropped connection attempt then waits 1 s
            request_queue_size = 128

        self._server = Server(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[FileServer]:
    """Serves ``tmp_path / "www"`` over HTTP on 127.0.0.1 (skips without fsspec's HTTP extra)."""
    pytest.importorskip("aiohttp", reason="http(s):// inputs need the http extra (aiohttp)")
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    try:
        yield server
    finally:
        server.close()
