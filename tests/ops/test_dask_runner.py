"""segment_batch on Dask (prefect-dask) against a real Prefect server: the same rows as threads.

A ``prefect server`` child process (temporary PREFECT_HOME, free port) records the runs; a child
Python process runs ``segment_batch`` three times on the same synthetic batch: the thread pool,
a local Dask cluster of 2 worker processes (``task_runner="dask", dask_workers=2``: the flow
hands itself over to a Dask subflow, as a deployment run does), and an existing cluster given by
address (``dask_address``, through ``segment_batch_for`` as the CLI runs it: the Dask runner
chosen before the run) whose task stream shows both workers busy.
About 60 s on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from ops_helpers import BIN, PROJECT_ROOT, Api, Processes, base_env, free_port, wait_for

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]
pytest.importorskip("prefect_dask", reason="the Dask runner needs the dask extra (prefect-dask)")

N_IMAGES, CHUNK = 8, 2

SCRIPT = """
import json, sys
from pathlib import Path

def main():
    from distributed import Client, LocalCluster, get_task_stream
    from flows.segment_batch import segment_batch, segment_batch_for
    from segflow.config import RunConfig
    from segflow.synth import make_dataset

    root = Path(sys.argv[1])
    make_dataset(root / "data", n_images=N_IMAGES, size=(96, 96), seed=5)
    common = dict(input=str(root / "data" / "images"), ground_truth=str(root / "data" / "labels"),
                  gt_format="instances", chunk_size=CHUNK, write_overlays=False,
                  segmenter_params={"sigma": 1.0, "min_size": 10})
    out = {}
    for name, extra in (("threads", {}), ("dask", {"task_runner": "dask", "dask_workers": 2})):
        state = segment_batch(RunConfig(out=str(root / name), **common, **extra), return_state=True)
        out[name] = {"state": state.type.value, "summary": state.result(raise_on_failure=False)}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        config = RunConfig(out=str(root / "address"), task_runner="dask",
                           dask_address=cluster.scheduler_address, **common)
        with get_task_stream(client) as stream:  # runner chosen up front: no hand-over subflow
            state = segment_batch_for(config)(config, return_state=True)
        out["address"] = {"state": state.type.value, "summary": state.result(raise_on_failure=False),
                          "workers": sorted({t["worker"] for t in stream.data})}
    print(json.dumps(out, default=str))

if __name__ == "__main__":
    main()
""".replace("N_IMAGES", str(N_IMAGES)).replace("CHUNK", str(CHUNK))

DROP = (
    "run_id",
    "created_at",
    "t_read_ms",
    "t_preprocess_ms",
    "t_segment_ms",
    "t_stitch_ms",
    "t_evaluate_ms",
    "t_total_ms",
)


def _rows(store: Path, dataset: str, keys: list[str]) -> pd.DataFrame:
    frame = pd.read_parquet(store / dataset)
    frame = frame.drop(columns=[c for c in frame.columns if c in DROP or c == "date"])
    frame = frame[sorted(frame.columns)]
    return frame.sort_values(keys).reset_index(drop=True)


def test_dask_runs_give_the_rows_of_the_thread_runner(tmp_path: Path, processes: Processes) -> None:
    port = free_port()
    home = tmp_path / "prefect-home"
    processes.start(
        "dask-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        base_env(home),
    )
    api = Api(f"http://127.0.0.1:{port}/api")
    wait_for(api.healthy, timeout=120, interval=1.0, what="the Prefect server")

    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = base_env(
        home,
        PREFECT_API_URL=api.url,
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    for name in ("threads", "dask", "address"):
        assert out[name]["state"] == "COMPLETED", out[name]
        assert out[name]["summary"]["done"] == N_IMAGES, out[name]
    # the existing cluster's two workers both ran chunks
    assert len(out["address"]["workers"]) == 2

    # exactly the rows of the thread runner
    for name in ("dask", "address"):
        for dataset, keys in (("metrics", ["image_id"]), ("masks", ["image_id", "instance_id"])):
            mine = _rows(tmp_path / name, dataset, keys)
            ref = _rows(tmp_path / "threads", dataset, keys)
            pd.testing.assert_frame_equal(mine, ref)

    # the Dask workers reported their task runs to the server: one per chunk per run
    runs = api.post("/task_runs/filter", {"limit": 200})
    chunks = [r for r in runs if r["name"].startswith("chunk-") and r["state_type"] == "COMPLETED"]
    assert len(chunks) == 3 * (N_IMAGES // CHUNK)


def test_dask_without_api_server_fails_with_a_clear_message(tmp_path: Path) -> None:
    """``segflow run --task-runner dask`` refuses before starting anything without a server."""
    (tmp_path / "in").mkdir()
    env = base_env(tmp_path / "home")
    proc = subprocess.run(
        [
            str(BIN / "segflow"),
            "run",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--task-runner",
            "dask",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "needs a Prefect API server" in proc.stderr and "PREFECT_API_URL" in proc.stderr
    assert not (tmp_path / "out").exists()
