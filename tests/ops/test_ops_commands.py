"""The operations command lines (segflow.ops), the CLI's operations commands, and the agreement of
deployments/prefect.yaml with the flows, the pools and the event (no server needed)."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from segflow import ops
from segflow.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
SEGFLOW = str(Path(sys.executable).with_name("segflow"))


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ops.PREFECT_FILE).read_text())


# -- segflow.ops ------------------------------------------------------------------------------


def test_server_command_and_environment() -> None:
    argv = ops.server_argv(host="127.0.0.1", port=4300, ui=False)
    assert Path(argv[0]).name == "prefect"
    assert argv[1:] == [
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        "4300",
        "--analytics-off",
        "--no-ui",
    ]
    env = ops.server_env(
        {"PREFECT_API_URL": "http://elsewhere/api", "KEEP": "1"}, host="127.0.0.1", port=4300
    )
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_SERVER_UI_API_URL"] == "http://127.0.0.1:4300/api"  # the UI follows --port
    assert env["PREFECT_SERVER_API_PORT"] == "4300" and env["KEEP"] == "1"
    assert "PREFECT_API_URL" not in env
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env  # SQLite by default
    mine = ops.server_env(
        {"PREFECT_UI_API_URL": "https://prefect.example/api", "DO_NOT_TRACK": "0"}, port=4300
    )
    assert (
        "PREFECT_SERVER_UI_API_URL" not in mine and mine["DO_NOT_TRACK"] == "0"
    )  # user's values win
    pg = "postgresql+asyncpg://prefect:pw@db:5432/prefect"
    assert ops.server_env({}, database_url=pg)["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == pg


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ops.server_env({}, database_url="mysql://x"), "postgresql\\+asyncpg://"),
        (lambda: ops.server_argv(port=70000), "port must be in 1..65535"),
        (lambda: ops.worker_argv(limit=0), "limit must be >= 1"),
        (
            lambda: ops.deploy_env({}, project_dir=ROOT, store="/s"),
            "SEGFLOW_INPUT_ROOT is not set: give --input-root",
        ),
        (
            lambda: ops.deploy_env({}, project_dir=ROOT, input_root="/i"),
            "SEGFLOW_STORE is not set: give --store",
        ),
    ],
)
def test_bad_values_are_named(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_api_url_for_wildcard_and_ipv6_hosts() -> None:
    assert ops.api_url("0.0.0.0", 4200) == "http://127.0.0.1:4200/api"
    assert ops.api_url("::1", 4200) == "http://[::1]:4200/api"


def test_deploy_env_and_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = ops.deploy_env(
        {"SEGFLOW_STORE": "store"}, project_dir=ROOT, input_root="s3://bucket/inbox"
    )
    assert env[ops.ENV_PROJECT_DIR] == str(ROOT)
    assert env[ops.ENV_INPUT_ROOT] == "s3://bucket/inbox"  # URLs untouched
    assert env[ops.ENV_STORE] == str(tmp_path / "store")  # paths absolute: workers run elsewhere
    assert ops.deploy_argv()[1:] == [
        "--no-prompt",
        "deploy",
        "--prefect-file",
        ops.PREFECT_FILE,
        "--all",
    ]
    assert ops.deploy_argv(names=["nightly", "report/daily"])[-4:] == [
        "--name",
        "nightly",
        "--name",
        "report/daily",
    ]
    assert ops.worker_argv(pool="segflow-gpu", name="gpu-1", limit=2)[1:] == [
        "worker", "start", "--pool", "segflow-gpu", "--type", "process", "--name", "gpu-1", "--limit", "2",
    ]  # fmt: skip


def test_find_project_dir(tmp_path: Path) -> None:
    assert ops.find_project_dir(ROOT / "segflow" / "segmenters", environ={}) == ROOT
    other = tmp_path / "checkout"
    (other / "deployments").mkdir(parents=True)
    (other / "flows").mkdir()
    (other / ops.PREFECT_FILE).write_text("name: x\n")
    assert ops.find_project_dir(tmp_path, environ={ops.ENV_PROJECT_DIR: str(other)}) == other


# -- prefect.yaml agrees with the code --------------------------------------------------------


def _flow_names() -> dict[str, tuple[str, Any]]:
    """entrypoint -> (flow name, flow object), imported the way `prefect deploy` does."""
    from flows.report import report
    from flows.segment_batch import segment_batch
    from flows.watch_batches import watch_batches

    return {
        "flows/segment_batch.py:segment_batch": (segment_batch.name, segment_batch),
        "flows/watch_batches.py:watch_batches": (watch_batches.name, watch_batches),
        "flows/report.py:report": (report.name, report),
    }


def _fill(value: Any, env: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, env) for k, v in value.items()}
    if isinstance(value, str):
        return re.sub(r"\{\{ \$(\w+) \}\}", lambda m: env[m.group(1)], value)
    return value


def test_prefect_yaml_deployments_match_flows_and_pools(
    prefect_yaml: dict[str, Any], tmp_path: Path
) -> None:
    flows = _flow_names()
    names = []
    env = {
        ops.ENV_INPUT_ROOT: str(tmp_path / "in"),
        ops.ENV_STORE: str(tmp_path / "store"),
        ops.ENV_PROJECT_DIR: str(ROOT),
    }
    for deployment in prefect_yaml["deployments"]:
        flow_name, flow = flows[deployment["entrypoint"]]
        names.append(f"{flow_name}/{deployment['name']}")
        assert deployment["work_pool"]["name"] in (ops.CPU_POOL, ops.GPU_POOL)
        # the deployment's parameters bind to the flow (and the config validates)
        params = _fill(deployment["parameters"], env)
        inspect.signature(flow.fn).bind(**params)
        if "config" in params:
            RunConfig(**params["config"])
    assert tuple(names) == ops.DEPLOYMENTS
    placeholders = set(re.findall(r"\{\{ \$(\w+) \}\}", json.dumps(prefect_yaml)))
    assert placeholders == {ops.ENV_PROJECT_DIR, ops.ENV_INPUT_ROOT, ops.ENV_STORE}


def test_prefect_yaml_trigger_matches_the_event(prefect_yaml: dict[str, Any]) -> None:
    from flows.segment_batch import segment_batch
    from segflow.watch import Batch
    from tasks.events import BATCH_ARRIVED, batch_event_fields

    (deployment,) = [d for d in prefect_yaml["deployments"] if d["name"] == "on-new-batch"]
    (trigger,) = deployment["triggers"]
    fields = batch_event_fields(Batch("b1", "/in/b1", 4, "marker", "f"))
    assert trigger["expect"] == [BATCH_ARRIVED] == [fields["event"]]
    pattern = trigger["match"]["prefect.resource.id"]
    assert re.fullmatch(
        pattern.replace(".", r"\.").replace("*", ".*"), fields["resource"]["prefect.resource.id"]
    )
    # every templated value names a payload key the watcher sends, and binds to the flow
    templated = re.findall(r"\{\{ event\.payload\.(\w+) \}\}", json.dumps(trigger["parameters"]))
    assert "uri" in templated and set(templated) <= set(fields["payload"])
    inspect.signature(segment_batch.fn).bind(**trigger["parameters"])


# -- the CLI ----------------------------------------------------------------------------------


def _cli(
    *args: str, env_extra: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update(env_extra or {})
    return subprocess.run(
        [SEGFLOW, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_cli_watch_print_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "b1").mkdir(parents=True)
    (inbox / "b1" / "a.png").write_bytes(b"x")
    (inbox / "b1" / "_READY").write_bytes(b"")
    (inbox / "b2").mkdir()
    (inbox / "b2" / "a.png").write_bytes(b"x")
    state = tmp_path / "state.json"
    args = (
        "watch",
        str(inbox),
        "--once",
        "--print",
        "--quiet-period",
        "off",
        "--state",
        str(state),
    )
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert lines == [
        {
            "resource_id": "segflow.batch.b1",
            "uri": str(inbox / "b1"),
            "n_images": 1,
            "name": "b1",
            "reason": "marker",
        }
    ]
    again = _cli(*args)
    assert again.returncode == 0 and again.stdout == "" and "0 batches announced" in again.stderr


def test_cli_refuses_without_a_server_and_bad_values(tmp_path: Path) -> None:
    for command in (
        ["setup"],
        ["worker"],
        ["deploy", "--input-root", "/i", "--store", "/s"],
        ["watch", str(tmp_path)],
    ):
        result = _cli(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "needs a Prefect server" in result.stderr and "PREFECT_API_URL" in result.stderr
    bad = _cli("watch", str(tmp_path), "--quiet-period", "-3")
    assert bad.returncode == 2 and "seconds >= 0 or 'off'" in bad.stderr
    missing = _cli(
        "deploy", "--store", "/s", env_extra={"PREFECT_API_URL": "http://127.0.0.1:9/api"}
    )
    assert missing.returncode == 2 and "SEGFLOW_INPUT_ROOT is not set" in missing.stderr


def test_cli_report(tmp_path: Path) -> None:
    from segflow.store import Store

    Store(tmp_path / "store").write(
        "metrics",
        [
            {"image_id": "a", "source_uri": "/a.png", "sha256": "0" * 64, "config_hash": "c0000000000000001", "run_id": "r",
             "segmenter": "otsu", "width": 8, "height": 8, "has_ground_truth": True, "fg_iou": 0.5, "fg_fraction": 0.2},
        ],
    )  # fmt: skip
    result = _cli("report", str(tmp_path / "store"), "--out", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "rep" / "report.md"
    assert "| otsu | 1 | 1 | 1 | 1 | 0.500 |" in (tmp_path / "rep" / "report.md").read_text()


def test_cli_help_lists_operations_without_importing_prefect() -> None:
    code = (
        "import sys\nfrom segflow.cli import build_parser\n"
        "p = build_parser()\n"
        "assert 'prefect' not in sys.modules, 'the parser imported prefect'\n"
        "print(p.format_help())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    for command in ("server", "setup", "deploy", "worker", "watch", "report"):
        assert command in result.stdout
