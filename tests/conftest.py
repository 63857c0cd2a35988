"""Shared fixtures: the read-only real data in ``../shared`` (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep numeric libraries from oversubscribing the 2-core machines tests run on.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGFLOW_SHARED", PROJECT_ROOT.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ``../shared``; skips the calling test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real data not available: {path} is absent (it lives in ../shared beside the project)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real images with ground truth; skips when absent."""
    return shared_path("data")


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """``../shared/models``: real pretrained model files; skips when absent."""
    return shared_path("models")
