"""segflow.scale: shard split, Dask options, chunk size, the API-server check."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segflow import scale
from segflow.config import DEFAULT_CHUNK_SIZE, RunConfig
from segflow.ingest import ImageItem


def _items(names: list[str]) -> list[ImageItem]:
    return [ImageItem(uri=f"/x/{n}", rel_path=n, image_id=n, size=1) for n in names]


@settings(max_examples=60)
@given(
    names=st.lists(st.text(min_size=1, max_size=20), min_size=0, max_size=40, unique=True),
    count=st.integers(1, 7),
)
def test_shards_partition_the_items(names: list[str], count: int) -> None:
    items = _items(names)
    parts = [scale.select_shard(items, index=i, count=count) for i in range(count)]
    seen = Counter(item.rel_path for part in parts for item in part)
    assert sorted(seen) == sorted(names) and set(seen.values()) <= {1}  # each item exactly once
    for i, part in enumerate(parts):
        assert all(scale.shard_of(item.rel_path, count) == i for item in part)
    assert scale.select_shard(items, index=None, count=count) == items


def test_shard_of_is_stable_and_spread() -> None:
    # fixed values: the split must not change between processes, machines or releases
    assert scale.shard_of("a/b.png", 4) == scale.shard_of("a/b.png", 4)
    import hashlib

    expected = int.from_bytes(hashlib.sha1(b"img_0001.tif").digest()[:8], "big") % 10
    assert scale.shard_of("img_0001.tif", 10) == expected
    counts = Counter(scale.shard_of(f"img_{i:05d}.png", 8) for i in range(8000))
    assert min(counts.values()) > 800  # about 1000 each
    with pytest.raises(ValueError, match="shard count"):
        scale.shard_of("x", 0)
    with pytest.raises(ValueError, match="shard index"):
        scale.select_shard(_items(["a"]), index=3, count=3)


def test_dask_runner_options() -> None:
    assert scale.dask_runner_options(address="tcp://h:8786", workers=3, default_workers=2) == {
        "address": "tcp://h:8786"
    }
    local = scale.dask_runner_options(address=None, workers=None, default_workers=2)
    assert local["cluster_kwargs"]["n_workers"] == 2
    assert local["cluster_kwargs"]["processes"] is True
    assert local["cluster_kwargs"]["threads_per_worker"] == 1
    assert (
        scale.dask_runner_options(address=None, workers=5, default_workers=2)["cluster_kwargs"][
            "n_workers"
        ]
        == 5
    )


def test_effective_chunk_size() -> None:
    base = {"input": "/in", "out": "/out"}
    assert scale.effective_chunk_size(RunConfig(**base)) == DEFAULT_CHUNK_SIZE == 16
    assert (
        scale.effective_chunk_size(RunConfig(**base, task_runner="dask")) == scale.DASK_CHUNK_SIZE
    )
    assert scale.effective_chunk_size(RunConfig(**base, task_runner="dask", chunk_size=8)) == 8


def test_config_scale_options_validated() -> None:
    base = {"input": "/in", "out": "/out"}
    with pytest.raises(ValueError, match="shard_index"):
        RunConfig(**base, shard_index=2, shard_count=2)
    with pytest.raises(ValueError):
        RunConfig(**base, dask_address="localhost:8786")  # needs a scheme
    with pytest.raises(ValueError):
        RunConfig(**base, task_runner="ray")
    cfg = RunConfig(**base, large_image="always", task_runner="dask", dask_workers=2)
    # execution options do not change what a result is
    assert cfg.config_hash() == RunConfig(**base).config_hash()


@pytest.fixture
def health_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()
            self.wfile.write(b"true")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()


def test_require_api_server(health_server: str) -> None:
    with pytest.raises(scale.ApiServerRequiredError, match="PREFECT_API_URL"):
        scale.require_api_server(None)
    assert scale.require_api_server(health_server) == health_server
    dead = health_server.rsplit(":", 1)[0] + ":9/api"  # nothing listens on the discard port
    with pytest.raises(scale.ApiServerRequiredError, match="does not answer"):
        scale.require_api_server(dead, timeout=2.0)
    assert scale.require_api_server(dead, check=False) == dead
