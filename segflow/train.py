"""Train a U-Net (segmentation-models-pytorch) on a folder of images and a folder of label images.

Pure torch and numpy, no Prefect: :func:`train` is called by the ``train-unet`` flow (which
publishes the per-epoch reports as artifacts) and can be called directly. torch is imported
inside the functions that need it, so ``import segflow.train`` stays light.

Data
----
``images/<stem>.<ext>`` pairs with ``labels/<stem>.<ext>`` (any readable format). Label images
are read with :func:`segflow.io.read_labels` and mean, by ``label_kind``:

* ``binary``: foreground where the label is non-zero;
* ``instances``: one id per object (0 = background); the model learns the foreground and, with
  ``boundary`` (default), each object's inner boundary band (``boundary_width`` pixels), so
  touching objects separate (:func:`segflow.segmenters.nuclei.instances_from_boundary`);
* ``classes``: class ids 0..K-1 (0 = background); trained with cross-entropy + Dice.

Every image goes through the model's own preprocessing
(:func:`segflow.segmenters.nuclei.prepare_input`: grey or RGB, per-image percentile
normalisation, automatic inversion of bright-background images), the same function that serves
the trained model in torch and ONNX, so training and inference see the same input.

Split
-----
An image is in the validation split when ``sha256(f"{seed}:{stem}")`` read as an integer, mod
10 000, is below ``val_fraction * 10 000``: stable under adding or removing other images and
stated by one line in a model card. ``split.json`` in the output folder lists both sides.

Training
--------
Each step draws ``batch_size`` random crops (image chosen uniformly): random scale
(``scale_range``, log-uniform), position, flips, 90° rotations, and intensity changes (gain,
offset, gamma, Gaussian noise) applied to image and labels jointly (labels by nearest
neighbour). Loss: BCE + soft Dice on the foreground (+ BCE + Dice on the boundary), or CE +
Dice over classes. AdamW with a one-cycle learning-rate schedule over ``epochs``.

After every epoch the model is run on the whole validation images (padded to a multiple of 16):
validation loss, mean foreground IoU, and for instance labels the mean instance F1 at IoU 0.5
and the DSB score (:func:`segflow.metrics.instance_scores`). The monitored score is the mean
of foreground IoU and F1 (instances) or the foreground IoU (binary) or the mean class IoU
(classes). An :class:`EpochReport` with an overlay of one validation image and the curves goes
to ``on_epoch``.

Determinism and resume
----------------------
Weights are initialised from ``seed``; epoch ``e`` draws its crops from
``numpy.random.default_rng([seed, e])`` and seeds torch with ``(seed, e)``. A run stopped after
epoch ``e`` and resumed from ``checkpoints/last.pt`` (model, optimiser, schedule, history,
early-stopping state) therefore continues exactly as the uninterrupted run would have on the
same device and thread count. With ``workers`` > 0 the crops are drawn in that many forked
processes, batch ``s`` of epoch ``e`` from ``default_rng([seed, e, s])``: another stream than
without workers, but the same for any number of them. Resuming refuses a checkpoint written
with different training settings (it names them).

Output folder
-------------
``checkpoints/last.pt``, ``best/`` (smp ``save_pretrained`` + ``segflow.json``: loads with the
``unet`` segmenter), ``model.onnx`` (the best model exported, loads with the ``nuclei`` and
``onnx`` segmenters), ``history.json``, ``curves.png``, ``epochs/epoch_NNN.png`` (validation
overlays), ``split.json``, ``result.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from segflow.io import read_image, read_labels
from segflow.preprocess import to_float_chw
from segflow.segmenters.nuclei import (
    AutoInvert,
    ModelMeta,
    instances_from_outputs,
    prepare_input_steps,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "EpochReport",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "add_train_arguments",
    "augment",
    "boundary_target",
    "config_from_args",
    "file_list_hash",
    "format_result",
    "is_validation",
    "list_pairs",
    "load_sample",
    "lovasz_hinge",
    "plot_curves",
    "split_pairs",
    "train",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

LabelKind = Literal["binary", "instances", "classes"]

#: Fields of :class:`TrainConfig` that may change between a run and its resumption.
RESUMABLE_FIELDS = frozenset(
    {
        "out",
        "epochs",
        "patience",
        "min_delta",
        "resume",
        "device",
        "threads",
        "export_onnx",
        "onnx_weights",
        "time_limit_s",
        "images",
        "labels",
    }
)


class TrainConfig(BaseModel):
    """Settings of one training run (the ``train-unet`` flow's parameter; see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    images: str = Field(description="folder of training images")
    labels: str = Field(description="folder of label images, same stems as the images")
    out: str = Field(description="output folder (checkpoints, best model, ONNX, curves)")
    label_kind: LabelKind = "instances"
    boundary: bool = Field(
        default=True, description="learn an inner-boundary head (instances only)"
    )
    boundary_width: int = Field(default=2, ge=1, le=16)
    class_names: list[str] | None = Field(
        default=None, description="names of the classes, background first (default from the data)"
    )
    channels: Literal[1, 3] = 1
    normalize: Literal["none", "percentile", "minmax", "zero_mean_unit_variance"] = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.8)
    invert: Literal["auto", "never", "always"] = "auto"
    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_depth: int = Field(default=4, ge=3, le=5)
    decoder_channels: list[int] = Field(default_factory=lambda: [64, 32, 16, 16])
    crop: int = Field(default=256, ge=32, description="training crop side (multiple of 16)")
    batch_size: int = Field(default=8, ge=1)
    epochs: int = Field(default=20, ge=1)
    steps_per_epoch: int | None = Field(
        default=None, ge=1, description="default: training images / batch"
    )
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    scale_range: tuple[float, float] = (0.7, 1.4)
    inverted_weight: float = Field(
        default=1.0,
        gt=0,
        description="how often an image the auto-inversion inverts (bright background: "
        "bright-field, H&E) is drawn for a crop, relative to the others",
    )
    intensity: bool = True
    loss: Literal["dice_bce", "lovasz_bce"] = Field(
        default="dice_bce",
        description="loss of the foreground head (binary/instances): Dice over the batch + BCE, "
        "or the Lovasz hinge per crop + BCE (a convex surrogate of each image's foreground "
        "IoU, the score segflow reports; for fine-tuning a trained model)",
    )
    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    val_max_images: int | None = Field(default=None, ge=1)
    max_images: int | None = Field(
        default=None, ge=2, description="use only the first N pairs (tests)"
    )
    seed: int = Field(default=0, ge=0)
    split_seed: int | None = Field(
        default=None,
        ge=0,
        description="seed of the train/validation split (default: seed), so that another "
        "seed can draw other crops on the same split",
    )
    patience: int = Field(default=6, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(default=1e-4, ge=0)
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    workers: int = Field(
        default=0,
        ge=0,
        description="processes drawing the training crops (0: in the training loop); a GPU "
        "waits on the crops without them",
    )
    amp: bool = Field(default=True, description="float16 autocast + channels_last on CUDA")
    cpu_bf16: bool = Field(
        default=False,
        description="bfloat16 autocast + channels_last on the CPU (fast with AMX/AVX512-BF16)",
    )
    init_from: str | None = Field(
        default=None,
        description="start from the weights of a checkpoint folder (e.g. an earlier run's best/)",
    )
    resume: bool = True
    export_onnx: bool = True
    onnx_weights: Literal["float32", "float16"] = Field(
        default="float32",
        description="precision of the weights stored in the ONNX file (float16: half the size, "
        "still computed in float32)",
    )
    time_limit_s: float | None = Field(
        default=None, gt=0, description="stop after the epoch passing this"
    )

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.crop % 16:
            raise ValueError(f"crop must be a multiple of 16, got {self.crop}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range}")
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError(
                f"decoder_channels needs {self.encoder_depth} entries (encoder_depth), "
                f"got {self.decoder_channels}"
            )
        if self.label_kind != "instances" and self.boundary:
            self.boundary = False
        return self

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the checkpoint."""
        saved = {k: v for k, v in self.model_dump(mode="json").items() if k not in RESUMABLE_FIELDS}
        # the crop stream depends on whether workers draw it, not on how many (and checkpoints
        # of runs without workers, written before the field existed, must still resume)
        if self.workers > 0:
            saved["workers"] = True
        if self.inverted_weight == 1.0:  # as before the field existed
            saved.pop("inverted_weight")
        if self.loss == "dice_bce":  # likewise
            saved.pop("loss")
        if self.split_seed is None:  # likewise
            saved.pop("split_seed")
        return saved


# --------------------------------------------------------------------------------------------
# data


def list_pairs(images: str | Path, labels: str | Path) -> list[tuple[str, Path, Path]]:
    """``(stem, image, label)`` for every image whose stem has a label file, sorted by stem.

    ``FileNotFoundError`` for a missing folder or when no pair matches.
    """
    img_dir, lab_dir = Path(images), Path(labels)
    for what, d in (("images", img_dir), ("labels", lab_dir)):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d.resolve()}")
    lab = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    pairs = [
        (p.stem, p, lab[p.stem])
        for p in sorted(img_dir.iterdir())
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.stem in lab
    ]
    if not pairs:
        raise FileNotFoundError(
            f"no image in {img_dir} has a label file with the same stem in {lab_dir} "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return pairs


def file_list_hash(pairs: Sequence[tuple[str, Path, Path]]) -> str:
    """sha256 of the lines ``"<stem> <sha256 image> <sha256 label>\\n"`` in stem order."""
    h = hashlib.sha256()
    for stem, img, lab in sorted(pairs):
        h.update(
            f"{stem} {hashlib.sha256(img.read_bytes()).hexdigest()} "
            f"{hashlib.sha256(lab.read_bytes()).hexdigest()}\n".encode()
        )
    return h.hexdigest()


def is_validation(stem: str, *, val_fraction: float, seed: int) -> bool:
    """The split rule: ``int(sha256(f"{seed}:{stem}"), 16) % 10000 < val_fraction * 10000``."""
    digest = int(hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest(), 16)
    return digest % 10000 < round(val_fraction * 10000)


def split_pairs(
    pairs: Sequence[tuple[str, Path, Path]], *, val_fraction: float, seed: int
) -> tuple[list[tuple[str, Path, Path]], list[tuple[str, Path, Path]]]:
    """(train, validation) by :func:`is_validation`; each side gets at least one pair."""
    val = [p for p in pairs if is_validation(p[0], val_fraction=val_fraction, seed=seed)]
    train_ = [p for p in pairs if not is_validation(p[0], val_fraction=val_fraction, seed=seed)]
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 image/label pairs to split, got {len(pairs)}")
    if not val:  # tiny datasets: move the first training pair
        val, train_ = train_[:1], train_[1:]
    if not train_:
        train_, val = val[:1], val[1:]
    return train_, val


@dataclass
class Sample:
    """One training image: ``image`` (C, H, W) float16 model input, ``labels`` (H, W) int32."""

    stem: str
    image: np.ndarray
    labels: np.ndarray
    #: the auto-inversion inverted it (bright background: bright-field, H&E)
    inverted: bool = False


def load_sample(
    stem: str, image_path: Path, label_path: Path, *, meta: ModelMeta, label_kind: str
) -> Sample:
    """Read and preprocess one pair (``ValueError`` when the sizes differ)."""
    image, steps = prepare_input_steps(to_float_chw(read_image(image_path)), meta)
    inverted = any(isinstance(step, AutoInvert) and step.invert for step in steps)
    labels = read_labels(label_path)
    if labels.shape != image.shape[1:]:
        raise ValueError(
            f"{stem}: label image {label_path.name} is {labels.shape[1]}x{labels.shape[0]}, "
            f"the image is {image.shape[2]}x{image.shape[1]}"
        )
    if label_kind == "binary":
        labels = (labels > 0).astype(np.int32)
    return Sample(stem, image.astype(np.float16), labels.astype(np.int32), inverted=inverted)


def boundary_target(labels: np.ndarray, *, width: int) -> np.ndarray:
    """(H, W) bool: object pixels within ``width`` pixels (chessboard) of another label or background."""
    from scipy import ndimage as ndi

    size = 2 * width + 1
    hi = ndi.maximum_filter(labels, size=size, mode="nearest")
    lo = ndi.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((hi != labels) | (lo != labels))


def augment(
    rng: np.random.Generator,
    sample: Sample,
    *,
    crop: int,
    scale_range: tuple[float, float],
    intensity: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """One random crop: ``(C, crop, crop) float32`` image and ``(crop, crop) int32`` labels.

    Scale (log-uniform in ``scale_range``, output pixels per input pixel), a uniformly random
    centre, borders by reflection; then flips and a 90° rotation; then (``intensity``) gain
    0.7-1.3, offset ±0.1, gamma 0.7-1.4 on the positive part, Gaussian noise sigma 0-0.03.
    """
    import cv2

    img = sample.image.astype(np.float32)
    lab = sample.labels
    _, height, width = img.shape
    lo, hi = scale_range
    s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    m = np.array([[s, 0.0, crop / 2 - s * cx], [0.0, s, crop / 2 - s * cy]], dtype=np.float64)
    planes = [
        cv2.warpAffine(
            p, m, (crop, crop), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        for p in img
    ]
    out = np.stack(planes)
    lab_f = lab.astype(np.float32)  # ids < 2**24 stay exact
    out_lab = cv2.warpAffine(
        lab_f, m, (crop, crop), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101
    ).astype(np.int32)
    if rng.random() < 0.5:
        out, out_lab = out[:, :, ::-1], out_lab[:, ::-1]
    if rng.random() < 0.5:
        out, out_lab = out[:, ::-1, :], out_lab[::-1, :]
    k = int(rng.integers(4))
    out, out_lab = np.rot90(out, k, axes=(1, 2)), np.rot90(out_lab, k)
    if intensity:
        gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-0.1, 0.1)
        gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        pos = np.clip(out, 0.0, None)
        out = np.where(out > 0, pos**gamma, out) * gain + offset
        sigma = rng.uniform(0.0, 0.03)
        out = out + rng.normal(0.0, sigma, size=out.shape)
    return np.ascontiguousarray(out, dtype=np.float32), np.ascontiguousarray(out_lab)


def _targets(labels: np.ndarray, config: TrainConfig) -> np.ndarray:
    """(B, H, W) int labels -> (B, T, H, W) float32 targets (binary/instances) or (B, H, W) classes."""
    if config.label_kind == "classes":
        return labels.astype(np.int64)
    fg = (labels > 0).astype(np.float32)
    if not config.boundary:
        return fg[:, None]
    bd = np.stack([boundary_target(lab, width=config.boundary_width) for lab in labels])
    return np.stack([fg, bd.astype(np.float32)], axis=1)


def _make_batch(
    rng: np.random.Generator, samples: Sequence[Sample], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    imgs, labs = [], []
    weights = np.array([config.inverted_weight if s.inverted else 1.0 for s in samples])
    # equal weights keep the plain draw, so that earlier runs' crop streams stay the same
    p = None if np.all(weights == weights[0]) else weights / weights.sum()
    for _ in range(config.batch_size):
        index = rng.integers(len(samples)) if p is None else rng.choice(len(samples), p=p)
        sample = samples[int(index)]
        img, lab = augment(
            rng,
            sample,
            crop=config.crop,
            scale_range=config.scale_range,
            intensity=config.intensity,
        )
        imgs.append(img)
        labs.append(lab)
    return np.stack(imgs), _targets(np.stack(labs), config)


# what each crop worker process holds: set in the parent before the pool forks
_WORKER_DATA: tuple[Sequence[Sample], TrainConfig] | None = None


def _worker_batch(key: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_DATA is not None
    samples, config = _WORKER_DATA
    return _make_batch(np.random.default_rng(list(key)), samples, config)


@contextmanager
def _crop_pool(samples: Sequence[Sample], config: TrainConfig) -> Iterator[Any]:
    """A pool of ``config.workers`` forked processes holding ``samples`` (None for 0)."""
    global _WORKER_DATA
    if config.workers == 0:
        yield None
        return
    import multiprocessing

    # fork: the workers inherit the decoded samples instead of unpickling a copy each
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(
            f"workers={config.workers} needs the 'fork' start method, which this platform "
            "lacks; use workers=0"
        )
    _WORKER_DATA = (samples, config)
    try:
        with ProcessPoolExecutor(
            config.workers, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            yield pool
    finally:
        _WORKER_DATA = None


def _epoch_batches(
    pool: Any, samples: Sequence[Sample], config: TrainConfig, *, epoch: int, steps: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The ``steps`` training batches of ``epoch``, in order.

    Without a pool, one generator seeded ``[seed, epoch]`` draws them all in turn. With one,
    batch ``s`` comes from its own generator ``[seed, epoch, s]`` in a worker process, so the
    stream is the same for any number of workers; at most ``2 * workers`` batches wait ahead.
    """
    if pool is None:
        rng = np.random.default_rng([config.seed, epoch])
        for _ in range(steps):
            yield _make_batch(rng, samples, config)
        return
    keys = iter([(config.seed, epoch, s) for s in range(steps)])
    pending = deque(pool.submit(_worker_batch, k) for k in islice(keys, 2 * config.workers))
    while pending:
        batch = pending.popleft().result()
        for k in islice(keys, 1):
            pending.append(pool.submit(_worker_batch, k))
        yield batch


# --------------------------------------------------------------------------------------------
# loss, reports


def lovasz_hinge(logits: Any, labels: Any) -> Any:
    """Lovasz hinge loss of binary masks, per image, averaged (Berman et al., CVPR 2018).

    ``logits`` (N, H, W) float tensor, ``labels`` (N, H, W) float tensor of 0/1. The Lovasz
    extension of the Jaccard loss applied to the hinge errors ``1 - logit * (2 label - 1)``: for
    logits of +-1 (a hard mask) it equals ``2 * (1 - IoU)`` of that mask, and it is convex and
    piecewise linear in the logits. An image without foreground gets the largest hinge error
    (its IoU is 0 as soon as one pixel is predicted).
    """
    import torch
    import torch.nn.functional as F

    losses = []
    for logit, label in zip(logits, labels, strict=True):
        logit, label = logit.reshape(-1), label.reshape(-1)
        errors = 1.0 - logit * (2.0 * label - 1.0)
        errors_sorted, order = torch.sort(errors, descending=True)
        gt_sorted = label[order]
        positives = gt_sorted.sum()
        intersection = positives - gt_sorted.cumsum(0)
        union = positives + (1.0 - gt_sorted).cumsum(0)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])  # gradient of the extension
        losses.append(torch.dot(F.relu(errors_sorted), grad))
    return torch.stack(losses).mean()


def _loss(raw: Any, target: Any, *, label_kind: str, loss: str = "dice_bce") -> Any:
    """Dice + BCE per head (binary/instances) or Dice + CE (classes); ``raw`` are logits.

    ``loss="lovasz_bce"``: the foreground head (channel 0) takes :func:`lovasz_hinge` + BCE
    instead; a boundary head keeps Dice + BCE.
    """
    import torch
    import torch.nn.functional as F

    eps = 1.0
    if label_kind == "classes":
        ce = F.cross_entropy(raw, target)
        prob = torch.softmax(raw, dim=1)
        onehot = F.one_hot(target, raw.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
        inter = (prob * onehot).sum(dim=(0, 2, 3))
        denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
        dice = 1.0 - ((2 * inter + eps) / (denom + eps)).mean()
        return ce + dice
    total = raw.new_zeros(())
    for c in range(target.shape[1]):
        logit, t = raw[:, c], target[:, c]
        bce = F.binary_cross_entropy_with_logits(logit, t)
        if c == 0 and loss == "lovasz_bce":
            total = total + bce + lovasz_hinge(logit, t)
            continue
        p = torch.sigmoid(logit)
        dice = 1.0 - (2 * (p * t).sum() + eps) / (p.sum() + t.sum() + eps)
        total = total + bce + dice
    return total


@dataclass
class EpochReport:
    """What one epoch produced (handed to ``on_epoch``)."""

    epoch: int
    train_loss: float
    val_loss: float
    scores: dict[str, float]
    monitor: float
    best: bool
    seconds: float
    steps: int
    overlay: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8
    overlay_name: str = ""
    curves_png: bytes = field(default=b"", repr=False)


@dataclass
class TrainResult:
    """The outcome of :func:`train` (also written to ``result.json``)."""

    out: str
    epochs_run: int
    best_epoch: int
    best_monitor: float
    best_scores: dict[str, float]
    stopped: str
    best_dir: str
    onnx_path: str | None
    history: list[dict[str, Any]]
    n_train: int
    n_val: int
    file_list_sha256: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plot_curves(history: Sequence[dict[str, Any]]) -> bytes:
    """PNG of the loss curves (left) and validation scores (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    keys = sorted({k for h in history for k in h.get("scores", {})})
    for key in keys:
        ax2.plot(epochs, [h["scores"].get(key, math.nan) for h in history], "o-", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score")
    ax2.set_ylim(0, 1)
    if keys:
        ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# validation


def _pad_to_multiple(x: np.ndarray, k: int) -> np.ndarray:
    _, h, w = x.shape
    ph, pw = (-h) % k, (-w) % k
    if not ph and not pw:
        return x
    if h > ph and w > pw:
        return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    return np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")


def _validate(
    model: Any, samples: Sequence[Sample], config: TrainConfig, meta: ModelMeta, device: Any
) -> tuple[float, dict[str, float], tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """(val loss, mean scores, (image, prediction, truth) of the first sample)."""
    import torch

    from segflow.metrics import (
        binary_counts,
        confusion_matrix,
        instance_scores,
        scores_from_counts,
        semantic_scores,
    )

    model.eval()
    losses: list[float] = []
    per: dict[str, list[float]] = {}
    first = None
    with torch.inference_mode():
        for sample in samples:
            img = sample.image.astype(np.float32)
            _, h, w = img.shape
            x = torch.from_numpy(_pad_to_multiple(img, meta.divisor)[None]).to(device)
            raw = model(x)[:, :, :h, :w]
            tgt = _targets(sample.labels[None], config)
            losses.append(
                float(
                    _loss(
                        raw,
                        torch.from_numpy(tgt).to(device),
                        label_kind=config.label_kind,
                        loss=config.loss,
                    )
                )
            )
            raw_np = raw[0].float().cpu().numpy()
            if config.label_kind == "classes":
                e = np.exp(raw_np - raw_np.max(axis=0, keepdims=True))
                probs = e / e.sum(axis=0, keepdims=True)
                pred = probs.argmax(axis=0)
                cm = confusion_matrix(pred, sample.labels, num_classes=meta.num_classes)
                sem = semantic_scores(cm)
                per.setdefault("mean_iou", []).append(sem.mean_iou)
                fg_pred = pred > 0
            else:
                fg = 1.0 / (1.0 + np.exp(-raw_np[0]))
                probs = np.stack([1.0 - fg, fg])
                bd = 1.0 / (1.0 + np.exp(-raw_np[1])) if config.boundary else None
                if config.label_kind == "instances":
                    pred, _, _ = instances_from_outputs(probs, bd)
                    inst = instance_scores(pred, sample.labels)
                    per.setdefault("f1", []).append(inst.f1)
                    per.setdefault("dsb_score", []).append(inst.dsb_score)
                else:
                    pred = (fg > 0.5).astype(np.int32)
                fg_pred = pred > 0
            s = scores_from_counts(*binary_counts(fg_pred, sample.labels > 0))
            per.setdefault("fg_iou", []).append(s["iou"])
            if first is None:
                first = (img, pred, sample.labels)
    means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in per.items()}
    return float(np.mean(losses)), means, first


def _monitor(scores: dict[str, float], label_kind: str) -> float:
    if label_kind == "instances":
        return float(np.nanmean([scores.get("fg_iou", math.nan), scores.get("f1", math.nan)]))
    if label_kind == "classes":
        return scores.get("mean_iou", math.nan)
    return scores.get("fg_iou", math.nan)


# --------------------------------------------------------------------------------------------
# the training loop


def _meta_for(config: TrainConfig, samples: Sequence[Sample]) -> ModelMeta:
    if config.label_kind == "classes":
        k = max(int(s.labels.max(initial=0)) for s in samples) + 1
        names = (
            tuple(config.class_names)
            if config.class_names
            else tuple(["background", *(f"class_{i}" for i in range(1, max(k, 2)))])
        )
        if len(names) < k:
            raise ValueError(
                f"labels hold class ids up to {k - 1} but class_names has {len(names)} names"
            )
    else:
        names = tuple(config.class_names) if config.class_names else ("background", "foreground")
        if len(names) != 2:
            raise ValueError(f"binary/instance labels need 2 class_names, got {names}")
    return ModelMeta(
        channels=config.channels,
        normalize=config.normalize,
        percentiles=config.percentiles,
        invert=config.invert,
        label_kind=config.label_kind,
        class_names=names,
        boundary=config.boundary,
    )


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, str(tmp))
    os.replace(tmp, path)


def _seed_everything(seed: int, epoch: int) -> None:
    import torch

    torch.manual_seed(seed * 1_000_003 + epoch)


def _build(config: TrainConfig, meta: ModelMeta) -> Any:
    from segflow.segmenters.torch_unet import build_model

    out_channels = meta.num_classes if config.label_kind == "classes" else 1 + int(config.boundary)
    return build_model(
        arch=config.arch,
        encoder_name=config.encoder,
        in_channels=config.channels,
        classes=out_channels,
        encoder_depth=config.encoder_depth,
        decoder_channels=tuple(config.decoder_channels),
    )


def train(
    config: TrainConfig, *, on_epoch: Callable[[EpochReport], None] | None = None
) -> TrainResult:
    """Train, validate every epoch, keep the best model, export it to ONNX (see the module doc)."""
    import torch

    from segflow.overlay import draw_overlay, to_png
    from segflow.segmenters._torch import resolve_device, set_threads
    from segflow.segmenters.torch_unet import export_onnx, load_model_dir, save_model_dir

    started = time.monotonic()
    out = Path(config.out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "epochs").mkdir(exist_ok=True)
    device = resolve_device(config.device)
    set_threads(config.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)

    pairs = list_pairs(config.images, config.labels)
    if config.max_images is not None:
        pairs = pairs[: config.max_images]
    data_hash = file_list_hash(pairs)
    split_seed = config.seed if config.split_seed is None else config.split_seed
    train_pairs, val_pairs = split_pairs(pairs, val_fraction=config.val_fraction, seed=split_seed)
    (out / "split.json").write_text(
        json.dumps(
            {
                "rule": f"validation when int(sha256('{split_seed}:' + stem), 16) % 10000 < "
                f"{round(config.val_fraction * 10000)}",
                "file_list_sha256": data_hash,
                "train": [p[0] for p in train_pairs],
                "validation": [p[0] for p in val_pairs],
                "validated_each_epoch": [p[0] for p in val_pairs[: config.val_max_images]],
            },
            indent=1,
        )
    )
    probe_meta = ModelMeta(
        channels=config.channels,
        normalize=config.normalize,
        percentiles=config.percentiles,
        invert=config.invert,
        label_kind=config.label_kind if config.label_kind != "classes" else "binary",
        boundary=False,
    )
    load = lambda p: load_sample(*p, meta=probe_meta, label_kind=config.label_kind)  # noqa: E731
    train_samples = [load(p) for p in train_pairs]
    val_samples = [load(p) for p in val_pairs[: config.val_max_images]]
    meta = _meta_for(config, train_samples + val_samples)
    logger.info("training on %d images, validating on %d", len(train_samples), len(val_samples))

    torch.manual_seed(config.seed)
    model = _build(config, meta)
    if config.init_from is not None:
        source, _, _ = load_model_dir(config.init_from)
        try:
            model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"init_from={config.init_from!r} holds another architecture than "
                f"{config.arch}/{config.encoder} (depth {config.encoder_depth}, decoder "
                f"{config.decoder_channels}, {meta.num_classes} classes): {str(exc)[:300]}"
            ) from exc
        logger.info("initialised from %s", config.init_from)
    model = model.to(device)
    cuda_amp = config.amp and device.type == "cuda"
    cpu_amp = config.cpu_bf16 and device.type == "cpu"
    channels_last = device.type == "cuda" or cpu_amp
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps = config.steps_per_epoch or max(1, math.ceil(len(train_samples) / config.batch_size))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda_amp)

    history: list[dict[str, Any]] = []
    best, best_epoch, bad_epochs, start_epoch = -math.inf, -1, 0, 0
    last = out / "checkpoints" / "last.pt"
    if config.resume and last.is_file():
        state = torch.load(str(last), map_location=device, weights_only=True)
        saved = json.loads(state["fingerprint"])
        now = config.fingerprint()
        differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if differ:
            raise ValueError(
                f"cannot resume from {last}: it was trained with other settings for {differ} "
                f"(checkpoint {[saved.get(k) for k in differ]}, now {[now.get(k) for k in differ]}); "
                "use another out folder or resume=False"
            )
        if config.epochs * steps > int(state["total_steps"]):
            raise ValueError(
                f"cannot resume from {last} with epochs={config.epochs}: its one-cycle learning "
                f"rate schedule ends after {int(state['total_steps'])} steps; train on from its "
                "best/ in a new out folder with init_from (a new schedule)"
            )
        model.load_state_dict(state["model"])
        # the scheduler's constructor rewrites the learning rates: build it first, then restore
        # the optimiser (its rates and moments) and the scheduler's position
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=int(state["total_steps"]), pct_start=0.15
        )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = json.loads(state["history"])
        best, best_epoch = float(state["best"]), int(state["best_epoch"])
        bad_epochs, start_epoch = int(state["bad_epochs"]), int(state["epoch"]) + 1
        logger.info("resumed from %s after epoch %d", last, start_epoch - 1)

    stopped = "epochs"
    if start_epoch > 0 and bad_epochs >= config.patience:
        stopped = "early_stopping"
    with _crop_pool(train_samples, config) as pool:
        for epoch in range(start_epoch, config.epochs):
            if stopped != "epochs":
                break
            t0 = time.monotonic()
            _seed_everything(config.seed, epoch)
            model.train()
            total = 0.0
            for xb, yb in _epoch_batches(pool, train_samples, config, epoch=epoch, steps=steps):
                x = torch.from_numpy(xb).to(device)
                y = torch.from_numpy(yb).to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(
                    device.type,
                    dtype=torch.float16 if cuda_amp else torch.bfloat16,
                    enabled=cuda_amp or cpu_amp,
                ):
                    raw = model(x)
                loss = _loss(raw.float(), y, label_kind=config.label_kind, loss=config.loss)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                total += float(loss.detach())
            train_loss = total / steps
            val_loss, scores, first = _validate(model, val_samples, config, meta, device)
            monitor = _monitor(scores, config.label_kind)
            improved = monitor > best + config.min_delta
            if improved:
                best, best_epoch, bad_epochs = monitor, epoch, 0
                save_model_dir(model, out / "best", meta=meta)
            else:
                bad_epochs += 1
            seconds = time.monotonic() - t0
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "scores": scores,
                "monitor": monitor,
                "lr": float(scheduler.get_last_lr()[0]),
                "seconds": seconds,
            }
            history.append(record)
            _atomic_torch_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "total_steps": int(scheduler.total_steps),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "history": json.dumps(history),
                    "fingerprint": json.dumps(config.fingerprint()),
                },
                last,
            )
            (out / "history.json").write_text(json.dumps(history, indent=1))
            curves = plot_curves(history)
            (out / "curves.png").write_bytes(curves)
            overlay = None
            if first is not None:
                overlay = draw_overlay(
                    first[0][0] if first[0].shape[0] == 1 else first[0][:3].transpose(1, 2, 0),
                    first[1],
                    first[2],
                )
                (out / "epochs" / f"epoch_{epoch:03d}.png").write_bytes(to_png(overlay))
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, %s, %.0f s",
                epoch,
                train_loss,
                val_loss,
                ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                seconds,
            )
            if on_epoch is not None:
                on_epoch(
                    EpochReport(
                        epoch=epoch,
                        train_loss=train_loss,
                        val_loss=val_loss,
                        scores=scores,
                        monitor=monitor,
                        best=improved,
                        seconds=seconds,
                        steps=steps,
                        overlay=overlay,
                        overlay_name=val_samples[0].stem if val_samples else "",
                        curves_png=curves,
                    )
                )
            if bad_epochs >= config.patience:
                stopped = "early_stopping"
            elif (
                config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s
            ):
                stopped = "time_limit"

    onnx_path = None
    best_dir = out / "best"
    if config.export_onnx and best_dir.is_dir():
        best_model, _, best_meta = load_model_dir(best_dir)
        onnx_path = str(
            export_onnx(
                best_model,
                out / "model.onnx",
                meta=best_meta or meta,
                weights=config.onnx_weights,
            )
        )
    best_record = next((h for h in history if h["epoch"] == best_epoch), None)
    result = TrainResult(
        out=str(out),
        epochs_run=len(history),
        best_epoch=best_epoch,
        best_monitor=best,
        best_scores=dict(best_record["scores"]) if best_record else {},
        stopped=stopped,
        best_dir=str(best_dir),
        onnx_path=onnx_path,
        history=history,
        n_train=len(train_samples),
        n_val=len(val_samples),
        file_list_sha256=data_hash,
        seconds=time.monotonic() - started,
    )
    (out / "result.json").write_text(json.dumps(result.as_dict(), indent=1))
    return result


# --------------------------------------------------------------------------------------------
# command line (wired into ``segflow train`` by segflow.cli)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``segflow train IMAGES LABELS --out DIR`` (no Prefect import)."""
    d = TrainConfig.model_fields
    parser.add_argument("images", help="folder of training images")
    parser.add_argument("labels", help="folder of label images (same stems)")
    parser.add_argument(
        "--out", required=True, help="output folder (checkpoints, best/, model.onnx)"
    )
    parser.add_argument(
        "--label-kind", choices=["binary", "instances", "classes"], default="instances"
    )
    parser.add_argument(
        "--no-boundary", action="store_true", help="no boundary head for instance labels"
    )
    parser.add_argument(
        "--class-names",
        default=None,
        help="comma-separated class names, background first (default: from the data)",
    )
    parser.add_argument(
        "--channels", type=int, choices=[1, 3], default=1, help="1 = grey (default), 3 = RGB"
    )
    parser.add_argument(
        "--encoder", default=d["encoder"].default, help="smp encoder (default resnet18)"
    )
    parser.add_argument("--arch", default=d["arch"].default, help="smp architecture (default Unet)")
    parser.add_argument("--encoder-depth", type=int, default=d["encoder_depth"].default)
    parser.add_argument(
        "--decoder-channels", default="64,32,16,16", help="comma-separated, one per depth"
    )
    parser.add_argument("--epochs", type=int, default=d["epochs"].default)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=d["batch_size"].default)
    parser.add_argument("--crop", type=int, default=d["crop"].default)
    parser.add_argument("--lr", type=float, default=d["lr"].default)
    parser.add_argument("--val-fraction", type=float, default=d["val_fraction"].default)
    parser.add_argument("--patience", type=int, default=d["patience"].default)
    parser.add_argument("--seed", type=int, default=d["seed"].default)
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="seed of the train/validation split (default: --seed)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes drawing the training crops (default 0: in the training loop; use "
        "several on a GPU, which otherwise waits on them)",
    )
    parser.add_argument(
        "--inverted-weight",
        type=float,
        default=1.0,
        help="how often images the auto-inversion inverts (bright-field, H&E) are drawn, "
        "relative to the others (default 1)",
    )
    parser.add_argument(
        "--loss",
        choices=["dice_bce", "lovasz_bce"],
        default="dice_bce",
        help="foreground loss: Dice + BCE (default) or the per-image Lovasz hinge + BCE, an "
        "IoU surrogate for fine-tuning (--init-from)",
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop after the epoch that passes this many seconds",
    )
    parser.add_argument("--max-images", type=int, default=None, help="use only the first N pairs")
    parser.add_argument(
        "--val-max-images", type=int, default=None, help="validate on at most N images per epoch"
    )
    parser.add_argument(
        "--cpu-bf16",
        action="store_true",
        help="bfloat16 autocast on the CPU (AMX/AVX512-BF16 CPUs)",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="start from the weights of a checkpoint folder (fine-tuning)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="start afresh even if OUT has a checkpoint"
    )
    parser.add_argument(
        "--no-onnx", action="store_true", help="do not export the best model to ONNX"
    )
    parser.add_argument(
        "--onnx-weights",
        choices=["float32", "float16"],
        default="float32",
        help="precision of the weights in the ONNX file (float16: half the size, computed in float32)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's INFO logs")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``segflow train`` arguments (pydantic validates)."""
    return TrainConfig(
        images=args.images,
        labels=args.labels,
        out=args.out,
        label_kind=args.label_kind,
        boundary=not args.no_boundary,
        class_names=(
            [v.strip() for v in str(args.class_names).split(",")] if args.class_names else None
        ),
        channels=args.channels,
        arch=args.arch,
        encoder=args.encoder,
        encoder_depth=args.encoder_depth,
        decoder_channels=[int(v) for v in str(args.decoder_channels).split(",") if v.strip()],
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        val_fraction=args.val_fraction,
        patience=args.patience,
        seed=args.seed,
        split_seed=args.split_seed,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        inverted_weight=args.inverted_weight,
        loss=args.loss,
        time_limit_s=args.time_limit,
        max_images=args.max_images,
        val_max_images=args.val_max_images,
        cpu_bf16=args.cpu_bf16,
        init_from=args.init_from,
        resume=not args.no_resume,
        export_onnx=not args.no_onnx,
        onnx_weights=args.onnx_weights,
    )


def format_result(result: dict[str, Any]) -> str:
    """The closing summary of ``segflow train``."""
    scores = ", ".join(f"{k} {v:.4f}" for k, v in (result.get("best_scores") or {}).items())
    return "\n".join(
        [
            f"segflow train: {result['epochs_run']} epochs ({result['stopped']}), "
            f"{result['n_train']} training / {result['n_val']} validation images",
            f"best epoch {result['best_epoch']}: {scores}",
            f"best model (unet segmenter): {result['best_dir']}",
            f"ONNX (nuclei / onnx segmenters): {result.get('onnx_path') or '-'}",
            f"curves: {Path(result['out']) / 'curves.png'}",
        ]
    )
