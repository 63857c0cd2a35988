"""segment_batch on a Dask cluster: throughput with 2 worker processes against 1.

The same synthetic batch (``--n`` images of ``--size``², CPU-bound ``watershed``) is segmented by
``segment_batch`` with ``task_runner="dask"`` on an existing ``LocalCluster`` of 1 and of 2
single-threaded worker processes (``dask_address``: the clusters are started before the clock,
so cluster start-up is not counted; Prefect's per-task overhead is). Repetitions alternate 1, 2,
1, 2, ... on fresh stores; medians are reported, ``speedup`` = images/s with 2 workers over
images/s with 1 (target >= 1.6 on an otherwise idle 2-core machine).

Needs a Prefect API server: with ``PREFECT_API_URL`` unset a temporary ``prefect server start``
is launched on a free port (temporary ``PREFECT_HOME``) and stopped at the end.

Usage: ``python benchmarks/dask.py [--n 48] [--size 512] [--reps 2] [--chunk 4]``.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package it measures: run as a script, its folder comes first on
# sys.path and would shadow `dask`. Put the project root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    env = dict(os.environ, PREFECT_HOME=str(work / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("prefect")),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("the Prefect server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-dask-"))
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, url = _start_server(work)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    try:
        from distributed import Client, LocalCluster

        from flows.segment_batch import segment_batch
        from segflow.config import RunConfig
        from segflow.synth import make_dataset

        make_dataset(work / "data", n_images=args.n, size=(args.size, args.size), seed=4)
        times: dict[int, list[float]] = {1: [], 2: []}
        clusters = {
            k: LocalCluster(
                n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None
            )
            for k in (1, 2)
        }
        try:
            for cluster in clusters.values():  # warm-up: imports in the workers
                with Client(cluster) as client:
                    client.run(lambda: __import__("segflow.segmenters.classic"))
            for rep in range(args.reps):
                for k in (1, 2):
                    store = work / f"store-{k}-{rep}"
                    config = RunConfig(
                        input=str(work / "data" / "images"),
                        out=str(store),
                        segmenter="watershed",
                        segmenter_params={"sigma": 1.0, "min_size": 20},
                        task_runner="dask",
                        dask_address=clusters[k].scheduler_address,
                        chunk_size=args.chunk,
                        write_overlays=False,
                    )
                    t0 = time.perf_counter()
                    state = segment_batch(config, return_state=True)
                    dt = time.perf_counter() - t0
                    summary = state.result(raise_on_failure=False)
                    if not state.is_completed() or summary["done"] != args.n:
                        raise RuntimeError(f"run failed: {state} {summary}")
                    times[k].append(dt)
                    print(f"rep {rep}, {k} worker(s): {dt:.1f} s", flush=True)
                    shutil.rmtree(store, ignore_errors=True)
        finally:
            for cluster in clusters.values():
                cluster.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "benchmark": "dask",
            "images": args.n,
            "size": args.size,
            "segmenter": "watershed",
            "chunk_size": args.chunk,
            "reps": args.reps,
            "wall_s_1_worker": round(med[1], 2),
            "wall_s_2_workers": round(med[2], 2),
            "images_per_s_1_worker": round(args.n / med[1], 2),
            "images_per_s_2_workers": round(args.n / med[2], 2),
            "speedup": round(med[1] / med[2], 2),
            "target": 1.6,
            "load_average": os.getloadavg()[0],
        }
        print(json.dumps(result))
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
