"""The ``train_unet`` flow on tiny synthetic data under a temporary Prefect API: it trains, the
loss falls, per-epoch overlay/curve artifacts are published, and the exported model serves."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("segmentation_models_pytorch")

from segflow.synth import make_dataset
from segflow.train import TrainConfig

pytestmark = [pytest.mark.usefixtures("prefect_harness")]


def test_flow_trains_publishes_and_exports(tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train_unet import train_unet
    from segflow import segmenters
    from segflow.inference import segment_image

    make_dataset(tmp_path / "data", n_images=6, size=(64, 64), seed=3)
    config = TrainConfig(
        images=str(tmp_path / "data" / "images"),
        labels=str(tmp_path / "data" / "labels"),
        out=str(tmp_path / "out"),
        encoder="tu-regnetx_002",
        encoder_depth=3,
        decoder_channels=[16, 8, 8],
        crop=32,
        batch_size=2,
        epochs=2,
        steps_per_epoch=5,
        lr=1e-2,
        val_fraction=0.34,
        threads=1,
        device="cpu",
    )
    state = train_unet(config, return_state=True)
    assert state.is_completed()
    result: dict[str, Any] = state.result()
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert Path(result["onnx_path"]).is_file()

    flt = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:  # artifacts reach the API asynchronously
            artifacts = client.read_artifacts(flow_run_filter=flt)
            if (
                len([a for a in artifacts if a.type == "markdown"]) >= 3
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.5)
    markdown = [str(a.data) for a in artifacts if a.type == "markdown"]
    epochs = [m for m in markdown if m.startswith("# Epoch")]
    assert len(epochs) == 2  # one per epoch
    assert all(m.count("data:image/png;base64,") == 2 for m in epochs)  # overlay + curves
    assert any("Training summary" in m for m in markdown)
    assert {a.type for a in artifacts} >= {"progress", "table", "markdown"}

    # the exported model serves through the nuclei (ONNX) backend
    seg = segmenters.create("nuclei", model_path=result["onnx_path"], threads=1)
    out = segment_image(seg, np.random.default_rng(0).random((1, 64, 64), dtype=np.float32))
    assert out.classes.shape == (64, 64) and out.instances is not None
