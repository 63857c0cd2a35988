"""docker/ checked without a Docker engine (none runs on these machines): what can be validated.

* ``docker/compose.yaml`` parses and validates against the Compose specification's JSON schema
  (``compose_spec.json`` beside this file: ``compose/config/compose_spec.json`` of the
  docker-compose 1.29.2 wheel, Apache-2.0), and has the services, volumes, commands and
  environment the deployment needs (server on PostgreSQL, setup, worker, watcher, GPU worker).
* ``docker/Dockerfile`` installs with the project's own ``make venv`` (the pip commands of the
  Makefile that ``make demo`` / ``make test`` run), copies everything the editable install and the
  workers need, keeps telemetry and model hubs off, and selects extras by ``VARIANT``.

Not run here: ``docker build`` and ``docker compose up`` (no engine); see docs/operations.md.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads((Path(__file__).with_name("compose_spec.json")).read_text())
    return jsonschema.Draft201909Validator(schema)


def test_compose_validates_against_the_compose_spec(compose: dict[str, Any]) -> None:
    errors = [f"{e.json_path}: {e.message}" for e in _validator().iter_errors(compose)]
    assert errors == []
    # the schema is strict enough to catch a typo (negative control)
    broken = {
        **compose,
        "services": {
            **compose["services"],
            "worker": {**compose["services"]["worker"], "volumez": []},
        },
    }
    assert any("volumez" in e.message for e in _validator().iter_errors(broken))


def test_compose_services_volumes_and_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "server", "setup", "worker", "watcher", "gpu-worker"}
    assert set(compose["volumes"]) == {"postgres-data", "store", "watch-state"}

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]

    server = services["server"]
    command = server["command"]
    assert command[:2] == ["segflow", "server"]
    url = command[command.index("--database-url") + 1]
    assert re.fullmatch(
        r"postgresql\+asyncpg://prefect:\$\{POSTGRES_PASSWORD:-prefect\}@postgres:5432/prefect", url
    )
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in server["environment"]  # the server is not its own client
    assert server["ports"] == ["127.0.0.1:4200:4200"]  # not exposed beyond the host by default

    for name in ("setup", "worker", "watcher", "gpu-worker"):
        service = services[name]
        assert service["environment"]["PREFECT_API_URL"] == "http://server:4200/api", name
        assert service["environment"]["DO_NOT_TRACK"] == "1", name
        assert (
            service["build"]["dockerfile"] == "docker/Dockerfile"
            and service["build"]["context"] == ".."
        )

    assert services["setup"]["restart"] == "no"
    assert (
        "segflow setup" in services["setup"]["command"][-1]
        and "segflow deploy" in services["setup"]["command"][-1]
    )
    for name in ("worker", "watcher", "gpu-worker"):
        assert (
            services[name]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
        )

    # the watcher and the workers see the inbox at the same path, so announced URIs resolve
    inbox = "${SEGFLOW_INBOX:-./inbox}:/data/inbox:ro"
    assert inbox in services["watcher"]["volumes"] and inbox in services["worker"]["volumes"]
    assert "store:/data/store" in services["worker"]["volumes"]
    watch = services["watcher"]["command"]
    assert watch[:3] == ["segflow", "watch", "/data/inbox"] and "/data/state/watch.json" in watch
    assert "watch-state:/data/state" in services["watcher"]["volumes"]
    assert services["worker"]["command"][-1] == "segflow-cpu"

    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["VARIANT"] == "gpu"
    assert gpu["command"][-1] == "segflow-gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]


def test_compose_deploy_paths_match_prefect_yaml(compose: dict[str, Any]) -> None:
    """The setup service deploys the same input root and store the workers mount."""
    command = compose["services"]["setup"]["command"][-1]
    args = shlex.split(command.split("&&")[1])
    assert args[args.index("--input-root") + 1] == "/data/inbox"
    assert args[args.index("--store") + 1] == "/data/store"


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
    return out


def _make_recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_dockerfile_installs_with_the_makefiles_commands() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    runs = [args for keyword, args in steps if keyword == "RUN"]
    install = [r for r in runs if "make venv" in r]
    assert len(install) == 1
    assert 'make venv VENV=/opt/segflow PYTHON=python EXTRAS="$EXTRAS"' in install[0]
    assert not any("pip install" in r for r in runs), "install through the Makefile only"
    # what `make venv` runs: the very pip commands `make demo` and `make test` use
    recipe = _make_recipe("$(BIN)/.installed")
    assert "$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'" in recipe
    assert "$(PYTHON) -m venv $(VENV)" in recipe
    makefile = (ROOT / "Makefile").read_text()
    for variable in ("PYTHON", "VENV", "EXTRAS"):
        assert re.search(rf"^{variable} \?=", makefile, flags=re.MULTILINE), (
            f"{variable} must be overridable"
        )
    # `make -n` shows the command lines the image build runs, without running them
    dry = subprocess.run(
        ["make", "-n", "-B", "venv", "VENV=/opt/segflow", "PYTHON=python", "EXTRAS=dask,onnx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    assert (
        "/opt/segflow/bin/python -m pip install --quiet -e '.[dask,onnx]'"
        in dry.stdout.splitlines()
    )


def test_dockerfile_variants_copies_and_offline_settings() -> None:
    steps = _instructions(DOCKERFILE.read_text())
    args = {a.split("=")[0]: a.split("=", 1)[1] for k, a in steps if k == "ARG" and "=" in a}
    assert args["VARIANT"] == "cpu"
    extras = {e for name in ("EXTRAS_CPU", "EXTRAS_GPU") for e in args[name].split(",")}
    optional = set(_pyproject()["project"]["optional-dependencies"])
    assert extras <= optional, f"unknown extras {extras - optional}"
    assert "torch" in args["EXTRAS_GPU"].split(",") and "torch" not in args["EXTRAS_CPU"].split(",")
    assert "dev" not in extras  # test tools stay out of the image

    copied = {a.split()[0] for k, a in steps if k == "COPY"}
    assert {"segflow/", "tasks/", "flows/", "deployments/"} <= copied
    copied_files = " ".join(a for k, a in steps if k == "COPY")
    for name in ("Makefile", "pyproject.toml", _pyproject()["project"]["readme"]):
        assert name in copied_files
    packages = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") + "/" for p in packages} <= copied

    env = " ".join(a for k, a in steps if k == "ENV")
    for setting in (
        "DO_NOT_TRACK=1",
        "PREFECT_SERVER_ANALYTICS_ENABLED=false",
        "HF_HUB_OFFLINE=1",
        "SEGFLOW_PROJECT_DIR=/app",
    ):
        assert setting in env
    everything = " ".join(a for _, a in steps).lower()
    for fetch in (
        "curl ",
        "wget ",
        "huggingface-cli",
        "hf_hub_download",
        "from_pretrained",
        "torch.hub",
    ):
        assert fetch not in everything, f"no downloads at build time: found {fetch!r}"
    assert [k for k, _ in steps].count("USER") == 1 and ("USER", "segflow") in steps
    cmd = next(a for k, a in steps if k == "CMD")
    assert json.loads(cmd) == ["segflow", "worker", "--pool", "segflow-cpu"]


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**") :][0] == "**"  # everything out, then the few paths let back in
    allowed = {line.lstrip("!").rstrip("/") for line in ignore if line.startswith("!")}
    steps = _instructions(DOCKERFILE.read_text())
    for keyword, args in steps:
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert source.rstrip("/") in allowed, source


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())
