"""Fixtures of the operations tests (helpers in ``ops_helpers.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ops_helpers import Processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    procs = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield procs
    finally:
        procs.stop_all()
