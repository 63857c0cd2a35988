"""Pictures for visual debugging: an image with its prediction and ground truth drawn on it.

Colour key of :func:`draw_overlay` (RGB, also the module constants below):

==========================  =====================  ==========================================
what                        colour                 how it is drawn
==========================  =====================  ==========================================
true positive area          green ``(0, 200, 0)``  light tint (``tint_alpha``, default 0.25)
false positive (pred only)  red ``(255, 0, 0)``    strong tint (``error_alpha``, default 0.5)
false negative (true only)  blue ``(0, 64, 255)``  strong tint (``error_alpha``, default 0.5)
predicted area, no truth    yellow tint            light tint (only when ``true is None``)
ignored truth (``< 0``)     grey ``(128,128,128)`` strong tint; never red or blue
true instance contours      cyan ``(0, 255, 255)`` opaque, 1 px, inside each true object
predicted contours          yellow ``(255,255,0)`` opaque, 1 px, inside each predicted object;
                                                   drawn last, so it wins where both coincide
==========================  =====================  ==========================================

Contours are ``skimage.segmentation.find_boundaries(labels, mode="inner")``: the object pixels
that touch another label (or the background), so touching instances of a label map are
separated by their contours, and a bool mask gets the outline of each of its blobs.

All outputs are ``(H, W, 3)`` uint8 RGB.  :func:`to_png` encodes with OpenCV (converting RGB to
OpenCV's BGR order), :func:`thumbnail` shrinks with area interpolation, :func:`to_data_uri`
gives the ``data:image/png;base64,...`` string that Prefect's markdown artifacts render inline.
"""

from __future__ import annotations

import base64

import cv2
import numpy as np
import numpy.typing as npt
from skimage.segmentation import find_boundaries

__all__ = [
    "FN_COLOUR",
    "FP_COLOUR",
    "IGNORE_COLOUR",
    "PRED_CONTOUR_COLOUR",
    "PRED_TINT_COLOUR",
    "TP_COLOUR",
    "TRUE_CONTOUR_COLOUR",
    "draw_overlay",
    "thumbnail",
    "to_data_uri",
    "to_png",
    "to_uint8_rgb",
]

TP_COLOUR: tuple[int, int, int] = (0, 200, 0)
FP_COLOUR: tuple[int, int, int] = (255, 0, 0)
FN_COLOUR: tuple[int, int, int] = (0, 64, 255)
PRED_TINT_COLOUR: tuple[int, int, int] = (255, 255, 0)
PRED_CONTOUR_COLOUR: tuple[int, int, int] = (255, 255, 0)
TRUE_CONTOUR_COLOUR: tuple[int, int, int] = (0, 255, 255)
IGNORE_COLOUR: tuple[int, int, int] = (128, 128, 128)


def to_uint8_rgb(image: npt.ArrayLike) -> np.ndarray:
    """Normalise an image for display.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray, C in 1..4, any numeric or bool dtype
        Grey (C = 1), grey + alpha (C = 2), RGB (C = 3) or RGBA (C = 4); alpha is dropped.

    Returns
    -------
    (H, W, 3) uint8 ndarray
        uint8 is kept as is; bool becomes 0/255; float whose finite values all lie in [0, 1] is
        scaled by 255; every other dtype (uint16, int, other floats) is stretched linearly from
        its finite minimum (-> 0) to its maximum (-> 255), over all channels together so colour
        balance is kept (a constant image becomes 0).  NaN and inf become 0.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and 1 <= arr.shape[2] <= 4:
        arr = arr[..., :1] if arr.shape[2] <= 2 else arr[..., :3]
    elif arr.ndim == 2:
        arr = arr[..., None]
    else:
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * np.uint8(255)
    elif arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        values = arr.astype(np.float64)
        finite = np.isfinite(values)
        values[~finite] = 0.0
        if finite.any():
            lo = float(values[finite].min())
            hi = float(values[finite].max())
        else:
            lo = hi = 0.0
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif hi > lo:
            scaled = (values - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(values)
        scaled[~finite] = 0.0
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"image dtype must be numeric or bool, got {arr.dtype}")
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    return np.ascontiguousarray(out)


def _labels(name: str, labels: npt.ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise ValueError(f"{name} must have the image's shape {shape}, got {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a bool mask or an integer label map, got {arr.dtype}")
    return arr


def _tint(out: np.ndarray, where: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    """Blend ``colour`` into the float image ``out`` at the pixels ``where``, in place."""
    if alpha > 0 and where.any():
        out[where] = out[where] * (1.0 - alpha) + np.asarray(colour, dtype=np.float32) * alpha


def draw_overlay(
    image: npt.ArrayLike,
    pred: npt.ArrayLike,
    true: npt.ArrayLike | None = None,
    *,
    tint_alpha: float = 0.25,
    error_alpha: float = 0.5,
) -> np.ndarray:
    """Draw a prediction (and optionally its ground truth) over an image.

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray, any dtype
        Normalised with :func:`to_uint8_rgb`.
    pred : (H, W) bool mask or integer label map
        Foreground is ``!= 0``; each non-zero id is one instance (a bool mask: its blobs).
    true : (H, W) bool mask or integer label map, optional
        Ground truth, same conventions; negative values (:data:`segflow.ingest.IGNORE`) mark
        pixels no score counts, tinted grey.
    tint_alpha, error_alpha : float in [0, 1]
        Opacity of the light tints (true positives; the prediction when ``true`` is None) and of
        the false positive / false negative tints.

    Returns
    -------
    (H, W, 3) uint8 ndarray
        With ``true``: true positives lightly tinted green, false positives (predicted, not
        true) red, false negatives (true, not predicted) blue, true contours cyan, predicted
        contours yellow (on top).  Without ``true``: the predicted area lightly tinted yellow and
        the predicted contours yellow.  See the module docstring for the exact colours.
    """
    for name, value in (("tint_alpha", tint_alpha), ("error_alpha", error_alpha)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    rgb = to_uint8_rgb(image)
    shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    p = _labels("pred", pred, shape)
    pf = p != 0
    out = rgb.astype(np.float32)
    t: np.ndarray | None = None
    if true is None:
        _tint(out, pf, PRED_TINT_COLOUR, float(tint_alpha))
    else:
        t = _labels("true", true, shape)
        ignored = t < 0
        if ignored.any():
            t = np.where(ignored, 0, t)
            _tint(out, ignored, IGNORE_COLOUR, float(error_alpha))
        tf = t != 0
        _tint(out, pf & tf, TP_COLOUR, float(tint_alpha))
        _tint(out, pf & ~tf & ~ignored, FP_COLOUR, float(error_alpha))
        _tint(out, ~pf & tf, FN_COLOUR, float(error_alpha))
    result = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if t is not None:
        result[find_boundaries(t, mode="inner")] = TRUE_CONTOUR_COLOUR
    result[find_boundaries(p, mode="inner")] = PRED_CONTOUR_COLOUR
    return result


def to_png(img: npt.ArrayLike) -> bytes:
    """Encode an image as PNG bytes.

    Parameters
    ----------
    img : (H, W), (H, W, 3) RGB or (H, W, 4) RGBA ndarray, uint8 or uint16

    Returns
    -------
    bytes
        A PNG file; ``cv2.imdecode(..., cv2.IMREAD_UNCHANGED)`` gives the pixels back in BGR(A)
        order, Pillow in RGB(A) order.
    """
    arr = np.asarray(img)
    if arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"img dtype must be uint8 or uint16, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        bgr = arr
    elif arr.ndim == 3 and arr.shape[2] == 3:
        bgr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        bgr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGBA2BGRA)
    else:
        raise ValueError(f"img must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    if bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ValueError(f"img must not be empty, got shape {arr.shape}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {arr.shape} as PNG")
    return buf.tobytes()


def thumbnail(img: npt.ArrayLike, *, max_side: int = 128) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side``.

    Parameters
    ----------
    img : (H, W) or (H, W, C) ndarray (typically the (H, W, 3) uint8 of :func:`draw_overlay`)
    max_side : int >= 1

    Returns
    -------
    (h, w[, C]) ndarray, same dtype and channel count
        Area interpolation (``cv2.INTER_AREA``); the longer side becomes exactly ``max_side``,
        the shorter one keeps the aspect ratio (at least 1 px).  Images already small enough
        are returned as a copy, never enlarged.
    """
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise ValueError(f"max_side must be an int >= 1, got {max_side!r}")
    arr = np.asarray(img)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"img must be a non-empty (H, W) or (H, W, C) array, got {arr.shape}")
    h, w = int(arr.shape[0]), int(arr.shape[1])
    longest = max(h, w)
    if longest <= max_side:
        return arr.copy()
    scale = max_side / longest
    new_h = max_side if h >= w else max(1, round(h * scale))
    new_w = max_side if w > h else max(1, round(w * scale))
    small = cv2.resize(np.ascontiguousarray(arr), (new_w, new_h), interpolation=cv2.INTER_AREA)
    if arr.ndim == 3 and small.ndim == 2:  # OpenCV drops a single channel axis
        small = small[..., None]
    return small


def to_data_uri(img: npt.ArrayLike) -> str:
    """``"data:image/png;base64,..."`` of :func:`to_png` (for inline markdown images)."""
    return "data:image/png;base64," + base64.b64encode(to_png(img)).decode("ascii")
