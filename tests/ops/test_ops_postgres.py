"""PostgreSQL for production: ``segflow server --database-url postgresql+asyncpg://...`` on a real,
throwaway PostgreSQL cluster (Debian's ``postgresql`` package: initdb in a temporary folder, a free
port on 127.0.0.1, trust authentication), then ``segflow setup`` against it, checked in the
database with ``psql``. Skipped where PostgreSQL's programs are not installed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_helpers import Api, Processes, base_env, free_port, wait_for

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

SEGFLOW = str(Path(sys.executable).with_name("segflow"))


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses to run as root: run the cluster as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the cluster")
    base = Path(tempfile.mkdtemp(prefix="segflow-pg-"))
    if os.geteuid() == 0:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, port = base / "data", free_port()
    try:
        subprocess.run(
            _as_postgres(
                [str(pg / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            _as_postgres(
                [
                    str(pg / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(base / "pg.log"),
                    "-w",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        try:
            subprocess.run(
                [
                    str(pg / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "prefect",
                    "prefect",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run(
                _as_postgres([str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                timeout=120,
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_server_on_postgresql(postgres: str, processes: Processes, tmp_path: Path) -> None:
    host, port = postgres.split(":")
    url = f"postgresql+asyncpg://prefect@{postgres}/prefect"
    api_port = free_port()
    processes.start(
        "pg-server",
        [SEGFLOW, "server", "--port", str(api_port), "--database-url", url],
        base_env(tmp_path / "home"),
    )
    api = Api(f"http://127.0.0.1:{api_port}/api")
    wait_for(
        api.healthy,
        timeout=180,
        interval=1.0,
        what=f"the server on PostgreSQL ({processes.log('pg-server')[-2000:]})",
    )
    env = base_env(tmp_path / "home", PREFECT_API_URL=api.url)
    setup = subprocess.run([SEGFLOW, "setup"], env=env, capture_output=True, text=True, timeout=120)
    assert setup.returncode == 0, setup.stderr

    def psql(sql: str) -> str:
        psql_bin = shutil.which("psql") or str(_pg_bin() / "psql")  # type: ignore[operator]
        out = subprocess.run(
            [psql_bin, "-h", host, "-p", port, "-U", "prefect", "-d", "prefect", "-At", "-c", sql],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    # the server's tables live in PostgreSQL, with what `segflow setup` created
    assert psql("SELECT name FROM work_pool WHERE name LIKE 'segflow-%' ORDER BY name").split() == [
        "segflow-cpu",
        "segflow-gpu",
    ]
    limits = psql("SELECT name || '=' || \"limit\" FROM concurrency_limit_v2 ORDER BY name").split()
    assert limits == ["cloudinary=4", "gpu=1"]
    processes.stop("pg-server")
