"""Tile grids, blending weights and tiled prediction.

The contract
------------
* :func:`tile_grid` cuts an ``H x W`` image into windows that are **all** ``tile x tile``.
  Along each axis the windows start at ``0, s, 2s, ...`` with stride ``s = tile - overlap``; the
  last window is shifted inward so that it ends exactly at the image border (the same starts as
  MONAI's ``dense_patch_slices``). Neighbouring windows therefore overlap by *at least*
  ``overlap`` pixels. Windows come in raster order (row of windows by row of windows).
* An image side shorter than ``tile`` gets a single window along that axis that reaches past
  the border: such windows refer to the image **after** :func:`pad_to_tile`, which pads the bottom
  and right by reflection up to ``tile``. :func:`predict_tiled` and
  :func:`segflow.stitch.label_tiled` do this internally and crop the result back to ``(H, W)``.
* :func:`blend_weights` gives the per-window weight map. Every mode is strictly positive, so
  every pixel of a window carries weight and no division by zero can happen.
* :func:`predict_tiled` runs a batch predictor over the windows and blends the overlapping
  predictions into a weighted mean. The mean is kept as a *running weighted mean*
  (``mean += w / (sum of w so far) * (value - mean)``), not as ``sum(w * v) / sum(w)``: where all
  windows predict the same value, ``value - mean`` is exactly zero, so a pointwise predictor gives
  **bit for bit** the untiled answer, for every tile, overlap and blend mode (``sum(w * v) /
  sum(w)`` in float32 is off by an ulp here and there). Pixels seen by one window only are
  copied, never multiplied and divided.

Splitting and merging are separate (as MONAI's ``Splitter`` / ``Merger``): :class:`Merger` is
the small interface (``shape`` / ``aggregate`` / ``finalize``); :class:`AvgMerger` is the
in-memory weighted mean for windows in any order, :class:`GridMerger` the same mean for a
:func:`tile_grid` grid in raster order, without a weight-sum map (what :func:`predict_tiled`
uses). A streaming or on-disk merger (Zarr, memmap) can implement the same interface.

Speed (``benchmarks/tiling.py``): the input windows are not copied where they need not be: a
batch of windows from one row of the grid, evenly spaced, is handed to the predictor as a
read-only strided view of the image (``(N, C, t, t)``, window ``i`` starting ``i * step`` columns
after the first). The rest of the work per window is the predictor, one copy of the
never-covered part of the prediction into the result, and three passes over the overlap band;
merging runs in a helper thread while the next batch is predicted.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal, NamedTuple, get_args

import numpy as np

logger = logging.getLogger(__name__)

BlendMode = Literal["constant", "linear", "gaussian"]
BLEND_MODES: tuple[str, ...] = get_args(BlendMode)

#: Gaussian blending: sigma = GAUSSIAN_SIGMA_SCALE * tile (MONAI's ``sigma_scale`` default).
GAUSSIAN_SIGMA_SCALE = 0.125
#: Gaussian blending: weights are clipped below at this value (as MONAI's importance map).
GAUSSIAN_FLOOR = 1e-3

Predictor = Callable[[np.ndarray], np.ndarray]


class Window(NamedTuple):
    """One tile window: top-left corner ``(y, x)`` and size ``(h, w)`` in pixels."""

    y: int
    x: int
    h: int
    w: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices, so ``image[..., *window.slices]`` is the tile."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def _as_int(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``, else ValueError naming both."""
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        raise ValueError(f"{name} must be an integer {allowed}, got {number}")
    return int(number)


def _check_tile_overlap(tile: object, overlap: object) -> tuple[int, int]:
    tile_ = _as_int("tile", tile, minimum=1)
    overlap_ = _as_int("overlap", overlap, minimum=0, maximum=tile_ - 1)
    return tile_, overlap_


def _axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis of ``length`` pixels (``[0]`` when ``length <= tile``)."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    starts.append(length - tile)
    return starts


def tile_grid(height: int, width: int, *, tile: int, overlap: int) -> list[Window]:
    """Windows of ``tile x tile`` pixels covering an ``height x width`` image, in raster order.

    Parameters
    ----------
    height, width : int
        Image size in pixels, ``>= 1``.
    tile : int
        Window side in pixels, ``>= 1``.
    overlap : int
        Minimum overlap of neighbouring windows in pixels, ``0 <= overlap < tile``. Edge windows
        are shifted inward, so the overlap next to the bottom/right border can be larger.

    Returns
    -------
    list[Window]
        All windows have ``h == w == tile``. When ``height < tile`` (or ``width < tile``) there
        is one window along that axis and it extends past the image: it refers to the image
        padded by :func:`pad_to_tile`.

    Raises
    ------
    ValueError
        When a size, ``tile`` or ``overlap`` is out of range; the message gives the value and the
        allowed range.
    """
    height_ = _as_int("height", height, minimum=1)
    width_ = _as_int("width", width, minimum=1)
    tile_, overlap_ = _check_tile_overlap(tile, overlap)
    ys = _axis_starts(height_, tile_, overlap_)
    xs = _axis_starts(width_, tile_, overlap_)
    return [Window(y, x, tile_, tile_) for y in ys for x in xs]


def pad_to_tile(image: np.ndarray, tile: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad a ``(C, H, W)`` image at the bottom/right by reflection to at least ``tile x tile``.

    Parameters
    ----------
    image : (C, H, W) ndarray
        Any dtype.
    tile : int
        Window side, ``>= 1``.

    Returns
    -------
    padded : (C, max(H, tile), max(W, tile)) ndarray
        ``image`` itself (not a copy) when no padding is needed. Padding uses numpy's
        ``"reflect"`` mode (the border pixel is not repeated; it is repeated for 1-pixel sides,
        and reflection repeats when the pad is longer than the side), so ``padded[:, :H, :W]`` is
        the original image.
    (H, W) : tuple[int, int]
        The original size, to crop results back with ``result[..., :H, :W]``.
    """
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got shape {image.shape}")
    tile_ = _as_int("tile", tile, minimum=1)
    _, height, width = image.shape
    if height < 1 or width < 1:
        raise ValueError(f"image must have H >= 1 and W >= 1, got shape {image.shape}")
    pad_h, pad_w = max(tile_ - height, 0), max(tile_ - width, 0)
    if pad_h == 0 and pad_w == 0:
        return image, (height, width)
    padded = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return padded, (height, width)


def _ramp_1d(tile: int) -> np.ndarray:
    """``min(i + 1, tile - i)`` scaled to a maximum of 1: a triangle that never reaches 0."""
    i = np.arange(tile, dtype=np.float64)
    ramp = np.minimum(i + 1.0, tile - i)
    return ramp / ramp.max()


def _gaussian_1d(tile: int) -> np.ndarray:
    """MONAI's ``compute_importance_map`` profile: sigma = 0.125 * tile, centred on the tile."""
    sigma = GAUSSIAN_SIGMA_SCALE * tile
    x = np.arange(tile, dtype=np.float64) - (tile - 1) / 2.0
    return np.exp(-(x**2) / (2.0 * sigma**2))


def blend_weights(tile: int, *, mode: str) -> np.ndarray:
    """Weight map for blending one ``tile x tile`` window into the image.

    Parameters
    ----------
    tile : int
        Window side, ``>= 1``.
    mode : {"constant", "linear", "gaussian"}
        * ``"constant"``: all ones (a plain mean of overlapping windows).
        * ``"linear"``: separable ramp, ``r(i) = min(i + 1, tile - i) / max`` per axis and the
          outer product of the two; highest in the centre, ``1 / ceil(tile / 2)`` at the edge
          rows/columns, never 0.
        * ``"gaussian"``: separable Gaussian centred on the tile with
          ``sigma = 0.125 * tile`` (MONAI's importance map), clipped below at ``1e-3`` so the
          corners keep a small positive weight.

    Returns
    -------
    (tile, tile) float32
        Strictly positive, at most 1, symmetric under flips and transposition. The maximum is 1
        except for an even-sized gaussian, whose peak falls between the four centre pixels
        (MONAI's map is not rescaled either; only ratios matter for blending).
    """
    tile_ = _as_int("tile", tile, minimum=1)
    if mode == "constant":
        return np.ones((tile_, tile_), dtype=np.float32)
    if mode == "linear":
        ramp = _ramp_1d(tile_)
        return np.outer(ramp, ramp).astype(np.float32)
    if mode == "gaussian":
        profile = _gaussian_1d(tile_)
        weights = np.outer(profile, profile)
        return np.maximum(weights, GAUSSIAN_FLOOR).astype(np.float32)
    raise ValueError(f"blend mode must be one of {list(BLEND_MODES)}, got {mode!r}")


class Merger(ABC):
    """Collects per-window predictions and blends them into one ``(K, H, W)`` array.

    A merger that keeps its arrays on disk (memmap, Zarr) implements the same three members.
    """

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """``(K, H, W)`` of the merged result."""

    @abstractmethod
    def aggregate(self, values: np.ndarray, window: Window) -> None:
        """Add one window's prediction ``values`` ``(K, h, w) float32``."""

    @abstractmethod
    def finalize(self) -> np.ndarray:
        """The merged ``(K, H, W) float32`` array."""


def _check_merger_args(shape: tuple[int, int, int], weights: np.ndarray) -> np.ndarray:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (K, H, W) with every side >= 1, got {shape}")
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim != 2 or weights.size == 0:
        raise ValueError(f"weights must be a non-empty (h, w) array, got shape {weights.shape}")
    if not np.all(weights > 0) or not np.all(np.isfinite(weights)):
        raise ValueError("weights must be finite and strictly positive (> 0) everywhere")
    return weights


def _check_values(
    values: np.ndarray, window: Window, shape: tuple[int, int, int], weights: np.ndarray
) -> None:
    k, height, width = shape
    if (window.h, window.w) != weights.shape:
        raise ValueError(
            f"window size {(window.h, window.w)} must equal the weights' shape {weights.shape}"
        )
    if window.y < 0 or window.x < 0 or window.y + window.h > height or window.x + window.w > width:
        raise ValueError(f"window {window} must lie inside the result of size {(height, width)}")
    if values.shape != (k, window.h, window.w):
        raise ValueError(
            f"values must have shape {(k, window.h, window.w)} (K, h, w), got {values.shape}"
        )


class AvgMerger(Merger):
    """In-memory weighted mean of overlapping windows, in any order; exact for identical values.

    Keeps the running weighted mean ``mean (K, H, W) float32`` and the running weight sum
    ``wsum (H, W) float32``. For each window, with window weights ``w``::

        wsum += w
        mean += (w / wsum) * (values - mean)

    which is, in exact arithmetic, ``sum(w_i * v_i) / sum(w_i)`` over the windows seen so far.
    Where every window predicts the same ``v``, the first one writes ``v`` (``w / w == 1``,
    ``0 + (v - 0) == v``) and every later one adds ``c * 0 == 0``: the result is ``v`` bit for bit.
    Pixels no window touched stay 0 in :meth:`finalize`'s result.

    Parameters
    ----------
    shape : (K, H, W)
        Result shape.
    weights : (h, w) float32
        Blend weights of every window (all windows have this size), strictly positive.
    """

    def __init__(self, shape: tuple[int, int, int], *, weights: np.ndarray) -> None:
        self._weights = _check_merger_args(shape, weights)
        self._shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._mean = np.zeros(self._shape, dtype=np.float32)
        self._wsum = np.zeros(self._shape[1:], dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def aggregate(self, values: np.ndarray, window: Window) -> None:
        """Blend ``values`` ``(K, h, w) float32`` into the window ``window`` of the result."""
        _check_values(values, window, self._shape, self._weights)
        rows, cols = window.slices
        wsum = self._wsum[rows, cols]
        wsum += self._weights
        _blend(self._mean[:, rows, cols], values, self._weights / wsum)

    def finalize(self) -> np.ndarray:
        """The blended ``(K, H, W) float32`` result (the merger's own array, not a copy)."""
        return self._mean


class GridMerger(Merger):
    """The :class:`AvgMerger` mean for a grid of windows given in raster order, faster.

    Windows are the grid ``[(y, x) for y in ys for x in xs]`` (as :func:`tile_grid` lists them)
    and must be aggregated in exactly that order. Then the pixels of window ``(r, c)`` that no
    earlier window covered are its bottom-right rectangle ``[a:, b:]``, with ``a`` (``b``) the
    overlap with the previous row (column) of windows: they are copied. The covered L-shaped
    band is blended with ``mean += c * (values - mean)``, where ``c = w / (w + sum of earlier
    windows' w)`` depends only on where the earlier windows lie relative to this one, so it is
    computed once per distinct neighbourhood (interior windows all share one) instead of keeping
    a weight-sum map. Same arithmetic form as :class:`AvgMerger`, so identical predictions are
    again reproduced bit for bit.

    Parameters
    ----------
    shape : (K, H, W)
        Result shape.
    ys, xs : sequence of int
        Sorted row and column starts; windows cover ``[0, H) x [0, W)`` without gaps.
    weights : (h, w) float32
        Blend weights of every window, strictly positive.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        *,
        ys: Sequence[int],
        xs: Sequence[int],
        weights: np.ndarray,
    ) -> None:
        self._weights = _check_merger_args(shape, weights)
        self._shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        tile_h, tile_w = self._weights.shape
        for name, starts, size, length in (
            ("ys", ys, tile_h, shape[1]),
            ("xs", xs, tile_w, shape[2]),
        ):
            ok = len(starts) > 0 and starts[0] == 0 and starts[-1] + size == length
            ok = ok and all(0 < nxt - prev <= size for prev, nxt in itertools.pairwise(starts))
            if not ok:
                raise ValueError(
                    f"{name} must be increasing window starts from 0 to {length - size} with "
                    f"steps in [1, {size}], got {list(starts)}"
                )
        self._ys = [int(y) for y in ys]
        self._xs = [int(x) for x in xs]
        self._next = 0
        self._coefficients: dict[tuple[tuple[int, int], ...], tuple[np.ndarray, np.ndarray]] = {}
        self._mean = np.zeros(self._shape, dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    def aggregate(self, values: np.ndarray, window: Window) -> None:
        """Blend ``values`` ``(K, h, w) float32`` into ``window``, the next grid window."""
        _check_values(values, window, self._shape, self._weights)
        if self._next >= len(self._ys) * len(self._xs):
            raise ValueError(f"all {self._next} grid windows were already aggregated, got {window}")
        r, c = divmod(self._next, len(self._xs))
        y, x = self._ys[r], self._xs[c]
        if (window.y, window.x) != (y, x):
            raise ValueError(
                f"GridMerger needs the windows in raster order: expected the window at "
                f"(y={y}, x={x}), got {window}"
            )
        self._next += 1
        tile_h, tile_w = self._weights.shape
        a = self._ys[r - 1] + tile_h - y if r > 0 else 0
        b = self._xs[c - 1] + tile_w - x if c > 0 else 0
        mean = self._mean[(slice(None), *window.slices)]
        mean[:, a:, b:] = values[:, a:, b:]
        if a == 0 and b == 0:
            return
        coef_top, coef_left = self._band_coefficients(r, c, a, b)
        if a > 0:
            _blend(mean[:, :a], values[:, :a], coef_top)
        if b > 0:
            _blend(mean[:, a:, :b], values[:, a:, :b], coef_left)

    def _band_coefficients(self, r: int, c: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """``w / (w + earlier w)`` over the top band ``[:a, :]`` and the left band ``[a:, :b]``."""
        tile_h, tile_w = self._weights.shape
        y, x = self._ys[r], self._xs[c]
        offsets = []  # (dy, dx) of every earlier window that overlaps this one
        for r2 in range(r, -1, -1):
            dy = self._ys[r2] - y
            if dy <= -tile_h:
                break
            for c2, x2 in enumerate(self._xs):
                dx = x2 - x
                if abs(dx) < tile_w and (r2 < r or c2 < c):
                    offsets.append((dy, dx))
        key = (*offsets, (a, b))
        cached = self._coefficients.get(key)
        if cached is not None:
            return cached
        weights = self._weights
        earlier = np.zeros((tile_h, tile_w), dtype=np.float32)
        for dy, dx in offsets:
            earlier[max(dy, 0) : tile_h + min(dy, 0), max(dx, 0) : tile_w + min(dx, 0)] += weights[
                max(-dy, 0) : tile_h - max(dy, 0), max(-dx, 0) : tile_w - max(dx, 0)
            ]
        total = earlier + weights
        coef = weights / total
        result = (coef[:a].copy(), coef[a:, :b].copy())
        self._coefficients[key] = result
        return result

    def finalize(self) -> np.ndarray:
        """The blended ``(K, H, W) float32`` result (the merger's own array, not a copy)."""
        if self._next != len(self._ys) * len(self._xs):
            raise ValueError(
                f"only {self._next} of {len(self._ys) * len(self._xs)} grid windows were aggregated"
            )
        return self._mean


def _blend(mean: np.ndarray, values: np.ndarray, coef: np.ndarray) -> None:
    """In place: ``mean += coef * (values - mean)`` (``coef`` broadcast over channels)."""
    delta = values - mean
    delta *= coef
    mean += delta


def _merge(merger: Merger, outputs: np.ndarray, windows: list[Window]) -> None:
    for values, window in zip(outputs, windows, strict=True):
        merger.aggregate(values, window)


def _gather(image: np.ndarray, windows: list[Window], tile: int) -> np.ndarray:
    """The windows of ``image`` ``(C, H, W)`` as one ``(N, C, tile, tile)`` read-only batch.

    Windows in one row with equal steps are a strided view of ``image`` (no copy; windows
    overlap in memory); any other set is copied into a new array.
    """
    first = windows[0]
    steps = {b.x - a.x for a, b in itertools.pairwise(windows)}
    if all(w.y == first.y for w in windows) and len(steps) <= 1:
        step = steps.pop() if steps else 0
        strides = image.strides
        return np.lib.stride_tricks.as_strided(
            image[:, first.y : first.y + tile, first.x :],
            shape=(len(windows), image.shape[0], tile, tile),
            strides=(step * strides[2], *strides),
            writeable=False,
        )
    batch = np.empty((len(windows), image.shape[0], tile, tile), dtype=np.float32)
    for i, window in enumerate(windows):
        rows, cols = window.slices
        batch[i] = image[:, rows, cols]
    batch.flags.writeable = False
    return batch


def _batches(windows: list[Window], per_row: int, batch_size: int) -> list[list[Window]]:
    """Split raster-ordered ``windows`` into predictor batches of at most ``batch_size``.

    When a row of the grid holds at least ``batch_size`` windows, batches stay within a row
    (each row split into near-equal parts, so every batch is at least half full) and can be
    served as views (:func:`_gather`); otherwise batches run across rows, full but copied.
    """
    if per_row < batch_size:
        return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    parts = -(-per_row // batch_size)
    batches: list[list[Window]] = []
    for row in range(0, len(windows), per_row):
        bounds = [row + per_row * k // parts for k in range(parts + 1)]
        batches.extend(windows[a:b] for a, b in itertools.pairwise(bounds))
    return batches


def predict_tiled(
    image: np.ndarray,
    predictor: Predictor,
    *,
    tile: int,
    overlap: int,
    blend: str = "gaussian",
    batch_size: int = 8,
) -> np.ndarray:
    """Run ``predictor`` over overlapping tiles of ``image`` and blend the results.

    Parameters
    ----------
    image : (C, H, W) float32
        Other floating dtypes are converted to float32; integer images are refused (scale them
        first, e.g. with ``segflow.preprocess.to_float_chw``).
    predictor : callable
        Maps a batch ``(N, C, tile, tile) float32`` to ``(N, K, tile, tile)`` (converted to
        float32); ``K`` must be the same for every batch. A numpy function, or a torch model
        wrapped as ``lambda b: model(torch.from_numpy(np.array(b))).detach().cpu().numpy()``.
        It is always called from the calling thread, one batch at a time. The batch is
        **read-only** and may be a strided view into ``image`` (windows of one grid row, see
        the module docstring), so a predictor that needs contiguous or writable memory copies it
        (``np.array(b)``); batches stay valid after the call.
    tile, overlap : int
        See :func:`tile_grid`. Sides shorter than ``tile`` are padded by reflection
        (:func:`pad_to_tile`) and the result is cropped back.
    blend : {"constant", "linear", "gaussian"}
        Weights of :func:`blend_weights`.
    batch_size : int
        Windows per predictor call at most, ``>= 1``. When a row of the grid holds at least
        ``batch_size`` windows, a batch never spans two rows (each row is split into near-equal
        batches, so they are at least half full); otherwise batches are full, across rows.

    Returns
    -------
    (K, H, W) float32
        Weighted mean of the overlapping tile predictions. For a pointwise predictor it equals
        ``predictor(image[None])[0]`` bit for bit.

    Notes
    -----
    Windows are merged with :class:`GridMerger` in one helper thread (at most two threads busy;
    numpy releases the GIL): batch 0's merge overlaps the gathering of batch 1, and from the
    second batch on, merging batch ``i`` overlaps gathering and predicting batch ``i + 1``.
    This needs the predictor to return new memory each call; one that returns the same buffer
    for batches 0 and 1 is merged in line from then on, and one that starts reusing a buffer
    later raises ``RuntimeError`` rather than risk a torn result.
    Memory: the ``(K, H, W)`` float32 result (plus the padded copy for images smaller than a
    tile) and about two batches of inputs and outputs.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a (C, H, W) ndarray, got shape {shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image dtype must be floating (float32), got {image.dtype}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend mode must be one of {list(BLEND_MODES)}, got {blend!r}")
    tile_, overlap_ = _check_tile_overlap(tile, overlap)
    batch_size_ = _as_int("batch_size", batch_size, minimum=1)
    image = np.asarray(image, dtype=np.float32)
    padded, (height, width) = pad_to_tile(image, tile_)
    padded_h, padded_w = padded.shape[1:]
    ys = _axis_starts(padded_h, tile_, overlap_)
    xs = _axis_starts(padded_w, tile_, overlap_)
    windows = [Window(y, x, tile_, tile_) for y in ys for x in xs]  # tile_grid's order
    weights = blend_weights(tile_, mode=blend)
    logger.debug(
        "predict_tiled: %d windows of %d px (overlap %d, %s) over %dx%d",
        len(windows),
        tile_,
        overlap_,
        blend,
        height,
        width,
    )

    chunks = _batches(windows, len(xs), batch_size_)
    merger: Merger | None = None
    # Merging batch i (numpy, which releases the GIL) runs in one helper thread while the main
    # thread gathers and predicts batch i + 1. That is only safe when the predictor returns new
    # memory each call: batch 0's merge overlaps only the gathering of batch 1 and ends before
    # the predictor is called again, and batch 1's outputs are compared with batch 0's before
    # any merge overlaps a predictor call; a predictor that reuses its output buffer is merged
    # in line (finished before its next call) from then on.
    previous: np.ndarray | None = None
    pending: Future[None] | None = None
    in_line = True
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segflow-merge") as pool:
        ready = [_gather(padded, chunks[0], tile_)]  # handed over by pop(): inputs not kept
        for index, chunk in enumerate(chunks):
            outputs = np.asarray(predictor(ready.pop()), dtype=np.float32)
            if (
                outputs.ndim != 4
                or outputs.shape[0] != len(chunk)
                or outputs.shape[2:] != (tile_, tile_)
            ):
                raise ValueError(
                    f"predictor must return (N, K, {tile_}, {tile_}) with N = {len(chunk)}, "
                    f"got shape {outputs.shape}"
                )
            if merger is None:
                merger = GridMerger(
                    (outputs.shape[1], padded_h, padded_w), ys=ys, xs=xs, weights=weights
                )
            elif outputs.shape[1] != merger.shape[0]:
                raise ValueError(
                    f"predictor returned K = {outputs.shape[1]} channels, earlier batches had "
                    f"K = {merger.shape[0]}; K must be the same for every batch"
                )
            # outputs that are views of the (never written) input, as an identity predictor
            # returns, are safe to merge while the next batch runs
            reused = (
                previous is not None
                and np.may_share_memory(outputs, previous)
                and not np.may_share_memory(outputs, padded)
            )
            if pending is not None:
                if reused:
                    raise RuntimeError(
                        "predictor returned memory it had returned for the previous batch while "
                        "that batch was being merged; return a new array from each call"
                    )
                pending.result()
                pending = None
            if reused:
                in_line = True
            elif index == 1:
                in_line = False
            if index == len(chunks) - 1:
                _merge(merger, outputs, chunk)
            else:
                # the merge overlaps the gathering of the next batch; merged in line, it also
                # ends before the predictor runs again
                merged = pool.submit(_merge, merger, outputs, chunk)
                ready.append(_gather(padded, chunks[index + 1], tile_))
                if in_line:
                    merged.result()
                else:
                    pending = merged
            previous = outputs
        if pending is not None:
            pending.result()
    if merger is None:  # unreachable: tile_grid always returns at least one window
        raise RuntimeError("no windows were produced")
    result = merger.finalize()
    if (padded_h, padded_w) != (height, width):
        result = np.ascontiguousarray(result[:, :height, :width])
    return result
