"""segment_batch on a Dask cluster: throughput with 2 worker processes against 1.

The same synthetic batch (``--n`` images of ``--size``², CPU-bound ``watershed``, about 0.11 s
per 1024² image on one core) is segmented by ``segment_batch`` with ``task_runner="dask"`` on an
existing ``LocalCluster`` of 1 and of 2 single-threaded worker processes (``dask_address``),
through ``segment_batch_for`` as the CLI runs it (the Dask runner chosen before the run, no
hand-over subflow). Cluster start-up is not counted: the clusters are started, and each one's
worker processes warmed by a small flow run (imports, each process's first Prefect task run),
before the clock. Prefect's per-run and per-task overhead is counted. Repetitions alternate 1,
2, 1, 2, ... on fresh stores; medians are reported, ``speedup`` = images/s with 2 workers over
images/s with 1 (target >= 1.6 on an otherwise idle 2-core machine).

The default batch (192 images of 1024², chunks of 12: 16 task runs, 8 per worker) is sized so
that the fixed cost of a run (about 1.5 s: creating the flow run, connecting to the scheduler,
writing the store and the report, finishing the run) is small against the work, as it is for
the large batches Dask is for. On 2 cores the ideal 2x is out of reach: the flow process and the
API server share the cores with the workers (their CPU seconds per run are reported), and two
workers contend for memory bandwidth (a chunk takes ~15 % longer with both busy).

Needs a Prefect API server: with ``PREFECT_API_URL`` unset a temporary ``prefect server start``
is launched on a free port (temporary ``PREFECT_HOME``) and stopped at the end.

Usage: ``python benchmarks/dask.py [--n 192] [--size 1024] [--reps 2] [--chunk 12]``.
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
from typing import Any

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


def _config(work: Path, out: Path, address: str, chunk: int, n: int | None = None) -> Any:
    """The measured run: watershed over ``work/data/images`` (or its first ``n`` images)."""
    from segflow.config import RunConfig

    source = work / "data" / "images"
    if n is not None:  # a small warm-up batch: a folder with the first n images
        source = work / f"warm-input-{n}"
        source.mkdir(exist_ok=True)
        for path in sorted((work / "data" / "images").glob("*.png"))[:n]:
            shutil.copy(path, source / path.name)
    return RunConfig(
        input=str(source),
        out=str(out),
        segmenter="watershed",
        segmenter_params={"sigma": 1.0, "min_size": 20},
        task_runner="dask",
        dask_address=address,
        chunk_size=chunk,
        write_overlays=False,
    )


def _cpu_seconds(server: subprocess.Popen[bytes] | None) -> dict[str, float]:
    """CPU seconds used so far by this (flow) process and by the API server's process tree."""
    import psutil

    own = psutil.Process().cpu_times()
    out = {"flow_process": own.user + own.system, "api_server": 0.0}
    if server is not None:
        try:
            root = psutil.Process(server.pid)
            for proc in [root, *root.children(recursive=True)]:
                t = proc.cpu_times()
                out["api_server"] += t.user + t.system
        except psutil.Error:
            pass
    return out


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
    parser.add_argument("--n", type=int, default=192)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=12)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segflow-dask-"))
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        server, url = _start_server(work)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    try:
        from distributed import Client, LocalCluster

        from flows.segment_batch import segment_batch_for
        from segflow.synth import make_dataset

        make_dataset(work / "data", n_images=args.n, size=(args.size, args.size), seed=4)
        times: dict[int, list[float]] = {1: [], 2: []}
        cpu: dict[int, dict[str, list[float]]] = {
            k: {"flow_process": [], "api_server": []} for k in (1, 2)
        }
        clusters = {
            k: LocalCluster(
                n_workers=k, threads_per_worker=1, processes=True, dashboard_address=None
            )
            for k in (1, 2)
        }
        try:
            for k, cluster in clusters.items():
                # warm-up, part of the cluster start-up: imports, and each worker process's
                # first Prefect task run (API client, settings), ~1.3 s per worker
                with Client(cluster) as client:
                    client.run(lambda: __import__("segflow.segmenters.classic"))
                warm = _config(work, work / f"warm-{k}", cluster.scheduler_address, 1, n=2 * k)
                segment_batch_for(warm)(warm, return_state=True)
            for rep in range(args.reps):
                for k in (1, 2):
                    store = work / f"store-{k}-{rep}"
                    config = _config(work, store, clusters[k].scheduler_address, args.chunk)
                    cpu0 = _cpu_seconds(server)
                    t0 = time.perf_counter()
                    state = segment_batch_for(config)(config, return_state=True)
                    dt = time.perf_counter() - t0
                    cpu1 = _cpu_seconds(server)
                    for key in cpu0:
                        cpu[k][key].append(cpu1[key] - cpu0[key])
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
            "cpu_s_median": {
                f"{k}_worker{'s' if k > 1 else ''}": {
                    key: round(statistics.median(v), 2) for key, v in cpu[k].items()
                }
                for k in (1, 2)
            },
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
