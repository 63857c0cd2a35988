"""Streaming segmentation of images larger than memory (gigapixel TIFF, Zarr, OME-Zarr).

The in-memory path (:func:`segflow.inference.segment_image`) holds the whole image as
``(C, H, W) float32`` plus full-size maps: about 20 bytes per pixel, 8 GB for a 400 MP scan.
:func:`segment_streamed` gives the same answer holding only a few rows of tiles: its memory
grows with ``width x tile``, never with ``height x width``.

How an image streams
--------------------
1. **Read by window.** A :class:`segflow.sources.WindowSource` (tiled or striped TIFF, Zarr,
   OME-Zarr) is read in full-width row blocks aligned to its storage chunks; a rolling row cache
   keeps only the rows the current strip (plus halos) needs, so every tile is decoded once.
   The decompression-bomb guard does not apply (nothing is decoded whole), except that a file
   whose single tile/strip is larger than ``max_chunk_pixels`` is refused.
2. **Global statistics on an overview.** ``segmenter.fit`` (Otsu / multi-Otsu thresholds,
   k-means centres) sees a downsampled overview: the file's own pyramid level when it stores
   one and the image is larger than ``overview_max_pixels`` (``overview="auto"``), else the
   same strided sample ``prepared[:, ::s, ::s]`` the in-memory path takes
   (``segmenters.classic.overview``), built strip by strip. Images up to
   ``overview_max_pixels`` are therefore fitted on exactly the pixels the in-memory path uses.
   Float images outside ``[0, 1]`` are min-max scaled with the overview's range (the in-memory
   path uses the whole image's; pixels outside the overview's range are clipped).
3. **Prepare with a halo.** ``segmenter.prepare`` must be local: the identity, or the classic
   segmenters' gaussian smoothing (halo ``int(4 sigma + 0.5)`` rows, the filter's radius).
   Strips are prepared with that many extra rows above and below, so every prepared pixel is
   bit for bit the in-memory one.
4. **Segment tiles in batches.**

   * *Pointwise* semantic segmenters (``otsu``, ``multiotsu``, ``kmeans``) are predicted
     block by block over each strip (any split gives the same bits: the tiling contract).
   * Other semantic segmenters (tile-dependent models) run over the same ``tile_grid`` windows
     as :func:`segflow.tiling.predict_tiled`, ``batch_size`` windows per call, blended by a
     :class:`StripMerger`: the ``aggregate``/``finalize`` interface of
     :class:`segflow.tiling.AvgMerger`, the same running weighted mean (so the same bits), but
     it holds one row of windows (``K x tile x W``) and hands every finished row block on.
   * Instance labelers (``watershed``, ``slic``, ``felzenszwalb``) label each window
     (``label_tile``) and windows are stitched as :func:`segflow.stitch.stitch_instances` does
     (matching by mask overlap in the shared bands, ownership by the nearest window centre),
     keeping only the window rows that can still overlap the next one.
5. **Finish, streamed.** Threshold clean-up runs strip by strip: ``opening`` with a ``2 r`` row
   halo (exact), connected components per strip joined across strip borders by a union-find over
   the components that touch the border row (4- or 8-connected, as ``connectivity``), and
   ``min_size`` applied to whole objects once they are complete. ``fill_holes`` needs the whole
   background and is not supported for streamed images (:class:`NotStreamableError`).
6. **Masks without full-size arrays.** An object is *complete* once no later strip can touch it;
   its pieces are pasted into a crop of its bounding box and encoded with
   :func:`segflow.rle.encode_crop` (crop + offset). Only incomplete objects' pieces are held:
   memory grows with the largest object, not with the image. Semantic class masks are the
   union (:func:`segflow.rle.merge`) of per-strip RLEs. A full-size label image, when asked
   for (``labels_out``), is written to a chunked Zarr array or a tiled TIFF on disk in two
   bounded passes (provisional component ids, then a lookup table to the final ids).

Instance ids follow the in-memory numbering: threshold instances class by class in raster order
of their first pixel (``postprocess.instances_from_classes``); stitched labels in the order of
``stitch_instances``. For pointwise segmenters and labelers the streamed result equals the
in-memory one (``tests/test_large.py`` checks masks, ids and label images); for images larger
than ``overview_max_pixels`` with a pyramid level, thresholds come from that level and may
differ slightly.

What cannot stream: ``image_scoped`` segmenters (remote APIs, whole-image models, region
growing), ``prepare`` steps with whole-image statistics (``adaptive``), custom ``finish``
steps, and ``fill_holes``: :func:`check_streamable` says why.

When does an image stream? :func:`should_stream`: TIFF files (and Zarr stores) larger than
``threshold_pixels`` (default :data:`DEFAULT_LARGE_PIXELS`, 64 MP) or than ``max_pixels``, or
every TIFF when forced (``mode="always"``); never with ``mode="never"``. PNG, JPEG and other
formats that must be decoded whole keep the in-memory path and its decompression-bomb guard.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from segflow import metrics as M
from segflow import postprocess
from segflow import rle as R
from segflow.ingest import IGNORE, load_ground_truth, sha256_file
from segflow.io import DEFAULT_MAX_PIXELS, TIFF_MAGIC, ImageReadError, read_header
from segflow.preprocess import to_float_chw
from segflow.segmenters.base import Segmenter
from segflow.sources import (
    ArraySource,
    WindowSource,
    is_remote_zarr_uri,
    is_zarr_path,
    open_source,
)
from segflow.stitch import matched_pairs
from segflow.tiling import BLEND_MODES, Merger, Window, blend_weights, tile_grid

if TYPE_CHECKING:
    from segflow.config import RunConfig
    from segflow.evaluate import ImageResult
    from segflow.ingest import ImageItem

__all__ = [
    "DEFAULT_LARGE_PIXELS",
    "DEFAULT_STRIP_ROWS",
    "LARGE_MODES",
    "OVERLAY_MAX_PIXELS",
    "OVERVIEW_MODES",
    "NotStreamableError",
    "StreamedObject",
    "StreamedSegmentation",
    "StripMerger",
    "check_streamable",
    "prepare_halo",
    "process_image_streamed",
    "segment_streamed",
    "should_stream",
    "stream_mode",
]

logger = logging.getLogger(__name__)

#: Images with more pixels than this stream by default (64 MP: ~1.3 GB as float32 maps in memory).
DEFAULT_LARGE_PIXELS = 1 << 26
#: ``mode`` of :func:`should_stream`.
LARGE_MODES = ("auto", "always", "never")
#: ``overview`` of :func:`segment_streamed`.
OVERVIEW_MODES = ("auto", "strided", "pyramid")
#: Rows per strip of the pointwise path (rounded up to the storage chunk rows).
DEFAULT_STRIP_ROWS = 512
#: Pixels of a streamed image's overlay: the image, prediction and truth sampled every ``step``
#: rows and columns (an in-memory image's overlay is full size).
OVERLAY_MAX_PIXELS = 1 << 22
#: Pointwise prediction works on blocks of at most this many columns (bounds temporaries).
_BLOCK_COLS = 4096


class NotStreamableError(ValueError):
    """The segmenter (or one of its options) needs the whole image at once."""


# ---------------------------------------------------------------------------------------------
# which segmenters stream
# ---------------------------------------------------------------------------------------------


def _classic() -> Any:
    from segflow.segmenters import classic

    return classic


def prepare_halo(segmenter: Segmenter) -> int | None:
    """Rows of context ``segmenter.prepare`` needs around a strip, or None when not local.

    A segmenter may declare it as an integer attribute ``prepare_halo``; otherwise the identity
    ``prepare`` needs 0 rows and the classic segmenters' gaussian smoothing needs its radius
    ``int(4 * sigma + 0.5)`` (scipy's ``truncate=4``).
    """
    declared = getattr(segmenter, "prepare_halo", None)
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
        return declared
    method = type(segmenter).prepare
    if method is Segmenter.prepare:
        return 0
    if method is _classic()._Classic.prepare:
        sigma = float(getattr(segmenter, "sigma", 0.0))
        return 0 if sigma == 0 else int(4.0 * sigma + 0.5)
    return None


def _finish_kind(segmenter: Segmenter) -> str | None:
    classic = _classic()
    finish = type(segmenter).finish
    if segmenter.output == "semantic":
        if finish is Segmenter.finish:
            return "argmax"
        if isinstance(segmenter, classic._Threshold) and finish is classic._Threshold.finish:
            return "threshold"
        return None
    if finish is Segmenter.finish:
        return "labels"
    if isinstance(segmenter, classic._Labeler) and finish is classic._Labeler.finish:
        return "labels"
    return None


def check_streamable(segmenter: Segmenter) -> None:
    """Raise :class:`NotStreamableError` saying why ``segmenter`` cannot run streamed."""
    name = segmenter.name or type(segmenter).__name__
    if segmenter.image_scoped:
        raise NotStreamableError(
            f"segmenter {name!r} is image-scoped (it must see the whole image at once) and "
            "cannot segment an image streamed by window; streamable segmenters: otsu, "
            "multiotsu, kmeans, watershed, slic, felzenszwalb"
        )
    if prepare_halo(segmenter) is None:
        raise NotStreamableError(
            f"segmenter {name!r} computes whole-image statistics in prepare() and cannot "
            "segment an image streamed by window; streamable segmenters: otsu, multiotsu, "
            "kmeans, watershed, slic, felzenszwalb"
        )
    if _finish_kind(segmenter) is None:
        raise NotStreamableError(
            f"segmenter {name!r} has its own finish() step on the full-size result and cannot "
            "segment an image streamed by window"
        )
    if _finish_kind(segmenter) == "threshold" and getattr(segmenter, "fill_holes", False):
        raise NotStreamableError(
            f"segmenter {name!r}: fill_holes=True needs the whole background at once and is not "
            "supported for images streamed by window; use fill_holes=False (or opening / "
            "min_size) for large images"
        )


# ---------------------------------------------------------------------------------------------
# when to stream
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _check_int(name: str, value: object, *, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def should_stream(
    path: str | os.PathLike[str],
    *,
    mode: str = "auto",
    threshold_pixels: int = DEFAULT_LARGE_PIXELS,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> bool:
    """Whether the file at ``path`` goes through the streaming path.

    A Zarr store (a folder) always streams: it has no whole-file form to decode. For TIFF files,
    ``mode``: ``"never"`` -> False; ``"always"`` -> True; ``"auto"`` -> True above
    ``threshold_pixels`` pixels, or above ``max_pixels`` (the in-memory path would refuse
    them). Only the first bytes and the TIFF header are read. Other formats (PNG, JPEG, ...)
    never stream: they must be decoded whole, and the decompression-bomb guard refuses the
    oversized ones.

    ``path`` may be an fsspec URL: a ``*.zarr`` URL streams (read chunk by chunk where it is);
    a ``*.tif``/``*.tiff`` URL is decided by its header, read with ranged reads (a streamed
    remote TIFF is then copied to a temporary local file, in blocks); other URLs never stream.
    """
    _check_choice("mode", mode, LARGE_MODES)
    threshold = _check_int("threshold_pixels", threshold_pixels, lo=1)
    p = os.fspath(path)
    if "://" in p:
        if is_remote_zarr_uri(p):
            return True
        if mode == "never" or not p.lower().endswith((".tif", ".tiff")):
            return False
        pixels = _remote_tiff_pixels(p)
        if pixels is None:
            return False  # not a TIFF, or no header: the normal path reports it
        return _above(pixels, mode=mode, threshold=threshold, max_pixels=max_pixels)
    if is_zarr_path(p) or (p.lower().rstrip("/").endswith(".zarr") and os.path.isdir(p)):
        # a Zarr store has no whole-file form: it is always read by window (and a *.zarr folder
        # without metadata fails there with a clear reason)
        return True
    if mode == "never":
        return False
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False  # the normal path reports the unreadable file
    if head not in TIFF_MAGIC:
        return False
    if mode == "always":
        return True
    try:
        header = read_header(p)
    except ImageReadError:
        return False  # the normal path reports the corrupt file
    return _above(
        header.height * header.width, mode=mode, threshold=threshold, max_pixels=max_pixels
    )


def _above(pixels: int, *, mode: str, threshold: int, max_pixels: int | None) -> bool:
    """The switch for a TIFF of ``pixels``: ``always``, or above the threshold or the guard."""
    return (
        mode == "always" or pixels > threshold or (max_pixels is not None and pixels > max_pixels)
    )


def _remote_tiff_pixels(url: str) -> int | None:
    """Pixels of the first page of the TIFF at ``url`` (its header only, by ranged reads);
    None when it is not a TIFF or cannot be read (the in-memory path then reports why)."""
    import fsspec
    import tifffile

    try:
        with fsspec.open(url, "rb") as fh:
            if fh.read(4) not in TIFF_MAGIC:
                return None
            fh.seek(0)
            with tifffile.TiffFile(fh) as tif:
                page = tif.pages.first
                return int(page.imagelength) * int(page.imagewidth)
    except Exception as exc:  # no range requests, truncated header, network: read it whole
        logger.debug("cannot read the TIFF header of %s: %s", url, exc)
        return None


def stream_mode(config: Any) -> tuple[str, int]:
    """``(mode, threshold_pixels)`` from a run configuration (defaults when it has no such fields)."""
    mode = getattr(config, "large_image", "auto")
    threshold = getattr(config, "large_image_pixels", DEFAULT_LARGE_PIXELS)
    return mode, threshold


# ---------------------------------------------------------------------------------------------
# rows: scaling, caching, preparing
# ---------------------------------------------------------------------------------------------


class _Scaler:
    """Native windows -> ``(C, h, w) float32`` in [0, 1], as ``to_float_chw`` scales them.

    uint8 / uint16 / bool are scaled by their dtype (per pixel, so a strip equals the same rows
    of the whole image); other dtypes by ``lo``/``hi`` fitted on an overview.
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.fixed = np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(bool))
        self.lo = 0.0
        self.hi = 1.0

    def fit(self, sample: np.ndarray) -> None:
        finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
        if finite.size:
            self.lo, self.hi = float(finite.min()), float(finite.max())

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.fixed:
            return to_float_chw(block)
        arr = block[:, :, None] if block.ndim == 2 else block
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        work = np.nan_to_num(arr.transpose(2, 0, 1).astype(np.float64), nan=0.0)
        lo, hi = self.lo, self.hi
        if not (lo >= 0.0 and hi <= 1.0) and hi > lo:
            work = (work - lo) / (hi - lo)
        return np.clip(work, 0.0, 1.0).astype(np.float32)


class _RowCache:
    """Full-width rows of a source as ``(C, n, W) float32``, read once, kept while needed.

    Requests must not move backwards (``y0`` non-decreasing); rows above the latest ``y0`` are
    dropped. Reads are whole blocks of ``block_rows`` rows aligned to the storage chunks.
    """

    def __init__(self, source: WindowSource, scaler: _Scaler, *, block_rows: int) -> None:
        self.source = source
        self.scaler = scaler
        self.block_rows = block_rows
        self._blocks: list[tuple[int, np.ndarray]] = []  # (first row, (C, n, W))
        self._end = 0
        self.rows_read = 0
        self.overview: _Overview | None = None

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` as ``(C, y1 - y0, W) float32`` (a new array)."""
        height, width = self.source.height, self.source.width
        if not 0 <= y0 < y1 <= height:
            raise ValueError(f"rows [{y0}, {y1}) must lie inside [0, {height})")
        while self._blocks and self._blocks[0][0] + self._blocks[0][1].shape[1] <= y0:
            self._blocks.pop(0)
        if self._blocks and self._blocks[0][0] > y0:
            raise RuntimeError(f"row cache asked for row {y0} after dropping it (requests go down)")
        while self._end < y1:
            n = min(self.block_rows, height - self._end)
            raw = self.source.read(y=self._end, x=0, h=n, w=width)
            scaled = self.scaler(raw)
            if self.overview is not None:
                self.overview.put_image(self._end, scaled)
            self._blocks.append((self._end, scaled))
            self._end += n
            self.rows_read += n
        parts = []
        for start, block in self._blocks:
            a, b = max(y0, start), min(y1, start + block.shape[1])
            if a < b:
                parts.append(block[:, a - start : b - start])
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts, axis=1)


class _Prepared:
    """Prepared rows: ``segmenter.prepare`` on the rows plus ``halo`` rows each side, cropped."""

    def __init__(self, cache: _RowCache, segmenter: Segmenter, halo: int) -> None:
        self.cache = cache
        self.segmenter = segmenter
        self.halo = halo
        self.identity = type(segmenter).prepare is Segmenter.prepare

    def rows(self, y0: int, y1: int) -> np.ndarray:
        height = self.cache.source.height
        a, b = max(0, y0 - self.halo), min(height, y1 + self.halo)
        raw = self.cache.rows(a, b)
        if self.identity:
            return raw[:, y0 - a : y1 - a]
        out = np.asarray(self.segmenter.prepare(raw), dtype=np.float32)
        if out.ndim != 3 or out.shape[1:] != raw.shape[1:]:
            raise ValueError(
                f"segmenter {self.segmenter.name!r}: prepare() must keep the size {raw.shape[1:]}, "
                f"got {out.shape}"
            )
        return out[:, y0 - a : y1 - a]


def _chunk_block_rows(source: WindowSource, target: int) -> int:
    rows = max(1, int(source.chunk_shape[0]))
    return rows * max(1, math.ceil(target / rows))


def _overview_step(height: int, width: int, max_pixels: int) -> int:
    """The stride of ``segmenters.classic.overview`` (1 when the image is small enough)."""
    if height * width <= max_pixels:
        return 1
    return math.ceil(math.sqrt(height * width / max_pixels))


def _pick_level(source: WindowSource, max_pixels: int) -> int | None:
    """The largest pyramid level with at most ``4 * max_pixels`` pixels, or None."""
    best = None
    for i, (h, w) in enumerate(source.levels):
        if h * w <= 4 * max_pixels and (best is None or h * w > math.prod(source.levels[best])):
            best = i
    return best


def _on_stride(y0: int, n: int, step: int) -> tuple[slice, int] | None:
    """Rows ``y0 .. y0 + n`` on the stride: (their slice in the block, the first one's index in
    the strided sample), or None when none is."""
    first = -(-y0 // step) * step  # first row >= y0 on the stride
    if first >= y0 + n:
        return None
    return slice(first - y0, n, step), first // step


def _strided_overview(
    source: WindowSource,
    scaler: _Scaler,
    segmenter: Segmenter | None,
    halo: int,
    step: int,
    block_rows: int,
) -> np.ndarray:
    """``prepared[:, ::step, ::step]`` built strip by strip (``prepared = raw`` without segmenter)."""
    cache = _RowCache(source, scaler, block_rows=block_rows)
    prepared = _Prepared(cache, segmenter, halo) if segmenter is not None else None
    parts = []
    height = source.height
    for y0 in range(0, height, block_rows):
        y1 = min(height, y0 + block_rows)
        at = _on_stride(y0, y1 - y0, step)
        if at is None:
            continue
        rows = prepared.rows(y0, y1) if prepared is not None else cache.rows(y0, y1)
        parts.append(rows[:, at[0], ::step].copy())  # not a view: frees rows
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def _raw_overview(source: WindowSource, max_pixels: int, block_rows: int) -> np.ndarray:
    """Native-dtype strided sample (for fitting the float scaler)."""
    step = _overview_step(source.height, source.width, max_pixels)
    parts = []
    for y0 in range(0, source.height, block_rows):
        y1 = min(source.height, y0 + block_rows)
        at = _on_stride(y0, y1 - y0, step)
        if at is None:
            continue
        block = source.read(y=y0, x=0, h=y1 - y0, w=source.width)
        parts.append(block[at[0], ::step].copy())
    return np.concatenate(parts, axis=0)


class _Overview:
    """Every ``step``-th row and column of the image, the predicted ids and the true ids of a
    streamed image, filled as the rows go by (each row is read once), for its overlay."""

    def __init__(self, height: int, width: int, step: int) -> None:
        self.step = step
        self.shape = (-(-height // step), -(-width // step))
        self.image: np.ndarray | None = None  # (h, w, C) uint8, allocated at the first rows
        self.pred = np.zeros(self.shape, dtype=np.int32)  # provisional ids until draw()
        self.truth: np.ndarray | None = None

    def _sampled(self, y0: int, n: int) -> tuple[slice, slice] | None:
        """(rows of the block, rows of the overview) on the stride, or None."""
        at = _on_stride(y0, n, self.step)
        if at is None:
            return None
        rows, first = at
        return rows, slice(first, first + len(range(rows.start, n, self.step)))

    def put_image(self, y0: int, block: np.ndarray) -> None:
        """Rows ``y0...`` of the scaled image, ``(C, n, W) float32`` in [0, 1]."""
        at = self._sampled(y0, block.shape[1])
        if at is None:
            return
        if self.image is None:
            self.image = np.zeros((*self.shape, block.shape[0]), dtype=np.uint8)
        rows = block[:, at[0], :: self.step] * np.float32(255)
        self.image[at[1]] = np.rint(rows).astype(np.uint8).transpose(1, 2, 0)

    def put_pred(self, y0: int, ids: np.ndarray) -> None:
        """Rows ``y0...`` of the class ids or provisional object ids (node + 1), ``(n, W)``."""
        at = self._sampled(y0, ids.shape[0])
        if at is not None:
            self.pred[at[1]] = ids[at[0], :: self.step]

    def put_truth(self, y0: int, ids: np.ndarray) -> None:
        """Rows ``y0...`` of the ground truth, ``(n, W)``."""
        at = self._sampled(y0, ids.shape[0])
        if at is None:
            return
        if self.truth is None:
            self.truth = np.zeros(self.shape, dtype=np.int32)
        self.truth[at[1]] = ids[at[0], :: self.step]

    def draw(self, lut: np.ndarray) -> np.ndarray:
        """The overlay, ``(h, w, 3) uint8``; ``lut`` maps provisional ids to final ones."""
        from segflow.overlay import draw_overlay

        assert self.image is not None
        return draw_overlay(self.image, np.asarray(lut, dtype=np.int32)[self.pred], self.truth)


# ---------------------------------------------------------------------------------------------
# streaming merger
# ---------------------------------------------------------------------------------------------


class StripMerger(Merger):
    """Weighted mean of overlapping windows, holding only the rows still being blended.

    Same arithmetic as :class:`segflow.tiling.AvgMerger` (``wsum += w``;
    ``mean += w / wsum * (values - mean)``, in float32), so the blended values are bit for bit
    the in-memory ones; windows must arrive in raster order (non-decreasing ``y``, as
    :func:`segflow.tiling.tile_grid` lists them). When a window starts below the rows held, the
    rows above it are final: they are handed to ``emit(y0, block)`` (``block`` a ``(K, n, W)``
    float32 array the callee may keep) and/or written to ``out[:, y0:y0 + n, :]`` (any array-like
    that accepts slice assignment: a ``numpy.memmap``, a Zarr array), then dropped.

    Memory: ``(K + 1) x tile x W`` float32, for any image height.

    Parameters
    ----------
    shape : (K, H, W)
        Result shape.
    weights : (t, t) float32
        Blend weights of every window, strictly positive.
    emit : callable, optional
        ``emit(y0, block)`` for every finished row block, top to bottom.
    out : array-like, optional
        Destination of the finished rows.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        *,
        weights: np.ndarray,
        emit: Callable[[int, np.ndarray], None] | None = None,
        out: Any = None,
    ) -> None:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (K, H, W) with every side >= 1, got {shape}")
        w = np.asarray(weights, dtype=np.float32)
        if w.ndim != 2 or w.size == 0:
            raise ValueError(f"weights must be a non-empty (h, w) array, got shape {w.shape}")
        if not np.all(w > 0) or not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite and strictly positive (> 0) everywhere")
        self._shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._weights = w
        self._emit = emit
        self._out = out
        rows = w.shape[0]
        self._mean = np.zeros((self._shape[0], rows, self._shape[2]), dtype=np.float32)
        self._wsum = np.zeros((rows, self._shape[2]), dtype=np.float32)
        self._base = 0  # image row of buffer row 0
        self._done = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def rows_held(self) -> int:
        """Rows of the buffer (the window height), whatever the image height."""
        return self._wsum.shape[0]

    def aggregate(self, values: np.ndarray, window: Window) -> None:
        """Blend ``values`` ``(K, h, w) float32`` into ``window``; emits rows above it."""
        if self._done:
            raise RuntimeError("StripMerger.aggregate after finalize()")
        k, height, width = self._shape
        if (window.h, window.w) != self._weights.shape:
            raise ValueError(
                f"window size {(window.h, window.w)} must equal the weights' shape "
                f"{self._weights.shape}"
            )
        if (
            window.y < 0
            or window.x < 0
            or window.y + window.h > height
            or window.x + window.w > width
        ):
            raise ValueError(
                f"window {window} must lie inside the result of size {(height, width)}"
            )
        if values.shape != (k, window.h, window.w):
            raise ValueError(
                f"values must have shape {(k, window.h, window.w)} (K, h, w), got {values.shape}"
            )
        if window.y < self._base:
            raise ValueError(
                f"windows must arrive in raster order (non-decreasing y): window at y={window.y} "
                f"after rows above {self._base} were emitted"
            )
        if window.y > self._base:
            self._flush(window.y)
        r0 = window.y - self._base
        rows = slice(r0, r0 + window.h)
        cols = slice(window.x, window.x + window.w)
        mean = self._mean[:, rows, cols]
        wsum = self._wsum[rows, cols]
        wsum += self._weights
        coef = self._weights / wsum
        delta = np.asarray(values, dtype=np.float32) - mean
        delta *= coef
        mean += delta

    def _flush(self, upto: int) -> None:
        """Emit rows ``[base, upto)`` and shift the buffer up."""
        n = min(upto - self._base, self._wsum.shape[0])
        if n <= 0:
            return
        block = self._mean[:, :n].copy()
        self._hand_on(self._base, block)
        keep = self._wsum.shape[0] - n
        if keep > 0:
            self._mean[:, :keep] = self._mean[:, n:]
            self._wsum[:keep] = self._wsum[n:]
        self._mean[:, keep:] = 0
        self._wsum[keep:] = 0
        self._base += n
        if upto > self._base:  # a gap no window covers: zeros, as AvgMerger leaves them
            gap = upto - self._base
            self._hand_on(self._base, np.zeros((self._shape[0], gap, self._shape[2]), np.float32))
            self._base = upto

    def _hand_on(self, y0: int, block: np.ndarray) -> None:
        if self._out is not None:
            self._out[:, y0 : y0 + block.shape[1], :] = block
        if self._emit is not None:
            self._emit(y0, block)

    def finalize(self) -> Any:
        """Emit the remaining rows; return ``out`` (the array-like given, else None)."""
        if not self._done:
            height = self._shape[1]
            while self._base < height:
                self._flush(min(height, self._base + self._wsum.shape[0]))
            self._done = True
        return self._out


# ---------------------------------------------------------------------------------------------
# objects: pieces, union-find, completion
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamedObject:
    """One finished object: its id, class, COCO RLE of the full image, box and area."""

    id: int
    class_id: int
    rle: R.CocoRLE
    bbox: tuple[int, int, int, int]  # x, y, w, h
    area: int
    score: float = 1.0


@dataclass
class _Record:
    """An object under construction (the union-find root's data)."""

    key: tuple[int, ...]
    class_id: int
    pieces: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    area: int = 0
    gt: int = 0
    gt_ids: dict[int, int] | None = None
    open: int = 0
    nodes: list[int] = field(default_factory=list)


@dataclass
class _Done:
    key: tuple[int, ...]
    class_id: int
    rle: R.CocoRLE
    bbox: tuple[int, int, int, int]
    area: int
    gt: int
    nodes: list[int]
    gt_ids: dict[int, int] | None = None


def _encode_pieces(
    pieces: Sequence[tuple[int, int, np.ndarray]], size: tuple[int, int], *, tight: bool = False
) -> tuple[R.CocoRLE, tuple[int, int, int, int]]:
    """RLE and box of the union of ``(y, x, crop)`` pieces, via one crop of their box.

    ``tight``: the single piece's crop is already its bounding box (no trimming needed).
    """
    if len(pieces) == 1:
        y, x, crop = pieces[0]
        if tight:
            return R.encode_crop(crop, offset=(y, x), size=size), (
                x,
                y,
                crop.shape[1],
                crop.shape[0],
            )
        rows = np.flatnonzero(crop.any(axis=1))
        cols = np.flatnonzero(crop.any(axis=0))
        if rows[0] or cols[0] or rows[-1] != crop.shape[0] - 1 or cols[-1] != crop.shape[1] - 1:
            crop = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            y, x = y + int(rows[0]), x + int(cols[0])
        return R.encode_crop(crop, offset=(y, x), size=size), (x, y, crop.shape[1], crop.shape[0])
    y0 = min(p[0] for p in pieces)
    x0 = min(p[1] for p in pieces)
    y1 = max(p[0] + p[2].shape[0] for p in pieces)
    x1 = max(p[1] + p[2].shape[1] for p in pieces)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for y, x, crop in pieces:
        canvas[y - y0 : y - y0 + crop.shape[0], x - x0 : x - x0 + crop.shape[1]] |= crop
    rows = np.flatnonzero(canvas.any(axis=1))
    cols = np.flatnonzero(canvas.any(axis=0))
    canvas = canvas[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    y0, x0 = y0 + int(rows[0]), x0 + int(cols[0])
    return R.encode_crop(canvas, offset=(y0, x0), size=size), (
        x0,
        y0,
        canvas.shape[1],
        canvas.shape[0],
    )


def _add_counts(a: dict[int, int] | None, b: dict[int, int] | None) -> dict[int, int] | None:
    """Sum of two ``{true id: pixels}`` overlap tables (None = empty); reuses ``a``."""
    if not b:
        return a
    if not a:
        return dict(b)
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


class _Objects:
    """Union-find over object pieces; an object is encoded once none of its nodes is open.

    Every node starts open; :meth:`close` marks it complete (no later strip/window can join it
    to anything). Pieces are ``(y, x, crop bool)`` with their overlap with the ground truth.
    """

    def __init__(self, size: tuple[int, int], *, keep_nodes: bool, min_size: int = 0) -> None:
        self.size = size
        self.keep_nodes = keep_nodes
        self.min_size = min_size  # smaller objects are dropped unencoded
        self.parent: list[int] = []
        self.records: dict[int, _Record] = {}
        self.done: list[_Done] = []
        self.held_pieces = 0
        self.peak_held_pieces = 0

    def new(self, key: tuple[int, ...], class_id: int) -> int:
        node = len(self.parent)
        self.parent.append(node)
        rec = _Record(key=key, class_id=class_id, open=1)
        if self.keep_nodes:
            rec.nodes.append(node)
        self.records[node] = rec
        return node

    def find(self, node: int) -> int:
        parent = self.parent
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        A, B = self.records[ra], self.records[rb]
        if len(A.pieces) + len(A.nodes) < len(B.pieces) + len(B.nodes):
            ra, rb, A, B = rb, ra, B, A
        self.parent[rb] = ra
        A.key = min(A.key, B.key)
        A.pieces.extend(B.pieces)
        A.area += B.area
        A.gt += B.gt
        A.gt_ids = _add_counts(A.gt_ids, B.gt_ids)
        A.open += B.open
        A.nodes.extend(B.nodes)
        del self.records[rb]

    def add_piece(
        self,
        node: int,
        y: int,
        x: int,
        crop: np.ndarray,
        area: int,
        gt: int,
        gt_ids: dict[int, int] | None = None,
    ) -> None:
        rec = self.records[self.find(node)]
        rec.pieces.append((y, x, crop))
        rec.area += area
        rec.gt += gt
        rec.gt_ids = _add_counts(rec.gt_ids, gt_ids)
        self.held_pieces += 1
        self.peak_held_pieces = max(self.peak_held_pieces, self.held_pieces)

    def close(self, nodes: Sequence[int] | range) -> None:
        for node in nodes:
            root = self.find(node)
            rec = self.records[root]
            rec.open -= 1
            if rec.open == 0:
                self._finish(root, rec)

    def _finish(self, root: int, rec: _Record) -> None:
        del self.records[root]
        self.held_pieces -= len(rec.pieces)
        if rec.area == 0 or rec.area < self.min_size:
            return
        rle, box = _encode_pieces(rec.pieces, self.size)
        self.done.append(
            _Done(rec.key, rec.class_id, rle, box, rec.area, rec.gt, rec.nodes, rec.gt_ids)
        )

    def add_complete(
        self,
        key: tuple[int, ...],
        class_id: int,
        y: int,
        x: int,
        crop: np.ndarray | None,
        gt: int,
        *,
        area: int,
        gt_ids: dict[int, int] | None = None,
    ) -> int:
        """An object known complete at once (one tight piece, no links): encoded directly.

        ``crop`` may be None for an object below ``min_size`` (only its node id is taken).
        """
        node = len(self.parent)
        self.parent.append(node)
        if crop is not None and area and area >= self.min_size:
            rle, box = _encode_pieces([(y, x, crop)], self.size, tight=True)
            nodes = [node] if self.keep_nodes else []
            self.done.append(_Done(key, class_id, rle, box, area, gt, nodes, gt_ids))
        return node


# ---------------------------------------------------------------------------------------------
# label image on disk
# ---------------------------------------------------------------------------------------------


class _LabelWriter:
    """A full-size label image on disk: provisional ids first, final ids after :meth:`finish`.

    ``path`` ending in ``.zarr``: a chunked Zarr array written in place. ``.tif``/``.tiff``: a
    tiled, deflate-compressed TIFF, made from a provisional Zarr beside it (removed after).
    Rows are buffered up to whole chunk rows, so no chunk is rewritten in pass one.
    """

    def __init__(
        self, path: str | os.PathLike[str], height: int, width: int, *, chunk: int
    ) -> None:
        import zarr

        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".zarr", ".tif", ".tiff"):
            raise ValueError(f"labels_out must end in .zarr, .tif or .tiff, got {self.path.name!r}")
        self.tiff = suffix != ".zarr"
        self.store = (
            self.path.with_name(self.path.name + ".provisional.zarr") if self.tiff else self.path
        )
        if self.store.exists():
            shutil.rmtree(self.store)
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.chunk = height, width, chunk
        self.array = zarr.create_array(
            store=str(self.store),
            shape=(height, width),
            chunks=(chunk, min(width, 4 * chunk)),
            dtype="int32",
            fill_value=0,
        )
        self._pending: list[np.ndarray] = []
        self._pending_start = 0
        self._next = 0

    def write(self, y0: int, block: np.ndarray) -> None:
        if y0 != self._next:
            raise RuntimeError(
                f"label rows must be written in order: got {y0}, expected {self._next}"
            )
        self._pending.append(np.asarray(block, dtype=np.int32))
        self._next += block.shape[0]
        rows = self._next - self._pending_start
        full = (rows // self.chunk) * self.chunk
        if self._next == self.height:
            full = rows
        if full:
            data = np.concatenate(self._pending, axis=0)
            self.array[self._pending_start : self._pending_start + full] = data[:full]
            rest = data[full:]
            self._pending = [rest] if rest.shape[0] else []
            self._pending_start += full

    def finish(self, lut: np.ndarray) -> Path:
        """Map provisional ids through ``lut`` (``final = lut[provisional]``), strip by strip."""
        if self._next != self.height:
            raise RuntimeError(f"label image incomplete: {self._next} of {self.height} rows")
        lut = np.asarray(lut, dtype=np.int32)
        if not self.tiff:
            for y0 in range(0, self.height, self.chunk):
                y1 = min(self.height, y0 + self.chunk)
                self.array[y0:y1] = lut[np.asarray(self.array[y0:y1])]
            return self.path
        import tifffile

        tile = 256
        height, width = self.height, self.width

        def tiles() -> Iterator[np.ndarray]:
            for y0 in range(0, height, tile):
                y1 = min(height, y0 + tile)
                rows = lut[np.asarray(self.array[y0:y1])]
                for x0 in range(0, width, tile):
                    out = np.zeros((tile, tile), dtype=np.int32)
                    part = rows[:, x0 : x0 + tile]
                    out[: part.shape[0], : part.shape[1]] = part
                    yield out

        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tifffile.TiffWriter(tmp, bigtiff=height * width * 4 > 2**31) as tw:
            tw.write(
                tiles(),
                shape=(height, width),
                dtype=np.int32,
                tile=(tile, tile),
                compression="zlib",
            )
        os.replace(tmp, self.path)
        shutil.rmtree(self.store, ignore_errors=True)
        return self.path


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------


@dataclass
class StreamedSegmentation:
    """What :func:`segment_streamed` returns (no full-size arrays).

    Attributes
    ----------
    height, width : int
    class_names : list[str]
    objects : list[StreamedObject]
        Instances (ids ``1..N``, in the in-memory numbering), when the segmenter gives instances.
    class_masks : dict[int, CocoRLE]
        One RLE per present foreground class, when it gives no instances.
    class_scores : dict[int, float]
        Mean class probability over each class mask (segmenters with probabilities).
    class_pixels : (K,) int64
        Pixels per class after clean-up (class 0 = background).
    has_instances : bool
    confusion : (tp, fp, fn, tn) or None
        Foreground counts against the ground truth (``truth`` given).
    instance_scores : InstanceScores or None
        Object-level scores against the ground truth's instances (``truth_instances``).
    mean_entropy : float or None
        Mean per-pixel entropy (segmenters with probabilities).
    labels_path : Path or None
        The label image written to disk (``labels_out``).
    overlay : (h, w, 3) uint8 ndarray or None
        With ``overlay_max_pixels``: :func:`segflow.overlay.draw_overlay` of the image, the
        final label map and the truth, each sampled every ``info["overlay_step"]`` rows and
        columns.
    info : dict
        How it ran: overview kind and size, strip rows, rows held, windows, timings (ms).
    """

    height: int
    width: int
    class_names: list[str]
    objects: list[StreamedObject] = field(default_factory=list)
    class_masks: dict[int, R.CocoRLE] = field(default_factory=dict)
    class_scores: dict[int, float] = field(default_factory=dict)
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    has_instances: bool = False
    confusion: tuple[int, int, int, int] | None = None
    instance_scores: M.InstanceScores | None = None
    mean_entropy: float | None = None
    labels_path: Path | None = None
    overlay: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def fg_pixels(self) -> int:
        """Foreground pixels (every class but 0)."""
        return int(self.class_pixels[1:].sum())

    def label_map(self) -> np.ndarray:
        """The ``(H, W) int32`` instance map, painted run by run (tests, small images)."""
        out = np.zeros((self.width, self.height), dtype=np.int32)  # column-major order
        flat = out.ravel()
        for obj in self.objects:
            for a, b in _runs(obj.rle):
                flat[a:b] = obj.id
        return np.ascontiguousarray(out.T)

    def class_map(self) -> np.ndarray:
        """The ``(H, W) int32`` class map, painted run by run (tests, small images)."""
        out = np.zeros((self.width, self.height), dtype=np.int32)
        flat = out.ravel()
        masks = (
            [(o.class_id, o.rle) for o in self.objects]
            if self.has_instances
            else list(self.class_masks.items())
        )
        for c, rle in masks:
            for a, b in _runs(rle):
                flat[a:b] = c
        return np.ascontiguousarray(out.T)


def _runs(rle: Mapping[str, Any]) -> Iterator[tuple[int, int]]:
    """``[start, end)`` column-major pixel ranges of an RLE's foreground runs."""
    _, _, counts = R._parse(rle)
    ends = np.cumsum(np.asarray(counts, dtype=np.int64))
    starts = np.concatenate([[0], ends[:-1]])
    for a, b in zip(starts[1::2].tolist(), ends[1::2].tolist(), strict=True):
        if b > a:
            yield a, b


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


class _Truth:
    """Ground-truth foreground rows (``!= 0``) read by window, and its total.

    With ``instances`` each non-zero id is also one true object: :attr:`areas` sums every id's
    pixels over the rows read, and :meth:`overlap` gives a piece's overlap with each id.
    Pixels whose value is ``ignore`` count nowhere: they are neither foreground nor background
    (:attr:`ignored_total` of them), and :meth:`overlap` reports a piece's pixels on them under
    the key :data:`~segflow.ingest.IGNORE`, so that they can be taken off its area.
    """

    def __init__(
        self,
        source: WindowSource | None,
        height: int,
        width: int,
        *,
        instances: bool = False,
        ignore: int | None = None,
    ) -> None:
        self.source = source
        self.instances = instances and source is not None
        self.ignore = ignore if source is not None else None
        self.total = 0
        self.ignored_total = 0
        self.areas: dict[int, int] = {}
        self._fg: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._ignored: np.ndarray | None = None
        self.overview: _Overview | None = None
        if source is not None and (source.height, source.width) != (height, width):
            raise ValueError(
                f"ground truth size {(source.height, source.width)} differs from the image's "
                f"{(height, width)}"
            )

    def rows(self, y0: int, y1: int) -> np.ndarray | None:
        if self.source is None:
            return None
        block = self.source.read(y=y0, x=0, h=y1 - y0, w=self.source.width)
        if block.ndim == 3:
            block = block[..., 0]
        ignored = block == self.ignore if self.ignore is not None else None
        if ignored is not None and not ignored.any():
            ignored = None
        self._ignored = ignored
        if self.overview is not None:
            self.overview.put_truth(
                y0, block if ignored is None else np.where(ignored, IGNORE, block)
            )
        fg = block != 0
        if ignored is not None:
            fg &= ~ignored
            self.ignored_total += int(np.count_nonzero(ignored))
        self.total += int(np.count_nonzero(fg))
        self._fg = fg
        if self.instances:
            self._ids = block
            self.areas = _add_counts(self.areas, _id_counts(block[fg])) or {}
        return fg

    def overlap(
        self, region: tuple[slice, slice], crop: np.ndarray
    ) -> tuple[int, dict[int, int] | None]:
        """Pixels of ``crop`` (bool, at ``region`` of the rows last read) on true foreground,
        and (``instances``) how many on each true id."""
        if self._fg is None:
            return 0, None
        hit = crop & self._fg[region]
        n = int(np.count_nonzero(hit))
        table = _id_counts(self._ids[region][hit]) if n and self._ids is not None else None
        k = self.ignored_hits(crop, region)
        if k:
            table = {**(table or {}), IGNORE: k}
        return n, table

    def ignored_hits(self, mask: np.ndarray, region: tuple[slice, slice] | None = None) -> int:
        """Pixels of ``mask`` (bool, at ``region`` of the rows last read) on ignored truth."""
        if self._ignored is None:
            return 0
        ignored = self._ignored if region is None else self._ignored[region]
        return int(np.count_nonzero(mask & ignored))


def _id_counts(ids: np.ndarray) -> dict[int, int]:
    """``{id: count}`` of a 1-D array of label ids."""
    values, counts = np.unique(ids, return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


@dataclass
class _Ctx:
    """Everything the stages share."""

    segmenter: Segmenter
    height: int
    width: int
    num_classes: int
    truth: _Truth
    objects: _Objects
    labels: _LabelWriter | None
    class_pixels: np.ndarray
    overview: _Overview | None
    info: dict[str, Any]
    connectivity: int = 2
    min_size: int = 0


def segment_streamed(
    source: Any,
    segmenter: Segmenter,
    *,
    tile: int = 512,
    overlap: int = 64,
    blend: str = "gaussian",
    batch_size: int = 8,
    strip_rows: int = DEFAULT_STRIP_ROWS,
    overview: str = "auto",
    overview_max_pixels: int | None = None,
    truth: Any = None,
    truth_instances: bool = False,
    truth_ignore: int | None = None,
    labels_out: str | os.PathLike[str] | None = None,
    max_chunk_pixels: int | None = DEFAULT_MAX_PIXELS,
    overlay_max_pixels: int | None = None,
) -> StreamedSegmentation:
    """Segment a large image window by window, in memory bounded by ``width x tile``.

    Parameters
    ----------
    source : WindowSource, path, zarr array/group or numpy array
        The image (see :func:`segflow.sources.open_source`); paths are opened and closed here.
    segmenter : Segmenter
        A streamable segmenter instance (:func:`check_streamable`).
    tile, overlap, blend, batch_size
        As :func:`segflow.inference.segment_image`: windows of tile-dependent segmenters and
        labelers (``overlap >= 1`` for labelers), blend weights, windows per call.
    strip_rows : int
        Rows per strip of the pointwise path and of the streamed clean-up (rounded up to the
        storage chunk rows). Memory grows with it; results do not depend on it.
    overview : {"auto", "strided", "pyramid"}
        Where ``fit`` gets its overview (see the module docstring). ``"pyramid"`` requires a
        stored level.
    overview_max_pixels : int, optional
        Pixels of the overview (default ``segmenters.classic.FIT_MAX_PIXELS``, 16 MP).
    truth : WindowSource, path or array, optional
        Ground-truth labels of the same size (non-zero = foreground): foreground confusion
        counts are accumulated strip by strip.
    truth_instances : bool
        Each non-zero id of ``truth`` is one object: instance scores too (``instance_scores``;
        the predicted objects are the segmenter's instances, else the connected components of
        each class, as the in-memory evaluation takes them for binary output). Each object's
        area and its overlap with every true id are summed piece by piece, so the scores are
        those of the whole label maps.
    truth_ignore : int, optional
        The truth's value of pixels no score counts (``RunConfig.gt_ignore``), as
        :func:`segflow.evaluate.metrics_row` leaves out :data:`~segflow.ingest.IGNORE` pixels.
    labels_out : path, optional
        Write the full-size ``int32`` label map (instance ids, or class ids without instances)
        to this ``.zarr`` folder or ``.tif`` file.
    max_chunk_pixels : int or None
        Refuse files whose storage chunk (tile/strip) is larger: reading one window would decode
        it whole.
    overlay_max_pixels : int, optional
        Also draw ``result.overlay`` (:func:`segflow.overlay.draw_overlay`, with the truth when
        given) at the smallest stride ``step`` that leaves at most this many pixels: the image,
        the final label map and the truth are sampled every ``step`` rows and columns as the
        rows go by (no extra read), so contours are those of the sampled maps.

    Returns
    -------
    StreamedSegmentation

    Raises
    ------
    NotStreamableError
        The segmenter or its options need the whole image.
    ImageReadError
        The file cannot be read.
    ValueError
        A bad option (the message names it and the allowed values).
    """
    check_streamable(segmenter)
    tile_ = _check_int("tile", tile, lo=1)
    overlap_ = _check_int("overlap", overlap, lo=0)
    if overlap_ >= tile_:
        raise ValueError(f"overlap must be >= 0 and < tile ({tile_}), got {overlap_}")
    _check_choice("blend", blend, BLEND_MODES)
    batch = _check_int("batch_size", batch_size, lo=1)
    strip = _check_int("strip_rows", strip_rows, lo=1)
    _check_choice("overview", overview, OVERVIEW_MODES)
    classic = _classic()
    ov_max = _check_int(
        "overview_max_pixels",
        classic.FIT_MAX_PIXELS if overview_max_pixels is None else overview_max_pixels,
        lo=1,
    )
    if overlay_max_pixels is not None:
        _check_int("overlay_max_pixels", overlay_max_pixels, lo=1)

    src, own = _as_source(source, labels=False)
    truth_src, truth_own = (None, False) if truth is None else _as_source(truth, labels=True)
    try:
        return _segment(
            src,
            segmenter,
            tile=tile_,
            overlap=overlap_,
            blend=blend,
            batch_size=batch,
            strip_rows=strip,
            overview=overview,
            overview_max_pixels=ov_max,
            truth=truth_src,
            truth_instances=truth_instances,
            truth_ignore=truth_ignore,
            labels_out=labels_out,
            max_chunk_pixels=max_chunk_pixels,
            overlay_max_pixels=overlay_max_pixels,
        )
    finally:
        if own:
            src.close()
        if truth_own and truth_src is not None:
            truth_src.close()


def _as_source(obj: Any, *, labels: bool) -> tuple[WindowSource, bool]:
    """``(source, opened here)``: a WindowSource as is, anything else through open_source."""
    if hasattr(obj, "read") and hasattr(obj, "chunk_shape") and hasattr(obj, "levels"):
        return obj, False
    return open_source(obj, labels=labels), True


def _segment(
    src: WindowSource,
    segmenter: Segmenter,
    *,
    tile: int,
    overlap: int,
    blend: str,
    batch_size: int,
    strip_rows: int,
    overview: str,
    overview_max_pixels: int,
    truth: WindowSource | None,
    truth_instances: bool,
    labels_out: str | os.PathLike[str] | None,
    truth_ignore: int | None = None,
    max_chunk_pixels: int | None,
    overlay_max_pixels: int | None = None,
) -> StreamedSegmentation:
    t_start = time.perf_counter()
    classic = _classic()
    height, width = src.height, src.width
    chunk_rows, chunk_cols = src.chunk_shape
    if max_chunk_pixels is not None and chunk_rows * chunk_cols > max_chunk_pixels:
        raise ImageReadError(
            src.name,
            f"stored in chunks of {chunk_rows} x {chunk_cols} pixels, more than "
            f"max_pixels={max_chunk_pixels}: every window would decode such a chunk whole "
            "(re-save it tiled, e.g. tifffile.imwrite(..., tile=(512, 512)))",
        )
    halo = prepare_halo(segmenter) or 0
    kind = _finish_kind(segmenter)
    info: dict[str, Any] = {"height": height, "width": width, "prepare_halo": halo}

    # -- scaling and overview ---------------------------------------------------------------
    block_rows = _chunk_block_rows(src, min(strip_rows, 256))
    scaler = _Scaler(src.dtype)
    step = _overview_step(height, width, overview_max_pixels)
    level = _pick_level(src, overview_max_pixels) if step > 1 or overview == "pyramid" else None
    use_pyramid = overview == "pyramid" or (overview == "auto" and level is not None)
    if overview == "pyramid" and level is None:
        raise ValueError(
            f"overview='pyramid' but {src.name} stores no pyramid level of at most "
            f"{4 * overview_max_pixels} pixels (levels: {src.levels}); use 'auto' or 'strided'"
        )
    t0 = time.perf_counter()
    if use_pyramid and level is not None:
        raw_level = src.read_level(level)
        if not scaler.fixed:
            scaler.fit(raw_level)
        ov = scaler(raw_level)
        ov = classic.overview(ov, max_pixels=overview_max_pixels)
        info["overview"] = f"pyramid level {src.levels[level]}"
    else:
        if not scaler.fixed:
            scaler.fit(_raw_overview(src, overview_max_pixels, block_rows))
        ov = _strided_overview(src, scaler, segmenter, halo, step, block_rows)
        info["overview"] = f"strided 1/{step}"
    info["overview_shape"] = list(ov.shape)
    segmenter.fit(np.ascontiguousarray(ov, dtype=np.float32))
    del ov
    info["t_overview_ms"] = (time.perf_counter() - t0) * 1000.0

    num_classes = int(segmenter.num_classes)
    # clean-up size of the classic finish steps (opening/min_size only exist there)
    min_size = int(getattr(segmenter, "min_size", 0)) if kind in ("threshold", "labels") else 0
    has_instances = kind == "labels" or (
        kind == "threshold" and bool(getattr(segmenter, "instances", False))
    )
    writer = (
        _LabelWriter(labels_out, height, width, chunk=_chunk_block_rows(src, 256))
        if labels_out is not None
        else None
    )
    sampled = None
    if overlay_max_pixels is not None:
        sampled = _Overview(height, width, _overview_step(height, width, overlay_max_pixels))
        info["overlay_step"] = sampled.step
    ctx = _Ctx(
        segmenter=segmenter,
        height=height,
        width=width,
        num_classes=num_classes,
        truth=_Truth(truth, height, width, instances=truth_instances, ignore=truth_ignore),
        objects=_Objects(
            (height, width),
            keep_nodes=writer is not None or sampled is not None,
            min_size=min_size,
        ),
        labels=writer,
        class_pixels=np.zeros(max(num_classes, 2), np.int64),
        overview=sampled,
        info=info,
        connectivity=int(getattr(segmenter, "connectivity", 2)),
        min_size=min_size,
    )
    cache = _RowCache(src, scaler, block_rows=block_rows)
    cache.overview = ctx.truth.overview = sampled
    prepared = _Prepared(cache, segmenter, halo)
    result = StreamedSegmentation(
        height=height, width=width, class_names=list(segmenter.class_names)
    )
    result.has_instances = has_instances

    # instance scores need objects even from a semantic segmenter (its components)
    need_objects = has_instances or ctx.min_size > 1 or ctx.truth.instances
    objects_built = kind == "labels" or need_objects
    t0 = time.perf_counter()
    if kind == "labels":
        if overlap < 1:
            raise ValueError(
                f"overlap must be >= 1 for instance stitching (objects are matched on shared "
                f"pixels), got {overlap}"
            )
        _stream_labels(prepared, ctx, tile=tile, overlap=overlap)
        objects = _final_objects(ctx, min_size=ctx.min_size, instances=True)
    else:
        strip = _chunk_block_rows(src, strip_rows)
        info["strip_rows"] = strip
        scores = np.zeros(max(num_classes, 2), np.float64)
        entropy = [0.0]
        if segmenter.pointwise:
            class_strips = _pointwise_strips(
                prepared, ctx, strip, scores=scores if kind == "argmax" else None, entropy=entropy
            )
        else:
            class_strips = _merged_strips(
                prepared,
                ctx,
                tile=tile,
                overlap=overlap,
                blend=blend,
                batch_size=batch_size,
                scores=scores,
                entropy=entropy,
            )
        class_strips = _restrip(class_strips, strip, height)
        opening = int(getattr(segmenter, "opening", 0)) if kind == "threshold" else 0
        if opening:
            class_strips = _opened(class_strips, ctx, radius=opening)
        if need_objects:
            _components(class_strips, ctx)
            objects = _final_objects(ctx, min_size=min_size, instances=has_instances)
        else:
            objects = []
            _class_rles(class_strips, ctx, result)
        if kind == "argmax":
            result.mean_entropy = entropy[0] / max(1, height * width)
            for c in range(num_classes):
                if ctx.class_pixels[c]:
                    result.class_scores[c] = float(scores[c] / ctx.class_pixels[c])
        if need_objects and not has_instances:
            # min_size without instances: class masks are the unions of the kept objects
            by_class: dict[int, list[R.CocoRLE]] = {}
            for obj in objects:
                by_class.setdefault(obj.class_id, []).append(obj.rle)
            result.class_masks = {c: R.merge(rles) for c, rles in sorted(by_class.items())}
    info["t_segment_ms"] = (time.perf_counter() - t0) * 1000.0
    info["rows_read"] = cache.rows_read
    info["peak_pieces_held"] = ctx.objects.peak_held_pieces

    if objects_built:
        result.class_pixels = np.zeros(max(num_classes, 2), np.int64)
        for obj in objects:
            result.class_pixels[obj.class_id] += obj.area
        result.class_pixels[0] = height * width - int(result.class_pixels[1:].sum())
    else:
        result.class_pixels = ctx.class_pixels
    if has_instances:
        result.objects = objects
    kept_ignored = ctx.info.pop("_kept_ignored", None) or [0] * len(objects)
    if truth is not None:
        if objects_built:
            tp = sum(ctx.info.get("_kept_gt", []))
            on_ignored = sum(kept_ignored)
        else:
            tp = int(ctx.info.get("_tp", 0))
            on_ignored = int(ctx.info.get("_ignored", 0))
        fg = result.fg_pixels - on_ignored
        fp = fg - tp
        fn = ctx.truth.total - tp
        tn = height * width - ctx.truth.ignored_total - tp - fp - fn
        result.confusion = (int(tp), int(fp), int(fn), int(tn))
    if ctx.truth.instances:
        # as the in-memory evaluation: objects cut to the pixels not ignored (none left: gone)
        areas = [obj.area - k for obj, k in zip(objects, kept_ignored, strict=True)]
        tables = ctx.info.pop("_kept_gt_ids", [])
        kept = [i for i, a in enumerate(areas) if a > 0]
        result.instance_scores = _instance_scores(
            [areas[i] for i in kept], [tables[i] for i in kept], ctx.truth.areas
        )
    ctx.info.pop("_kept_gt", None)
    ctx.info.pop("_tp", None)
    ctx.info.pop("_ignored", None)
    lut = ctx.info.pop("_lut", None)
    if lut is None:
        lut = np.arange(num_classes + 1, dtype=np.int32)  # class ids written as they are
    if writer is not None:
        result.labels_path = writer.finish(lut)
    if sampled is not None:
        result.overlay = sampled.draw(lut)
    info["t_total_ms"] = (time.perf_counter() - t_start) * 1000.0
    result.info = info
    return result


def _instance_scores(
    pred_areas: Sequence[int], overlaps: Sequence[Mapping[int, int]], true_areas: Mapping[int, int]
) -> M.InstanceScores:
    """:func:`segflow.metrics.instance_scores` from each predicted object's area and its
    ``{true id: pixels}`` overlaps, and each true id's area."""
    true_ids = np.array(sorted(true_areas), dtype=np.int64)
    index = {t: i for i, t in enumerate(true_ids.tolist())}
    pair_true = [index[t] for table in overlaps for t in table]
    pair_pred = [p for p, table in enumerate(overlaps) for _ in table]
    inter = [n for table in overlaps for n in table.values()]
    ov = M.InstanceOverlaps(
        true_ids=true_ids,
        pred_ids=np.arange(1, len(pred_areas) + 1, dtype=np.int64),
        true_areas=np.array([true_areas[t] for t in true_ids.tolist()], dtype=np.int64),
        pred_areas=np.asarray(pred_areas, dtype=np.int64),
        pair_true=np.asarray(pair_true, dtype=np.intp),
        pair_pred=np.asarray(pair_pred, dtype=np.intp),
        intersection=np.asarray(inter, dtype=np.int64),
    )
    return M.instance_scores_from_overlaps(ov)


# -- pointwise / merged class strips ------------------------------------------------------------


def _accumulate(
    probs: np.ndarray, classes: np.ndarray, scores: np.ndarray, entropy: list[float]
) -> None:
    """Add per-class probability sums over each class's pixels and the entropy sum of a block."""
    for c in range(probs.shape[0]):
        scores[c] += float(probs[c][classes == c].sum(dtype=np.float64))
    acc = np.zeros(probs.shape[1:], dtype=np.float32)
    tmp = np.empty(probs.shape[1:], dtype=np.float32)
    for plane in probs:
        np.maximum(plane, np.float32(1e-12), out=tmp)
        np.log(tmp, out=tmp)
        tmp *= plane
        acc -= tmp
    entropy[0] += float(acc.sum(dtype=np.float64))


def _pointwise_strips(
    prepared: _Prepared,
    ctx: _Ctx,
    strip: int,
    *,
    scores: np.ndarray | None,
    entropy: list[float],
) -> Iterator[tuple[int, np.ndarray]]:
    """Class rows of a pointwise segmenter, ``strip`` rows at a time (no overlap needed)."""
    seg = ctx.segmenter
    height, width = ctx.height, ctx.width
    k = ctx.num_classes
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        rows = prepared.rows(y0, y1)
        classes = np.empty((y1 - y0, width), dtype=np.int32)
        for x0 in range(0, width, _BLOCK_COLS):
            x1 = min(width, x0 + _BLOCK_COLS)
            out = np.asarray(seg.predict(np.ascontiguousarray(rows[None, :, :, x0:x1])))
            if out.ndim != 4 or out.shape[0] != 1 or out.shape[2:] != (y1 - y0, x1 - x0):
                raise ValueError(
                    f"segmenter {seg.name!r}: predict must return (1, K, {y1 - y0}, {x1 - x0}), "
                    f"got {out.shape}"
                )
            if out.shape[1] != k:
                raise ValueError(
                    f"segmenter {seg.name!r}: predict returned K = {out.shape[1]} channels, "
                    f"num_classes is {k}"
                )
            block = postprocess.argmax_classes(out[0])
            if scores is not None:
                _accumulate(np.asarray(out[0], dtype=np.float32), block, scores, entropy)
            classes[:, x0:x1] = block
        yield y0, classes


def _window_block(prepared: _Prepared, ctx: _Ctx, y: int, tile: int) -> np.ndarray:
    """Prepared rows ``[y, y + tile)`` of the image padded by reflection to at least tile x tile
    (as ``tiling.pad_to_tile``), full (padded) width."""
    height, width = ctx.height, ctx.width
    if height >= tile:
        block = prepared.rows(y, y + tile)
        pad_h = 0
    else:
        block = prepared.rows(0, height)
        pad_h = tile - height
    pad_w = max(0, tile - width)
    if pad_h or pad_w:
        block = np.pad(block, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return block


def _merged_strips(
    prepared: _Prepared,
    ctx: _Ctx,
    *,
    tile: int,
    overlap: int,
    blend: str,
    batch_size: int,
    scores: np.ndarray,
    entropy: list[float],
) -> Iterator[tuple[int, np.ndarray]]:
    """Class rows of a tile-dependent semantic segmenter: windows -> StripMerger -> argmax."""
    seg = ctx.segmenter
    height, width = ctx.height, ctx.width
    ph, pw = max(height, tile), max(width, tile)
    windows = tile_grid(ph, pw, tile=tile, overlap=overlap)
    weights = blend_weights(tile, mode=blend)
    ready: list[tuple[int, np.ndarray]] = []
    k = ctx.num_classes

    def emit(y0: int, block: np.ndarray) -> None:
        y1 = min(height, y0 + block.shape[1])
        if y0 >= height:
            return
        probs = block[:, : y1 - y0, :width]
        classes = postprocess.argmax_classes(probs)
        _accumulate(probs, classes, scores, entropy)
        ready.append((y0, classes))

    merger = StripMerger((k, ph, pw), weights=weights, emit=emit)
    ctx.info["windows"] = len(windows)
    ctx.info["merger_rows_held"] = merger.rows_held
    by_row = itertools.groupby(windows, key=lambda w: w.y)
    for y, row in by_row:
        row_windows = list(row)
        block = _window_block(prepared, ctx, y, tile)
        for start in range(0, len(row_windows), batch_size):
            chunk = row_windows[start : start + batch_size]
            inputs = np.stack([block[:, :, w.x : w.x + tile] for w in chunk]).astype(np.float32)
            out = np.asarray(seg.predict(inputs), dtype=np.float32)
            if out.ndim != 4 or out.shape[0] != len(chunk) or out.shape[2:] != (tile, tile):
                raise ValueError(
                    f"predictor must return (N, K, {tile}, {tile}) with N = {len(chunk)}, "
                    f"got shape {out.shape}"
                )
            if out.shape[1] != k:
                raise ValueError(
                    f"segmenter {seg.name!r}: predict returned K = {out.shape[1]} channels, "
                    f"num_classes is {k}"
                )
            for values, window in zip(out, chunk, strict=True):
                merger.aggregate(values, window)
        while ready:
            yield ready.pop(0)
    merger.finalize()
    while ready:
        yield ready.pop(0)


def _restrip(
    strips: Iterator[tuple[int, np.ndarray]], strip: int, height: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Re-cut consecutive row blocks into strips of ``strip`` rows (the last one shorter)."""
    pending: list[np.ndarray] = []
    start = 0
    rows = 0
    for y0, block in strips:
        if y0 != start + rows:
            raise RuntimeError(f"class rows out of order: got row {y0}, expected {start + rows}")
        pending.append(block)
        rows += block.shape[0]
        while rows >= strip:
            data = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
            yield start, data[:strip]
            rest = data[strip:]
            pending = [rest] if rest.shape[0] else []
            start += strip
            rows -= strip
    if rows:
        yield start, np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]


def _opened(
    strips: Iterator[tuple[int, np.ndarray]], ctx: _Ctx, *, radius: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Per-class binary opening (``postprocess.open_mask``) with a ``2 * radius`` row halo."""
    halo = 2 * radius
    height = ctx.height
    k = ctx.num_classes
    buf: list[tuple[int, np.ndarray]] = []
    queue: list[tuple[int, int]] = []  # strips waiting for their lower halo

    def rows(a: int, b: int) -> np.ndarray:
        parts = [
            blk[max(a, y) - y : min(b, y + blk.shape[0]) - y]
            for y, blk in buf
            if y < b and y + blk.shape[0] > a
        ]
        return np.concatenate(parts, axis=0)

    def emit(y0: int, y1: int) -> tuple[int, np.ndarray]:
        a, b = max(0, y0 - halo), min(height, y1 + halo)
        ext = rows(a, b)
        out = ext.copy()
        for c in range(1, k):
            m = ext == c
            if not m.any():
                continue
            kept = postprocess.open_mask(m, radius=radius)
            out[m & ~kept] = 0
        return y0, out[y0 - a : y1 - a]

    end = 0
    for y0, block in strips:
        buf.append((y0, block))
        end = y0 + block.shape[0]
        queue.append((y0, end))
        while queue and (queue[0][1] + halo <= end or end == height):
            a, b = queue.pop(0)
            yield emit(a, b)
            low = max(0, (queue[0][0] if queue else end) - halo)
            buf = [(y, blk) for y, blk in buf if y + blk.shape[0] > low]
    while queue:
        a, b = queue.pop(0)
        yield emit(a, b)


# -- semantic masks without objects -------------------------------------------------------------


def _class_rles(
    strips: Iterator[tuple[int, np.ndarray]], ctx: _Ctx, result: StreamedSegmentation
) -> None:
    """Per-class RLE as the union of per-strip RLEs; class pixel counts; confusion counts."""
    size = (ctx.height, ctx.width)
    parts: dict[int, list[R.CocoRLE]] = {}
    tp = ignored = 0
    for y0, classes in strips:
        y1 = y0 + classes.shape[0]
        counts = np.bincount(classes.ravel(), minlength=ctx.class_pixels.size)
        ctx.class_pixels[: counts.size] += counts[: ctx.class_pixels.size]
        gt = ctx.truth.rows(y0, y1)
        if gt is not None:
            tp += int(np.count_nonzero(gt & (classes > 0)))
            ignored += ctx.truth.ignored_hits(classes > 0)
        for c in np.flatnonzero(counts[1:]) + 1:
            parts.setdefault(int(c), []).append(
                R.encode_crop(classes == c, offset=(y0, 0), size=size)
            )
        if ctx.labels is not None:
            ctx.labels.write(y0, classes)
        if ctx.overview is not None:
            ctx.overview.put_pred(y0, classes)
    ctx.info["_tp"] = tp
    ctx.info["_ignored"] = ignored
    result.class_masks = {c: R.merge(rles) for c, rles in sorted(parts.items())}


# -- connected components across strips ---------------------------------------------------------


def _components(strips: Iterator[tuple[int, np.ndarray]], ctx: _Ctx) -> np.ndarray | None:
    """Connected components of each foreground class, joined across strip borders.

    Returns the provisional -> final id lookup table when a label image is written.
    """
    objects = ctx.objects
    height, width = ctx.height, ctx.width
    k = ctx.num_classes
    conn = 8 if ctx.connectivity == 2 else 4
    prev_last: dict[int, np.ndarray] = {}  # class -> node id + 1 of the previous strip's last row
    prev_open: list[int] = []
    for y0, classes in strips:
        n_rows = classes.shape[0]
        y1 = y0 + n_rows
        last_strip = y1 >= height
        ctx.truth.rows(y0, y1)  # the rows the pieces' overlap() looks at, and the totals
        prov = np.zeros(classes.shape, dtype=np.int32) if _provisional(ctx) else None
        now_open: list[int] = []
        closing: list[int] = []
        for c in range(1, k):
            mask = (classes == c).view(np.uint8)
            if not mask.any():
                prev_last[c] = np.zeros(width, dtype=np.int64)
                continue
            n, lab, stats, _ = cv2.connectedComponentsWithStats(
                mask, connectivity=conn, ltype=cv2.CV_32S
            )
            nodes = np.zeros(n, dtype=np.int64)  # label -> node id + 1
            top_row = lab[0]
            bottom_row = lab[n_rows - 1]
            touches_top = np.zeros(n, dtype=bool)
            touches_bottom = np.zeros(n, dtype=bool)
            touches_top[top_row] = True
            touches_bottom[bottom_row] = True
            above = prev_last.get(c)
            has_above = above is not None and bool(above.any())
            # a component is complete at once when nothing above or below can join it
            pending = (touches_top & has_above) | (touches_bottom & (not last_strip))
            min_size = objects.min_size
            for i, (left, top, w, h, area) in enumerate(stats.tolist()):
                if i == 0:
                    continue
                gy, gx = y0 + top, left
                if not pending[i] and area < min_size:  # dropped: no crop, no RLE
                    nodes[i] = objects.add_complete((c, gy, gx), c, gy, gx, None, 0, area=area) + 1
                    continue
                crop = lab[top : top + h, left : left + w] == i
                g, g_ids = ctx.truth.overlap((slice(top, top + h), slice(left, left + w)), crop)
                key = (c, gy, gx + int(np.argmax(crop[0])))  # first pixel in raster order
                if not pending[i]:
                    node = objects.add_complete(key, c, gy, gx, crop, g, area=area, gt_ids=g_ids)
                else:
                    node = objects.new(key, c)
                    objects.add_piece(node, gy, gx, crop, area, g, g_ids)
                    if touches_bottom[i] and not last_strip:
                        now_open.append(node)
                    else:
                        closing.append(node)
                nodes[i] = node + 1
            if above is not None and above.any():
                _link_rows(objects, above, nodes[top_row], conn)
            prev_last[c] = nodes[bottom_row]
            if prov is not None:
                prov[lab > 0] = nodes[lab[lab > 0]].astype(np.int32)
        for c in range(1, k):
            if c not in prev_last:
                prev_last[c] = np.zeros(width, dtype=np.int64)
        objects.close(prev_open)
        objects.close(closing)
        prev_open = now_open
        if prov is not None:
            _write_provisional(ctx, y0, prov)
    objects.close(prev_open)
    if objects.records:
        raise RuntimeError(f"{len(objects.records)} objects were never completed")
    return None


def _provisional(ctx: _Ctx) -> bool:
    """Whether provisional ids are kept (for the label image or the overlay)."""
    return ctx.labels is not None or ctx.overview is not None


def _write_provisional(ctx: _Ctx, y0: int, prov: np.ndarray) -> None:
    if ctx.labels is not None:
        ctx.labels.write(y0, prov)
    if ctx.overview is not None:
        ctx.overview.put_pred(y0, prov)


def _link_rows(objects: _Objects, above: np.ndarray, below: np.ndarray, conn: int) -> None:
    """Union the nodes of two vertically adjacent rows (``node + 1``, 0 = none)."""
    pairs = []
    shifts = (-1, 0, 1) if conn == 8 else (0,)
    for s in shifts:
        if s < 0:
            a, b = above[:s], below[-s:]
        elif s > 0:
            a, b = above[s:], below[:-s]
        else:
            a, b = above, below
        both = (a > 0) & (b > 0)
        if both.any():
            pairs.append(np.stack([a[both], b[both]], axis=1))
    if not pairs:
        return
    uniq = np.unique(np.concatenate(pairs), axis=0)
    for a, b in uniq:
        objects.union(int(a) - 1, int(b) - 1)


# -- labelers: windows stitched as stitch_instances, row of windows by row ----------------------


def _ownership(starts: Sequence[int], size: int, length: int) -> list[tuple[int, int]]:
    """Per window start along one axis, the ``[begin, end)`` pixels it owns (as stitch.py)."""
    bounds = [0]
    for prev, nxt in itertools.pairwise(starts):
        bounds.append((prev + nxt + size) // 2)
    bounds.append(length)
    return list(itertools.pairwise(bounds))


def _compact(labels: np.ndarray) -> np.ndarray:
    uniq, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if uniq[0] != 0:
        inverse += 1
    return inverse


def _stream_labels(prepared: _Prepared, ctx: _Ctx, *, tile: int, overlap: int) -> np.ndarray | None:
    """Label every window, stitch them as ``stitch.stitch_instances``, one row of windows at a time."""
    seg = ctx.segmenter
    objects = ctx.objects
    height, width = ctx.height, ctx.width
    ph, pw = max(height, tile), max(width, tile)
    windows = tile_grid(ph, pw, tile=tile, overlap=overlap)
    ys = sorted({w.y for w in windows})
    xs = sorted({w.x for w in windows})
    row_own = _ownership(ys, tile, ph)
    col_own = _ownership(xs, tile, pw)
    min_overlap = float(seg.stitch_min_overlap)
    x_pairs = [
        (i, j) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] < xs[i] + tile
    ]
    col_pairs_between = [(c, c) for c in range(len(xs))] + x_pairs + [(j, i) for i, j in x_pairs]
    # rows of windows still able to overlap a later row: r -> (labels per column, node offsets)
    live: dict[int, tuple[list[np.ndarray], list[int], list[int]]] = {}
    ctx.info["windows"] = len(windows)
    for r, y in enumerate(ys):
        block = _window_block(prepared, ctx, y, tile)
        labs: list[np.ndarray] = []
        offsets: list[int] = []
        counts: list[int] = []
        for x in xs:
            lab = np.asarray(seg.label_tile(block[:, :, x : x + tile]))
            if lab.shape != (tile, tile):
                raise ValueError(
                    f"labeler must return a ({tile}, {tile}) label map, got shape {lab.shape}"
                )
            if lab.dtype.kind not in "iu":
                raise ValueError(f"labels must be an integer array, got dtype {lab.dtype}")
            if lab.size and lab.min() < 0:
                raise ValueError(f"labels must be >= 0 (0 = background), got {lab.min()}")
            top = int(lab.max()) if lab.size else 0
            if top > lab.size:
                lab = _compact(lab)
                top = int(lab.max())
            first = len(objects.parent)
            for i in range(top):
                objects.new((first + i,), 1)
            labs.append(lab)
            offsets.append(first)
            counts.append(top)
        # matches: same row (c1 < c2), then earlier live rows (all column pairs)
        for c1, c2 in x_pairs:
            _union_band(objects, labs, offsets, labs, offsets, c1, c2, y, y, xs, tile, min_overlap)
        for r1, (labs1, offs1, _) in live.items():
            for c1, c2 in col_pairs_between:
                _union_band(
                    objects, labs1, offs1, labs, offsets, c1, c2, ys[r1], y, xs, tile, min_overlap
                )
        # owned pixels of this row of windows -> pieces
        o0, o1 = row_own[r]
        o1 = min(o1, height)
        gt = ctx.truth.rows(o0, o1) if o0 < o1 else None
        prov = np.zeros((max(0, o1 - o0), width), dtype=np.int32) if _provisional(ctx) else None
        for c, x in enumerate(xs):
            if o0 >= o1:
                break
            c0, c1 = col_own[c]
            c1 = min(c1, width)
            if c0 >= c1 or counts[c] == 0:
                continue
            local = labs[c][o0 - y : o1 - y, c0 - x : c1 - x]
            for i, sl in enumerate(ndi.find_objects(local), start=1):
                if sl is None:
                    continue
                crop = local[sl] == i
                area = int(np.count_nonzero(crop))
                gy, gx = o0 + sl[0].start, c0 + sl[1].start
                g, g_ids = (
                    ctx.truth.overlap((sl[0], slice(gx, gx + crop.shape[1])), crop)
                    if gt is not None
                    else (0, None)
                )
                objects.add_piece(offsets[c] + i - 1, gy, gx, crop, area, g, g_ids)
            if prov is not None:
                nz = local > 0
                sub = prov[:, c0:c1]
                sub[nz] = (local[nz] + offsets[c]).astype(np.int32)  # node + 1
        if prov is not None and o0 < o1:
            _write_provisional(ctx, o0, prov)
        live[r] = (labs, offsets, counts)
        nxt = ys[r + 1] if r + 1 < len(ys) else None
        for r1 in list(live):
            if nxt is None or ys[r1] + tile <= nxt:
                labs1, offs1, counts1 = live.pop(r1)
                for off, n in zip(offs1, counts1, strict=True):
                    objects.close(range(off, off + n))
    if objects.records:
        raise RuntimeError(f"{len(objects.records)} objects were never completed")
    return None


def _union_band(
    objects: _Objects,
    labs1: list[np.ndarray],
    offs1: list[int],
    labs2: list[np.ndarray],
    offs2: list[int],
    c1: int,
    c2: int,
    y1: int,
    y2: int,
    xs: Sequence[int],
    tile: int,
    min_overlap: float,
) -> None:
    """Join labels of windows (y1, xs[c1]) and (y2, xs[c2]) that share pixels in their band."""
    b0, b1 = y2, y1 + tile
    x0, x1 = max(xs[c1], xs[c2]), min(xs[c1], xs[c2]) + tile
    if b0 >= b1 or x0 >= x1:
        return
    la = labs1[c1][b0 - y1 : b1 - y1, x0 - xs[c1] : x1 - xs[c1]]
    lb = labs2[c2][b0 - y2 : b1 - y2, x0 - xs[c2] : x1 - xs[c2]]
    a, b = matched_pairs(la, lb, min_overlap)
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        objects.union(offs1[c1] + i - 1, offs2[c2] + j - 1)


# -- final objects and ids ----------------------------------------------------------------------


def _final_objects(ctx: _Ctx, *, min_size: int, instances: bool) -> list[StreamedObject]:
    """Finished objects sorted into the in-memory id order, small ones dropped; fills the LUT."""
    done = ctx.objects.done
    kept = [d for d in done if d.area >= min_size] if min_size > 1 else list(done)
    kept.sort(key=lambda d: d.key)
    ctx.info["_kept_gt"] = [d.gt for d in kept]
    # pixels on ignored truth (the IGNORE entry of gt_ids) are taken off the scores' areas
    ctx.info["_kept_ignored"] = [(d.gt_ids or {}).get(IGNORE, 0) for d in kept]
    if ctx.truth.instances:
        ctx.info["_kept_gt_ids"] = [
            {t: n for t, n in (d.gt_ids or {}).items() if t != IGNORE} for d in kept
        ]
    objects = [
        StreamedObject(id=i, class_id=d.class_id, rle=d.rle, bbox=d.bbox, area=d.area)
        for i, d in enumerate(kept, start=1)
    ]
    if _provisional(ctx):
        lut = np.zeros(len(ctx.objects.parent) + 1, dtype=np.int32)
        for i, d in enumerate(kept, start=1):
            lut[np.asarray(d.nodes, dtype=np.int64) + 1] = i if instances else d.class_id
        ctx.info["_lut"] = lut
    done.clear()
    return objects


# ---------------------------------------------------------------------------------------------
# the pipeline's entry: one listed image -> store rows
# ---------------------------------------------------------------------------------------------


def _local_path(uri: str) -> tuple[str, bool]:
    """A path :func:`open_source` takes for ``uri``: itself (local file, remote Zarr store read
    by window), or a temporary copy of another remote file (True)."""
    if "://" not in uri or is_remote_zarr_uri(uri):
        return uri, False
    import tempfile

    import fsspec

    fd, tmp = tempfile.mkstemp(suffix=os.path.splitext(uri)[1] or ".tif")
    with os.fdopen(fd, "wb") as out, fsspec.open(uri, "rb") as fh:
        shutil.copyfileobj(fh, out, 1 << 22)
    return tmp, True


def result_rows(
    result: StreamedSegmentation, *, ids: Mapping[str, Any], mask_ids: Mapping[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(metrics row, mask rows)`` of a streamed result, in the columns of ``evaluate``'s rows.

    The foreground counts and scores, and the instance scores (``result.instance_scores``,
    ground truth in ``instances`` format), are exact: those of the whole label maps.
    """
    from segflow.evaluate import foreground_columns, instance_columns

    names = result.class_names

    def name_of(c: int) -> str:
        return names[c] if 0 <= c < len(names) else f"class_{c}"

    masks: list[dict[str, Any]] = []

    def add(
        rle: R.CocoRLE,
        class_id: int,
        inst: int | None,
        score: float | None,
        box: Sequence[int] | None,
        area: int,
    ) -> None:
        x, y, w, h = box if box is not None else R.bbox(rle)
        masks.append(
            {
                **mask_ids,
                "class_id": int(class_id),
                "class_name": name_of(int(class_id)),
                "instance_id": inst,
                "score": score,
                "bbox_x": float(x),
                "bbox_y": float(y),
                "bbox_w": float(w),
                "bbox_h": float(h),
                "area": int(area),
                "height": result.height,
                "width": result.width,
                "rle_counts": rle["counts"],
            }
        )

    if result.has_instances:
        for obj in result.objects:
            add(obj.rle, obj.class_id, obj.id, float(obj.score), obj.bbox, obj.area)
    else:
        for c, rle in result.class_masks.items():
            add(rle, c, None, result.class_scores.get(c), None, R.area(rle))
    n_pix = max(1, result.height * result.width)
    row: dict[str, Any] = dict(ids)
    row.update(
        width=result.width,
        height=result.height,
        n_instances=len(result.objects) if result.has_instances else 0,
        fg_fraction=result.fg_pixels / n_pix,
        mean_entropy=result.mean_entropy,
        has_ground_truth=result.confusion is not None,
    )
    if result.confusion is not None:
        row.update(foreground_columns(*result.confusion))
    if result.instance_scores is not None:
        row.update(instance_columns(result.instance_scores))
    return row, masks


def process_image_streamed(
    item: ImageItem,
    *,
    config: RunConfig,
    segmenter: Segmenter,
    run_id: str,
    config_hash: str,
    labels_dir: str | os.PathLike[str] | None = None,
    overlay: bool = False,
) -> ImageResult:
    """:func:`segflow.evaluate.process_image` for an image that streams (same rows, same stages).

    Reads the file by window (a remote Zarr store chunk by chunk over fsspec; another remote
    file is first copied to a temporary local file, in blocks), segments it with
    :func:`segment_streamed` using the run's tiling options, and builds the ``metrics`` and
    ``masks`` rows. The sha256 is the listing's (``item.sha256``) or computed
    in blocks. Ground truth, when paired, is read by window too (foreground counts, and instance
    scores with ``gt_format="instances"``). With ``overlay`` and ground truth, the overlay is
    drawn at :data:`OVERLAY_MAX_PIXELS` (the image sampled every ``step`` rows and columns; see
    :func:`segment_streamed`). With ``labels_dir`` the label image goes to
    ``labels_dir/<image_id>.tif``.

    Raises
    ------
    segflow.evaluate.StageError
        With the failing stage (``read``, ``segment``, ``ground_truth``, ``evaluate``).
    """
    from segflow.evaluate import ImageResult, StageError

    t_all = time.perf_counter()
    stage = "read"
    tmp_files: list[str] = []
    opened: list[WindowSource] = []
    try:
        t0 = time.perf_counter()
        path, is_tmp = _local_path(item.uri)
        if is_tmp:
            tmp_files.append(path)
        sha = item.sha256 or sha256_file(path)
        src = open_source(path, name=item.rel_path)
        opened.append(src)
        t_read = (time.perf_counter() - t0) * 1000.0
        truth_src: WindowSource | None = None
        truth_ignore = config.gt_ignore
        if item.gt_key is not None:  # a COCO entry: rasterised whole, crowds as IGNORE
            stage = "ground_truth"
            truth_src = ArraySource(
                load_ground_truth(
                    item,
                    gt_format=config.gt_format,
                    shape=(src.height, src.width),
                    max_pixels=config.max_pixels,
                )
            )
            truth_ignore = IGNORE
        elif item.gt_uri is not None:
            stage = "ground_truth"
            gt_path, gt_tmp = _local_path(item.gt_uri)
            if gt_tmp:
                tmp_files.append(gt_path)
            truth_src = _truth_source(gt_path, config)
            opened.append(truth_src)
        stage = "segment"
        labels_out = None
        if labels_dir is not None:
            labels_out = Path(labels_dir) / f"{item.image_id}.tif"
        result = segment_streamed(
            src,
            segmenter,
            tile=config.tile,
            overlap=config.overlap,
            blend=config.blend,
            batch_size=config.batch_size,
            strip_rows=max(DEFAULT_STRIP_ROWS, config.tile),
            truth=truth_src,
            truth_instances=truth_src is not None and config.gt_format == "instances",
            truth_ignore=truth_ignore,
            labels_out=labels_out,
            max_chunk_pixels=config.max_pixels,
            overlay_max_pixels=OVERLAY_MAX_PIXELS if overlay and truth_src is not None else None,
        )
        stage = "evaluate"
        t0 = time.perf_counter()
        ids = {
            "image_id": item.image_id,
            "source_uri": item.uri,
            "sha256": sha,
            "config_hash": config_hash,
            "run_id": run_id,
            "segmenter": config.segmenter,
        }
        mask_ids = {k: ids[k] for k in ("image_id", "sha256", "config_hash", "run_id")}
        row, masks = result_rows(result, ids=ids, mask_ids=mask_ids)
        t_eval = (time.perf_counter() - t0) * 1000.0
    except Exception as exc:
        raise StageError(stage, exc) from exc
    finally:
        for source in opened:
            source.close()
        for f in tmp_files:
            try:
                os.unlink(f)
            except OSError:
                logger.debug("cannot remove %s", f)
    row.update(
        t_read_ms=t_read,
        t_preprocess_ms=result.info.get("t_overview_ms", 0.0),
        t_segment_ms=result.info.get("t_segment_ms", 0.0),
        t_evaluate_ms=t_eval,
        t_total_ms=(time.perf_counter() - t_all) * 1000.0,
    )
    logger.info(
        "streamed %s (%d x %d): %d instances, overview %s",
        item.rel_path,
        result.width,
        result.height,
        len(result.objects),
        result.info.get("overview"),
    )
    return ImageResult(metrics=row, masks=masks, overlay=result.overlay)


def _truth_source(path: str, config: Any) -> WindowSource:
    """Ground truth read by window when it is a TIFF/Zarr, else read whole (guarded)."""
    if is_zarr_path(path):
        return open_source(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head in TIFF_MAGIC:
        return open_source(path, labels=True)
    from segflow.io import read_labels

    return ArraySource(read_labels(path, max_pixels=config.max_pixels))
