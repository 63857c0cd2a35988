"""Prefect API server throughput: task runs recorded per second, and per-task overhead by runner.

Against the server at ``PREFECT_API_URL`` (SQLite or PostgreSQL behind it), ``--clients``
processes each run one flow of ``--tasks`` trivial tasks (``ThreadPoolTaskRunner``, 4 threads) at
the same time. *Recorded* means the server holds the task run in a final state: the clock runs
from the first flow's start until the API lists every task run COMPLETED, so client-side
batching of state updates (Prefect 3 sends task-run events through a websocket, written by the
server's event services) is included. Reported: ``task_runs_per_s``.

``--overhead`` also times ``--tasks`` trivial tasks on the thread pool and on a local Dask
cluster of 2 worker processes (``DaskTaskRunner``), in one flow each, after a warm-up:
``overhead_ms`` = wall time / tasks (work per task is ~0).

Usage: ``PREFECT_API_URL=http://127.0.0.1:4200/api python benchmarks/server_throughput.py
[--clients 4] [--tasks 250] [--overhead]``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CLIENT = """
import sys, time
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

@task(cache_policy=NO_CACHE, persist_result=False)
def tick(i: int) -> int:
    return i

@flow(name="throughput-" + sys.argv[2], task_runner=ThreadPoolTaskRunner(max_workers=4),
      persist_result=False)
def many(n: int) -> int:
    return sum(f.result() for f in [tick.submit(i) for i in range(n)])

many(int(sys.argv[1]))
"""

OVERHEAD = """
import json, sys, time

def main():
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    @task(cache_policy=NO_CACHE, persist_result=False)
    def tick(i: int) -> int:
        return i

    def many(n: int) -> int:
        return sum(f.result() for f in [tick.submit(i) for i in range(n)])

    n = int(sys.argv[1])
    out = {}
    runners = {
        "threads": lambda: ThreadPoolTaskRunner(max_workers=2),
        "dask": lambda: DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1,
                                                       "processes": True, "dashboard_address": None}),
    }
    for name, make in runners.items():
        f = flow(name="overhead-" + name, task_runner=make(), persist_result=False)(many)
        f(4)  # warm-up (cluster start, imports)
        t0 = time.perf_counter()
        f(n)
        out[name + "_overhead_ms"] = (time.perf_counter() - t0) / n * 1000.0
    print(json.dumps(out))

if __name__ == "__main__":
    main()
"""


def _completed(api: str, prefix: str) -> int:
    import httpx

    body = {
        "flows": {"name": {"like_": prefix}},
        "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    return int(httpx.post(f"{api}/task_runs/count", json=body, timeout=30).json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=250)
    parser.add_argument("--overhead", action="store_true")
    args = parser.parse_args()
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise SystemExit("set PREFECT_API_URL to the server to measure")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    tag = f"{os.getpid()}-{int(time.time())}"
    total = args.clients * args.tasks
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-c", CLIENT, str(args.tasks), f"{tag}-{i}"], env=env)
        for i in range(args.clients)
    ]
    for p in procs:
        p.wait()
    t_clients = time.perf_counter() - t0
    while _completed(api, f"throughput-{tag}") < total:
        if time.perf_counter() - t0 > 600:
            break
        time.sleep(0.2)
    t_recorded = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "server_throughput",
        "api": api,
        "clients": args.clients,
        "task_runs": total,
        "recorded": _completed(api, f"throughput-{tag}"),
        "clients_wall_s": round(t_clients, 2),
        "recorded_s": round(t_recorded, 2),
        "task_runs_per_s": round(total / t_recorded, 1),
    }
    if args.overhead:
        proc = subprocess.run(
            [sys.executable, "-c", OVERHEAD, str(args.tasks)],
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            result["overhead_error"] = proc.stderr[-500:]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
