"""Prefect tasks of the training flow: train (publishing every epoch) and the closing report.

Artifacts are monitoring, not data: a failure to publish one is logged and never fails the run.
Per epoch: a markdown artifact with the validation overlay (thumbnail) and the loss/score curves
inline as PNG data URIs, and a progress artifact over the epochs. The full-size PNGs are in the
output folder (``epochs/epoch_NNN.png``, ``curves.png``).
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from segflow.overlay import thumbnail, to_data_uri
from segflow.train import EpochReport, TrainConfig, format_result
from segflow.train import train as _train
from tasks.artifacts import Progress, artifact_key

logger = logging.getLogger(__name__)


def epoch_markdown(report: EpochReport, *, epochs: int) -> str:
    """Markdown of one epoch: losses, scores, overlay thumbnail and curves (inline PNGs)."""
    scores = " | ".join(f"{k} **{v:.4f}**" for k, v in report.scores.items())
    lines = [
        f"# Epoch {report.epoch + 1} of {epochs}{' (best so far)' if report.best else ''}",
        "",
        f"train loss **{report.train_loss:.4f}**, validation loss **{report.val_loss:.4f}**, "
        f"{scores}; monitored score {report.monitor:.4f}; {report.steps} steps in {report.seconds:.0f} s",
        "",
    ]
    if report.overlay is not None:
        lines += [
            f"Validation image `{report.overlay_name}` (green: true positive, red: false "
            "positive, blue: missed; yellow: predicted contours, cyan: true contours):",
            "",
            f"![overlay]({to_data_uri(thumbnail(report.overlay, max_side=384))})",
            "",
        ]
    if report.curves_png:
        uri = "data:image/png;base64," + base64.b64encode(report.curves_png).decode("ascii")
        lines += ["Loss and validation scores per epoch:", "", f"![curves]({uri})", ""]
    return "\n".join(lines)


class _Publisher:
    """The ``on_epoch`` callback: one markdown artifact per epoch and the progress artifact."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.log = get_run_logger()
        self.progress = Progress(f"train-{config.out}", config.epochs)

    def __call__(self, report: EpochReport) -> None:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in report.scores.items())
        self.log.info(
            "epoch %d: train loss %.4f, val loss %.4f, %s",
            report.epoch,
            report.train_loss,
            report.val_loss,
            scores,
        )
        try:
            create_markdown_artifact(
                markdown=epoch_markdown(report, epochs=self.config.epochs),
                key=artifact_key("train-epoch", self.config.out),
                description=f"epoch {report.epoch + 1}: validation overlay and curves",
            )
        except Exception as exc:  # monitoring must not fail the run
            self.log.warning("cannot publish the epoch artifacts: %s", exc)
        self.progress.update(report.epoch + 1)


@task(name="train-unet-model", cache_policy=NO_CACHE, persist_result=False)
def train_model(config: TrainConfig) -> dict[str, Any]:
    """Run :func:`segflow.train.train`, publishing every epoch; returns the result as a dict."""
    return _train(config, on_epoch=_Publisher(config)).as_dict()


@task(name="publish-training-report", cache_policy=NO_CACHE, persist_result=False)
def publish_training_report(result: dict[str, Any]) -> str:
    """Table of the per-epoch history and a markdown summary; returns the summary text."""
    log = get_run_logger()
    text = format_result(result)
    rows = [
        {
            "epoch": h["epoch"],
            "train_loss": round(h["train_loss"], 5),
            "val_loss": round(h["val_loss"], 5),
            **{k: round(v, 5) for k, v in h["scores"].items()},
            "seconds": round(h["seconds"], 1),
        }
        for h in result["history"]
    ]
    try:
        if rows:
            create_table_artifact(
                table=rows,
                key=artifact_key("train-history", result["out"]),
                description="per-epoch training history",
            )
        create_markdown_artifact(
            markdown="# Training summary\n\n```\n" + text + "\n```\n",
            key=artifact_key("train-summary", result["out"]),
            description="segflow train summary",
        )
    except Exception as exc:  # monitoring must not fail the run
        log.warning("cannot publish the training report: %s", exc)
    return text
