"""End to end on a real Prefect server: setup, deploy, worker, watcher, a batch, its run, the UI.

Everything runs as child processes, exactly as a user would start them, with the ``segflow``
commands: ``segflow server`` (127.0.0.1, a free port, a temporary PREFECT_HOME, analytics off),
``segflow setup``, ``segflow deploy`` (``deployments/prefect.yaml``: the cron deployment, the
event-triggered one, ...), ``segflow worker`` and ``segflow watch``. Each child runs in its own
process group, ended in the module fixture's teardown. About 90 s on 2 cores.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import (
    BIN,
    CHROMIUM_FLAGS,
    PROJECT_ROOT,
    Api,
    Processes,
    base_env,
    chromium,
    free_port,
    wait_for,
)

from segflow.store import Store
from segflow.synth import make_dataset

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

SEGFLOW = str(BIN / "segflow")
N_IMAGES = 3


@dataclass
class Stack:
    api: Api
    ui: str
    env: dict[str, str]
    inbox: Path
    store: Path
    state: Path
    procs: Processes
    results: dict[str, Any] = field(default_factory=dict)


def _segflow(
    stack_env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SEGFLOW, *args],
        env=stack_env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, processes: Processes) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("ops")
    port = free_port()
    server_env = base_env(root / "prefect-home")
    processes.start("server", [SEGFLOW, "server", "--port", str(port)], server_env)
    api = Api(f"http://127.0.0.1:{port}/api")
    wait_for(
        api.healthy,
        timeout=120,
        interval=1.0,
        what=f"the Prefect server (log: {processes.log('server')[-2000:]})",
    )

    inbox, store, state = root / "inbox", root / "store", root / "watch-state.json"
    inbox.mkdir()
    env = base_env(
        root / "prefect-home",
        PREFECT_API_URL=api.url,
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="INFO",
    )
    result = _segflow(env, "setup")
    assert result.returncode == 0, result.stderr
    result = _segflow(env, "deploy", "--input-root", str(inbox), "--store", str(store), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    processes.start("worker", [SEGFLOW, "worker"], env)
    yield Stack(api, f"http://127.0.0.1:{port}", env, inbox, store, state, processes)
    # let the worker finish what it started (flow-run processes may sit in sessions of their own)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and api.flow_runs(
        state={"type": {"any_": ["PENDING", "RUNNING", "CANCELLING"]}}
    ):
        time.sleep(1)


def test_setup_created_pools_and_limits(stack: Stack) -> None:
    pools = {p["name"]: p for p in stack.api.post("/work_pools/filter")}
    assert pools["segflow-cpu"]["type"] == pools["segflow-gpu"]["type"] == "process"
    limits = {gcl["name"]: gcl["limit"] for gcl in stack.api.post("/v2/concurrency_limits/filter")}
    watcher = stack.api.get("/deployments/name/watch-batches/every-minute")
    # the one-at-a-time watch-batches deployment holds a limit of its own
    assert limits == {"gpu": 1, "cloudinary": 4, f"deployment:{watcher['id']}": 1}


def test_cron_deployment_registered_with_its_schedule(stack: Stack) -> None:
    nightly = stack.api.get("/deployments/name/segment-batch/nightly")
    (schedule,) = nightly["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC" and schedule["active"]
    assert nightly["parameters"]["config"] == {
        "input": str(stack.inbox),
        "out": str(stack.store),
        "segmenter": "otsu",
    }
    assert nightly["work_pool_name"] == "segflow-cpu"
    assert nightly["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}
    ]
    # the scheduler has already put nightly runs on the calendar, at 02:00 UTC
    runs = wait_for(
        lambda: stack.api.flow_runs(deployment_id={"any_": [nightly["id"]]}),
        timeout=60,
        what="scheduled nightly runs",
    )
    assert all(
        r["state_type"] == "SCHEDULED" and r["expected_start_time"][11:16] == "02:00" for r in runs
    )

    report = stack.api.get("/deployments/name/report/daily")
    assert report["schedules"][0]["schedule"]["cron"] == "0 6 * * *"
    watcher = stack.api.get("/deployments/name/watch-batches/every-minute")
    assert (
        watcher["schedules"][0]["schedule"]["interval"] == 60
        and not watcher["schedules"][0]["active"]
    )


def test_event_trigger_registered(stack: Stack) -> None:
    on_batch = stack.api.get("/deployments/name/segment-batch/on-new-batch")
    automations = [
        a
        for a in stack.api.post("/automations/filter")
        if a["actions"][0].get("deployment_id") == on_batch["id"]
    ]
    (automation,) = automations
    trigger = automation["trigger"]
    assert trigger["expect"] == ["segflow.batch.arrived"]
    assert trigger["match"] == {"prefect.resource.id": "segflow.batch.*"}
    assert trigger["posture"] == "Reactive" and trigger["threshold"] == 1
    params = automation["actions"][0]["parameters"]
    assert params["config"]["input"] == "{{ event.payload.uri }}"
    assert params["config"]["out"] == str(stack.store)


def test_label_run_tags_the_run_with_batch_and_segmenter(stack: Stack) -> None:
    """tasks.monitoring.label_run (for segment_batch) adds batch:/segmenter: tags, keeps others."""
    code = (
        "from prefect import flow, tags\n"
        "from tasks.monitoring import label_run\n"
        "@flow(name='label-check')\n"
        "def check():\n"
        "    return label_run(batch='b-7', segmenter='otsu', expected_images=3, listed=2)\n"
        "with tags('kept'):\n"
        "    print(check())\n"
    )
    result = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [r for r in stack.api.flow_runs() if r["name"] and "batch:b-7" in r["tags"]]
    assert sorted(run["tags"]) == ["batch:b-7", "kept", "segmenter:otsu"]
    logs = stack.api.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
    assert any("announced with 3 images, 2 are listed now" in log["message"] for log in logs)


def _expects_image_count() -> bool:
    from flows.segment_batch import segment_batch

    return "expected_images" in inspect.signature(segment_batch.fn).parameters


def test_batch_arrival_triggers_one_completed_run(stack: Stack, tmp_path: Path) -> None:
    api = stack.api
    on_batch = api.get("/deployments/name/segment-batch/on-new-batch")
    make_dataset(tmp_path / "gen", n_images=N_IMAGES, size=(128, 128), seed=3)
    images = sorted((tmp_path / "gen" / "images").glob("*.png"))

    # a half-written batch (no marker) and a complete one (marker written last)
    half, ready = stack.inbox / "b-half", stack.inbox / "b-ready"
    for batch in (half, ready):
        batch.mkdir()
        for image in images:
            shutil.copy(image, batch / image.name)
    watch = [
        SEGFLOW,
        "watch",
        str(stack.inbox),
        "--interval",
        "1",
        "--quiet-period",
        "off",
        "--state",
        str(stack.state),
    ]
    stack.procs.start("watcher", watch, stack.env)
    (ready / "_READY").write_bytes(b"")
    t0 = time.monotonic()

    # the watcher's event ...
    events = wait_for(
        lambda: api.events("segflow.batch.arrived"),
        timeout=60,
        what=f"the event (watcher log: {stack.procs.log('watcher')[-2000:]})",
    )
    (event,) = events
    assert event["resource"]["prefect.resource.id"] == "segflow.batch.b-ready"
    assert event["payload"] == {
        "uri": str(ready),
        "n_images": N_IMAGES,
        "name": "b-ready",
        "reason": "marker",
    }

    # ... a flow run created by the trigger, completed
    def completed() -> dict[str, Any] | None:
        runs = api.flow_runs(deployment_id={"any_": [on_batch["id"]]})
        done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
        return done[0] if done else None

    run = wait_for(
        completed,
        timeout=150,
        interval=1.0,
        what=f"the triggered run (worker log: {stack.procs.log('worker')[-3000:]})",
    )
    seconds = time.monotonic() - t0
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["parameters"]["config"]["input"] == str(ready)
    if _expects_image_count():
        assert run["parameters"]["expected_images"] == N_IMAGES
    assert run["created_by"]["type"] == "AUTOMATION"
    assert run["name"].startswith("b-ready-")  # named after its batch
    assert {"segflow", "triggered", "segmenter:otsu"} <= set(run["tags"])

    # ... and the batch's rows in the store
    metrics = Store(stack.store).read("metrics")
    assert sorted(metrics["source_uri"]) == sorted(str(ready / i.name) for i in images)
    assert set(metrics["run_id"]) == {run["id"]}
    runs_rows = Store(stack.store).read("runs")
    assert list(runs_rows["flow_run_name"]) == [run["name"]]

    # the half-written batch triggered nothing
    assert all(
        r["parameters"]["config"]["input"] != str(half)
        for r in api.flow_runs(deployment_id={"any_": [on_batch["id"]]})
    )

    # restarting the watcher re-announces nothing
    stack.procs.stop("watcher")
    assert "segflow watch: 1 batches announced" in stack.procs.log(
        "watcher"
    )  # SIGTERM: a clean stop
    again = _segflow(stack.env, *watch[1:], "--once")
    assert again.returncode == 0, again.stderr
    assert "0 batches announced" in again.stderr
    time.sleep(3)
    assert len(api.events("segflow.batch.arrived")) == 1
    assert len(api.flow_runs(deployment_id={"any_": [on_batch["id"]]})) == 1

    # the half batch is still pending: once its marker lands it is the only one announced
    (half / "_READY").write_bytes(b"")
    copy = stack.state.with_name("state-copy.json")
    shutil.copy(stack.state, copy)
    dry = _segflow(
        stack.env,
        "watch",
        str(stack.inbox),
        "--once",
        "--print",
        "--quiet-period",
        "off",
        "--state",
        str(copy),
    )
    assert dry.returncode == 0, dry.stderr
    assert [json.loads(line)["name"] for line in dry.stdout.splitlines()] == ["b-half"]

    stack.results.update(run=run, seconds=seconds)


def test_watch_batches_flow_announces_once(stack: Stack, tmp_path: Path) -> None:
    """The scheduled alternative (flows/watch_batches.py) sends the same event, once; it triggers a run."""
    root = tmp_path / "inbox2"
    (root / "w1").mkdir(parents=True)
    make_dataset(tmp_path / "gen", n_images=1, size=(64, 64), seed=5)
    shutil.copy(next((tmp_path / "gen" / "images").glob("*.png")), root / "w1" / "a.png")
    (root / "w1" / "manifest.json").write_text('["a.png"]')
    code = (
        "import json, sys\n"
        "from flows.watch_batches import watch_batches\n"
        "print(json.dumps(watch_batches(root=sys.argv[1], state_path=sys.argv[2], quiet_period=None)))\n"
    )
    outputs = []
    for _ in range(2):
        result = subprocess.run(
            [str(BIN / "python"), "-c", code, str(root), str(tmp_path / "state.json")],
            env=stack.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert outputs == [
        [{"uri": str(root / "w1"), "n_images": 1, "name": "w1", "reason": "manifest"}],
        [],
    ]
    events = wait_for(
        lambda: [
            e for e in stack.api.events("segflow.batch.arrived") if e["payload"]["name"] == "w1"
        ],
        timeout=60,
        what="the flow's event",
    )
    assert len(events) == 1
    on_batch = stack.api.get("/deployments/name/segment-batch/on-new-batch")
    wait_for(
        lambda: [
            r
            for r in stack.api.flow_runs(deployment_id={"any_": [on_batch["id"]]})
            if r["parameters"]["config"]["input"] == str(root / "w1")
        ],
        timeout=60,
        what="the run triggered by the flow's event",
    )


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    binary = chromium()
    assert binary is not None
    argv = [
        binary,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={user_dir}",
        "--virtual-time-budget=20000",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _headings(markdown: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,3} (.+)$", markdown, flags=re.MULTILINE)]


def test_ui_shows_the_run_and_its_markdown_artifacts(stack: Stack, tmp_path: Path) -> None:
    """Headless Chromium: the finished run's page, and its markdown artifact rendered."""
    if chromium() is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium; docs/operations.md)"
        )
    run = stack.results.get("run")
    if run is None:
        pytest.skip("no finished run: test_batch_arrival_triggers_one_completed_run did not pass")
    out = Path(os.environ.get("SEGFLOW_SCREENSHOT_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)

    # the run page
    page = f"{stack.ui}/runs/flow-run/{run['id']}"
    shot = out / "flow-run.png"
    result = _chromium(
        "--window-size=1400,1800", f"--screenshot={shot}", page, user_dir=tmp_path / "chr"
    )
    assert shot.exists(), result.stderr[-2000:]
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1800, 1400) and pixels.std() > 10  # a rendered page, not a blank one
    dom = _chromium("--dump-dom", page, user_dir=tmp_path / "chr").stdout
    assert run["name"] in dom and "Completed" in dom
    assert "segflow-batch-arrived" in dom  # the automation that created it

    # its markdown artifact, rendered by the UI's markdown renderer
    artifacts = stack.api.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    )
    (summary,) = [a for a in artifacts if a["type"] == "markdown"]
    dom = _chromium(
        "--dump-dom", f"{stack.ui}/artifacts/artifact/{summary['id']}", user_dir=tmp_path / "chr"
    ).stdout
    rendered = re.findall(r'class="[^"]*markdown-renderer__heading[^"]*"[^>]*>([^<]+)', dom)
    assert _headings(summary["data"])[0] in [h.strip() for h in rendered]
    _chromium(
        "--window-size=1400,1800",
        f"--screenshot={out / 'summary-artifact.png'}",
        f"{stack.ui}/artifacts/artifact/{summary['id']}",
        user_dir=tmp_path / "chr",
    )

    # the report flow's artifact: plots inline as data URIs, rendered as images
    result = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "report/daily"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report_dep = stack.api.get("/deployments/name/report/daily")

    def report_done() -> dict[str, Any] | None:
        runs = stack.api.flow_runs(
            deployment_id={"any_": [report_dep["id"]]},
            state={"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}},
        )
        return runs[0] if runs else None

    report_run = wait_for(report_done, timeout=120, interval=1.0, what="the report run")
    assert report_run["state_type"] == "COMPLETED", report_run["state"]
    (artifact,) = stack.api.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [report_run["id"]]}}}
    )
    assert artifact["key"] == "segflow-store-report"
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", artifact["data"])
    assert len(pngs) == 2 and all(base64.b64decode(p).startswith(b"\x89PNG") for p in pngs)
    page = f"{stack.ui}/artifacts/artifact/{artifact['id']}"
    dom = _chromium("--dump-dom", page, user_dir=tmp_path / "chr").stdout
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) == 2
    _chromium(
        "--window-size=1400,2400",
        f"--screenshot={out / 'report-artifact.png'}",
        page,
        user_dir=tmp_path / "chr",
    )
    assert (out / "report-artifact.png").stat().st_size > 10_000
