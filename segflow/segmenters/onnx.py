"""ONNX Runtime segmenter, and the fixed-input-size machinery shared by the model-file backends.

Contract of a model file served here
------------------------------------
* One image input, 4-D: ``NCHW`` (default guess) or ``NHWC`` (``layout``). A spatial size that is a
  fixed number in the model is *the* tile size; a dynamic one uses the ``tile`` option.
  A batch dimension that is a fixed number ``B`` is fed ``B`` tiles per call (the last call padded
  with zero tiles); a dynamic one is fed ``batch_size`` tiles per call.
* Input dtype float32/float16 gets the (optionally normalised) image; uint8 gets the pixel values
  ``round(image * 255)``.
* The first output (or ``output_name``) is either per-class scores ``(N, K, h, w)`` /
  ``(N, h, w, K)``, a single foreground score ``(N, 1, h, w)`` / ``(N, h, w)`` float, or a class map
  ``(N, h, w)`` of integers (an ``argmax`` inside the model) which is turned into one-hot
  probabilities. ``activation`` says what to apply to the scores: ``none`` (they already are
  probabilities), ``sigmoid`` or ``softmax`` (over the channel axis). A single channel ``p``
  becomes the two classes ``[1 - p, p]`` (background, foreground).

Tiling with a halo (exact, no blending)
---------------------------------------
A fixed-size model is run on ``T x T`` windows placed evenly over the image, neighbours
overlapping by at least ``2 * halo`` pixels. Each output pixel is taken from exactly one window:
the one that *owns* it, the boundary between two neighbours being the middle of their overlap.
So every kept pixel lies at least ``halo`` pixels away from any window edge that is inside the
image — the halo is cropped — and no pixel is averaged. This is the blending-weights formulation
"overlap >= 2 * halo, weight 0 within the halo" with weights 0/1. At the image's own border there
is no context to crop, so the pixels there come from the window that touches the border, just as
in an untiled run. An image of exactly ``T x T`` is one window: the direct model output.
Images smaller than the window are padded at the bottom/right by reflection and cropped back.

These segmenters are ``image_scoped``: ``segment_image`` hands them the whole image and they do
this tiling themselves, because the model's input size fixes the tile and the halo must be
cropped, not blended (``segment_image``'s ``tile``/``overlap``/``blend`` do not apply to them;
a model with a dynamic spatial size takes the window size from the ``tile`` option here).

Normalisation (``normalize``) is fitted on the whole image in :meth:`OnnxSegmenter.fit` (per
channel over y, x) and used until the next ``fit``, so tiling never changes it. Before any
``fit``, ``predict`` fits it on each image of the batch it is given (the bioimage.io "per sample"
rule). A segmenter instance therefore holds per-image state: one instance per thread.

Instances (``instances=True``): models without an instance head get instances by
post-processing the full-size foreground probability ``1 - p_background`` once, in
:meth:`OnnxSegmenter.finish` (so tiles never cut objects): threshold, drop specks smaller than
``min_size``, Euclidean distance transform, one marker per h-maximum of the distance (``h``
pixels of dynamics), watershed on the negated distance inside the mask
(:func:`instances_from_probability`). Touching round objects separate where the mask has a
neck. Each instance's class is its most probable non-background class summed over its pixels,
its score the mean foreground probability.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from segflow.segmenters import register
from segflow.segmenters.base import Segmentation, Segmenter

__all__ = [
    "Clip",
    "OnnxSegmenter",
    "ScaleLinear",
    "ScaleRange",
    "ZeroMeanUnitVariance",
    "adapt_channels",
    "apply_activation",
    "finish_with_instances",
    "instances_from_class_probabilities",
    "instances_from_probability",
    "normalization_steps",
    "one_hot",
    "parse_device",
    "predict_fixed_size",
    "predict_resized",
    "to_class_probabilities",
    "window_starts",
]

logger = logging.getLogger(__name__)

Normalize = Literal["none", "zero_mean_unit_variance", "minmax", "percentile"]
Activation = Literal["none", "sigmoid", "softmax"]
Layout = Literal["auto", "NCHW", "NHWC"]
Strategy = Literal["tile", "resize"]

NORMALIZATIONS: tuple[str, ...] = ("none", "zero_mean_unit_variance", "minmax", "percentile")
ACTIVATIONS: tuple[str, ...] = ("none", "sigmoid", "softmax")
LAYOUTS: tuple[str, ...] = ("auto", "NCHW", "NHWC")
STRATEGIES: tuple[str, ...] = ("tile", "resize")

RunBatch = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------
# device and threads


def parse_device(device: str) -> tuple[str, int]:
    """Validate ``auto|cpu|cuda|cuda:N`` and split it: ``("cuda", 1)`` for ``cuda:1``.

    ``auto`` and ``cpu`` come back as ``("auto", 0)`` / ``("cpu", 0)``; ``cuda`` means GPU 0.
    """
    text = str(device).strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N (N >= 0), got {device!r}")


def default_threads() -> int:
    """The CPU cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(
            f"threads must be a positive int or None (all usable cores), got {threads!r}"
        )
    return threads


# --------------------------------------------------------------------------------------------
# preprocessing steps: fitted on the whole image, applied to tiles


class Step(Protocol):
    """One preprocessing step: ``fit`` on a whole image, ``apply`` to images or tiles."""

    def fit(self, image: np.ndarray) -> None: ...

    def apply(self, x: np.ndarray) -> np.ndarray: ...

    @property
    def fitted(self) -> bool: ...


def _reduce_axes(ndim: int, per_channel: bool) -> tuple[int, ...]:
    # image (C, H, W): per channel -> reduce over H, W; global -> over everything
    return (ndim - 2, ndim - 1) if per_channel else tuple(range(ndim))


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    # statistics of shape (C, 1, 1) broadcast against (C, H, W) and (N, C, H, W)
    return (x.shape[-3], 1, 1)


@dataclass
class ZeroMeanUnitVariance:
    """``(x - mean) / (std + eps)``, statistics per channel over y, x (or global)."""

    per_channel: bool = True
    eps: float = 1e-6
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    def fit(self, image: np.ndarray) -> None:
        """Learn mean and std from ``image`` (C, H, W) float32."""
        x = image.astype(np.float64, copy=False)
        axes = _reduce_axes(x.ndim, self.per_channel)
        self.mean = np.mean(x, axis=axes, keepdims=True).reshape(-1, 1, 1)
        self.std = np.std(x, axis=axes, keepdims=True).reshape(-1, 1, 1)

    @property
    def fitted(self) -> bool:
        return self.mean is not None

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            raise RuntimeError("ZeroMeanUnitVariance.apply called before fit")
        return ((x - self.mean) / (self.std + self.eps)).astype(np.float32)


@dataclass
class ScaleRange:
    """``(x - p_lo) / (p_hi - p_lo + eps)`` with percentiles of the image (0, 100 = min-max)."""

    min_percentile: float = 0.0
    max_percentile: float = 100.0
    per_channel: bool = True
    eps: float = 1e-6
    low: np.ndarray | None = field(default=None, repr=False)
    high: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_percentile < self.max_percentile <= 100.0:
            raise ValueError(
                "percentiles must satisfy 0 <= low < high <= 100, got "
                f"({self.min_percentile}, {self.max_percentile})"
            )

    def fit(self, image: np.ndarray) -> None:
        """Learn the low/high percentiles of ``image`` (C, H, W) float32."""
        axes = _reduce_axes(image.ndim, self.per_channel)
        lo, hi = np.percentile(
            image, [self.min_percentile, self.max_percentile], axis=axes, keepdims=True
        )
        self.low = np.asarray(lo, dtype=np.float64).reshape(-1, 1, 1)
        self.high = np.asarray(hi, dtype=np.float64).reshape(-1, 1, 1)

    @property
    def fitted(self) -> bool:
        return self.low is not None

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.low is None or self.high is None:
            raise RuntimeError("ScaleRange.apply called before fit")
        return ((x - self.low) / (self.high - self.low + self.eps)).astype(np.float32)


@dataclass
class ScaleLinear:
    """``x * gain + offset`` with fixed numbers (scalars or one per channel)."""

    gain: float | Sequence[float] = 1.0
    offset: float | Sequence[float] = 0.0

    def fit(self, image: np.ndarray) -> None:
        """Nothing to learn."""

    @property
    def fitted(self) -> bool:
        return True

    def apply(self, x: np.ndarray) -> np.ndarray:
        gain = np.asarray(self.gain, dtype=np.float64)
        offset = np.asarray(self.offset, dtype=np.float64)
        if gain.ndim:
            gain = gain.reshape(-1, 1, 1)
        if offset.ndim:
            offset = offset.reshape(-1, 1, 1)
        return (x * gain + offset).astype(np.float32)


@dataclass
class Clip:
    """Clip values to ``[low, high]`` (either may be None)."""

    low: float | None = None
    high: float | None = None

    def fit(self, image: np.ndarray) -> None:
        """Nothing to learn."""

    @property
    def fitted(self) -> bool:
        return True

    def apply(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.low, self.high).astype(np.float32)


def normalization_steps(
    normalize: str, *, percentiles: tuple[float, float] = (1.0, 99.8), eps: float = 1e-6
) -> list[Step]:
    """The preprocessing steps for a ``normalize`` name (see ``NORMALIZATIONS``)."""
    if normalize == "none":
        return []
    if normalize == "zero_mean_unit_variance":
        return [ZeroMeanUnitVariance(eps=eps)]
    if normalize == "minmax":
        return [ScaleRange(0.0, 100.0, eps=eps)]
    if normalize == "percentile":
        lo, hi = percentiles
        return [ScaleRange(float(lo), float(hi), eps=eps)]
    raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}")


def _fit_steps(steps: Sequence[Step], image: np.ndarray) -> None:
    x = image
    for step in steps:
        step.fit(x)
        x = step.apply(x)


def _apply_steps(steps: Sequence[Step], x: np.ndarray) -> np.ndarray:
    for step in steps:
        x = step.apply(x)
    return x.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# channels, activations, class probabilities


def adapt_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Make ``x`` (..., C, H, W) have ``channels`` channels.

    C == channels: unchanged. Model wants 1, image has 3 or 4: the mean of the first 3
    (grey). Model wants 3, image has 1: repeated. Image has 4 (RGBA), model wants 3: alpha dropped.
    Anything else is a ``ValueError``.
    """
    c = x.shape[-3]
    if c == channels:
        return x
    if channels == 1 and c in (3, 4):
        return x[..., :3, :, :].mean(axis=-3, keepdims=True, dtype=np.float32)
    if channels == 3 and c == 1:
        return np.repeat(x, 3, axis=-3)
    if channels == 3 and c == 4:
        return x[..., :3, :, :]
    raise ValueError(
        f"the model takes {channels} channel(s) and the image has {c}; convertible are "
        "1 <-> 3 (grey <-> RGB) and 4 -> 3 (alpha dropped)"
    )


def apply_activation(scores: np.ndarray, activation: str, *, axis: int = 1) -> np.ndarray:
    """``none`` / ``sigmoid`` / ``softmax`` (over ``axis``) of ``scores`` as float32."""
    s = scores.astype(np.float32, copy=False)
    if activation == "none":
        return s
    if activation == "sigmoid":
        return (0.5 * (1.0 + np.tanh(0.5 * s))).astype(np.float32)  # overflow-free sigmoid
    if activation == "softmax":
        e = np.exp(s - s.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def one_hot(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, h, w) integer class map -> (N, K, h, w) float32 one-hot; ids >= K are an error."""
    c = np.asarray(classes)
    if c.size and (c.min() < 0 or c.max() >= num_classes):
        raise ValueError(
            f"class map holds ids {int(c.min())}..{int(c.max())}, allowed are 0..{num_classes - 1}"
        )
    out = np.zeros((c.shape[0], num_classes, *c.shape[1:]), dtype=np.float32)
    np.put_along_axis(out, c[:, None].astype(np.intp), 1.0, axis=1)
    return out


def to_class_probabilities(probs: np.ndarray) -> np.ndarray:
    """(N, K, h, w) scores -> class probabilities; K == 1 (foreground p) becomes [1 - p, p]."""
    if probs.shape[1] == 1:
        p = np.clip(probs, 0.0, 1.0)
        return np.concatenate([1.0 - p, p], axis=1).astype(np.float32)
    return probs.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# fixed-size tiling with the halo cropped


def window_starts(length: int, *, size: int, halo: int) -> list[int]:
    """Start offsets of ``size``-long windows covering ``length`` (>= size) evenly.

    Neighbours overlap by at least ``2 * halo``; the first starts at 0, the last ends at
    ``length``. ``ValueError`` when ``2 * halo >= size`` (no pixel would be kept).
    """
    if size < 1 or length < size:
        raise ValueError(f"need 1 <= size <= length, got size={size}, length={length}")
    if halo < 0 or 2 * halo >= size:
        raise ValueError(f"halo must satisfy 0 <= 2 * halo < tile size {size}, got halo={halo}")
    if length == size:
        return [0]
    step = size - 2 * halo
    n = math.ceil((length - size) / step) + 1
    return [round(v) for v in np.linspace(0, length - size, n)]


def _owned(starts: Sequence[int], *, size: int, length: int) -> list[tuple[int, int]]:
    """Per window the interval of image pixels it owns: cut in the middle of each overlap."""
    cuts = [0] + [(starts[i - 1] + size + starts[i]) // 2 for i in range(1, len(starts))] + [length]
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad (C, H, W) at the bottom/right to at least (height, width) by reflection."""
    _, h, w = image.shape
    ph, pw = max(0, height - h), max(0, width - w)
    if ph == 0 and pw == 0:
        return image
    if h > 1 and w > 1:
        return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="edge")


def predict_fixed_size(
    image: np.ndarray,
    run_batch: RunBatch,
    *,
    size: tuple[int, int],
    halo: int = 0,
    batch_size: int = 4,
) -> np.ndarray:
    """Serve a fixed-input-size model on an image of any size, cropping ``halo`` (see module doc).

    Parameters
    ----------
    image : (C, H, W) float32
    run_batch : callable (N, C, th, tw) float32 -> (N, K, th, tw) float32
    size : (th, tw), the model's input size
    halo : pixels of each window border (inside the image) never kept
    batch_size : windows per ``run_batch`` call

    Returns
    -------
    (K, H, W) float32
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _, height, width = image.shape
    th, tw = size
    padded = _pad_to(image, th, tw)
    hp, wp = padded.shape[1:]
    ys, xs = window_starts(hp, size=th, halo=halo), window_starts(wp, size=tw, halo=halo)
    own_y, own_x = _owned(ys, size=th, length=hp), _owned(xs, size=tw, length=wp)
    jobs = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    out: np.ndarray | None = None
    for k in range(0, len(jobs), batch_size):
        chunk = jobs[k : k + batch_size]
        batch = np.stack([padded[:, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for i, j in chunk])
        pred = run_batch(np.ascontiguousarray(batch, dtype=np.float32))
        if pred.shape[0] != len(chunk) or pred.shape[2:] != (th, tw):
            raise ValueError(
                f"predictor returned shape {pred.shape} for a batch of {len(chunk)} windows of "
                f"{th}x{tw}; expected (N, K, {th}, {tw})"
            )
        if out is None:
            out = np.empty((pred.shape[1], hp, wp), dtype=np.float32)
        for (i, j), p in zip(chunk, pred, strict=True):
            (y0, y1), (x0, x1) = own_y[i], own_x[j]
            out[:, y0:y1, x0:x1] = p[:, y0 - ys[i] : y1 - ys[i], x0 - xs[j] : x1 - xs[j]]
    if out is None:  # pragma: no cover - there is always at least one window
        raise RuntimeError("no window was predicted")
    return out[:, :height, :width]


def _resize_chw(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (C, h, w) float32 to (C, height, width) (area when shrinking)."""
    import cv2

    if x.shape[1:] == (height, width):
        return x.astype(np.float32, copy=False)
    shrinking = height * width < x.shape[1] * x.shape[2]
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    planes = [
        cv2.resize(np.ascontiguousarray(p, dtype=np.float32), (width, height), interpolation=interp)
        for p in x
    ]
    return np.stack(planes).astype(np.float32)


def predict_resized(image: np.ndarray, run_batch: RunBatch, *, size: tuple[int, int]) -> np.ndarray:
    """Resize (C, H, W) to the model size, predict, resize the (K, th, tw) scores back to (H, W)."""
    _, height, width = image.shape
    small = _resize_chw(image, *size)
    pred = run_batch(small[None])[0]
    return _resize_chw(pred, height, width)


def match_spatial(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, K, h, w) -> (N, K, height, width), bilinear when a model outputs another size."""
    if pred.shape[2:] == (height, width):
        return pred
    return np.stack([_resize_chw(p, height, width) for p in pred])


# --------------------------------------------------------------------------------------------
# instances from a foreground probability


def instances_from_probability(
    probability: np.ndarray, *, threshold: float = 0.5, h: float = 2.0, min_size: int = 16
) -> np.ndarray:
    """Instance labels from a foreground probability map: threshold + distance watershed.

    Parameters
    ----------
    probability : (H, W) float
    threshold : foreground where ``probability > threshold``
    h : a distance maximum must stand ``h`` pixels above its surroundings to seed an object
        (larger: fewer splits)
    min_size : connected specks smaller than this (pixels) are dropped

    Returns
    -------
    (H, W) int32, 0 background, objects 1..N
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    mask = np.asarray(probability) > threshold
    if min_size > 1 and mask.any():
        components, _ = ndi.label(mask)
        sizes = np.bincount(components.ravel())
        mask &= sizes[components] >= min_size
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    distance = ndi.distance_transform_edt(mask)
    markers, _ = ndi.label(h_maxima(distance, h))
    labels = watershed(-distance, markers, mask=mask)
    missing = mask & (labels == 0)  # components too thin to hold an h-maximum
    if missing.any():
        extra, _ = ndi.label(missing)
        labels[missing] = extra[missing] + labels.max()
    return relabel_sequential(labels)[0].astype(np.int32)


def instances_from_class_probabilities(
    probabilities: np.ndarray, *, threshold: float = 0.5, h: float = 2.0, min_size: int = 16
) -> tuple[np.ndarray, dict[int, int], dict[int, float]]:
    """Instances of the non-background pixels of (K, H, W) class probabilities.

    Returns the (H, W) int32 labels (:func:`instances_from_probability` on ``1 - p_background``),
    each instance's class (the most probable non-background class summed over its pixels) and
    its score (the mean foreground probability over its pixels).
    """
    foreground = 1.0 - probabilities[0]
    labels = instances_from_probability(foreground, threshold=threshold, h=h, min_size=min_size)
    return labels, *instance_classes_and_scores(labels, probabilities, foreground)


def instance_classes_and_scores(
    labels: np.ndarray, probabilities: np.ndarray, foreground: np.ndarray
) -> tuple[dict[int, int], dict[int, float]]:
    """Per instance of ``labels`` (H, W) int: its class (the non-background class of
    ``probabilities`` (K, H, W) with the largest sum over its pixels; 1 when K == 2) and its
    score (the mean of ``foreground`` (H, W) over its pixels)."""
    n = int(labels.max(initial=0))
    if n == 0:
        return {}, {}
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)[1:]
    score = np.bincount(flat, weights=foreground.ravel(), minlength=n + 1)[1:] / counts
    if probabilities.shape[0] > 2:
        per_class = np.stack(
            [np.bincount(flat, weights=p.ravel(), minlength=n + 1)[1:] for p in probabilities[1:]]
        )
        cls = per_class.argmax(axis=0) + 1
    else:
        cls = np.ones(n, dtype=np.int64)
    ids = range(1, n + 1)
    return (
        {i: int(c) for i, c in zip(ids, cls, strict=True)},
        {i: float(v) for i, v in zip(ids, score, strict=True)},
    )


def finish_with_instances(
    seg: Segmentation, *, threshold: float, h: float, min_size: int
) -> Segmentation:
    """Add instances (threshold + distance watershed) to a semantic :class:`Segmentation`."""
    if seg.probabilities is None:
        raise ValueError("instances need class probabilities; the segmentation has none")
    labels, classes, scores = instances_from_class_probabilities(
        seg.probabilities, threshold=threshold, h=h, min_size=min_size
    )
    seg.instances = labels
    seg.instance_classes = classes
    seg.instance_scores = scores
    return seg


# --------------------------------------------------------------------------------------------
# model file paths


def resolve_model_file(model_path: str | Path, *, suffix: str, what: str) -> Path:
    """The model file at ``model_path`` (a file, or a folder holding exactly one ``*suffix``).

    Fails at once, naming the expected file, when nothing usable is there.
    """
    path = Path(model_path).expanduser()
    if path.is_dir():
        found = sorted(path.glob(f"*{suffix}"))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(
            f"{what} model: expected one {suffix} file in the folder {path.resolve()}, "
            f"found {len(found)} ({', '.join(p.name for p in found) or 'none'}); "
            "give the file's path as model_path"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} model file not found: expected a {suffix} file at {path.resolve()} "
            f"(model_path={str(model_path)!r}); weights are never downloaded, give a local path"
        )
    return path


# --------------------------------------------------------------------------------------------
# the segmenter


_ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
}


def _is_dim(v: Any) -> bool:
    return isinstance(v, int) and v > 0


class WatershedInstances(Segmenter):
    """``label_tile``/``finish`` for models without an instance head: instances come from the
    full-size foreground probability (threshold + distance-transform watershed).

    Subclasses provide ``predict`` and the ``instances``, ``threshold``, ``h`` and ``min_size``
    options.
    """

    instances: bool
    threshold: float
    h: float
    min_size: int

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """Instances of a whole image (C, H, W) float32 -> (H, W) int32 (threshold + watershed)."""
        probs = self.predict(np.asarray(tile, dtype=np.float32)[None])[0]
        return instances_from_class_probabilities(
            probs, threshold=self.threshold, h=self.h, min_size=self.min_size
        )[0]

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """argmax classes; with ``instances=True`` also instances from the full-size probabilities."""
        seg = super().finish(probabilities, image, labels=labels)
        if self.instances and labels is None:
            seg = finish_with_instances(
                seg, threshold=self.threshold, h=self.h, min_size=self.min_size
            )
        return seg


@register("onnx")
class OnnxSegmenter(WatershedInstances):
    """Semantic (optionally instance) segmentation with an ONNX model file on ONNX Runtime.

    Parameters (keyword-only)
    -------------------------
    model_path : local ``.onnx`` file (or a folder holding exactly one)
    normalize : ``none | zero_mean_unit_variance | minmax | percentile`` (per channel over y, x,
        fitted on the whole image); ``percentiles`` (low, high) for ``percentile``
    activation : ``none`` (outputs are probabilities) | ``sigmoid`` | ``softmax`` (logits)
    class_names : names of the K classes (background first); default from K
    num_classes : K for models that output a class map (argmax inside)
    halo : pixels cropped from window borders inside the image (see module doc)
    tile : window size (int or (height, width)) for models whose spatial size is dynamic (a
        fixed size in the model wins)
    strategy : ``tile`` (native resolution, halo-cropped windows) or ``resize`` (whole image
        resized to the model size and the scores resized back)
    layout : ``auto | NCHW | NHWC`` of the model's input (and output)
    device : ``auto | cpu | cuda | cuda:N`` (CUDAExecutionProvider when available)
    threads : ONNX Runtime intra-op threads (default: the cores this process may use); inter-op
        threads are 1
    batch_size : windows per call when the model's batch dimension is dynamic
    instances : also label instances (:func:`instances_from_probability`) with ``threshold``,
        ``h`` and ``min_size``
    """

    image_scoped: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model_path: str | Path,
        normalize: Normalize = "none",
        percentiles: tuple[float, float] = (1.0, 99.8),
        eps: float = 1e-6,
        activation: Activation = "none",
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        halo: int = 0,
        tile: int | tuple[int, int] = 512,
        strategy: Strategy = "tile",
        layout: Layout = "auto",
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 4,
        instances: bool = False,
        threshold: float = 0.5,
        h: float = 2.0,
        min_size: int = 16,
        output_name: str | None = None,
        steps: Sequence[Step] | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if halo < 0:
            raise ValueError(f"halo must be >= 0 pixels, got {halo}")
        tiles = (tile, tile) if isinstance(tile, int) else tuple(tile)
        if len(tiles) != 2 or min(tiles) < 1:
            raise ValueError(f"tile must be an int or (height, width) >= 1 pixel, got {tile!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.model_path = resolve_model_file(model_path, suffix=".onnx", what="ONNX")
        self.steps: list[Step] = (
            list(steps)
            if steps is not None
            else normalization_steps(normalize, percentiles=percentiles, eps=eps)
        )
        self.activation = activation
        self.halo = int(halo)
        self.strategy = strategy
        self.batch_size = int(batch_size)
        self.instances = bool(instances)
        self.threshold = float(threshold)
        self.h = float(h)
        self.min_size = int(min_size)
        self.threads = _check_threads(threads)
        kind, index = parse_device(device)
        self._session = self._open_session(kind, index)
        self._input = self._session.get_inputs()[0]
        outputs = self._session.get_outputs()
        names = [o.name for o in outputs]
        if output_name is not None and output_name not in names:
            raise ValueError(
                f"output_name {output_name!r} is not an output of the model; outputs: {names}"
            )
        self._output = outputs[names.index(output_name)] if output_name else outputs[0]
        self._in_dtype = self._input_dtype()
        self.layout = self._guess_layout(layout)
        self._channels, self.size, self._static_batch = self._input_geometry(
            (int(tiles[0]), int(tiles[1]))
        )
        self._num_classes = self._output_classes(num_classes, class_names)
        if class_names is not None and len(class_names) != self._num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but the model gives "
                f"{self._num_classes} classes"
            )
        self._class_names = list(class_names) if class_names is not None else None
        self._fitted = False

    # -- construction helpers ----------------------------------------------------------------

    def _open_session(self, kind: str, index: int) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the onnx segmenter needs onnxruntime: pip install 'segflow[onnx]'"
            ) from exc
        available = ort.get_available_providers()
        providers: list[Any]
        if kind == "cpu" or (kind == "auto" and "CUDAExecutionProvider" not in available):
            providers = ["CPUExecutionProvider"]
        elif "CUDAExecutionProvider" in available:
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        else:
            raise RuntimeError(
                f"device 'cuda:{index}' asked for, but onnxruntime offers only {available}; "
                "install onnxruntime-gpu or use device='cpu' / 'auto'"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(
                f"could not load {self.model_path} as an ONNX model ({type(exc).__name__}: {exc}); "
                "expected an ONNX model file (.onnx)"
            ) from exc
        self.providers = list(session.get_providers())
        logger.debug(
            "onnx session %s on %s, %d threads", self.model_path, self.providers, self.threads
        )
        return session

    def _input_dtype(self) -> type[np.generic]:
        t = self._input.type
        if t not in _ORT_DTYPES:
            raise ValueError(
                f"model input {self._input.name!r} has type {t}; supported: {', '.join(_ORT_DTYPES)}"
            )
        if t == "tensor(uint8)" and self.steps:
            raise ValueError("a uint8-input model takes raw pixels: use normalize='none'")
        return _ORT_DTYPES[t]

    def _guess_layout(self, layout: str) -> str:
        shape = list(self._input.shape)
        if len(shape) != 4:
            raise ValueError(
                f"model input {self._input.name!r} has shape {shape}; expected 4-D NCHW or NHWC"
            )
        if layout != "auto":
            return layout
        c1, c3 = shape[1], shape[3]
        if _is_dim(c3) and c3 in (1, 3, 4) and not (_is_dim(c1) and c1 in (1, 3, 4)):
            return "NHWC"
        return "NCHW"

    def _input_geometry(self, tile: tuple[int, int]) -> tuple[int, tuple[int, int], int | None]:
        shape = list(self._input.shape)
        n, c, hh, ww = (
            (shape[0], shape[1], shape[2], shape[3])
            if self.layout == "NCHW"
            else (shape[0], shape[3], shape[1], shape[2])
        )
        channels = c if _is_dim(c) else 1
        th = hh if _is_dim(hh) else tile[0]
        tw = ww if _is_dim(ww) else tile[1]
        return channels, (int(th), int(tw)), (int(n) if _is_dim(n) else None)

    def _output_classes(self, num_classes: int | None, class_names: Sequence[str] | None) -> int:
        shape = list(self._output.shape)
        otype = self._output.type
        if "int" in otype:  # a class map, argmax inside the model
            k = (
                num_classes
                if num_classes is not None
                else (len(class_names) if class_names else None)
            )
            if k is None or k < 2:
                raise ValueError(
                    "the model outputs a class map (integers): give num_classes (>= 2) or class_names"
                )
            return int(k)
        if len(shape) == 3:
            return 2
        if len(shape) == 4:
            k_dim = shape[1] if self.layout == "NCHW" else shape[3]
            if _is_dim(k_dim):
                return 2 if k_dim == 1 else int(k_dim)
        probe = self._run(np.zeros((1, self._channels, *self.size), dtype=np.float32))
        return int(probe.shape[1])

    # -- Segmenter API -----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def class_names(self) -> list[str]:
        if self._class_names is not None:
            return list(self._class_names)
        return super().class_names

    def fit(self, image: np.ndarray) -> None:
        """Fit the normalisation on the whole image (C, H, W) float32."""
        x = adapt_channels(np.asarray(image, dtype=np.float32), self._channels)
        _fit_steps(self.steps, x)
        self._fitted = True

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of whole images: (N, C, H, W) float32 -> (N, K, H, W) float32."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4:
            raise ValueError(f"batch must be (N, C, H, W), got shape {batch.shape}")
        results = []
        for image in batch:
            x = adapt_channels(image, self._channels)
            if not self._fitted:
                _fit_steps(self.steps, x)
            x = _apply_steps(self.steps, x)
            if self.strategy == "resize":
                results.append(predict_resized(x, self._run, size=self.size))
            else:
                results.append(
                    predict_fixed_size(
                        x, self._run, size=self.size, halo=self.halo, batch_size=self._calls()
                    )
                )
        return np.stack(results)

    # -- running the model -------------------------------------------------------------------

    def _calls(self) -> int:
        return self._static_batch if self._static_batch is not None else self.batch_size

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, th, tw) float32 preprocessed windows -> (N, K, th, tw) class probabilities."""
        n = batch.shape[0]
        per_call = self._calls()
        outs = []
        for k in range(0, n, per_call):
            chunk = batch[k : k + per_call]
            real = chunk.shape[0]
            if self._static_batch is not None and real < self._static_batch:
                pad = np.zeros((self._static_batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outs.append(self._run_once(chunk)[:real])
        return np.concatenate(outs)

    def _run_once(self, chunk: np.ndarray) -> np.ndarray:
        height, width = chunk.shape[2:]
        x = chunk
        if self._in_dtype == np.uint8:
            x = np.clip(np.rint(x * 255.0), 0, 255)
        if self.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        feed = {self._input.name: np.ascontiguousarray(x, dtype=self._in_dtype)}
        raw = np.asarray(self._session.run([self._output.name], feed)[0])
        return self._scores(raw, height, width)

    def _scores(self, raw: np.ndarray, height: int, width: int) -> np.ndarray:
        if np.issubdtype(raw.dtype, np.integer):
            classes = raw
            if raw.ndim == 4:  # (N, 1, h, w) or (N, h, w, 1): drop the channel axis of 1
                classes = raw[:, 0] if self.layout == "NCHW" else raw[..., 0]
            probs = one_hot(classes, self._num_classes)
        else:
            if raw.ndim == 3:
                raw = raw[:, None]
            elif self.layout == "NHWC":
                raw = raw.transpose(0, 3, 1, 2)
            probs = to_class_probabilities(apply_activation(raw, self.activation, axis=1))
        return match_spatial(probs, height, width)
