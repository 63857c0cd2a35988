"""segment_sharded: a batch split into shards run by 2 process workers of one work pool.

A real ``prefect server`` (child process), a process work pool, a ``segment-batch`` deployment of
this checkout (``Flow.from_source`` + ``deploy``) and two ``prefect worker start --limit 1``
processes. The parent flow (a child Python process) starts one deployment run per shard and
waits. Checked: every image processed exactly once, each worker ran a shard, the parent and its
children completed; a second parent over the same batch processes nothing again. About 60 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ops_helpers import BIN, PROJECT_ROOT, Api, Processes, base_env, free_port, wait_for

pytestmark = [pytest.mark.server, pytest.mark.timeout(420)]

POOL = "shard-test-pool"
N_IMAGES, SHARDS = 10, 2

DEPLOY = """
import sys
from prefect import Flow
flow = Flow.from_source(source=sys.argv[1], entrypoint="flows/segment_batch.py:segment_batch")
print(flow.deploy(name="shards", work_pool_name=sys.argv[2], print_next_steps=False,
                  ignore_warnings=True))
"""

PARENT = """
import json, sys
from pathlib import Path
from flows.segment_sharded import segment_sharded
from segflow.config import RunConfig
from segflow.synth import make_dataset

root = Path(sys.argv[1])
if not (root / "data").exists():
    make_dataset(root / "data", n_images=N_IMAGES, size=(96, 96), seed=2)
config = RunConfig(input=str(root / "data" / "images"), out=str(root / "store"),
                   write_overlays=False)
state = segment_sharded(config, shards=SHARDS, deployment="segment-batch/shards",
                        poll_seconds=1.0, timeout_seconds=240, return_state=True)
print(json.dumps({"state": state.type.value, "message": state.message,
                  "summary": state.result(raise_on_failure=False)}, default=str))
""".replace("N_IMAGES", str(N_IMAGES)).replace("SHARDS", str(SHARDS))


def _python(script: str, *args: str, env: dict[str, str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last) if last.startswith("{") else {"stdout": last}


def test_sharded_batch_runs_once_per_image_across_two_workers(
    tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    home = tmp_path / "prefect-home"
    processes.start(
        "shard-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        base_env(home),
    )
    api = Api(f"http://127.0.0.1:{port}/api")
    wait_for(api.healthy, timeout=120, interval=1.0, what="the Prefect server")
    env = base_env(
        home,
        PREFECT_API_URL=api.url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    created = subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    _python(DEPLOY, str(PROJECT_ROOT), POOL, env=env, timeout=120)
    worker_env = dict(env, PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO")
    for name in ("w1", "w2"):
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
        processes.start(name, [*argv, "--limit", "1", "--name", name], worker_env)

    # both workers polling before the shards are scheduled: a worker still starting up lets the
    # other one run both shards one after the other (seen when the machine was busy)
    def both_online() -> bool:
        workers = api.post(f"/work_pools/{POOL}/workers/filter")
        online = {w["name"] for w in workers if w.get("status", "ONLINE") == "ONLINE"}
        return {"w1", "w2"} <= online

    wait_for(both_online, timeout=120, interval=1.0, what="both workers polling the pool")

    first = _python(PARENT, str(tmp_path), env=env, timeout=300)
    assert first["state"] == "COMPLETED", first
    summary = first["summary"]
    assert summary["child_states"] == ["COMPLETED"] * SHARDS
    assert sum(summary["images_per_shard"]) == N_IMAGES and min(summary["images_per_shard"]) > 0
    assert summary["done"] == N_IMAGES and summary["failed"] == 0

    metrics = pd.read_parquet(tmp_path / "store" / "metrics")
    assert len(metrics) == N_IMAGES and metrics["sha256"].nunique() == N_IMAGES  # each image once
    assert set(metrics["run_id"]) == set(summary["child_runs"])

    # every worker took a share: one shard each (limit 1, both polling). Both workers may try to
    # submit the same run; the server lets one move it to Pending and the other logs an abort.
    def ran(name: str, run: str) -> bool:
        log = processes.log(name)
        return (
            f"submitting flow run '{run}'" in log and f"submission of flow run '{run}'" not in log
        )

    took = {name: [r for r in summary["child_runs"] if ran(name, r)] for name in ("w1", "w2")}
    assert sorted(len(v) for v in took.values()) == [1, 1], took
    children = api.flow_runs(id={"any_": summary["child_runs"]})
    assert len(children) == SHARDS and {r["state_type"] for r in children} == {"COMPLETED"}

    # idempotent: a new parent over the same batch finds everything done
    again = _python(PARENT, str(tmp_path), env=env, timeout=300)
    assert again["state"] == "COMPLETED", again
    assert again["summary"]["done"] == 0 and again["summary"]["skipped"] == N_IMAGES
    assert len(pd.read_parquet(tmp_path / "store" / "metrics")) == N_IMAGES
