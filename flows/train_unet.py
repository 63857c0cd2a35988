"""``train_unet``: train a U-Net on image/label folders, keep the best model, export it to ONNX.

Wiring only::

    train-unet-model (per-epoch overlay + curves artifacts) -> publish-training-report

The work is :func:`segflow.train.train` (Prefect-free); ``segflow train`` runs this flow.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from segflow.train import TrainConfig
from tasks.train import publish_training_report, train_model


@flow(name="train-unet", log_prints=False)
def train_unet(config: TrainConfig) -> dict[str, Any]:
    """Train per ``config``; returns the result (best epoch, scores, paths, history)."""
    result = train_model(config)
    publish_training_report(result)
    return result
