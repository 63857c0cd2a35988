"""Segment one image with any registered segmenter: prepare -> fit -> tiles -> finish.

:func:`segment_image` is the one driver every caller uses (tasks, benchmarks, tests)::

    prepared = segmenter.prepare(image)         # whole image (smoothing, local contrast)
    segmenter.fit(prepared)                     # whole image (global thresholds, centres)
    semantic:  probabilities = segmenter.predict_tiled(prepared, ...)   # tiling.predict_tiled
    instances: labels = segmenter.label_tile(prepared)                  # up to max_untiled_pixels
               labels = stitch.label_tiled(prepared, segmenter.label_tile, ...)   # larger images
    return segmenter.finish(probabilities, image, labels=labels)        # argmax + clean-up

Where each step runs:

* ``prepare`` and ``fit`` always see the whole image: the image is in memory as ``(C, H, W)``
  float32 anyway, and image-level statistics must not depend on the tiling.
* Semantic ``predict`` runs on tiles (``tile`` x ``tile``, ``overlap``, ``blend``,
  ``batch_size`` tiles per call): models with a fixed input size need it. Pointwise segmenters
  (``segmenter.pointwise``: thresholds, k-means) give bit for bit the same scores tiled or not
  (the tiling contract), so images up to ``max_untiled_pixels`` are predicted in one call,
  which saves the overlap's repeated work; larger images are tiled to bound the temporaries.
* Instance segmenters whose ``label_tile`` handles any size (``labels_whole_image``, the
  classic labelers watershed/slic/felzenszwalb) label "ordinary" images — up to
  ``max_untiled_pixels`` (default 4096 x 4096) — in one call on the whole image, which is the
  exact answer; larger images, and labelers that want fixed tiles, go through
  ``stitch.label_tiled`` (objects crossing tile borders merged by mask overlap, with the
  segmenter's ``stitch_min_overlap``; ``overlap`` must then be >= 1).
* ``image_scoped`` segmenters (a remote API, region growing) get the whole image: ``predict``
  on a batch of one, or ``label_tile``.
* ``finish`` (argmax, opening, small objects and holes, connected components) runs on the
  full-size maps, never per tile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from segflow import stitch, tiling
from segflow.segmenters.base import Segmentation, Segmenter

__all__ = ["DEFAULT_MAX_UNTILED_PIXELS", "segment_image"]

logger = logging.getLogger(__name__)

#: Images up to this many pixels go to pointwise predictors and whole-image labelers in one call.
DEFAULT_MAX_UNTILED_PIXELS = 4096 * 4096


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"image must be a numpy array (C, H, W) float32, got {type(image).__name__}"
        )
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(
            f"image must be (C, H, W) with C, H, W >= 1 (see preprocess.to_float_chw); "
            f"got shape {image.shape}"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be floating point (C, H, W) float32 in [0, 1] (see "
            f"preprocess.to_float_chw); got dtype {image.dtype}"
        )
    return image.astype(np.float32, copy=False)


def _check_options(tile: Any, overlap: Any, blend: Any, batch_size: Any, max_untiled: Any) -> None:
    """Validate options up front, also on paths that never call the tiler."""
    tiling.tile_grid(1, 1, tile=tile, overlap=overlap)  # validates tile and overlap
    if blend not in tiling.BLEND_MODES:
        raise ValueError(
            f"blend must be one of {', '.join(map(repr, tiling.BLEND_MODES))}; got {blend!r}"
        )
    for name, value, lo in (("batch_size", batch_size, 1), ("max_untiled_pixels", max_untiled, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def segment_image(
    segmenter: Segmenter,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 64,
    blend: str = "gaussian",
    batch_size: int = 8,
    max_untiled_pixels: int = DEFAULT_MAX_UNTILED_PIXELS,
    timings: dict[str, float] | None = None,
) -> Segmentation:
    """Segment ``image`` with ``segmenter``.

    Parameters
    ----------
    segmenter : Segmenter
        A segmenter instance (``segmenters.create(name, **params)``); it keeps per-image state,
        so do not share one instance between threads.
    image : (C, H, W) float32
        The image in [0, 1] (``preprocess.to_float_chw``); other float dtypes are converted.
    tile, overlap, blend, batch_size
        Tiling of ``predict`` / ``label_tile``: tile side, overlap between tiles in pixels,
        blend weights (``"constant"``, ``"linear"``, ``"gaussian"``) and tiles per call.
    max_untiled_pixels : int
        Images of up to this many pixels are labelled in one call by instance labelers that
        handle any size (``segmenter.labels_whole_image``), and predicted in one call by
        pointwise segmenters (same result as tiled); 0 = always tile.
    timings : dict, optional
        Filled with ``t_segment_ms`` (prepare, fit, and the tiles' predictions or labels with
        their blending / merging, which run interleaved) and ``t_stitch_ms`` (``finish``: from
        the image-wide scores or labels to the final classes and instances: argmax, clean-up,
        connected components).

    Returns
    -------
    Segmentation
        ``classes`` (H, W) int32, and ``probabilities`` (K, H, W) float32 / ``instances``
        (H, W) int32 as the segmenter provides them.

    Raises
    ------
    ValueError
        For a malformed image or option (the message names the value and what is allowed), or
        a segmenter output of the wrong shape.
    """
    img = _check_image(image)
    _check_options(tile, overlap, blend, batch_size, max_untiled_pixels)
    t0 = time.perf_counter()
    _, h, w = img.shape

    prepared = segmenter.prepare(img)
    if not isinstance(prepared, np.ndarray) or prepared.ndim != 3 or prepared.shape[1:] != (h, w):
        raise ValueError(
            f"segmenter {segmenter.name!r}: prepare() must return (C', {h}, {w}), got "
            f"{getattr(prepared, 'shape', type(prepared).__name__)}"
        )
    prepared = prepared.astype(np.float32, copy=False)
    segmenter.fit(prepared)

    probabilities: np.ndarray | None = None
    labels: np.ndarray | None = None
    if segmenter.output == "instances":
        whole = segmenter.image_scoped or (
            segmenter.labels_whole_image and h * w <= max_untiled_pixels
        )
        if whole:
            labels = np.asarray(segmenter.label_tile(prepared))
        else:
            labels = stitch.label_tiled(
                prepared,
                segmenter.label_tile,
                tile=tile,
                overlap=overlap,
                min_overlap=segmenter.stitch_min_overlap,
            )
        if labels.shape != (h, w):
            raise ValueError(
                f"segmenter {segmenter.name!r}: labels must be ({h}, {w}), got {labels.shape}"
            )
        labels = labels.astype(np.int32, copy=False)
    else:
        # a pointwise predict gives the same bits tiled or not (tiling's contract), so ordinary
        # images skip the tiles' overlap work; larger ones are tiled to bound temporaries
        whole = segmenter.image_scoped or (segmenter.pointwise and h * w <= max_untiled_pixels)
        if whole:
            probabilities = np.asarray(segmenter.predict(prepared[None]), dtype=np.float32)[0]
        else:
            probabilities = segmenter.predict_tiled(
                prepared,
                tile=tile,
                overlap=overlap,
                blend=blend,
                batch_size=batch_size,
            )
        if probabilities.ndim != 3 or probabilities.shape[1:] != (h, w):
            raise ValueError(
                f"segmenter {segmenter.name!r}: class scores must be (K, {h}, {w}), "
                f"got {probabilities.shape}"
            )
    # the prepared image is done with: its memory can serve finish's label maps (fresh pages
    # cost a page fault each, ~0.5 ms per MB)
    del prepared
    t1 = time.perf_counter()
    seg = segmenter.finish(probabilities, img, labels=labels)
    if timings is not None:
        timings["t_segment_ms"] = (t1 - t0) * 1000.0
        timings["t_stitch_ms"] = (time.perf_counter() - t1) * 1000.0
    if seg.classes.shape != (h, w):
        raise ValueError(
            f"segmenter {segmenter.name!r}: finish() returned classes of shape "
            f"{seg.classes.shape}, expected ({h}, {w})"
        )
    logger.debug(
        "segmented %dx%d image with %s: %d classes, %s instances",
        h,
        w,
        segmenter.name,
        segmenter.num_classes,
        "no" if seg.instances is None else int(seg.instances.max(initial=0)),
    )
    return seg
