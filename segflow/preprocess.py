"""From the file's pixels to the float arrays segmenters work on.

Every function here takes and returns plain numpy arrays; the layout after :func:`to_float_chw`
is channels-first ``(C, H, W) float32``, the layout tiling, segmenters and torch models share.

Conventions (stated once, applied everywhere)
---------------------------------------------
* ``uint8`` is divided by 255, ``uint16`` by 65535, ``bool`` maps to 0/1: the scale is the
  dtype's, never the image's, so two images of one camera stay comparable.
* Float images (and integer dtypes other than uint8/uint16, e.g. int16 or uint32 TIFF data) have
  no intrinsic scale. ``float_mode="auto"`` (default) keeps values already inside ``[0, 1]`` as
  they are and min-max scales an image whose finite values leave ``[0, 1]`` (so a float32
  microscope image in ``[0, 4095]`` is not clipped to a white picture); ``"clip"`` always clips;
  ``"minmax"`` always scales. NaN becomes 0; +inf/-inf become 1/0.
* A 4-channel image is RGBA: its alpha is dropped (``drop_alpha=True``, default) because the
  segmenters see colour, not transparency. Other channel counts are kept as they are.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

__all__ = [
    "FLOAT_MODES",
    "LUMINANCE_WEIGHTS",
    "NORMALIZE_MODES",
    "normalize",
    "overview",
    "to_float_chw",
    "to_grey",
]

logger = logging.getLogger(__name__)

FLOAT_MODES = ("auto", "clip", "minmax")
NORMALIZE_MODES = ("none", "minmax", "percentile", "zscore")

#: ITU-R BT.709 luma weights for linear RGB, as ``skimage.color.rgb2gray``.
LUMINANCE_WEIGHTS = (0.2125, 0.7154, 0.0721)


def to_float_chw(
    image: np.ndarray, *, float_mode: str = "auto", drop_alpha: bool = True
) -> np.ndarray:
    """Convert an image as read by :func:`segflow.io.read_image` to ``(C, H, W) float32`` in [0, 1].

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        ``uint8``, ``uint16``, ``bool``, float or other integer dtype.
    float_mode : {"auto", "clip", "minmax"}
        How float (and non-uint8/uint16 integer) images reach [0, 1]; see the module docstring.
    drop_alpha : bool
        Drop the 4th channel of a 4-channel (RGBA) image.

    Returns
    -------
    (C, H, W) float32 ndarray, C-contiguous, values in [0, 1]
        ``C = 1`` for grey input, 3 for RGB and RGBA (alpha dropped).
    """
    if float_mode not in FLOAT_MODES:
        raise ValueError(f"float_mode must be one of {FLOAT_MODES}, got {float_mode!r}")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3:
        raise ValueError(
            f"image must be (H, W) or (H, W, C), got shape {arr.shape} ({arr.ndim} dimensions)"
        )
    if arr.shape[2] < 1:
        raise ValueError(f"image must have at least one channel, got shape {arr.shape}")
    if drop_alpha and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    chw = arr.transpose(2, 0, 1)
    out = np.empty(chw.shape, dtype=np.float32)
    if arr.dtype == np.uint8:
        np.divide(chw, np.float32(255), out=out, dtype=np.float32)
    elif arr.dtype == np.uint16:
        np.divide(chw, np.float32(65535), out=out, dtype=np.float32)
    elif arr.dtype == np.bool_:
        out[...] = chw
    elif arr.dtype.kind in "fiu":
        _float_to_unit(chw, out, float_mode)
    else:
        raise ValueError(
            f"image dtype must be bool, integer or float, got {arr.dtype} "
            "(complex and object images are not images)"
        )
    return out


def _float_to_unit(chw: np.ndarray, out: np.ndarray, float_mode: str) -> None:
    """Write ``chw`` (float or int) into ``out`` scaled to [0, 1] per ``float_mode``.

    float64 and wide integer data are scaled in float64 first (their values may not fit, or not
    be distinct, in float32); everything else is scaled in ``out`` directly.
    """
    if chw.dtype.itemsize > 4 or (chw.dtype.kind in "iu" and chw.dtype.itemsize == 4):
        work = chw.astype(np.float64)
        _scale_in_place(work, float_mode)
        out[...] = work
    else:
        out[...] = chw
        _scale_in_place(out, float_mode)


def _scale_in_place(out: np.ndarray, float_mode: str) -> None:
    finite = np.isfinite(out)
    all_finite = bool(finite.all())
    if not all_finite:
        out[np.isnan(out)] = 0.0
    if float_mode == "clip":
        np.clip(out, 0.0, 1.0, out=out)
        return
    values = out if all_finite else out[finite]
    if values.size == 0:
        np.clip(out, 0.0, 1.0, out=out)  # only inf (and NaN -> 0): +inf -> 1, -inf -> 0
        return
    lo, hi = float(values.min()), float(values.max())
    if float_mode == "auto" and lo >= 0.0 and hi <= 1.0:
        if not all_finite:
            np.clip(out, 0.0, 1.0, out=out)
        return
    logger.debug("float image spans [%g, %g]: min-max scaling to [0, 1]", lo, hi)
    half_span = hi / 2 - lo / 2  # halved: hi - lo may overflow; halving is exact
    if half_span > 0:
        out *= out.dtype.type(0.5)
        out -= out.dtype.type(lo / 2)
        out /= out.dtype.type(half_span)
    else:
        out[finite] = 0.0
    np.clip(out, 0.0, 1.0, out=out)  # rounding, and +inf -> 1, -inf -> 0


def to_grey(image: np.ndarray) -> np.ndarray:
    """Luminance of a ``(C, H, W)`` float image as ``(1, H, W) float32``.

    ``C == 1``: returned unchanged (as float32). ``C == 3``: RGB weighted by
    :data:`LUMINANCE_WEIGHTS` (BT.709, as ``skimage.color.rgb2gray``). ``C == 4``: RGBA, alpha
    ignored. Other ``C`` (multi-channel microscopy): the mean of the channels.
    """
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise ValueError(f"image must be (C, H, W) with C >= 1, got shape {arr.shape}")
    channels = arr.shape[0]
    if channels == 1:
        return arr.astype(np.float32, copy=False)
    out = np.empty((1, *arr.shape[1:]), dtype=np.float32)
    if channels in (3, 4):
        r, g, b = (arr[i].astype(np.float32, copy=False) for i in range(3))
        wr, wg, wb = (np.float32(w) for w in LUMINANCE_WEIGHTS)
        np.multiply(r, wr, out=out[0])
        out[0] += g * wg
        out[0] += b * wb
    else:
        np.mean(arr, axis=0, dtype=np.float32, out=out[0])
    return out


def normalize(
    image: np.ndarray,
    *,
    mode: str = "none",
    low: float = 1.0,
    high: float = 99.8,
    clip: bool = True,
    eps: float = 1e-6,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Per-channel intensity normalisation of a ``(C, H, W)`` image.

    Parameters
    ----------
    image : (C, H, W) ndarray
    mode : {"none", "minmax", "percentile", "zscore"}
        * ``none``: the image as float32, values unchanged.
        * ``minmax``: ``(x - min) / (max - min)``, clipped to [0, 1] (with a ``reference``,
          values beyond the reference's range are clipped).
        * ``percentile``: ``(x - P_low) / (P_high - P_low)``, clipped to [0, 1] when ``clip``
          (robust to hot pixels; the usual normalisation for microscopy).
        * ``zscore``: ``(x - mean) / std`` (zero mean, unit variance; what many trained networks
          expect). Not bounded to [0, 1].
        A channel whose spread is below ``eps`` is only shifted (min, P_low or mean -> 0).
    low, high : float
        Percentiles for ``percentile`` mode, ``0 <= low < high <= 100``.
    clip : bool
        Clip ``percentile`` output to [0, 1].
    reference : (C, h, w) ndarray, optional
        Compute the statistics on this array instead of ``image`` — e.g. a downsampled
        :func:`overview` of the whole image, so that every tile of a large image is normalised
        identically.

    Returns
    -------
    (C, H, W) float32 ndarray (a new array).
    """
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"mode must be one of {NORMALIZE_MODES}, got {mode!r}")
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {arr.shape}")
    out = arr.astype(np.float32, copy=True)
    if mode == "none":
        return out
    ref = arr if reference is None else np.asarray(reference)
    if ref.ndim != 3 or ref.shape[0] != arr.shape[0]:
        raise ValueError(
            f"reference must be (C, h, w) with C = {arr.shape[0]} like the image, "
            f"got shape {ref.shape}"
        )
    if ref.shape[1] * ref.shape[2] == 0:
        raise ValueError(f"statistics need at least one pixel, got reference shape {ref.shape}")
    flat = ref.reshape(ref.shape[0], -1).astype(np.float64)
    if mode == "minmax":
        offset, top = flat.min(axis=1), flat.max(axis=1)
        scale = top - offset
    elif mode == "percentile":
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
        offset, top = np.percentile(flat, [low, high], axis=1)
        scale = top - offset
    else:  # zscore
        offset, scale = flat.mean(axis=1), flat.std(axis=1)
    scale = np.where(scale < eps, 1.0, scale)
    out -= offset.astype(np.float32)[:, None, None]
    out /= scale.astype(np.float32)[:, None, None]
    if mode == "minmax" or (mode == "percentile" and clip):
        np.clip(out, 0.0, 1.0, out=out)
    return out


def overview(image: np.ndarray, *, max_side: int = 1024) -> np.ndarray:
    """Downsampled view of a ``(C, H, W)`` image for global statistics (thresholds, centres).

    The image is shrunk by one factor so that its longer side is ``max_side`` (aspect ratio kept,
    each side at least 1 pixel), by area averaging (``cv2.INTER_AREA``: every output pixel is the
    mean of the input pixels it covers, so means and histograms are preserved, not aliased).
    An image already within ``max_side`` is returned as float32 without resampling.

    Returns
    -------
    (C, h, w) float32 ndarray with ``max(h, w) <= max_side``.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise ValueError(f"max_side must be a positive int, got {max_side!r}")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"image must be (C, H, W) with every side >= 1, got shape {arr.shape}")
    channels, height, width = arr.shape
    arr = arr.astype(np.float32, copy=False)
    longest = max(height, width)
    if longest <= max_side:
        return arr
    scale = max_side / longest
    new_h = min(max_side, max(1, round(height * scale)))
    new_w = min(max_side, max(1, round(width * scale)))
    out = np.empty((channels, new_h, new_w), dtype=np.float32)
    for c in range(channels):
        out[c] = cv2.resize(arr[c], (new_w, new_h), interpolation=cv2.INTER_AREA)
    return out
