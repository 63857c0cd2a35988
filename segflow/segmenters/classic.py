"""Classic segmenters (scikit-image / OpenCV / SciPy), registered by name.

=================  ===========  =========  =====================================================
name               output       pointwise  what
=================  ===========  =========  =====================================================
``otsu``           semantic     yes        global Otsu threshold (fit once per image)
``multiotsu``      semantic     yes        multi-Otsu thresholds, ``classes`` intensity classes
``adaptive``       semantic     yes [1]_   local threshold (``skimage.filters.threshold_local``)
``kmeans``         semantic     yes        colour k-means (centres fit once per image)
``watershed``      instances    no         distance-transform watershed of the Otsu foreground
``slic``           instances    no         SLIC superpixels as instances
``felzenszwalb``   instances    no         Felzenszwalb graph superpixels as instances
``region_growing`` instances    no [2]_    seeded flood fill with a tolerance
=================  ===========  =========  =====================================================

.. [1] the local threshold surface is computed in :meth:`~Segmenter.prepare` on the whole image;
   ``predict`` then only compares, so tiled == untiled exactly.
.. [2] image-scoped: flood fills run once on the whole image (regions may be image-sized and
   given seeds are image coordinates).

Conventions shared by all of them
---------------------------------
* **Grey value.** Thresholds work on a grey image: one channel as is, three channels as
  ``0.2125 R + 0.7154 G + 0.0721 B`` (``skimage.color.rgb2gray``), other channel counts as the
  channel mean; computed in float64. When the image's values lie on the 8-bit grid
  (``k / 255``, what ``preprocess.to_float_chw`` makes of a ``uint8`` image, up to float32
  rounding; checked on a strided sample of up to 65536 pixels per image), values are snapped
  back to exactly ``k / 255`` first, so a threshold is the one scikit-image computes on the
  8-bit file and does not move with float32 rounding (a 256-bin Otsu histogram of 8-bit data
  has values on its bin edges). An off-grid value the sample missed moves by at most 1/510.
* **Polarity** (``polarity``): ``"bright"`` objects are brighter than the background,
  ``"dark"`` darker, ``"auto"`` decides per image: objects are the *minority* phase of the
  image's global Otsu threshold — if more than half of the pixels are above it, objects are dark
  (``grey <= t``), otherwise bright (``grey > t``). Multi-class methods order their classes by
  brightness away from the background; ``kmeans`` with ``"auto"`` takes its most populous
  cluster as background.
* **Hard scores.** Semantic threshold methods return one-hot class scores from ``predict``
  (``grey > t`` → class 1, ties to the lower class), so blending tiles and taking the argmax
  reproduces the threshold exactly whatever the blend weights; they are decisions, not
  probabilities, so :attr:`Segmentation.probabilities` is ``None``.
* **Post-processing** (see :mod:`segflow.postprocess`, tutorial order): ``sigma`` gaussian
  smoothing before anything else (in ``prepare``, whole image); then on the full-size result
  ``opening`` (disk radius), ``min_size`` (objects with fewer pixels are dropped),
  ``fill_holes`` (optionally only holes up to ``max_hole_size`` pixels) and ``instances``
  (connected components of each foreground class). ``connectivity`` 1 = 4-, 2 = 8-connected.
* Every option is keyword-only and validated: a bad value raises ``ValueError`` naming it and
  the allowed values.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
from skimage.feature import peak_local_max
from skimage.filters import threshold_local, threshold_multiotsu, threshold_otsu
from skimage.segmentation import felzenszwalb, slic, watershed

from segflow import postprocess
from segflow.preprocess import LUMINANCE_WEIGHTS
from segflow.segmenters import register
from segflow.segmenters.base import Segmentation, Segmenter

__all__ = [
    "POLARITIES",
    "AdaptiveSegmenter",
    "FelzenszwalbSegmenter",
    "KMeansSegmenter",
    "MultiOtsuSegmenter",
    "OtsuSegmenter",
    "RegionGrowingSegmenter",
    "SlicSegmenter",
    "WatershedSegmenter",
    "grey",
]

logger = logging.getLogger(__name__)

POLARITIES = ("bright", "dark", "auto")
_LUMA = LUMINANCE_WEIGHTS
#: Global statistics are fit on a strided overview of at most this many pixels.
FIT_MAX_PIXELS = 1 << 24
#: The 8-bit-grid check looks at a strided sample of at most this many pixels.
SNAP_SAMPLE_PIXELS = 1 << 16


_EPS64 = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
_HIST_BLOCK = 1 << 15


def float_histogram(values: np.ndarray, *, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.histogram(values, bins=nbins)`` of finite float values, count for count, faster.

    Returns ``(counts (nbins,) intp, edges (nbins + 1,) float64)``. Values are taken as float64:
    a float32 array gives the histogram of ``values.astype(np.float64)`` (the conversion is
    exact), whatever NumPy would do with float32 edges. NumPy computes each bin index as
    ``(v - lo) / (hi - lo) * nbins`` and then corrects values within rounding error of a bin
    edge by comparing them with the edges; here that correction runs only on the few values
    whose fractional index lies within a (generous) error bound of an integer, in cache-sized
    blocks. Values spread so thinly that the bound is loose fall back to NumPy.
    """
    flat = _flat_values(values)
    if flat.size == 0:
        return np.histogram(flat.astype(np.float64), bins=nbins)
    return _histogram(flat, float(flat.min()), float(flat.max()), nbins)


def _flat_values(values: np.ndarray) -> np.ndarray:
    """``values`` flattened, float32 kept as is (its float64 values are exact), else float64."""
    arr = np.asarray(values)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64, copy=False)
    return arr.reshape(-1)


def _edges(lo: float, hi: float, nbins: int) -> tuple[float, float, np.ndarray]:
    """``np.histogram``'s range and ``(nbins + 1,)`` float64 bin edges for values in [lo, hi]
    (one value: the unit range around it)."""
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi, np.linspace(lo, hi, nbins + 1, endpoint=True, dtype=np.float64)


def _otsu_of_histogram(counts: np.ndarray, edges: np.ndarray) -> float:
    """``skimage.filters.threshold_otsu`` of a histogram given by its counts and bin edges."""
    return float(threshold_otsu(hist=(counts, _centers(edges))))


def _centers(edges: np.ndarray) -> np.ndarray:
    return (edges[:-1] + edges[1:]) / 2.0


def _histogram(flat: np.ndarray, lo: float, hi: float, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`float_histogram` of ``flat`` (1-D float32 or float64) with its ``lo``/``hi``."""
    lo, hi, edges = _edges(lo, hi, nbins)
    denom = np.subtract(hi, lo)
    # index error of a few roundings, in index units, relative to the magnitude of the values
    tol = 64.0 * _EPS64 * nbins * (1.0 + max(abs(lo), abs(hi)) / float(denom))
    if not np.isfinite(tol) or tol > 1e-3:
        return np.histogram(flat.astype(np.float64, copy=False), bins=nbins)
    if flat.dtype == np.float32:
        counts = _float32_counts(flat, lo, denom, edges, tol)
        if counts is not None:
            return counts, edges
        flat = flat.astype(np.float64)
    counts = np.zeros(nbins, dtype=np.intp)
    fbuf = np.empty(min(_HIST_BLOCK, flat.size), dtype=np.float64)
    ibuf = np.empty(fbuf.size, dtype=np.intp)
    for start in range(0, flat.size, _HIST_BLOCK):
        v = flat[start : start + _HIST_BLOCK]
        f, idx = fbuf[: v.size], ibuf[: v.size]
        np.subtract(v, lo, out=f)  # the same three roundings as np.histogram
        f /= denom
        f *= nbins
        idx[...] = f  # truncation, as astype(np.intp)
        f -= idx  # fractional index, then its distance from the nearest integer
        f -= 0.5
        np.abs(f, out=f)
        near = np.flatnonzero(f > 0.5 - tol)
        if near.size:  # NumPy's edge corrections, on the values that may need them
            idx[near] = _numpy_bins(v[near], edges, idx[near])
        counts += np.bincount(idx, minlength=nbins)
    return counts, edges


def _numpy_bins(v: np.ndarray, edges: np.ndarray, ind: np.ndarray) -> np.ndarray:
    """np.histogram's bin of each value ``v`` from its truncated index estimate ``ind`` (intp):
    clip the top value into the last bin, then one step down or up by comparing with the
    float64 ``edges`` (as NumPy does; the estimate is never off by more than one)."""
    nbins = edges.size - 1
    ind = ind.copy()
    ind[ind == nbins] -= 1
    ind[v < edges[ind]] -= 1
    ind[(v >= edges[ind + 1]) & (ind != nbins - 1)] += 1
    return ind


def _float32_counts(
    flat: np.ndarray, lo: float, denom: np.floating, edges: np.ndarray, tol64: float
) -> np.ndarray | None:
    """Counts of ``float_histogram`` for float32 ``flat`` without widening it to float64.

    The bin index is estimated in float32, ``(v - lo) * (nbins / denom)``, within
    ``1.5 * eps32 * nbins`` of the exact index (three float32 roundings of a value at most
    ``nbins``); where its fractional part is farther than that (with a tenfold margin) plus
    NumPy's own rounding bound ``tol64`` from an integer, truncating it gives NumPy's bin. The
    few values closer to an edge get NumPy's exact float64 computation. Bins are counted by
    OpenCV's 8-bit histogram (exact: float32 bins below 2**24 pixels). Returns None where this
    does not apply (more than 256 bins, too many pixels, a scale float32 cannot hold, ``lo``
    not a float32).
    """
    nbins = edges.size - 1
    scale = nbins / float(denom)
    if nbins > 256 or flat.size > 1 << 24 or not 0.0 < scale < 2.0**100:
        return None
    if float(np.float32(lo)) != lo:  # lo - 0.5 of a constant image: the bound needs lo exact
        return None
    tol = tol64 + 16.0 * _EPS32 * nbins
    lo32, scale32 = np.float32(lo), np.float32(scale)
    # indices below 1/2 are bin 0 and from nbins - 1 up the last bin whatever the rounding
    # (the outer edges close them): clipping to [1/2, nbins - 1/2] keeps them in uint8 and
    # away from the near-integer test (the image's minimum itself is exactly 0, an integer)
    bottom, top = np.float32(0.5), np.float32(nbins - 0.5)
    # a float32 at most 0.5 - tol (rounded down), so no value within tol of an edge escapes
    far = np.nextafter(np.float32(0.5 - tol), np.float32(0.0))
    hist = np.zeros((nbins, 1), dtype=np.float32)
    fbuf = np.empty(min(_HIST_BLOCK, flat.size), dtype=np.float32)
    ibuf = np.empty(fbuf.size, dtype=np.uint8)
    bbuf = np.empty(fbuf.size, dtype=np.bool_)
    near_values: list[np.ndarray] = []
    near_bins: list[np.ndarray] = []
    for start in range(0, flat.size, _HIST_BLOCK):
        v = flat[start : start + _HIST_BLOCK]
        f, idx, near = fbuf[: v.size], ibuf[: v.size], bbuf[: v.size]
        np.subtract(v, lo32, out=f)  # >= 0: v >= lo and rounding is monotone
        f *= scale32
        np.clip(f, bottom, top, out=f)
        np.copyto(idx, f, casting="unsafe")  # truncation
        cv2.calcHist([idx], [0], None, [nbins], [0, nbins], hist=hist, accumulate=True)
        f -= idx  # the fractional part (exact), then its distance from the nearest integer
        f -= np.float32(0.5)
        np.abs(f, out=f)
        np.greater(f, far, out=near)
        at = np.flatnonzero(near)
        if at.size:
            near_values.append(v[at].astype(np.float64))
            near_bins.append(idx[at].astype(np.intp))
    counts = hist.ravel().astype(np.intp)
    if near_values:  # move the values near an edge from their estimate to NumPy's bin
        v64, estimate = np.concatenate(near_values), np.concatenate(near_bins)
        exact = _numpy_bins(v64, edges, ((v64 - lo) / denom * nbins).astype(np.intp))
        counts -= np.bincount(estimate, minlength=nbins)
        counts += np.bincount(exact, minlength=nbins)
    return counts


def _grey_histogram(g: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, bin_centers)`` as ``skimage.exposure.histogram`` gives them for float ``g``
    (float64, or float32 standing for its exact float64 values)."""
    counts, edges = float_histogram(g, nbins=nbins)
    return counts, _centers(edges)


def otsu_threshold(g: np.ndarray, *, nbins: int = 256) -> float:
    """``skimage.filters.threshold_otsu(g, nbins=nbins)`` of float ``g`` (any shape), exactly.

    A float32 ``g`` stands for its float64 values (the threshold of ``g.astype(np.float64)``).
    scikit-image's own histogram flattens a copy and runs ``np.histogram``; this feeds it the
    same counts from :func:`float_histogram` (a 1 MP float32 image: ~1.5 ms instead of ~20 ms).
    """
    flat = _flat_values(g)
    lo, hi = float(flat.min()), float(flat.max())
    if lo == hi:  # one value: scikit-image returns it
        return lo
    return _otsu_of_histogram(*_histogram(flat, lo, hi, nbins))


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}"
        )
    return value


def _int(name: str, value: Any, *, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        allowed = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return int(value)


def _float(
    name: str, value: Any, *, lo: float, hi: float | None = None, lo_open: bool = False
) -> float:
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    v = float(value) if ok else math.nan
    bad = not ok or not math.isfinite(v) or (v <= lo if lo_open else v < lo)
    if hi is not None and ok:
        bad = bad or v > hi
    if bad:
        low = f"> {lo}" if lo_open else f">= {lo}"
        allowed = f"a finite number {low}" + (f" and <= {hi}" if hi is not None else "")
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return v


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def _optional_int(name: str, value: Any, *, lo: int) -> int | None:
    return None if value is None else _int(name, value, lo=lo)


def _check_chw(image: np.ndarray, what: str = "image") -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"{what} must be a (C, H, W) array with C, H, W >= 1; got {arr.shape}")
    return arr


def _check_batch(batch: np.ndarray) -> np.ndarray:
    arr = np.asarray(batch)
    if arr.ndim != 4:
        raise ValueError(f"batch must be (N, C, t, t); got shape {arr.shape}")
    return arr


# ---------------------------------------------------------------------------------------------
# grey values, overview, polarity
# ---------------------------------------------------------------------------------------------


def is_8bit_grid(image: np.ndarray, *, max_pixels: int | None = None) -> bool:
    """True when every value of ``image`` (..., H, W) is ``k / 255`` for an integer
    ``0 <= k <= 255`` up to float32 rounding (the image came from 8-bit data).

    With ``max_pixels`` only a strided :func:`overview` of that many pixels is checked.
    """
    x = np.asarray(image)
    if max_pixels is not None and x.ndim >= 2:
        x = overview(x, max_pixels=max_pixels)
    if x.size == 0 or not np.issubdtype(x.dtype, np.floating):
        return False
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        return False
    scaled = x.astype(np.float32, copy=False) * np.float32(255.0)
    return bool(np.abs(scaled - np.rint(scaled)).max() <= 1e-3)


#: ``k / 255`` for k = 0..255 in float64, and those levels times each luminance weight: the
#: exact float64 values (and products) scikit-image computes from 8-bit data.
_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_LEVELS_LUMA = tuple(_LEVELS * w for w in _LUMA)


def grey(x: np.ndarray, *, axis: int = 0, snap: bool = False) -> np.ndarray:
    """Grey value of ``x`` over its channel ``axis``, float64.

    ``(C, H, W)`` with ``axis=0`` -> ``(H, W)``; ``(N, C, t, t)`` with ``axis=1`` ->
    ``(N, t, t)``. One channel: itself; three: ``rgb2gray`` weights
    (``R * 0.2125 + G * 0.7154 + B * 0.0721``, in that order); otherwise the mean. With ``snap``
    values are first rounded to the 8-bit grid ``k / 255`` (through lookup tables of the exact
    float64 values). Pure per-pixel arithmetic in a fixed order, so a tile's grey values equal
    the whole image's bit for bit.
    """
    arr = np.asarray(x)
    c = arr.shape[axis]

    def channel(i: int) -> np.ndarray:
        return np.moveaxis(arr, axis, 0)[i]  # a view

    def lut(i: int, table: np.ndarray) -> np.ndarray:
        # 8-bit level k of each value, then table[k] (cv2.LUT: a fast exact float64 gather)
        values = channel(i)
        return np.asarray(cv2.LUT(_levels(values), table)).reshape(values.shape)

    if snap:
        if c == 3:
            return lut(0, _LEVELS_LUMA[0]) + lut(1, _LEVELS_LUMA[1]) + lut(2, _LEVELS_LUMA[2])
        total = lut(0, _LEVELS)
        for i in range(1, c):
            total = total + lut(i, _LEVELS)
        return total if c == 1 else total / c
    if c == 3:
        return (
            channel(0).astype(np.float64) * _LUMA[0]
            + channel(1).astype(np.float64) * _LUMA[1]
            + channel(2).astype(np.float64) * _LUMA[2]
        )
    total = channel(0).astype(np.float64)
    for i in range(1, c):
        total = total + channel(i)
    return total if c == 1 else total / c


def _levels(x: np.ndarray) -> np.ndarray:
    """8-bit level ``k = rint(255 x)`` of float values ``x`` (..., W), clipped to 0..255 (values
    the grid check's sample missed), as (-1, W) uint8: 2-D for ``cv2.LUT``."""
    scaled = np.multiply(x, np.float32(255.0), dtype=np.float32)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8).reshape(-1, scaled.shape[-1])


def _level_counts(levels: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count of each 8-bit level of ``levels`` (2-D uint8)."""
    if levels.size < 1 << 24:  # OpenCV's float32 bins count exactly below 2**24
        return cv2.calcHist([levels], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(levels.ravel(), minlength=256).astype(np.int64)


def _level_histogram(counts: np.ndarray, nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`float_histogram` of grey values ``k / 255`` (:data:`_LEVELS`) given the number of
    pixels at each level ``k`` (256,), at least one: NumPy's bin of each level value, then
    their counts. Returns ``(counts (nbins,) intp, edges (nbins + 1,) float64)``."""
    present = np.flatnonzero(counts)
    values = _LEVELS[present]
    lo, hi, edges = _edges(float(values[0]), float(values[-1]), nbins)
    estimate = ((values - lo) / np.subtract(hi, lo) * nbins).astype(np.intp)  # as np.histogram
    bins = _numpy_bins(values, edges, estimate)
    hist = np.bincount(bins, weights=counts[present], minlength=nbins).astype(np.intp)
    return hist, edges


def _otsu_of_levels(counts: np.ndarray, nbins: int) -> float:
    """:func:`otsu_threshold` of grey values ``k / 255`` given the count of each level ``k``."""
    present = np.flatnonzero(counts)
    if present[0] == present[-1]:  # one value: scikit-image returns it
        return float(_LEVELS[present[0]])
    return _otsu_of_histogram(*_level_histogram(counts, nbins))


def overview(image: np.ndarray, *, max_pixels: int | None = None) -> np.ndarray:
    """Strided subsample of ``image`` (..., H, W) with about ``max_pixels`` pixels (default
    :data:`FIT_MAX_PIXELS`): every ``s``-th row and column, ``s = ceil(sqrt(H W / max_pixels))``.

    Returns the image itself (a view) when it is small enough. Unlike
    ``preprocess.overview`` (area averaging) it keeps pixel values as they are, so histograms
    and colours are an unbiased sample, not a blurred one (small objects survive).
    """
    if max_pixels is None:
        max_pixels = FIT_MAX_PIXELS
    arr = np.asarray(image)
    h, w = arr.shape[-2:]
    if h * w <= max_pixels:
        return arr
    step = math.ceil(math.sqrt(h * w / max_pixels))
    return arr[..., ::step, ::step]


def objects_are_dark(grey_image: np.ndarray, threshold: float) -> bool:
    """The ``"auto"`` polarity rule: objects are the minority phase of ``threshold``.

    True (dark objects) when more than half of the pixels are above ``threshold``.
    """
    g = np.asarray(grey_image)
    return 2 * int(np.count_nonzero(_above(g, threshold))) > g.size


def _grey_or_channel(x: np.ndarray, *, axis: int, snap: bool) -> np.ndarray:
    """:func:`grey` values of ``x``; one float32 channel that is not snapped comes back as
    itself (a view) instead of a float64 copy: the same values (float32 -> float64 is exact),
    to be compared with :func:`_above` / :func:`_at_most`."""
    arr = np.asarray(x)
    if arr.shape[axis] == 1 and not snap and arr.dtype == np.float32:
        return np.moveaxis(arr, axis, 0)[0]
    return grey(arr, axis=axis, snap=snap)


def _float32_floor(t: float) -> np.float32:
    """The largest float32 ``<= t``: a float32 ``x`` is ``> t`` exactly when it is ``> `` this
    (the next float32 up is already above ``t``), and ``<= t`` exactly when it is ``<=``."""
    with np.errstate(over="ignore"):
        f = np.float32(t)
    if float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def _above(g: np.ndarray, t: float) -> np.ndarray:
    """``g > t`` as float64 decides it, for float64 ``g`` and for float32 ``g`` (which NumPy
    would compare with ``t`` rounded to float32)."""
    return np.greater(g, _float32_floor(t) if g.dtype == np.float32 else t)


def _at_most(g: np.ndarray, t: float) -> np.ndarray:
    """``g <= t`` as float64 decides it (see :func:`_above`)."""
    return np.less_equal(g, _float32_floor(t) if g.dtype == np.float32 else t)


def _one_hot_mask(fg: np.ndarray) -> np.ndarray:
    """(N, t, t) bool -> (N, 2, t, t) float32 one-hot scores: ``_one_hot(fg, 2)`` without the
    int8 class ids."""
    out = np.empty((fg.shape[0], 2, *fg.shape[1:]), dtype=np.float32)
    np.logical_not(fg, out=out[:, 0])
    np.copyto(out[:, 1], fg)
    return out


def _one_hot(idx: np.ndarray, k: int) -> np.ndarray:
    """(N, t, t) int class ids -> (N, K, t, t) float32 one-hot scores."""
    out = np.empty((idx.shape[0], k, *idx.shape[1:]), dtype=np.float32)
    for c in range(k):
        np.equal(idx, c, out=out[:, c], casting="unsafe")
    return out


# ---------------------------------------------------------------------------------------------
# shared bases
# ---------------------------------------------------------------------------------------------


class _Classic(Segmenter):
    """Options every classic segmenter has: polarity, pre-smoothing, minimum size."""

    def __init__(
        self,
        *,
        polarity: str = "auto",
        sigma: float = 0.0,
        min_size: int = 0,
        connectivity: int = 2,
        nbins: int = 256,
    ) -> None:
        self.polarity = _choice("polarity", polarity, POLARITIES)
        self.sigma = _float("sigma", sigma, lo=0.0)
        self.min_size = _int("min_size", min_size, lo=0)
        self.connectivity = postprocess.check_connectivity(connectivity)
        self.nbins = _int("nbins", nbins, lo=2, hi=65536)
        # per-image state, set by fit()
        self.threshold: float | None = None
        self.dark: bool | None = None
        self._snap = False

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Gaussian smoothing with ``sigma`` (whole image); (C, H, W) -> (C, H, W) float32."""
        img = _check_chw(image)
        return postprocess.smooth(img, sigma=self.sigma)

    def _fit_threshold(self, image: np.ndarray) -> None:
        """:meth:`_fit_otsu` for segmenters that need only the threshold and polarity: one
        channel on the 8-bit grid is fit from the pixel count of each of its 256 levels (the
        same histogram, without a float64 grey image)."""
        img = _check_chw(image)
        snap = is_8bit_grid(img, max_pixels=SNAP_SAMPLE_PIXELS)
        if not (snap and img.shape[0] == 1):
            self._fit_otsu(img, snap=snap)
            return
        self._snap = True
        counts = _level_counts(_levels(overview(img)[0]))
        self.threshold = t = _otsu_of_levels(counts, self.nbins)
        self._set_polarity(lambda: 2 * int(counts[_LEVELS > t].sum()) > int(counts.sum()))

    def _fit_otsu(self, image: np.ndarray, *, snap: bool | None = None) -> np.ndarray:
        """Otsu threshold and polarity of the image's grey values (on an overview).

        ``snap``: whether the image is on the 8-bit grid, if already known. Returns the
        overview's grey values (H', W') for further statistics: float64, or for one float32
        channel that is not snapped that channel itself (the same values).
        """
        img = _check_chw(image)
        self._snap = is_8bit_grid(img, max_pixels=SNAP_SAMPLE_PIXELS) if snap is None else snap
        g = _grey_or_channel(overview(img), axis=0, snap=self._snap)
        self.threshold = t = otsu_threshold(g, nbins=self.nbins)
        self._set_polarity(lambda: objects_are_dark(g, t))
        return g

    def _set_polarity(self, objects_dark: Callable[[], bool]) -> None:
        """``dark`` from ``polarity``; ``auto`` asks ``objects_dark`` (the fitted image's rule:
        more than half of the pixels above the threshold)."""
        self.dark = objects_dark() if self.polarity == "auto" else self.polarity == "dark"

    def _require_fit(self) -> tuple[float, bool]:
        if self.threshold is None or self.dark is None:
            raise RuntimeError(f"segmenter {self.name!r}: call fit(image) before predicting")
        return self.threshold, self.dark

    def _foreground(self, tile: np.ndarray, *, axis: int) -> np.ndarray:
        """Otsu foreground of ``tile`` with the fitted threshold and polarity (bool)."""
        t, dark = self._require_fit()
        arr = np.asarray(tile)
        if self._snap and arr.shape[axis] == 1:
            # one 8-bit channel: the decision of each level k / 255, looked up by level (the
            # float64 grey image would hold exactly those values)
            x = np.moveaxis(arr, axis, 0)[0]
            decision = (_LEVELS <= t if dark else _LEVELS > t).astype(np.uint8)
            return np.asarray(cv2.LUT(_levels(x), decision)).view(np.bool_).reshape(x.shape)
        g = _grey_or_channel(arr, axis=axis, snap=self._snap)
        return _at_most(g, t) if dark else _above(g, t)


class _Threshold(_Classic):
    """Semantic, pointwise methods with the tutorial clean-up and optional instances."""

    output = "semantic"
    pointwise = True

    def __init__(
        self,
        *,
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        opening: int = 0,
        min_size: int = 0,
        fill_holes: bool = False,
        max_hole_size: int | None = None,
        instances: bool = True,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
            nbins=nbins,
        )
        self.opening = _int("opening", opening, lo=0, hi=256)
        self.fill_holes = _bool("fill_holes", fill_holes)
        self.max_hole_size = _optional_int("max_hole_size", max_hole_size, lo=0)
        self.instances = _bool("instances", instances)

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """argmax -> opening / small objects / holes per class -> connected components.

        ``probabilities`` are this segmenter's one-hot scores, so the argmax is the threshold
        decision itself; they are not returned (``Segmentation.probabilities`` is ``None``).
        """
        if probabilities is None:
            raise ValueError(f"segmenter {self.name!r} finishes from class scores, got None")
        k = self.num_classes
        if k == 2 and not self.opening and not self.fill_holes:
            # binary, only small objects to drop: the clean-up and the instances share one
            # labelling (the general path below labels the mask twice; same result)
            fg = probabilities[1] > probabilities[0]  # argmax, ties to background
            labels, n = postprocess.binary_instances(
                fg, min_size=self.min_size, connectivity=self.connectivity
            )
            return Segmentation(
                classes=(labels > 0).astype(np.int32),
                probabilities=None,
                instances=labels if self.instances else None,
                instance_classes=dict.fromkeys(range(1, n + 1), 1) if self.instances else {},
                class_names=self.class_names,
            )
        classes = postprocess.argmax_classes(probabilities)
        classes = postprocess.clean_classes(
            classes,
            num_classes=k,
            opening=self.opening,
            min_size=self.min_size,
            fill=self.fill_holes,
            max_hole_size=self.max_hole_size,
            connectivity=self.connectivity,
        )
        instances = None
        instance_classes: dict[int, int] = {}
        if self.instances:
            instances, instance_classes = postprocess.instances_from_classes(
                classes, num_classes=k, connectivity=self.connectivity
            )
        return Segmentation(
            classes=classes,
            probabilities=None,
            instances=instances,
            instance_classes=instance_classes,
            class_names=self.class_names,
        )


class _Labeler(_Classic):
    """Instance methods: ``label_tile`` on the prepared image, ``min_size`` in ``finish``."""

    output = "instances"
    labels_whole_image = True
    # watershed splits and superpixel borders differ between tiles: merge only labels that
    # share more than half of the smaller one's band area (else chains of superpixels merge)
    stitch_min_overlap = 0.5

    def finish(
        self,
        probabilities: np.ndarray | None,
        image: np.ndarray,
        *,
        labels: np.ndarray | None = None,
    ) -> Segmentation:
        """Drop instances below ``min_size``, renumber ``1..N``; classes = instances > 0."""
        if labels is None:
            raise ValueError(f"segmenter {self.name!r} finishes from a label map, got None")
        instances = postprocess.remove_small_instances(labels, min_size=self.min_size)
        return Segmentation(
            classes=(instances > 0).astype(np.int32),
            probabilities=None,
            instances=instances,
            class_names=self.class_names,
        )


# ---------------------------------------------------------------------------------------------
# semantic, pointwise
# ---------------------------------------------------------------------------------------------


@register("otsu")
class OtsuSegmenter(_Threshold):
    """Global Otsu threshold of the grey image (``skimage.filters.threshold_otsu``).

    ``fit`` computes the threshold (attribute ``threshold``) and the polarity (``dark``) on the
    whole image (a strided overview above :data:`FIT_MAX_PIXELS`); ``predict`` compares each
    pixel with it: objects are ``grey > threshold`` (bright) or ``grey <= threshold`` (dark).

    Parameters (keyword-only): ``polarity`` ("bright" | "dark" | "auto", default "auto"),
    ``nbins`` (histogram bins, 2..65536, default 256), ``sigma``, ``opening``, ``min_size``,
    ``fill_holes``, ``max_hole_size``, ``instances`` (default True), ``connectivity`` — see the
    module docstring.
    """

    def fit(self, image: np.ndarray) -> None:
        """Threshold and polarity of ``image`` (C, H, W) float32."""
        self._fit_threshold(image)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) float32 -> (N, 2, t, t) float32 one-hot (background, object)."""
        fg = self._foreground(_check_batch(batch), axis=1)
        return _one_hot_mask(fg)


@register("multiotsu")
class MultiOtsuSegmenter(_Threshold):
    """Multi-Otsu thresholds (``skimage.filters.threshold_multiotsu``) -> ``classes`` classes.

    Class ids follow brightness away from the background: with bright objects (``polarity``
    "bright", or "auto" deciding so) class 0 is the darkest interval and ``classes - 1`` the
    brightest; with dark objects the order is reversed. A pixel equal to a threshold belongs to
    the lower-intensity interval (``grey > t`` goes up, as for Otsu). An image with fewer grey
    levels than ``classes`` gets one class per level, the remaining classes stay empty.

    Parameters (keyword-only): ``classes`` (2..5, default 3), ``polarity``, ``nbins`` and the
    post-processing options of the module docstring (applied to each non-background class).
    """

    def __init__(
        self,
        *,
        classes: int = 3,
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        opening: int = 0,
        min_size: int = 0,
        fill_holes: bool = False,
        max_hole_size: int | None = None,
        instances: bool = True,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            opening=opening,
            min_size=min_size,
            fill_holes=fill_holes,
            max_hole_size=max_hole_size,
            instances=instances,
            connectivity=connectivity,
        )
        self.classes = _int("classes", classes, lo=2, hi=5)
        self.thresholds: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return self.classes

    def fit(self, image: np.ndarray) -> None:
        """Thresholds (attribute ``thresholds``, ascending) and polarity of ``image``."""
        g = self._fit_otsu(image)
        try:
            counts, centers = _grey_histogram(g, self.nbins)
            # normalised as scikit-image's own histogram(normalize=True) gives it
            th = threshold_multiotsu(classes=self.classes, hist=(counts / np.sum(counts), centers))
        except ValueError:
            levels = np.unique(g)
            logger.debug("multiotsu: %d grey levels for %d classes", levels.size, self.classes)
            th = np.full(self.classes - 1, np.inf)
            th[: levels.size - 1] = levels[: levels.size - 1][: self.classes - 1]
        self.thresholds = np.asarray(th, dtype=np.float64)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) float32 -> (N, classes, t, t) float32 one-hot."""
        _, dark = self._require_fit()
        if self.thresholds is None:
            raise RuntimeError("segmenter 'multiotsu': call fit(image) before predicting")
        g = grey(_check_batch(batch), axis=1, snap=self._snap)
        idx = np.zeros(g.shape, dtype=np.int8)
        for t in self.thresholds:
            idx += g > t
        if dark:
            idx = (self.classes - 1 - idx).astype(np.int8)
        return _one_hot(idx, self.classes)


_ADAPTIVE_METHODS = ("gaussian", "mean", "median")


@register("adaptive")
class AdaptiveSegmenter(_Threshold):
    """Local (adaptive) threshold: ``skimage.filters.threshold_local``.

    Works on the object-bright grey image ``o`` (``grey`` for bright objects, ``1 - grey`` for
    dark ones; ``"auto"`` decides with the whole image's Otsu minority rule). ``prepare``
    computes, on the whole image, the local threshold surface ``T`` = weighted mean of the
    ``block_size`` neighbourhood of ``o`` minus ``offset`` (scikit-image's convention: a negative
    ``offset`` demands that objects stand out from their surroundings) and returns the
    one-channel contrast ``o - T``; ``predict`` marks pixels whose contrast is ``> 0``. The local
    step therefore never sees tile borders, and tiled == untiled.

    Parameters (keyword-only): ``block_size`` (odd integer >= 3, default 51), ``offset``
    (default 0.0), ``method`` ("gaussian" | "mean" | "median"), ``polarity``, and the
    post-processing options of the module docstring.
    """

    def __init__(
        self,
        *,
        block_size: int = 51,
        offset: float = 0.0,
        method: str = "gaussian",
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        opening: int = 0,
        min_size: int = 0,
        fill_holes: bool = False,
        max_hole_size: int | None = None,
        instances: bool = True,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            opening=opening,
            min_size=min_size,
            fill_holes=fill_holes,
            max_hole_size=max_hole_size,
            instances=instances,
            connectivity=connectivity,
        )
        bs = _int("block_size", block_size, lo=3, hi=4095)
        if bs % 2 == 0:
            raise ValueError(f"block_size must be an odd integer from 3 to 4095; got {bs}")
        self.block_size = bs
        self.offset = _float("offset", offset, lo=-math.inf)
        self.method = _choice("method", method, _ADAPTIVE_METHODS)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 -> (1, H, W) float32 oriented contrast to the local threshold."""
        img = super().prepare(image)
        self._fit_threshold(img)
        _, dark = self._require_fit()
        g = grey(img, axis=0, snap=self._snap)
        oriented = 1.0 - g if dark else g
        local = threshold_local(
            oriented, self.block_size, method=self.method, offset=self.offset, mode="reflect"
        )
        return (oriented - local).astype(np.float32)[None]

    def fit(self, image: np.ndarray) -> None:
        """Nothing to learn beyond ``prepare``; checks that ``image`` is ``prepare``'s output."""
        img = _check_chw(image)
        if img.shape[0] != 1:
            raise ValueError(
                f"adaptive fits the (1, H, W) output of prepare(), got {img.shape[0]} channels"
            )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 1, t, t) contrast -> (N, 2, t, t) float32 one-hot (contrast > 0 = object)."""
        arr = _check_batch(batch)
        if arr.shape[1] != 1:
            raise ValueError(
                f"adaptive predicts on the (N, 1, t, t) tiles of prepare(), got {arr.shape[1]} channels"
            )
        return _one_hot((arr[:, 0] > 0).astype(np.int8), 2)


def _kmeans(data: np.ndarray, k: int, *, rng: np.random.Generator, max_iter: int) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding: (n, C) float64 -> (k, C) centres.

    Deterministic for a given ``rng`` state. Empty clusters keep their centre.
    """
    n = data.shape[0]
    centres = np.empty((k, data.shape[1]), dtype=np.float64)
    centres[0] = data[rng.integers(n)]
    d2 = ((data - centres[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = float(d2.sum())
        idx = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=d2 / total))
        centres[j] = data[idx]
        d2 = np.minimum(d2, ((data - centres[j]) ** 2).sum(axis=1))
    for _ in range(max_iter):
        assign = _nearest(data, centres)
        counts = np.bincount(assign, minlength=k)
        new = centres.copy()
        for c in range(data.shape[1]):
            sums = np.bincount(assign, weights=data[:, c], minlength=k)
            nonempty = counts > 0
            new[nonempty, c] = sums[nonempty] / counts[nonempty]
        shift = float(np.abs(new - centres).max())
        centres = new
        if shift <= 1e-10:
            break
    return centres


def _nearest(data: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean, ties to the lower index): (n, C) -> (n,)."""
    d = np.stack([((data - m) ** 2).sum(axis=1) for m in centres])
    return np.argmin(d, axis=0)


@register("kmeans")
class KMeansSegmenter(_Threshold):
    """Colour clustering: ``k`` centres fit once per image, then nearest-centre per pixel.

    ``fit`` runs k-means (k-means++ seeding from ``seed``, Lloyd iterations) on the pixels of a
    strided overview of at most ``max_samples`` pixels, in the image's own channels (after
    ``sigma`` smoothing). Class ids: with ``polarity`` "bright" the centres ordered by grey value
    ascending (class 0 = darkest = background), "dark" descending, "auto" the cluster holding
    most overview pixels is background and the others follow by grey-value distance from it.
    ``predict`` assigns each pixel to its nearest centre (squared distance summed channel by
    channel in a fixed order; ties to the lower class id), so it is pointwise.

    Parameters (keyword-only): ``k`` (2..16, default 2), ``seed`` (default 0), ``max_samples``
    (default 65536), ``max_iter`` (default 100), ``polarity`` and the post-processing options.
    """

    def __init__(
        self,
        *,
        k: int = 2,
        seed: int = 0,
        max_samples: int = 65536,
        max_iter: int = 100,
        polarity: str = "auto",
        sigma: float = 0.0,
        opening: int = 0,
        min_size: int = 0,
        fill_holes: bool = False,
        max_hole_size: int | None = None,
        instances: bool = True,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            sigma=sigma,
            opening=opening,
            min_size=min_size,
            fill_holes=fill_holes,
            max_hole_size=max_hole_size,
            instances=instances,
            connectivity=connectivity,
        )
        self.k = _int("k", k, lo=2, hi=16)
        self.seed = _int("seed", seed, lo=0)
        self.max_samples = _int("max_samples", max_samples, lo=16)
        self.max_iter = _int("max_iter", max_iter, lo=1, hi=10_000)
        self.centres: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return self.k

    def fit(self, image: np.ndarray) -> None:
        """Centres (attribute ``centres``, (k, C) float64 in class order) of ``image``."""
        img = _check_chw(image)
        small = overview(img, max_pixels=self.max_samples)
        data = small.reshape(img.shape[0], -1).T.astype(np.float64)
        rng = np.random.default_rng(self.seed)
        centres = _kmeans(data, self.k, rng=rng, max_iter=self.max_iter)
        counts = np.bincount(_nearest(data, centres), minlength=self.k)
        lum = grey(centres.T[:, :, None], axis=0)[:, 0]
        if self.polarity == "bright":
            order = np.argsort(lum, kind="stable")
        elif self.polarity == "dark":
            order = np.argsort(-lum, kind="stable")
        else:
            bg = int(np.argmax(counts))
            rest = [i for i in range(self.k) if i != bg]
            rest.sort(key=lambda i: (abs(lum[i] - lum[bg]), i))
            order = np.array([bg, *rest])
        self.centres = centres[order]
        self.dark = bool(lum[order[-1]] < lum[order[0]])

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, C, t, t) float32 -> (N, k, t, t) float32 one-hot of the nearest centre."""
        if self.centres is None:
            raise RuntimeError("segmenter 'kmeans': call fit(image) before predicting")
        arr = _check_batch(batch)
        if arr.shape[1] != self.centres.shape[1]:
            raise ValueError(
                f"kmeans was fit on {self.centres.shape[1]} channels, got {arr.shape[1]}"
            )
        x = arr.astype(np.float64)
        dist = np.zeros((arr.shape[0], self.k, *arr.shape[2:]), dtype=np.float64)
        for j, centre in enumerate(self.centres):
            for c, value in enumerate(centre):
                dist[:, j] += (x[:, c] - value) ** 2
        return _one_hot(np.argmin(dist, axis=1), self.k)


# ---------------------------------------------------------------------------------------------
# instances
# ---------------------------------------------------------------------------------------------


@register("watershed")
class WatershedSegmenter(_Labeler):
    """Instances by watershed of the distance transform of the Otsu foreground.

    ``fit``: global Otsu threshold and polarity (as ``otsu``). ``label_tile``: foreground ->
    ``opening`` / ``min_size`` / ``fill_holes`` clean-up -> Euclidean distance transform ->
    markers at its local maxima (``skimage.feature.peak_local_max`` with ``min_distance``, and a
    ``footprint`` x ``footprint`` square neighbourhood when given) -> ``skimage.segmentation
    .watershed`` of the negated distance inside the foreground. Foreground components that got
    no marker become one instance each, so every foreground pixel is labelled.

    Parameters (keyword-only): ``min_distance`` (>= 1, default 5), ``footprint`` (odd integer
    >= 3 or None), ``polarity``, ``sigma``, ``opening``, ``min_size``, ``fill_holes``,
    ``max_hole_size``, ``connectivity``, ``nbins``.
    """

    def __init__(
        self,
        *,
        min_distance: int = 5,
        footprint: int | None = None,
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        opening: int = 0,
        min_size: int = 0,
        fill_holes: bool = False,
        max_hole_size: int | None = None,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.min_distance = _int("min_distance", min_distance, lo=1, hi=1024)
        if footprint is not None:
            fp = _int("footprint", footprint, lo=3, hi=2049)
            if fp % 2 == 0:
                raise ValueError(
                    f"footprint must be an odd integer from 3 to 2049 or None; got {fp}"
                )
        self.footprint = footprint
        self.opening = _int("opening", opening, lo=0, hi=256)
        self.fill_holes = _bool("fill_holes", fill_holes)
        self.max_hole_size = _optional_int("max_hole_size", max_hole_size, lo=0)

    def fit(self, image: np.ndarray) -> None:
        """Otsu threshold and polarity of ``image`` (C, H, W) float32."""
        self._fit_threshold(image)

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """(C, h, w) float32 -> (h, w) int32 instance labels."""
        arr = _check_chw(tile, "tile")
        fg = self._foreground(arr, axis=0)
        fg = postprocess.clean_mask(
            fg,
            opening=self.opening,
            min_size=self.min_size,
            fill=self.fill_holes,
            max_hole_size=self.max_hole_size,
            connectivity=self.connectivity,
        )
        if not fg.any():
            return np.zeros(fg.shape, dtype=np.int32)
        if fg.all():
            return np.ones(fg.shape, dtype=np.int32)
        distance = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        fp = None if self.footprint is None else np.ones((self.footprint,) * 2, dtype=bool)
        peaks = peak_local_max(
            distance,
            min_distance=self.min_distance,
            footprint=fp,
            threshold_abs=0.0,
            exclude_border=False,
        )
        peak_mask = np.zeros(fg.shape, dtype=bool)
        peak_mask[tuple(peaks.T)] = True
        markers, n = postprocess.label_components(peak_mask, connectivity=2)
        labels = watershed(-distance, markers, mask=fg, connectivity=self.connectivity)
        labels = labels.astype(np.int32, copy=False)
        rest = fg & (labels == 0)
        if rest.any():
            extra, _ = postprocess.label_components(rest, connectivity=self.connectivity)
            labels[rest] = extra[rest] + n
        return postprocess.relabel_sequential(labels)


_FOREGROUND = ("all", "otsu")


class _Superpixels(_Labeler):
    """Superpixels as instances; ``foreground="otsu"`` keeps only those on the object side."""

    def __init__(
        self,
        *,
        foreground: str,
        polarity: str,
        nbins: int,
        sigma: float,
        min_size: int,
        connectivity: int,
    ) -> None:
        super().__init__(
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.foreground = _choice("foreground", foreground, _FOREGROUND)

    def fit(self, image: np.ndarray) -> None:
        """Otsu threshold and polarity of ``image`` (used by ``foreground="otsu"``)."""
        self._fit_threshold(image)

    def _superpixels(self, tile: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """(C, h, w) float32 -> (h, w) int32 superpixel ids (0 = dropped background)."""
        arr = _check_chw(tile, "tile")
        self._require_fit()
        labels = np.asarray(self._superpixels(arr), dtype=np.int32)
        if self.foreground == "otsu":
            t, dark = self._require_fit()
            g = grey(arr, axis=0, snap=self._snap)
            counts = np.bincount(labels.ravel())
            sums = np.bincount(labels.ravel(), weights=g.ravel())
            means = sums / np.maximum(counts, 1)
            keep = means <= t if dark else means > t
            keep[0] = False
            labels = np.where(keep[labels], labels, 0).astype(np.int32)
        return postprocess.remove_small_instances(labels, min_size=self.min_size)


def _channels_last(tile: np.ndarray) -> tuple[np.ndarray, int | None]:
    """(C, h, w) -> an image for scikit-image and its channel axis (None for one channel)."""
    if tile.shape[0] == 1:
        return tile[0].astype(np.float64), None
    return np.moveaxis(tile, 0, -1).astype(np.float64), -1


@register("slic")
class SlicSegmenter(_Superpixels):
    """SLIC superpixels (``skimage.segmentation.slic``) as instances.

    The number of segments follows the labelled area: ``h * w / region_size**2`` (so it does
    not change with the tile size). scikit-image rescales the image to [0, 1]; three-channel
    images are then clustered in CIELAB (lightness 0..100), others on the rescaled values with
    ``compactness / 100``, so ``compactness`` means the same for grey and colour images.

    Parameters (keyword-only): ``region_size`` (approximate superpixel side in pixels, 4..4096,
    default 32), ``compactness`` (> 0, default 10.0), ``max_num_iter`` (default 10),
    ``foreground`` ("all": every superpixel is an instance; "otsu": only superpixels whose mean
    grey value is on the object side of the image's Otsu threshold), ``polarity``, ``sigma``,
    ``min_size``, ``nbins``.
    """

    def __init__(
        self,
        *,
        region_size: int = 32,
        compactness: float = 10.0,
        max_num_iter: int = 10,
        foreground: str = "all",
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        min_size: int = 0,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            foreground=foreground,
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.region_size = _int("region_size", region_size, lo=4, hi=4096)
        self.compactness = _float("compactness", compactness, lo=0.0, lo_open=True)
        self.max_num_iter = _int("max_num_iter", max_num_iter, lo=1, hi=1000)

    def _superpixels(self, tile: np.ndarray) -> np.ndarray:
        img, axis = _channels_last(tile)
        h, w = tile.shape[1:]
        n_segments = max(1, round(h * w / self.region_size**2))
        lab = tile.shape[0] == 3
        # slic rescales the image to [0, 1]; CIELAB's L then spans 0..100, other images 0..1
        compactness = self.compactness if lab else self.compactness / 100.0
        return np.asarray(
            slic(
                img,
                n_segments=n_segments,
                compactness=compactness,
                max_num_iter=self.max_num_iter,
                sigma=0,
                convert2lab=lab,
                enforce_connectivity=True,
                start_label=1,
                channel_axis=axis,
            )
        )


@register("felzenszwalb")
class FelzenszwalbSegmenter(_Superpixels):
    """Felzenszwalb-Huttenlocher graph superpixels (``skimage.segmentation.felzenszwalb``).

    Smoothing is this segmenter's ``sigma`` (default 0.8, applied to the whole image in
    ``prepare``; felzenszwalb itself is called with ``sigma=0``); ``min_size`` is its minimum
    component size (default 20).

    Parameters (keyword-only): ``scale`` (> 0, default 100.0: higher means larger segments),
    ``sigma``, ``min_size``, ``foreground`` ("all" | "otsu", as for ``slic``), ``polarity``,
    ``nbins``.
    """

    def __init__(
        self,
        *,
        scale: float = 100.0,
        sigma: float = 0.8,
        min_size: int = 20,
        foreground: str = "all",
        polarity: str = "auto",
        nbins: int = 256,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            foreground=foreground,
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.scale = _float("scale", scale, lo=0.0, lo_open=True)

    def _superpixels(self, tile: np.ndarray) -> np.ndarray:
        img, axis = _channels_last(tile)
        seg = felzenszwalb(
            img, scale=self.scale, sigma=0, min_size=self.min_size, channel_axis=axis
        )
        return np.asarray(seg) + 1


_SEED_TEXT = re.compile(r"^\s*\d+\s*,\s*\d+\s*(;\s*\d+\s*,\s*\d+\s*)*;?\s*$")


def _parse_seeds(seeds: Any) -> np.ndarray | None:
    """``None``, ``"y,x;y,x"`` or a sequence of ``(y, x)`` -> (n, 2) int64 array."""
    if seeds is None:
        return None
    if isinstance(seeds, str):
        if not _SEED_TEXT.match(seeds):
            raise ValueError(f"seeds must be 'y,x;y,x;...' with integers >= 0; got {seeds!r}")
        pairs = [p.split(",") for p in seeds.strip().strip(";").split(";")]
        return np.array([[int(y), int(x)] for y, x in pairs], dtype=np.int64)
    try:
        arr = np.asarray(seeds)
    except (TypeError, ValueError):
        arr = np.empty((0, 0))
    ok = (
        arr.ndim == 2
        and arr.shape[1] == 2
        and arr.shape[0] >= 1
        and np.issubdtype(arr.dtype, np.integer)
        and bool((arr >= 0).all())
    )
    if not ok:
        raise ValueError(
            f"seeds must be None, 'y,x;y,x' or a non-empty sequence of (y, x) integer pairs >= 0;"
            f" got {seeds!r}"
        )
    return arr.astype(np.int64)


@register("region_growing")
class RegionGrowingSegmenter(_Labeler):
    """Seeded region growing: a flood fill with a tolerance from each seed.

    A region is the set of pixels connected to its seed (``connectivity``) whose grey value is
    within ``tolerance`` of the seed's (``cv2.floodFill`` with a fixed range). Seeds are the
    given ``seeds`` ((y, x) image coordinates, or the text ``"y,x;y,x"``) or, by default, the
    local extrema of the grey image on the object side of its Otsu threshold (maxima for bright
    objects, minima for dark ones; ``skimage.feature.peak_local_max`` with ``min_distance``, at
    most ``max_seeds``, strongest first). Seeds are flooded in that order; a region never enters
    pixels an earlier region took, and a seed already inside a region starts nothing.

    Image-scoped: it runs once on the whole (prepared) image — a flood fill is not local, and
    given seeds are image coordinates.

    Parameters (keyword-only): ``tolerance`` (0 < tolerance <= 1 on the 0..1 grey scale,
    default 0.1), ``seeds`` (default None), ``min_distance`` (default 5), ``max_seeds`` (default
    10000), ``polarity``, ``sigma``, ``min_size`` (regions with fewer pixels are dropped),
    ``connectivity``, ``nbins``.
    """

    image_scoped = True

    def __init__(
        self,
        *,
        tolerance: float = 0.1,
        seeds: str | Sequence[Sequence[int]] | None = None,
        min_distance: int = 5,
        max_seeds: int = 10_000,
        polarity: str = "auto",
        nbins: int = 256,
        sigma: float = 0.0,
        min_size: int = 0,
        connectivity: int = 2,
    ) -> None:
        super().__init__(
            polarity=polarity,
            nbins=nbins,
            sigma=sigma,
            min_size=min_size,
            connectivity=connectivity,
        )
        self.tolerance = _float("tolerance", tolerance, lo=0.0, hi=1.0, lo_open=True)
        self.seeds = _parse_seeds(seeds)
        self.min_distance = _int("min_distance", min_distance, lo=1, hi=1024)
        self.max_seeds = _int("max_seeds", max_seeds, lo=1)

    def fit(self, image: np.ndarray) -> None:
        """Otsu threshold and polarity of ``image`` (C, H, W) float32 (seed selection)."""
        self._fit_threshold(image)

    def _seed_points(self, oriented: np.ndarray, level: float) -> np.ndarray:
        h, w = oriented.shape
        if self.seeds is not None:
            outside = (self.seeds[:, 0] >= h) | (self.seeds[:, 1] >= w)
            if outside.any():
                raise ValueError(
                    f"seeds must lie inside the {h}x{w} image (0 <= y < {h}, 0 <= x < {w});"
                    f" got {self.seeds[outside].tolist()}"
                )
            return self.seeds
        return np.asarray(
            peak_local_max(
                oriented,
                min_distance=self.min_distance,
                threshold_abs=level,
                exclude_border=False,
                num_peaks=self.max_seeds,
            )
        )

    def label_tile(self, tile: np.ndarray) -> np.ndarray:
        """(C, H, W) float32 whole prepared image -> (H, W) int32 region labels."""
        arr = _check_chw(tile, "image")
        t, dark = self._require_fit()
        g = grey(arr, axis=0, snap=self._snap)
        # oriented so that objects are bright: seeds are maxima above the (oriented) threshold
        oriented = (1.0 - g if dark else g).astype(np.float32)
        level = (1.0 - t) if dark else t
        seeds = self._seed_points(oriented, level)
        h, w = g.shape
        labels = np.zeros((h, w), dtype=np.int32)
        mask = np.zeros((h + 2, w + 2), dtype=np.uint8)
        flags = (
            (4 if self.connectivity == 1 else 8)
            | cv2.FLOODFILL_FIXED_RANGE
            | cv2.FLOODFILL_MASK_ONLY
            | (1 << 8)
        )
        tol = (self.tolerance,) * 4
        next_id = 0
        for y, x in seeds:
            if mask[y + 1, x + 1]:
                continue
            _, _, _, (rx, ry, rw, rh) = cv2.floodFill(
                oriented, mask, (int(x), int(y)), 0, tol, tol, flags
            )
            window = mask[ry + 1 : ry + 1 + rh, rx + 1 : rx + 1 + rw]
            new = window == 1
            next_id += 1
            labels[ry : ry + rh, rx : rx + rw][new] = next_id
            window[new] = 2
        return labels
