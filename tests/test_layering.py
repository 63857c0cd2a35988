"""The core library stays Prefect-free: checked by parsing every module, and by ruff's rule."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "segflow"
FORBIDDEN = ("prefect", "flows", "tasks")


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CORE.rglob("*.py") if p.name != "cli.py"),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_core_module_imports_no_prefect(path: Path) -> None:
    bad = _imported_top_modules(path) & set(FORBIDDEN)
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_ruff_rule_rejects_prefect_import_in_core(tmp_path: Path) -> None:
    """The lint rule fires on a prefect import placed under segflow/ (a copy of the config)."""
    pkg = tmp_path / "segflow"
    pkg.mkdir()
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (pkg / "ruff.toml").write_text((CORE / "ruff.toml").read_text())
    (pkg / "bad.py").write_text("from prefect import flow\n\nflow = flow\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--no-cache",
            "--select",
            "TID251",
            str(pkg / "bad.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "TID251" in result.stdout and "Prefect-free" in result.stdout


def test_core_imports_without_prefect_loaded() -> None:
    """Importing the core modules must not pull prefect into the process."""
    code = (
        "import importlib, pkgutil, sys, segflow\n"
        "for m in pkgutil.walk_packages(segflow.__path__, 'segflow.'):\n"
        "    if m.name != 'segflow.cli':\n"
        "        importlib.import_module(m.name)\n"
        "assert 'prefect' not in sys.modules, 'prefect was imported by the core'\n"
        "assert 'torch' not in sys.modules, 'torch was imported by the core'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
